"""Correlation rules: what only shows across charge points, keyed by what it correlates on.

- CW-FLEET-001 (key: the command's action): the same central-system command to many charge
  points within seconds.
- CW-FLEET-002 (key: idTag): one token charging at two charge points at once, or used at sites
  too far apart for the time between the uses.
- CW-FLEET-003 (key: idTag): one token authorised at many charge points within a short window.
- CW-FLEET-004 (key: idTag): a burst of very short or zero-energy sessions of one token.

Records of one key come from many charge points, merged in an order that depends on how
upstream partitions were consumed; only each charge point's own records keep their order.
Every rule is therefore written so that its final alerts depend on the *set* of records, not
their arrival order, as long as a key's records arrive within ``LATENESS_S`` of message time
of each other: windows are judged on message time in both directions, a finding names the
message it is about (``Finding.about``), and each burst member or session pair fires exactly
once. The runner for these keys is built with the same ``LATENESS_S`` (see detectors/runner.py).

The runner hands every key a context named after the key and never fills it, so
``ctx.charge_point_id`` is the idTag (or action) here; alerts carry the charge point of the
message they are about. The fleet key is one per action: a burst of one action is judged in
one process, so that key cannot be spread further (the stage scales up to the number of
watched actions).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.metering import Session, TransactionTracker
from detectors.policy import Policy, distance_km
from detectors.rules import Rule

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CALL = int(MessageType.CALL)
_CSMS_TO_CP = Direction.CSMS_TO_CP

COMMAND_BURST = "CW-FLEET-001"
TWO_PLACES = "CW-FLEET-002"
AUTHORIZE_SPREAD = "CW-FLEET-003"
SHORT_SESSIONS = "CW-FLEET-004"
LATENESS_S = 3600.0  # how late (message time) a key's record may arrive and still count
MAX_EVENTS = 512  # burst events remembered per key
MAX_CHARGE_POINTS = 32  # charge points whose transactions are followed per token
MAX_SESSIONS = 64  # closed sessions / uses remembered per token
SESSION_HORIZON_S = 86_400.0  # closed sessions older than this (plus lateness) are forgotten
TOKEN_ACTIONS = frozenset({"Authorize", "StartTransaction", "StopTransaction", "TransactionEvent"})


@dataclass(order=True)
class _Event:
    ts: float
    member: tuple[str, str]  # identity (charge point, message or transaction id): duplicates count once
    unit: str = field(compare=False)  # what the threshold counts distinct values of
    msg: OcppMessage = field(compare=False)
    fired: bool = field(default=False, compare=False)


class BurstWindow:
    """Events of one key; reports the events that newly belong to a window of ``window_s``
    seconds (message time) holding at least ``threshold`` distinct units."""

    def __init__(self, window_s: float, threshold: int) -> None:
        self.window_s, self.threshold = window_s, threshold
        self.events: list[_Event] = []
        self.members: set[tuple[str, str]] = set()
        self.newest = 0.0

    def add(self, event: _Event) -> list[_Event]:
        if event.member in self.members or event.ts < self.newest - self.window_s - LATENESS_S:
            return []
        self.newest = max(self.newest, event.ts)
        bisect.insort(self.events, event)
        self.members.add(event.member)
        self._prune()
        return self._qualify(event.ts)

    def _prune(self) -> None:
        horizon = self.newest - self.window_s - LATENESS_S
        drop = 0
        while drop < len(self.events) and (self.events[drop].ts < horizon or len(self.events) - drop > MAX_EVENTS):
            self.members.discard(self.events[drop].member)
            drop += 1
        del self.events[:drop]

    def _qualify(self, t: float) -> list[_Event]:
        """Events in any window [s, s + window] that contains t and holds enough units."""
        ev, w = self.events, self.window_s
        lo = bisect.bisect_left(ev, t - w, key=lambda e: e.ts)
        hi = bisect.bisect_right(ev, t + w, key=lambda e: e.ts)
        counts: dict[str, int] = {}
        first, last, right = -1, -1, lo
        for left in range(lo, hi):
            if ev[left].ts > t:
                break
            while right < hi and ev[right].ts <= ev[left].ts + w:
                counts[ev[right].unit] = counts.get(ev[right].unit, 0) + 1
                right += 1
            if len(counts) >= self.threshold and ev[right - 1].ts >= t:
                first = left if first < 0 else first
                last = right - 1
            unit = ev[left].unit
            counts[unit] -= 1
            if not counts[unit]:
                del counts[unit]
        if first < 0:
            return []
        fresh = [e for e in ev[first:last + 1] if not e.fired]
        for e in fresh:
            e.fired = True
        return fresh


class CommandBurstDetector:
    """CW-FLEET-001, keyed by the command's action."""

    name: str = "command_burst"
    rule_ids: tuple[str, ...] = (COMMAND_BURST,)
    route: str = "fleet"  # the stage (routing function) it runs in

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        rule = rules[COMMAND_BURST]
        self.actions = frozenset(str(a) for a in rule.param("actions"))
        self.window_s = float(rule.param("window_s"))
        self.threshold = int(rule.param("min_charge_points"))
        self.policy = policy

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if (msg.message_type != _CALL or msg.direction is not _CSMS_TO_CP
                or msg.action not in self.actions or self.policy.in_maintenance(msg.ts)):
            return []
        burst = state.get("burst")
        if burst is None:
            burst = state["burst"] = BurstWindow(self.window_s, self.threshold)
        members = burst.add(_Event(msg.ts, (msg.charge_point_id, msg.message_id), msg.charge_point_id, msg))
        return [Finding(COMMAND_BURST,
                        f"{e.msg.action} sent to {e.msg.charge_point_id} as part of a burst: at least "
                        f"{self.threshold} charge points got {e.msg.action} within {self.window_s:.0f}s",
                        {"command": e.msg.action, "target": e.msg.charge_point_id, "payload": e.msg.payload,
                         "min_charge_points": self.threshold, "window_s": self.window_s,
                         "csms_ip": e.msg.src_ip}, about=e.msg)
                for e in members]


class AuthorizeSpreadDetector:
    """CW-FLEET-003, keyed by idTag."""

    name: str = "authorize_spread"
    rule_ids: tuple[str, ...] = (AUTHORIZE_SPREAD,)
    route: str = "id_tag"

    def __init__(self, rules: dict[str, Rule]) -> None:
        rule = rules[AUTHORIZE_SPREAD]
        self.window_s = float(rule.param("window_s"))
        self.threshold = int(rule.param("min_charge_points"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.action != "Authorize" or msg.message_type != _CALL or msg.sender != "cp":
            return []
        burst = state.get("burst")
        if burst is None:
            burst = state["burst"] = BurstWindow(self.window_s, self.threshold)
        members = burst.add(_Event(msg.ts, (msg.charge_point_id, msg.message_id), msg.charge_point_id, msg))
        return [Finding(AUTHORIZE_SPREAD,
                        f"idTag {ctx.charge_point_id} authorised at {e.msg.charge_point_id}, one of at least "
                        f"{self.threshold} charge points it was presented to within {self.window_s:.0f}s",
                        {"id_tag": ctx.charge_point_id, "min_charge_points": self.threshold,
                         "window_s": self.window_s}, about=e.msg)
                for e in members]


@dataclass
class _Closed:
    """A finished, accepted session of a token (capture times)."""

    start: float
    end: float
    charge_point_id: str
    tx_id: str
    start_msg: OcppMessage


class TokenSessionDetector:
    """CW-FLEET-002 and CW-FLEET-004, keyed by idTag: follows the token's transactions at every
    charge point with one :class:`TransactionTracker` each (the per-charge-point stage routes a
    transaction's untagged messages to its token, see detectors/stages.py)."""

    name: str = "token_sessions"
    rule_ids: tuple[str, ...] = (TWO_PLACES, SHORT_SESSIONS)
    route: str = "id_tag"

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        clone, short = rules[TWO_PLACES], rules[SHORT_SESSIONS]
        self.min_overlap_s = float(clone.param("min_overlap_s"))
        self.max_speed_kmh = float(clone.param("max_speed_kmh"))
        self.min_distance_km = float(clone.param("min_distance_km"))
        self.short_s = float(short.param("max_duration_s"))
        self.low_wh = float(short.param("max_energy_wh"))
        self.short_window_s = float(short.param("window_s"))
        self.short_threshold = int(short.param("min_sessions"))
        self.policy = policy

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.action not in TOKEN_ACTIONS or msg.action == "Authorize":
            return []
        tag = ctx.charge_point_id
        starts: OrderedDict[tuple[str, str], OcppMessage] = state.setdefault("starts", OrderedDict())
        findings: list[Finding] = []
        if msg.message_type == _CALL and _starts_use(msg, starts):
            starts[(msg.charge_point_id, msg.message_id)] = msg
            while len(starts) > MAX_SESSIONS:
                starts.popitem(last=False)
            findings += self._travel(msg, tag, state)
        update = _tracker(state, msg.charge_point_id).observe(msg)
        if (update is not None and update.event == "ended" and update.session.seen_start
                and "closed" not in update.session.fired):
            update.session.fired.add("closed")
            start_msg = starts.get((msg.charge_point_id, update.session.start_message_id), msg)
            findings += self._overlaps(update.session, start_msg, tag, state)
            findings += self._short(update.session, msg, tag, state)
        return findings

    def _overlaps(self, session: Session, start_msg: OcppMessage, tag: str, state: State) -> list[Finding]:
        """CW-FLEET-002: accepted sessions of the token at two charge points overlapping in time,
        judged once both have ended (so a missed stop or a late record never fakes an overlap)."""
        if session.status != "Accepted" or session.ended_ts is None:
            return []
        closed: list[_Closed] = state.setdefault("closed", [])
        mine = _Closed(session.first_ts, session.ended_ts, session.charge_point_id, session.tx_id, start_msg)
        out = []
        for other in closed:
            overlap = min(mine.end, other.end) - max(mine.start, other.start)
            if other.charge_point_id == mine.charge_point_id or overlap < self.min_overlap_s:
                continue
            early, late = sorted((mine, other), key=lambda c: (c.start, c.charge_point_id, c.tx_id))
            out.append(Finding(TWO_PLACES,
                               f"idTag {tag} charged at {late.charge_point_id} while its session at "
                               f"{early.charge_point_id} was still running ({overlap:.0f}s overlap)",
                               {"id_tag": tag, "kind": "overlap", "overlap_s": round(overlap, 3),
                                "charge_point": late.charge_point_id, "transaction_id": late.tx_id,
                                "other_charge_point": early.charge_point_id, "other_transaction_id": early.tx_id,
                                "other_start_ts": early.start, "other_end_ts": early.end},
                               about=late.start_msg))
        closed.append(mine)
        horizon = max(c.end for c in closed) - SESSION_HORIZON_S - LATENESS_S
        closed[:] = [c for c in closed if c.end >= horizon][-MAX_SESSIONS:]
        return out

    def _travel(self, msg: OcppMessage, tag: str, state: State) -> list[Finding]:
        """CW-FLEET-002: two transaction starts at sites too far apart for the time between them."""
        site = self.policy.site_of(msg.charge_point_id)
        if site is None:
            return []
        uses: list[OcppMessage] = state.setdefault("uses", [])
        out = []
        for other in uses:
            other_site = self.policy.site_of(other.charge_point_id)
            if other_site is None or other_site.name == site.name:
                continue
            km = distance_km(site, other_site)
            hours = max(abs(msg.ts - other.ts), 1.0) / 3600.0
            if km < self.min_distance_km or km / hours <= self.max_speed_kmh:
                continue
            early, late = sorted((msg, other), key=lambda m: (m.ts, m.charge_point_id, m.message_id))
            out.append(Finding(TWO_PLACES,
                               f"idTag {tag} started charging at {late.charge_point_id} {hours * 3600:.0f}s after "
                               f"{early.charge_point_id}, {km:.0f} km away ({km / hours:.0f} km/h needed)",
                               {"id_tag": tag, "kind": "travel", "distance_km": round(km, 3),
                                "seconds_between": round(hours * 3600, 3), "speed_kmh": round(km / hours, 1),
                                "max_speed_kmh": self.max_speed_kmh, "charge_point": late.charge_point_id,
                                "other_charge_point": early.charge_point_id, "other_message_id": early.message_id,
                                "other_ts": early.ts}, about=late))
        uses.append(msg)
        newest = max(u.ts for u in uses)
        uses[:] = [u for u in uses if u.ts >= newest - SESSION_HORIZON_S - LATENESS_S][-MAX_SESSIONS:]
        return out

    def _short(self, session: Session, msg: OcppMessage, tag: str, state: State) -> list[Finding]:
        """CW-FLEET-004: the session is very short or delivered (almost) nothing."""
        features = session.features()
        duration = features["duration_s"]
        if duration is None and session.ended_ts is not None:
            duration = session.ended_ts - session.first_ts
        energy = features["energy_wh"]
        if not ((duration is not None and duration < self.short_s) or (energy is not None and energy <= self.low_wh)):
            return []
        burst = state.get("short")
        if burst is None:
            burst = state["short"] = BurstWindow(self.short_window_s, self.short_threshold)
        unit = f"{session.charge_point_id}|{session.tx_id}"
        members = burst.add(_Event(msg.ts, (session.charge_point_id, session.tx_id), unit, msg))
        return [Finding(SHORT_SESSIONS,
                        f"idTag {tag}: session at {e.msg.charge_point_id} is one of at least {self.short_threshold} "
                        f"very short or zero-energy sessions within {self.short_window_s:.0f}s",
                        {"id_tag": tag, "charge_point": e.msg.charge_point_id, "stop_message_id": e.msg.message_id,
                         "min_sessions": self.short_threshold, "window_s": self.short_window_s,
                         "max_duration_s": self.short_s, "max_energy_wh": self.low_wh}, about=e.msg)
                for e in members]


def _starts_use(msg: OcppMessage, starts: OrderedDict[tuple[str, str], OcppMessage]) -> bool:
    """A CALL that starts a transaction for the token (1.6 StartTransaction, 2.x Started event)."""
    if msg.action == "StartTransaction":
        return (msg.charge_point_id, msg.message_id) not in starts
    payload: Any = msg.payload
    return (msg.action == "TransactionEvent" and isinstance(payload, dict) and payload.get("eventType") == "Started"
            and (msg.charge_point_id, msg.message_id) not in starts)


def _tracker(state: State, charge_point_id: str) -> TransactionTracker:
    trackers: OrderedDict[str, TransactionTracker] = state.setdefault("trackers", OrderedDict())
    tracker = trackers.get(charge_point_id)
    if tracker is None:
        tracker = trackers[charge_point_id] = TransactionTracker()
        while len(trackers) > MAX_CHARGE_POINTS:
            trackers.popitem(last=False)
    return tracker
