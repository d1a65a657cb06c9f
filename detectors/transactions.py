"""Abnormal transactions of one charge point: metering that physics or the protocol rules out.

- CW-TX-001: more energy than the connector's maximum power could deliver in the time elapsed.
- CW-TX-002: the energy register of a transaction going backwards.
- CW-TX-003: a transaction ending on a register below the one it started with.
- CW-TX-004: a transaction lasting implausibly long.
- CW-TX-005: a charge point reporting a remote stop that no central system sent.

Transactions are reconstructed by :class:`detectors.metering.TransactionTracker` (kept in this
detector's state, one per charge point); every rule judges only transactions whose start we
watched, except CW-TX-002, which compares two readings we saw ourselves.
"""

from __future__ import annotations

from typing import Any

from chargewatch.model import ConnectionEvent, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.metering import TRACKED, Reading, Session, TransactionTracker, TxUpdate
from detectors.policy import Policy
from detectors.rules import Rule

TOO_MUCH_ENERGY = "CW-TX-001"
REGISTER_BACKWARDS = "CW-TX-002"
STOP_BELOW_START = "CW-TX-003"
TOO_LONG = "CW-TX-004"
UNSEEN_REMOTE_STOP = "CW-TX-005"
MAX_SESSIONS = 16  # transactions remembered per charge point (open ones are kept first)
TRACKER = "tracker"  # the one state entry: a TransactionTracker


class TransactionDetector:
    """CW-TX-001 to CW-TX-005."""

    name: str = "transactions"
    rule_ids: tuple[str, ...] = (TOO_MUCH_ENERGY, REGISTER_BACKWARDS, STOP_BELOW_START, TOO_LONG, UNSEEN_REMOTE_STOP)
    actions: frozenset[str] | None = TRACKED

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        self.policy = policy
        energy = rules[TOO_MUCH_ENERGY]
        self.margin = float(energy.param("margin"))
        self.slack_wh = float(energy.param("slack_wh"))
        self.min_elapsed_s = float(energy.param("min_elapsed_s"))
        self.tolerance_wh = float(rules[REGISTER_BACKWARDS].param("tolerance_wh"))
        self.stop_tolerance_wh = float(rules[STOP_BELOW_START].param("tolerance_wh"))
        self.max_duration_s = float(rules[TOO_LONG].param("max_duration_h")) * 3600.0

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        tracker: TransactionTracker | None = state.get(TRACKER)
        if tracker is None:
            tracker = state[TRACKER] = TransactionTracker(MAX_SESSIONS)
        update = tracker.observe(msg)  # None for any action but TRACKED
        if update is None:
            return []
        findings = self._readings(msg, update) if update.readings else []
        session = update.session
        if session.seen_start:
            if update.event == "ended":
                findings += self._stop_below_start(session) + self._unseen_remote_stop(msg, session)
            if not msg.ts - session.first_ts <= self.max_duration_s:  # _too_long's own test (NaN included)
                findings += self._too_long(msg, session)
        return findings

    def _readings(self, msg: OcppMessage, update: TxUpdate) -> list[Finding]:
        out: list[Finding] = []
        session = update.session
        for reading in update.readings:
            previous = reading.previous_wh  # CW-TX-002: below the baseline, and not explained by CW-TX-003
            if (previous is not None and reading.wh < previous - self.tolerance_wh
                    and not (update.event == "ended" and self._below_start(session, reading.wh))):
                out.append(_backwards(session, reading, self.tolerance_wh))
            if session.seen_start and TOO_MUCH_ENERGY not in session.fired:
                out += self._energy(msg, session, reading)
        return out

    def _below_start(self, session: Session, wh: float | None) -> bool:
        start = session.meter_start_wh
        return start is not None and wh is not None and wh < start - self.stop_tolerance_wh

    def _energy(self, msg: OcppMessage, session: Session, reading: Reading) -> list[Finding]:
        """CW-TX-001: energy since the start against max power × elapsed time (the longer of the
        charge point's clock and the capture's, so queued offline messages never shorten it)."""
        if session.meter_start_wh is None or session.started_at is None or reading.at is None:
            return []
        elapsed = max(reading.at - session.started_at, msg.ts - session.first_ts)
        if elapsed < self.min_elapsed_s:
            return []
        energy = reading.wh - session.meter_start_wh
        max_power = self.policy.max_power_w(msg.charge_point_id)
        allowed = max_power * elapsed / 3600.0 * (1.0 + self.margin) + self.slack_wh
        if energy <= allowed:
            return []
        session.fired.add(TOO_MUCH_ENERGY)
        return [Finding(TOO_MUCH_ENERGY,
                        f"transaction {session.tx_id} delivered {energy:.0f} Wh in {elapsed:.0f}s: a "
                        f"{max_power / 1000:.0f} kW connector delivers at most {allowed:.0f} Wh in that time",
                        _session_evidence(session) | {
                            "energy_wh": energy, "elapsed_s": round(elapsed, 3), "max_power_w": max_power,
                            "allowed_wh": round(allowed, 3), "register_wh": reading.wh,
                            "implied_power_w": round(energy * 3600.0 / elapsed, 1)})]

    def _stop_below_start(self, session: Session) -> list[Finding]:
        """CW-TX-003: the closing register below the opening one."""
        if (session.rebooted or not self._below_start(session, session.meter_stop_wh)
                or STOP_BELOW_START in session.fired):
            return []
        session.fired.add(STOP_BELOW_START)
        return [Finding(STOP_BELOW_START,
                        f"transaction {session.tx_id} ended with register {session.meter_stop_wh:.0f} Wh, "
                        f"below the {session.meter_start_wh:.0f} Wh it started with",
                        _session_evidence(session) | {"meter_stop_wh": session.meter_stop_wh,
                                                      "deficit_wh": (session.meter_start_wh or 0.0)
                                                      - (session.meter_stop_wh or 0.0)})]

    def _too_long(self, msg: OcppMessage, session: Session) -> list[Finding]:
        """CW-TX-004: capture time since the start we watched (robust to a wrong station clock)."""
        lasted = msg.ts - session.first_ts
        if lasted <= self.max_duration_s or TOO_LONG in session.fired:
            return []
        session.fired.add(TOO_LONG)
        return [Finding(TOO_LONG,
                        f"transaction {session.tx_id} has lasted {lasted / 3600:.1f} h "
                        f"(limit {self.max_duration_s / 3600:.1f} h)",
                        _session_evidence(session) | {"lasted_s": round(lasted, 3),
                                                      "max_duration_s": self.max_duration_s,
                                                      "ended": not session.open})]

    def _unseen_remote_stop(self, msg: OcppMessage, session: Session) -> list[Finding]:
        """CW-TX-005: stop reason Remote, no remote stop sent while we watched the one connection
        that carried the whole transaction."""
        remote = session.stop_reason == "Remote" or _trigger(msg) == "RemoteStop"
        if (not remote or session.remote_stop_ts is not None or msg.connection_id != session.connection_id
                or UNSEEN_REMOTE_STOP in session.fired):
            return []
        session.fired.add(UNSEEN_REMOTE_STOP)
        return [Finding(UNSEEN_REMOTE_STOP,
                        f"transaction {session.tx_id} was reported stopped remotely, but no "
                        "RemoteStopTransaction/RequestStopTransaction reached the charge point on its connection",
                        _session_evidence(session) | {"stop_reason": session.stop_reason,
                                                      "trigger_reason": _trigger(msg),
                                                      "watched_s": round(msg.ts - session.first_ts, 3)})]


def _backwards(session: Session, reading: Reading, tolerance: float) -> Finding:
    previous = reading.previous_wh or 0.0
    return Finding(REGISTER_BACKWARDS,
                   f"energy register of transaction {session.tx_id} fell from {previous:.0f} Wh to "
                   f"{reading.wh:.0f} Wh",
                   _session_evidence(session) | {"previous_wh": previous, "register_wh": reading.wh,
                                                 "drop_wh": previous - reading.wh, "tolerance_wh": tolerance,
                                                 "reading_context": reading.context})


def _trigger(msg: OcppMessage) -> Any:
    return msg.payload.get("triggerReason") if isinstance(msg.payload, dict) else None


def _session_evidence(session: Session) -> dict[str, Any]:
    return {"transaction_id": session.tx_id, "connector": session.connector, "id_tag": session.id_tag,
            "start_message_id": session.start_message_id, "start_ts": session.first_ts,
            "meter_start_wh": session.meter_start_wh}
