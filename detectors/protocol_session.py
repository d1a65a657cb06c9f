"""Session-state anomalies of a charge point: CALLs while its boot is not accepted, boot
storms, and heartbeat floods.

The detector follows what the central system told the charge point: the last BootNotification
answer (status, interval, on which connection), the heartbeat interval (boot answer,
ChangeConfiguration / SetVariables, or read back by GetConfiguration / GetVariables), and what
the central system asked for (TriggerMessage, GetBaseReport, …), which a station may send even
before it is accepted (2.0.1 B02.FR.02). Without a boot answer seen there is no judgement.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule

NOT_ACCEPTED = "CW-PROTO-005"
BOOT_STORM = "CW-PROTO-007"
HEARTBEAT_FLOOD = "CW-PROTO-008"

NOT_ACCEPTED_STATES = ("Pending", "Rejected")
TRIGGERS = ("TriggerMessage", "ExtendedTriggerMessage")
# Trigger targets that name a certificate request: the station answers with SignCertificate.
SIGN_TRIGGERS = frozenset({"SignChargePointCertificate", "SignChargingStationCertificate", "SignV2GCertificate",
                           "SignCombinedCertificate", "SignV2G20Certificate"})
# Central-system requests whose answer arrives as a later CALL from the station.
REPORT_REQUESTS = {"GetBaseReport": "NotifyReport", "GetReport": "NotifyReport",
                   "GetMonitoringReport": "NotifyMonitoringReport", "CustomerInformation": "NotifyCustomerInformation"}
ANY_ACTION = "*"  # 2.1 CustomTrigger: the station decides what to send
HEARTBEAT_VARIABLE = ("OCPPCommCtrlr", "HeartbeatInterval")
MAX_SOLICITED = 16
# Bound once: this detector sees every message, and most need no more than these tests.
CALL, CALLRESULT = int(MessageType.CALL), int(MessageType.CALLRESULT)
CSMS_TO_CP = Direction.CSMS_TO_CP
SOLICITING = frozenset(TRIGGERS) | frozenset(REPORT_REQUESTS)
ANSWERS_READ = frozenset({"BootNotification", "ChangeConfiguration", "SetVariables", "GetConfiguration",
                          "GetVariables"})


class BootAnswer:
    """The last BootNotification answer seen (state ``"boot"``)."""

    __slots__ = ("connection_id", "interval", "message_id", "not_accepted", "status", "ts")

    def __init__(self, status: Any, ts: float, interval: float, connection_id: str, message_id: str) -> None:
        self.status = status
        self.ts = ts
        self.interval = interval
        self.connection_id = connection_id
        self.message_id = message_id
        self.not_accepted = status in NOT_ACCEPTED_STATES


class SessionDetector:
    """CW-PROTO-005, -007 and -008."""

    name: str = "protocol_session"
    rule_ids: tuple[str, ...] = (NOT_ACCEPTED, BOOT_STORM, HEARTBEAT_FLOOD)

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.solicited_window = float(rules[NOT_ACCEPTED].param("solicited_window_s"))
        self.max_boots = int(rules[BOOT_STORM].param("max_boots"))
        self.boot_window = float(rules[BOOT_STORM].param("window_s"))
        self.early_tolerance = float(rules[BOOT_STORM].param("early_tolerance"))
        self.min_heartbeats = max(2, int(rules[HEARTBEAT_FLOOD].param("min_heartbeats")))
        self.flood_fraction = float(rules[HEARTBEAT_FLOOD].param("fraction"))
        self.default_interval = float(rules[HEARTBEAT_FLOOD].param("default_interval_s"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        mtype, action = msg.message_type, msg.action
        if mtype == CALL:
            if msg.direction is CSMS_TO_CP:
                if action in SOLICITING:
                    self._solicit(msg, state)
                return []
            if action == "BootNotification":
                return self._boot(msg, state)
            findings = self._heartbeat(msg, state) if action == "Heartbeat" else []
            boot: BootAnswer | None = state.get("boot")
            if boot is not None and boot.not_accepted:
                findings += self._not_accepted(msg, ctx, boot, state)
            return findings
        if mtype == CALLRESULT and action in ANSWERS_READ:
            self._result(msg, ctx, state)
        return []

    # --- what the central system said -------------------------------------------------

    def _solicit(self, msg: OcppMessage, state: State) -> None:
        """Remember CALLs the central system asked the station to send."""
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        if msg.action in TRIGGERS:
            wanted = payload.get("requestedMessage")
            if not isinstance(wanted, str):
                return
            action = ("SignCertificate" if wanted in SIGN_TRIGGERS
                      else ANY_ACTION if wanted == "CustomTrigger" else wanted)
        elif msg.action in REPORT_REQUESTS:
            action = REPORT_REQUESTS[msg.action]
        else:
            return
        solicited: dict[str, float] = state.setdefault("solicited", {})
        solicited.pop(action, None)
        solicited[action] = msg.ts
        if len(solicited) > MAX_SOLICITED:
            del solicited[next(iter(solicited))]

    def _was_solicited(self, state: State, action: str, ts: float, consume: bool = False) -> bool:
        solicited: dict[str, float] | None = state.get("solicited")
        if not solicited:
            return False
        for key in (action, ANY_ACTION):
            asked = solicited.get(key)
            if asked is not None and 0 <= ts - asked <= self.solicited_window:
                if consume:
                    del solicited[key]
                return True
        return False

    def _result(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> None:
        """Boot answers (status, interval) and heartbeat-interval changes the station accepted
        (msg answers one of ANSWERS_READ)."""
        request = ctx.request_for(msg)
        if request is None or not isinstance(msg.payload, dict) or not isinstance(request.payload, dict):
            return
        if (msg.action == "BootNotification") != (msg.direction is CSMS_TO_CP):
            return  # boots are answered by the central system, configuration requests by the station
        if msg.action == "BootNotification":
            status, interval = msg.payload.get("status"), _seconds(msg.payload.get("interval"))
            state["boot"] = BootAnswer(status, msg.ts, interval or 0.0, msg.connection_id, msg.message_id)
            state.pop("solicited", None)
            if status == "Accepted" and interval:
                _set_interval(state, interval, f"BootNotification answer {msg.message_id}", msg.ts)
            return
        interval = _configured_interval(msg.action, request.payload, msg.payload)
        if interval:
            _set_interval(state, interval, f"{msg.action} {msg.message_id}", msg.ts)

    # --- CW-PROTO-005 -----------------------------------------------------------------

    def _not_accepted(self, msg: OcppMessage, ctx: ChargePointContext, boot: BootAnswer,
                      state: State) -> list[Finding]:
        """A CALL from a station whose last boot was answered Pending/Rejected (boot), on a connection
        we know carried no newer boot (the answer's own, or one we watched open after it)."""
        if msg.ts < boot.ts:
            return []
        if msg.connection_id != boot.connection_id:
            conn = ctx.connection(msg.connection_id)
            if conn is None or not conn.from_upgrade or conn.opened_ts < boot.ts:
                return []
        if msg.action is None or self._was_solicited(state, msg.action, msg.ts):
            return []
        return [Finding(NOT_ACCEPTED,
                        f"charge point sent {msg.action} {msg.ts - boot.ts:.1f}s after its BootNotification "
                        f"was answered {boot.status}; only BootNotification (or what the central system "
                        "asked for) is allowed before Accepted",
                        {"boot_status": boot.status, "boot_message_id": boot.message_id,
                         "boot_answered_ts": boot.ts, "boot_interval_s": boot.interval,
                         "same_connection": msg.connection_id == boot.connection_id})]

    # --- CW-PROTO-007 -----------------------------------------------------------------

    def _boot(self, msg: OcppMessage, state: State) -> list[Finding]:
        """Boots sooner than a Pending/Rejected answer allowed, or more than max_boots in the window."""
        if state.get("last_boot_id") == msg.message_id:
            return []  # a retry of the same BootNotification
        state["last_boot_id"] = msg.message_id
        triggered = self._was_solicited(state, "BootNotification", msg.ts, consume=True)
        boot: BootAnswer | None = state.get("boot")
        early: dict[str, Any] | None = None
        if boot is not None and boot.not_accepted and boot.interval > 0 and not triggered:
            waited = msg.ts - boot.ts  # negative: records out of order, no judgement
            if 0 <= waited < boot.interval * (1 - self.early_tolerance):
                early = {"waited_s": round(waited, 6), "boot_interval_s": boot.interval,
                         "previous_status": boot.status, "previous_message_id": boot.message_id}
            elif waited >= 0:
                return []  # the retry the central system asked for
        if triggered:
            return []
        boots = self._count_boot(state, msg)
        if early is None and len(boots) <= self.max_boots:
            return []
        evidence: dict[str, Any] = {"boots_in_window": len(boots), "window_s": self.boot_window,
                                    "max_boots": self.max_boots, "first_boot_ts": boots[0][0],
                                    "boot_message_ids": [b[1] for b in boots]}
        if early is not None:
            evidence.update(early)
            reason = (f"charge point sent BootNotification {early['waited_s']:.1f}s after it was answered "
                      f"{early['previous_status']} with interval {early['boot_interval_s']:g}s")
        else:
            reason = f"charge point sent {len(boots)} BootNotifications within {self.boot_window:g}s"
        return [Finding(BOOT_STORM, reason, evidence)]

    def _count_boot(self, state: State, msg: OcppMessage) -> deque[tuple[float, str]]:
        boots: deque[tuple[float, str]] | None = state.get("boots")
        if boots is None:
            boots = state["boots"] = deque(maxlen=self.max_boots + 1)
        elif boots and boots[-1][0] > msg.ts:
            boots.clear()  # time went backwards (another capture): start over
        boots.append((msg.ts, msg.message_id))
        while boots and boots[0][0] < msg.ts - self.boot_window:
            boots.popleft()
        return boots

    # --- CW-PROTO-008 -----------------------------------------------------------------

    def _heartbeat(self, msg: OcppMessage, state: State) -> list[Finding]:
        """min_heartbeats Heartbeats whose mean gap is below fraction × the expected interval."""
        if self._was_solicited(state, "Heartbeat", msg.ts, consume=True):
            return []  # TriggerMessage(Heartbeat)
        beats: deque[float] | None = state.get("heartbeats")
        if beats is None:
            beats = state["heartbeats"] = deque(maxlen=self.min_heartbeats)
        elif beats and beats[-1] > msg.ts:
            beats.clear()  # time went backwards (another capture): start over
        beats.append(msg.ts)
        if len(beats) < self.min_heartbeats:
            return []
        known = state.get("interval")
        interval, source = (known[0], known[1]) if known else (self.default_interval, "default (none seen)")
        mean_gap = (beats[-1] - beats[0]) / (len(beats) - 1)
        if mean_gap >= interval * self.flood_fraction:
            return []
        first = beats[0]
        beats.clear()  # one finding per min_heartbeats heartbeats
        return [Finding(HEARTBEAT_FLOOD,
                        f"charge point sent {self.min_heartbeats} Heartbeats {mean_gap:.2f}s apart on average; "
                        f"its heartbeat interval is {interval:g}s ({source})",
                        {"heartbeats": self.min_heartbeats, "first_ts": first, "mean_gap_s": round(mean_gap, 6),
                         "expected_interval_s": interval, "interval_source": source,
                         "fraction": self.flood_fraction})]


def _set_interval(state: State, interval: float, source: str, ts: float) -> None:
    state["interval"] = (interval, source, ts)


def _seconds(value: Any) -> float | None:
    """A positive number of seconds from an int or a numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and 0 < value < 10**9:
        return float(value)
    return None


def _configured_interval(action: str | None, request: dict[str, Any], result: dict[str, Any]) -> float | None:
    """The heartbeat interval a configuration exchange set or read back, None when it did not."""
    if action == "ChangeConfiguration":
        accepted = result.get("status") == "Accepted" and request.get("key") == "HeartbeatInterval"
        return _seconds(request.get("value")) if accepted else None
    if action == "GetConfiguration":
        entries = _as_list(result.get("configurationKey"))
        values = [e.get("value") for e in entries if isinstance(e, dict) and e.get("key") == "HeartbeatInterval"]
        return _seconds(values[0]) if values else None
    if action == "SetVariables":
        results = _as_list(result.get("setVariableResult"))
        if not any(_is_heartbeat(r) and r.get("attributeStatus") == "Accepted" for r in results):
            return None
        values = [d.get("attributeValue") for d in _as_list(request.get("setVariableData")) if _is_heartbeat(d)]
        return _seconds(values[0]) if values else None
    if action == "GetVariables":
        values = [r.get("attributeValue") for r in _as_list(result.get("getVariableResult"))
                  if _is_heartbeat(r) and r.get("attributeStatus") == "Accepted"]
        return _seconds(values[0]) if values else None
    return None


def _as_list(value: Any) -> list[Any]:
    """value when it is a JSON array, else [] (a schema-invalid answer is CW-MITM-006's to judge)."""
    return value if isinstance(value, list) else []


def _is_heartbeat(entry: Any) -> bool:
    """True for a (Set|Get)Variable data/result entry about OCPPCommCtrlr.HeartbeatInterval (Actual)."""
    if not isinstance(entry, dict) or entry.get("attributeType", "Actual") != "Actual":
        return False
    component, variable = entry.get("component"), entry.get("variable")
    return (isinstance(component, dict) and isinstance(variable, dict)
            and (component.get("name"), variable.get("name")) == HEARTBEAT_VARIABLE)
