"""Unauthorized remote commands: who may command a charge point, when, and over what link.

- CW-CMD-001: a central-system CALL from an endpoint off the operator's allowlist, or from a
  second central system talking to the same charge point at the same time.
- CW-CMD-002: a sensitive command outside the configured maintenance windows.
- CW-CMD-005: UnlockConnector on a connector whose transaction we watched start and not end.
- CW-CMD-008: certificate management over a connection we saw open without TLS.

The other command rules live in their own modules; :func:`command_detectors` lists them all.
Each names the actions it handles, and the runner hands it only those.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chargewatch.catalog import BOTH, CSMS_INITIATED, Catalog
from chargewatch.errors import ConfigError
from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Detector, Finding, State
from detectors.charging_profiles import ChargingProfileDetector
from detectors.config_weakening import ConfigWeakeningDetector
from detectors.context import ChargePointContext
from detectors.firmware_urls import TransferUrlDetector
from detectors.links import Link, link_of, remember_link
from detectors.policy import CsmsEndpoint, Policy
from detectors.remote_start import RemoteStartDetector
from detectors.rules import Rule

UNKNOWN_ENDPOINT = "CW-CMD-001"
OUTSIDE_MAINTENANCE = "CW-CMD-002"
UNLOCK_DURING_TX = "CW-CMD-005"
PKI_IN_CLEAR = "CW-CMD-008"
MAX_SERVERS = 8
CALL = int(MessageType.CALL)
CSMS_TO_CP = Direction.CSMS_TO_CP


def command_detectors(rules: dict[str, Rule], catalog: Catalog, policy: Policy) -> list[Detector]:
    """The unauthorized-command family; each part names the actions it handles (``actions``)."""
    return [CommandDetector(rules, catalog, policy), TransferUrlDetector(rules, policy),
            ConfigWeakeningDetector(rules, policy), RemoteStartDetector(rules), ChargingProfileDetector(rules, policy)]


def sensitive_actions(rule: Rule, catalog: Catalog) -> frozenset[str]:
    """The rule's ``actions`` list, checked against the catalog: each must be a central-system command."""
    actions = frozenset(str(a) for a in rule.param("actions"))
    commands = {a for v in catalog.versions() for a, info in catalog.actions[v].items()
                if info.initiator in (CSMS_INITIATED, BOTH)}
    unknown = sorted(actions - commands)
    if unknown:
        raise ConfigError(f"{rule.path}: parameter actions: {unknown} are not central-system commands "
                          "of any OCPP version in the catalog")
    return actions


class CommandDetector:
    """CW-CMD-001, CW-CMD-002, CW-CMD-005 and CW-CMD-008."""

    name: str = "command_checks"
    rule_ids: tuple[str, ...] = (UNKNOWN_ENDPOINT, OUTSIDE_MAINTENANCE, UNLOCK_DURING_TX, PKI_IN_CLEAR)
    actions: frozenset[str] | None = None  # every central-system CALL is judged

    def __init__(self, rules: dict[str, Rule], catalog: Catalog, policy: Policy) -> None:
        self.catalog, self.policy = catalog, policy
        self.endpoints = policy.csms_endpoints
        # Without the certificate (upgrade not seen) an endpoint can only be judged by address.
        self.endpoints_by_address = tuple(CsmsEndpoint(e.ip, e.port) for e in policy.csms_endpoints)
        endpoint = rules[UNKNOWN_ENDPOINT]
        self.second_csms = bool(endpoint.param("detect_second_csms"))
        self.second_window = float(endpoint.param("second_csms_window_s"))
        self.sensitive = sensitive_actions(rules[OUTSIDE_MAINTENANCE], catalog)
        pki = rules[PKI_IN_CLEAR]
        self.pki_actions = frozenset(str(a) for a in pki.param("actions"))
        self.pki_triggers = frozenset(str(t) for t in pki.param("trigger_targets"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        remember_link(state, event)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.message_type != CALL:
            return []
        if msg.direction is not CSMS_TO_CP:
            return self._pki(msg, state) if msg.action in self.pki_actions else []
        link = link_of(state, msg.connection_id)
        found = [f for f in (self._endpoint(msg, link), self._second_csms(msg, ctx, state),
                             self._maintenance(msg)) if f is not None]
        if msg.action == "UnlockConnector":
            found += self._unlock(msg, ctx)
        elif msg.action in self.pki_actions:
            found += self._pki(msg, state)
        return found

    # --- CW-CMD-001 -------------------------------------------------------------------------

    def _endpoint(self, msg: OcppMessage, link: Link | None) -> Finding | None:
        """A command from an address/certificate the allowlist does not name (quiet without one)."""
        if not self.endpoints:
            return None
        cert = link.server_cert if link is not None else None
        if link is not None and any(e.matches(msg.src_ip, msg.src_port, cert) for e in self.endpoints):
            return None
        if link is None and any(e.matches(msg.src_ip, msg.src_port) for e in self.endpoints_by_address):
            return None
        return Finding(UNKNOWN_ENDPOINT,
                       f"{msg.action} sent to the charge point from {msg.src_ip}:{msg.src_port}, "
                       "which is not on the central-system allowlist",
                       {"check": "allowlist", "endpoint": f"{msg.src_ip}:{msg.src_port}", "server_cert_sha256": cert,
                        "certificate_checked": link is not None,
                        "allowlist": [_endpoint_text(e) for e in self.endpoints], "payload": compact(msg.payload)})

    def _second_csms(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> Finding | None:
        """Commands from another server address on another connection that is still carrying traffic."""
        if not self.second_csms:
            return None
        servers: dict[str, list[Any]] = state.setdefault("servers", {})
        address = f"{msg.src_ip}:{msg.src_port}"
        finding = self._concurrent(msg, ctx, servers, address)
        servers.pop(address, None)
        servers[address] = [msg.ts, msg.connection_id, msg.message_id, msg.action]
        while len(servers) > MAX_SERVERS:
            del servers[next(iter(servers))]
        return finding

    def _concurrent(self, msg: OcppMessage, ctx: ChargePointContext, servers: dict[str, list[Any]],
                    address: str) -> Finding | None:
        current = ctx.connection(msg.connection_id)
        opened = current.opened_ts if current is not None else msg.ts
        for other, (ts, conn_id, message_id, action) in servers.items():
            if other == address or conn_id == msg.connection_id or abs(msg.ts - ts) > self.second_window:
                continue
            conn = ctx.connection(conn_id)
            # Both open, and the other one still carried traffic after this one opened.
            if conn is None or conn.closed_ts is not None or conn.last_ts < opened:
                continue
            return Finding(UNKNOWN_ENDPOINT,
                           f"two central systems are commanding the charge point: {msg.action} from {address} "
                           f"{msg.ts - ts:.1f}s after {action} from {other}, both connections open",
                           {"check": "second_csms", "endpoint": address, "other_endpoint": other,
                            "other_connection_id": conn_id, "other_message_id": message_id, "other_action": action,
                            "other_ts": ts, "window_s": self.second_window, "payload": compact(msg.payload)})
        return None

    # --- CW-CMD-002 -------------------------------------------------------------------------

    def _maintenance(self, msg: OcppMessage) -> Finding | None:
        """A sensitive command while windows are configured and none is open (quiet without windows)."""
        if msg.action not in self.sensitive or self.policy.in_maintenance(msg.ts) is not False:
            return None
        info = self.catalog.get(msg.ocpp_version, msg.action or "")
        moment = datetime.fromtimestamp(msg.ts, UTC)
        return Finding(OUTSIDE_MAINTENANCE,
                       f"sensitive command {msg.action} sent on {moment:%a %H:%M} UTC, "
                       "outside every maintenance window",
                       {"sensitivity": info.sensitivity if info else None, "utc": f"{moment:%a %H:%M}",
                        "windows": [f"{','.join(w.days)} {w.start}-{w.end}" for w in self.policy.maintenance_windows],
                        "payload": compact(msg.payload)})

    # --- CW-CMD-005 -------------------------------------------------------------------------

    def _unlock(self, msg: OcppMessage, ctx: ChargePointContext) -> list[Finding]:
        """UnlockConnector on a connector (1.6) / EVSE (2.x) with a transaction we saw start."""
        body = msg.payload if isinstance(msg.payload, dict) else {}
        target = body.get("connectorId") if msg.ocpp_version == "1.6" else body.get("evseId")
        if not isinstance(target, int) or isinstance(target, bool):
            return []
        tx_id = ctx.open_tx_by_connector.get(target)
        if tx_id is None:
            return []
        tx = ctx.transactions.get(tx_id)
        started = tx.started_ts if tx is not None else None
        return [Finding(UNLOCK_DURING_TX,
                        f"UnlockConnector for {'connector' if msg.ocpp_version == '1.6' else 'EVSE'} {target} "
                        f"while transaction {tx_id} is running on it",
                        {"connector": target, "transaction_id": tx_id, "transaction_started_ts": started,
                         "id_tag": tx.id_tag if tx is not None else None, "payload": msg.payload})]

    # --- CW-CMD-008 -------------------------------------------------------------------------

    def _pki(self, msg: OcppMessage, state: State) -> list[Finding]:
        """Certificate management on a connection whose upgrade showed no TLS."""
        link = link_of(state, msg.connection_id)
        if link is None or link.tls:
            return []
        body = msg.payload if isinstance(msg.payload, dict) else {}
        if msg.action in ("TriggerMessage", "ExtendedTriggerMessage"):
            target = body.get("requestedMessage")
            if not isinstance(target, str) or target not in self.pki_triggers:
                return []
        detail = body.get("certificateType") or body.get("requestedMessage")
        return [Finding(PKI_IN_CLEAR,
                        f"{msg.sender} sent {msg.action}{f' ({detail})' if detail else ''} over plain ws:// "
                        f"(security profile {link.profile}): certificate material is exposed to anyone on the path",
                        {"sender": msg.sender, "observed_profile": link.profile, "server": link.server,
                         "detail": detail, "payload": compact(body)})]


def compact(payload: Any, limit: int = 200) -> Any:
    """A payload for evidence: top-level strings longer than limit (PEM certificates, CSRs) become their length."""
    if not isinstance(payload, dict):
        return payload
    return {k: f"<{len(v)} characters>" if isinstance(v, str) and len(v) > limit else v for k, v in payload.items()}


def _endpoint_text(endpoint: CsmsEndpoint) -> str:
    text = f"{endpoint.ip or '*'}:{endpoint.port or '*'}"
    return f"{text} sha256={endpoint.cert_sha256}" if endpoint.cert_sha256 else text
