"""Man-in-the-middle indicators in who connects as a charge point, from where, and how.

* CW-MITM-001: one identity connected twice at the same time, and the charge point side of
  both connections keeps sending. A reconnect whose old socket merely times out is not
  concurrent: the old connection goes silent once the new one starts.
* CW-MITM-002: a session from an address never seen for the charge point, or negotiating a
  lower OCPP version than the session before (the offer or the choice lowered).
* CW-MITM-004: a Basic-auth username that is not the identity in the URL (the specs say MUST
  equal: 1.6 security whitepaper, 2.0.1/2.1 A00.FR.2xx).

Only accepted upgrades (HTTP 101, or no status reported) count as sessions. The first session
seen for a charge point is its baseline and never alerts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from chargewatch.model import ConnectionEvent, Direction, OcppMessage, version_from_subprotocol
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule

CONCURRENT = "CW-MITM-001"
SESSION_CHANGE = "CW-MITM-002"
USERNAME_MISMATCH = "CW-MITM-004"
CP_TO_CSMS = Direction.CP_TO_CSMS


def accepted_upgrade(event: ConnectionEvent) -> bool:
    """An upgrade of a known identity the central system accepted (101; None: status not reported)."""
    return event.kind == "upgrade" and bool(event.charge_point_id) and event.status in (101, None)


def version_rank(version: str | None) -> tuple[int, ...] | None:
    """Orderable form of an OCPP version ("2.0.1" -> (2, 0, 1)); None when unknown."""
    if not version:
        return None
    parts = version.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def highest_version(subprotocols: Iterable[str]) -> str | None:
    """The highest OCPP version among subprotocol names (vendor names ignored)."""
    best: str | None = None
    for name in subprotocols:
        version = version_from_subprotocol(name)
        rank = version_rank(version)
        if rank is not None and (best is None or rank > (version_rank(best) or ())):
            best = version
    return best


def network_of(ip: str, v4_prefix: int, v6_prefix: int) -> str:
    """The address block an IP belongs to at the configured prefix (the IP itself if unparsable)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(slots=True)
class _Flow:
    """The charge point side of one connection: when it first and last sent."""

    client: tuple[str, int]
    first_ts: float
    last_ts: float
    first_id: str
    last_id: str
    reported: tuple[str, ...] = ()  # connections already reported as concurrent with this one


@dataclass(slots=True)
class _Session:
    """The baseline: the last accepted session and the address blocks seen (newest last)."""

    networks: list[str]
    offered_top: str | None
    chosen: str | None
    ts: float
    connection_id: str
    client_ip: str


class MitmSessionDetector:
    """CW-MITM-001, CW-MITM-002 and CW-MITM-004."""

    name: str = "mitm_session"
    rule_ids: tuple[str, ...] = (CONCURRENT, SESSION_CHANGE, USERNAME_MISMATCH)

    def __init__(self, rules: dict[str, Rule]) -> None:
        concurrent, change, mismatch = rules[CONCURRENT], rules[SESSION_CHANGE], rules[USERNAME_MISMATCH]
        self.concurrent_on = concurrent.enabled
        self.overlap_s = float(concurrent.param("overlap_s"))
        self.idle_s = float(concurrent.param("idle_s"))
        self.max_connections = int(concurrent.param("max_connections"))
        self.ip_change = bool(change.param("ip_change"))
        self.downgrade = bool(change.param("subprotocol_downgrade"))
        self.v4_prefix = int(change.param("ipv4_prefix"))
        self.v6_prefix = int(change.param("ipv6_prefix"))
        self.known_networks = int(change.param("known_networks"))
        self.case_insensitive = frozenset(str(v) for v in mismatch.param("case_insensitive_versions"))

    # --- records ----------------------------------------------------------------------

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        if event.kind == "closed":
            state.get("flows", {}).pop(event.connection_id, None)
            return []
        if event.kind != "upgrade" or not event.charge_point_id:
            return []
        findings = self._username(event)
        if accepted_upgrade(event):
            findings += self._session(event, state)
        return findings

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if "session" not in state and msg.connection_id not in ctx.connections and msg.charge_point_id:
            self._seed_midstream(msg, state)
        if msg.direction is not CP_TO_CSMS or not self.concurrent_on:
            return []
        # CW-MITM-001: follow the charge point side of each connection
        flows: dict[str, _Flow] | None = state.get("flows")
        if flows is None:
            flows = state["flows"] = {}
        mine = flows.get(msg.connection_id)
        if mine is None:
            self._expire_flows(flows, msg.ts)
            flows[msg.connection_id] = _Flow((msg.src_ip, msg.src_port), msg.ts, msg.ts, msg.message_id,
                                             msg.message_id)
            return []
        if msg.ts > mine.last_ts:  # noqa: PLR1730 (cheaper than max(), and this runs for every message)
            mine.last_ts = msg.ts
        mine.last_id = msg.message_id
        return self._concurrent(msg, mine, flows) if len(flows) > 1 else []

    # --- CW-MITM-001 ------------------------------------------------------------------

    def _concurrent(self, msg: OcppMessage, mine: _Flow, flows: dict[str, _Flow]) -> list[Finding]:
        """Connections from another client address that overlap mine by more than overlap_s."""
        findings = []
        for other_id, other in flows.items():
            if other_id == msg.connection_id or other_id in mine.reported or other.client == mine.client:
                continue  # same client address: the same socket reported twice, not a second connection
            overlap = min(mine.last_ts, other.last_ts) - max(mine.first_ts, other.first_ts)
            if overlap > self.overlap_s:
                mine.reported += (other_id,)
                other.reported += (msg.connection_id,)
                findings.append(self._concurrent_finding(msg, mine, other_id, other, overlap))
        return findings

    def _concurrent_finding(self, msg: OcppMessage, mine: _Flow, other_id: str, other: _Flow,
                            overlap: float) -> Finding:
        return Finding(
            CONCURRENT,
            f"{msg.charge_point_id} is connected twice at once: from {mine.client[0]}:{mine.client[1]} and "
            f"from {other.client[0]}:{other.client[1]}, both sending for {overlap:.0f}s "
            f"(tolerated overlap {self.overlap_s:.0f}s)",
            {"connection_id": msg.connection_id, "client": f"{mine.client[0]}:{mine.client[1]}",
             "first_ts": mine.first_ts, "first_message_id": mine.first_id, "message_id": msg.message_id,
             "other_connection_id": other_id, "other_client": f"{other.client[0]}:{other.client[1]}",
             "other_first_ts": other.first_ts, "other_last_ts": other.last_ts,
             "other_last_message_id": other.last_id, "overlap_s": round(overlap, 3),
             "same_ip": mine.client[0] == other.client[0], "tolerated_overlap_s": self.overlap_s})

    def _expire_flows(self, flows: dict[str, _Flow], now: float) -> None:
        """Forget connections silent for idle_s (closed without a FIN seen); keep at most max_connections."""
        for conn_id in [c for c, f in flows.items() if f.last_ts < now - self.idle_s]:
            del flows[conn_id]
        while len(flows) >= self.max_connections:
            del flows[min(flows, key=lambda c: flows[c].last_ts)]

    # --- CW-MITM-002 ------------------------------------------------------------------

    def _seed_midstream(self, msg: OcppMessage, state: State) -> None:
        """Joined mid-stream: the running session is the baseline (its offer is unknown)."""
        client_ip = msg.src_ip if msg.sender == "cp" else msg.dst_ip
        network = network_of(client_ip, self.v4_prefix, self.v6_prefix)
        state["session"] = _Session([network], None, msg.ocpp_version, msg.ts, msg.connection_id, client_ip)

    def _session(self, event: ConnectionEvent, state: State) -> list[Finding]:
        network = network_of(event.client_ip, self.v4_prefix, self.v6_prefix)
        offered_top = highest_version(event.subprotocols_offered)
        chosen = event.ocpp_version or version_from_subprotocol(event.subprotocol)
        previous: _Session | None = state.get("session")
        if previous is None:
            state["session"] = _Session([network], offered_top, chosen, event.ts, event.connection_id,
                                        event.client_ip)
            return []
        changes = self._changes(previous, network, offered_top, chosen)
        finding = self._change_finding(event, previous, network, offered_top, chosen, changes) if changes else None
        self._remember(previous, event, network, offered_top, chosen)
        return [finding] if finding else []

    def _changes(self, previous: _Session, network: str, offered_top: str | None, chosen: str | None) -> list[str]:
        changes = []
        if self.ip_change and network not in previous.networks:
            changes.append("new_address")
        if self.downgrade:
            if _lower(offered_top, previous.offered_top):
                changes.append("offer_downgrade")
            if _lower(chosen, previous.chosen):
                changes.append("version_downgrade")
        return changes

    def _remember(self, session: _Session, event: ConnectionEvent, network: str, offered_top: str | None,
                  chosen: str | None) -> None:
        if network in session.networks:
            session.networks.remove(network)
        session.networks.append(network)
        del session.networks[: max(0, len(session.networks) - self.known_networks)]
        session.offered_top = offered_top or session.offered_top
        session.chosen = chosen or session.chosen
        session.ts, session.connection_id, session.client_ip = event.ts, event.connection_id, event.client_ip

    def _change_finding(self, event: ConnectionEvent, previous: _Session, network: str, offered_top: str | None,
                        chosen: str | None, changes: list[str]) -> Finding:
        said = []
        if "new_address" in changes:
            said.append(f"connected from {event.client_ip}, outside the address blocks seen before "
                        f"({', '.join(previous.networks)})")
        if "offer_downgrade" in changes:
            said.append(f"offered at most OCPP {offered_top} after offering {previous.offered_top}")
        if "version_downgrade" in changes:
            said.append(f"negotiated OCPP {chosen} after {previous.chosen}")
        return Finding(
            SESSION_CHANGE,
            f"{event.charge_point_id} {' and '.join(said)} (previous session {event.ts - previous.ts:.0f}s earlier)",
            {"changes": changes, "client_ip": event.client_ip, "network": network,
             "known_networks": list(previous.networks), "previous_client_ip": previous.client_ip,
             "offered": list(event.subprotocols_offered), "offered_top": offered_top,
             "previous_offered_top": previous.offered_top, "subprotocol": event.subprotocol,
             "version": chosen, "previous_version": previous.chosen, "previous_session_ts": previous.ts,
             "previous_connection_id": previous.connection_id})

    # --- CW-MITM-004 ------------------------------------------------------------------

    def _username(self, event: ConnectionEvent) -> list[Finding]:
        """Basic username vs URL identity; an undecodable credential (no username) is not judged."""
        user, identity = event.auth_username, event.charge_point_id or ""
        if (event.auth_scheme or "").lower() != "basic" or user is None or _same_identity(user, identity):
            return []
        case_only = user.casefold() == identity.casefold()
        if case_only and event.ocpp_version in self.case_insensitive:
            return []
        verdict = "accepted" if event.status in (101, None) else f"answered {event.status}"
        return [Finding(
            USERNAME_MISMATCH,
            f"connection as {identity!r} authenticated with Basic username {user!r} ({verdict})",
            {"auth_username": user, "charge_point_id": identity, "path": event.path, "status": event.status,
             "accepted": event.status in (101, None), "case_only": case_only, "tls": event.tls is not None})]


def _same_identity(username: str, identity: str) -> bool:
    """Equal, or equal once the username's percent-encoding (copied from the URL) is decoded."""
    return username == identity or ("%" in username and unquote(username) == identity)


def _lower(now: str | None, before: str | None) -> bool:
    """now is a known version strictly below the known version before."""
    rank_now, rank_before = version_rank(now), version_rank(before)
    return rank_now is not None and rank_before is not None and rank_now < rank_before

