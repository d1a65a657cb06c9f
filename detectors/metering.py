"""Transaction reconstruction: sessions, their energy register readings, start and end.

:class:`TransactionTracker` follows the transactions of one charge point (1.6 StartTransaction
/ MeterValues / StopTransaction, 2.x TransactionEvent) and turns each message into a
:class:`TxUpdate`: the session it belongs to and the ``Energy.Active.Import.Register`` readings
it carries, normalised to Wh. It holds no rule: the transaction rules
(:mod:`detectors.transactions`), the correlation rules (:mod:`detectors.correlation`) and the
session features of the anomaly models (:mod:`models.features`) all build on it.

Besides the register, each session keeps what the models need and costs a few float
operations per reading: the longest gap between readings, the highest power implied by two
consecutive readings, the last time the register rose (idle time after it), how far the
register fell in total, and whether a remote start (1.6 RemoteStartTransaction for the same
idTag shortly before, 2.x triggerReason RemoteStart or a remoteStartId) opened it. Measured
``Power.Active.Import`` samples (W or kW, 2.x multipliers, phases summed when no total is
given) are read only by trackers built with ``power=True`` (the models' features), never on
the rules' hot path.

Register baselines: readings are compared in the order of the charge point's own clock; a
reading stamped before the latest one is history repeated (a 2.x Ended event may list the
whole session) and gets no baseline. A meter replacement (OCPP 2.0.1 J02.FR.16) is recognised
in two ways: every transaction has its own baseline (a new meter starts with a new
transaction), and a BootNotification from the charge point (the reboot that goes with a meter
swap) drops the baselines of its open transactions, so their next reading starts afresh.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from chargewatch.model import Direction, MessageType, OcppMessage, as_object, payload_id_tag
from detectors.ocpptime import parse_time

REGISTER = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
UNIT_WH = {"Wh": 1.0, "kWh": 1000.0}
UNIT_W = {"W": 1.0, "kW": 1000.0}
REMOTE_STOPS = frozenset({"RemoteStopTransaction", "RequestStopTransaction"})
REMOTE_STARTS = frozenset({"RemoteStartTransaction", "RequestStartTransaction"})
TRACKED = frozenset({"StartTransaction", "StopTransaction", "MeterValues", "TransactionEvent",
                     "BootNotification"}) | REMOTE_STOPS | REMOTE_STARTS
MIN_INTERVAL_S = 60.0  # implied power divides by at least this: rounding over seconds is no power peak
RISING_W = 100.0  # implied power at or above this counts as charging (below: idle, trickle, rounding)
DROP_TOLERANCE_WH = 1.0  # a fall of the register this small is rounding, not a drop
REMOTE_START_WINDOW_S = 600.0  # a 1.6 start this soon after a remote start for its idTag is that remote start
MAX_REMOTE_STARTS = 64  # remote starts remembered per charge point
CALL, CALLRESULT = int(MessageType.CALL), int(MessageType.CALLRESULT)
NUMBERS = (int, float)  # a tuple: isinstance() with it is faster than with int | float
CP_TO_CSMS = Direction.CP_TO_CSMS


@dataclass(slots=True)
class Reading:
    """One register reading: the charge point's time (None when unparseable), the value in Wh,
    and the baseline it follows (None: no baseline, e.g. first reading or history).

    Treated as immutable; not declared frozen because frozen dataclasses are several times
    slower to build, and readings are built per metering message (as :class:`TxUpdate`)."""

    at: float | None
    wh: float
    previous_wh: float | None
    context: str | None


@dataclass(slots=True)
class Session:
    """One transaction as far as we saw it."""

    tx_id: str
    charge_point_id: str
    connector: int | None
    id_tag: str | None
    seen_start: bool  # we watched it start (else: joined mid-transaction)
    first_ts: float  # capture time of the first message of it we saw
    start_message_id: str
    connection_id: str
    started_at: float | None = None  # charge point clock at the start
    meter_start_wh: float | None = None
    last_wh: float | None = None
    last_at: float | None = None
    samples: int = 0
    status: str | None = None  # idTagInfo / idTokenInfo status the CSMS answered
    remote_stop_ts: float | None = None  # capture time of a RemoteStop/RequestStop seen while open
    rebooted: bool = False  # the charge point booted while it was open (baselines dropped)
    ended_ts: float | None = None
    ended_at: float | None = None
    meter_stop_wh: float | None = None
    stop_reason: str | None = None
    fired: set[str] = field(default_factory=set)  # rules already raised for it (one alert each)
    version: str | None = None  # OCPP version of the message that opened it
    remote_start: bool = False  # opened by a remote start (see the module docstring)
    max_gap_s: float = 0.0  # longest time between two consecutive readings (charge point clock)
    peak_implied_w: float | None = None  # highest power implied by two consecutive readings
    peak_measured_w: float | None = None  # highest Power.Active.Import sample (trackers with power=True)
    last_rise_at: float | None = None  # charge point time of the latest reading that found it charging
    drop_wh: float = 0.0  # total fall of the register between consecutive readings

    @property
    def open(self) -> bool:
        return self.ended_ts is None

    def energy_wh(self) -> float | None:
        """Energy delivered so far (last or stop register minus the start register)."""
        end = self.meter_stop_wh if self.meter_stop_wh is not None else self.last_wh
        return None if end is None or self.meter_start_wh is None else end - self.meter_start_wh

    def features(self) -> dict[str, float | None]:
        """Numbers a model scores a finished session on (None where not observed)."""
        duration = None
        if self.started_at is not None and self.ended_at is not None:
            duration = self.ended_at - self.started_at
        energy = self.energy_wh()
        power = energy * 3600.0 / duration if energy is not None and duration else None
        return {"energy_wh": energy, "duration_s": duration, "samples": float(self.samples),
                "mean_power_w": power}


@dataclass(slots=True)
class TxUpdate:
    """What one message did to a session: event is "started", "meter" or "ended" (treated as
    immutable, see :class:`Reading`)."""

    session: Session
    event: str
    readings: tuple[Reading, ...]


def register_wh(sampled: Any, version: str | None) -> float | None:
    """The Energy.Active.Import.Register total of one sampledValue in Wh, None for anything else.

    1.6: the value is a string, unit defaults to Wh, measurand to the register; signed data is
    skipped. 2.x: the value is a number, ``unitOfMeasure{unit, multiplier}`` scales it. Per-phase
    values and meters other than the outlet's are not the transaction's register.
    """
    if not isinstance(sampled, dict):
        return None
    get = sampled.get
    if get("measurand", REGISTER) != REGISTER or get("phase") is not None or get("location", "Outlet") != "Outlet":
        return None
    if version == "1.6":
        if get("format") == "SignedData":
            return None
        unit, scale = get("unit", "Wh"), 0
    else:
        measure = get("unitOfMeasure") or {}
        unit, scale = measure.get("unit", "Wh"), measure.get("multiplier", 0)
    factor = UNIT_WH.get(unit) if isinstance(unit, str) else None
    value = _number(get("value"))
    if factor is None or value is None or not isinstance(scale, int):
        return None
    return value * factor * 10.0**scale


def meter_readings(meter_values: Any, version: str | None) -> list[tuple[float | None, float, str | None]]:
    """(time, Wh, context) of each meterValue's register, in message order."""
    out: list[tuple[float | None, float, str | None]] = []
    if not isinstance(meter_values, list):
        return out
    for entry in meter_values:
        sampled_values = entry.get("sampledValue") if isinstance(entry, dict) else None
        if not isinstance(sampled_values, list):
            continue
        for sampled in sampled_values:
            wh = register_wh(sampled, version)
            if wh is not None:
                out.append((parse_time(entry.get("timestamp")), wh, sampled.get("context")))
                break
    return out


class TransactionTracker:
    """The transactions of one charge point (bounded: the latest max_sessions)."""

    def __init__(self, max_sessions: int = 16, power: bool = False) -> None:
        self.max_sessions = max_sessions
        self.power = power  # also read Power.Active.Import samples (Session.peak_measured_w)
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self._pending: dict[str, OcppMessage] = {}  # CALLs awaiting their result, oldest first
        self._remote_starts: OrderedDict[str, float] = OrderedDict()  # idTag -> time of its remote start

    def observe(self, msg: OcppMessage) -> TxUpdate | None:
        """Apply one message; the session update it makes, if any."""
        action = msg.action
        if action not in TRACKED:
            return None
        mtype = msg.message_type
        if mtype == CALL:
            return self._call(msg, action, msg.payload if isinstance(msg.payload, dict) else {})
        if mtype == CALLRESULT:
            request = self._pending.pop(msg.message_id, None)
            if request is not None:
                return self._result(request, msg, msg.payload if isinstance(msg.payload, dict) else {})
        return None

    def _call(self, msg: OcppMessage, action: str, body: dict[str, Any]) -> TxUpdate | None:
        if msg.direction is not CP_TO_CSMS:  # sent by the central system
            if action in REMOTE_STOPS:
                for session in self.sessions.values():
                    if session.open:
                        session.remote_stop_ts = msg.ts
            elif action in REMOTE_STARTS:
                self._remote_start(msg, body)
            return None
        if action == "MeterValues":  # the most frequent, first
            tx_id = body.get("transactionId")
            if tx_id is None:
                return None
            session = self._session(msg, str(tx_id), body.get("connectorId"), None)
            if self.power:
                self._measure(session, body.get("meterValue"), "1.6")
            return TxUpdate(session, "meter", self._read(session, meter_readings(body.get("meterValue"), "1.6")))
        if action == "BootNotification":
            for session in self.sessions.values():
                if session.open:
                    session.last_wh = session.last_at = None
                    session.rebooted = True
            return None
        if action in ("StartTransaction", "TransactionEvent"):
            self._pending[msg.message_id] = msg
            while len(self._pending) > self.max_sessions:
                del self._pending[next(iter(self._pending))]
        if action == "TransactionEvent":
            return self._transaction_event(msg, body)
        if action == "StopTransaction" and body.get("transactionId") is not None:
            session = self._session(msg, str(body["transactionId"]), None, body.get("idTag"))
            stop = _number(body.get("meterStop"))
            at = parse_time(body.get("timestamp"))
            readings = self._read(session, [(at, stop, "Transaction.End")] if stop is not None else [])
            self._end(session, msg, at, stop, body.get("reason") or "Local")
            return TxUpdate(session, "ended", readings)
        return None

    def _result(self, request: OcppMessage, msg: OcppMessage, body: dict[str, Any]) -> TxUpdate | None:
        req = request.payload if isinstance(request.payload, dict) else {}
        if request.action == "TransactionEvent":
            info = body.get("idTokenInfo")
            session = self.sessions.get(str(as_object(req.get("transactionInfo")).get("transactionId")))
            if session is not None and isinstance(info, dict):
                session.status = info.get("status")
            return None
        if request.action != "StartTransaction" or body.get("transactionId") is None:
            return None
        session = self._new(request, str(body["transactionId"]), _int(req.get("connectorId")), req.get("idTag"))
        session.status = as_object(body.get("idTagInfo")).get("status")
        session.remote_start = self._was_remote_start(session.id_tag, request.ts)
        session.started_at = parse_time(req.get("timestamp"))
        start = _number(req.get("meterStart"))
        session.meter_start_wh = start
        readings = self._read(session, [(session.started_at, start, "Transaction.Begin")] if start is not None else [])
        return TxUpdate(session, "started", readings)

    def _transaction_event(self, msg: OcppMessage, body: dict[str, Any]) -> TxUpdate | None:
        info = body.get("transactionInfo")
        if not isinstance(info, dict) or info.get("transactionId") is None:
            return None
        tx_id, event = str(info["transactionId"]), body.get("eventType")
        token = as_object(body.get("idToken")).get("idToken")
        evse = _int(as_object(body.get("evse")).get("id"))
        at = parse_time(body.get("timestamp"))
        values = meter_readings(body.get("meterValue"), msg.ocpp_version)
        if event == "Started" and tx_id not in self.sessions:
            session = self._new(msg, tx_id, evse, token)
            session.started_at = at
            session.meter_start_wh = next((wh for _, wh, ctx in values if ctx == "Transaction.Begin"),
                                          values[0][1] if values else None)
        else:
            session = self._session(msg, tx_id, evse, token)
        if (body.get("triggerReason") == "RemoteStart" or info.get("remoteStartId") is not None
                or (event == "Started" and self._was_remote_start(session.id_tag, msg.ts))):
            session.remote_start = True
        if self.power:
            self._measure(session, body.get("meterValue"), msg.ocpp_version)
        readings = self._read(session, values)
        if event == "Ended":
            end = next((wh for _, wh, ctx in reversed(values) if ctx == "Transaction.End"), None)
            stop = end if end is not None else session.last_wh
            self._end(session, msg, at, stop, info.get("stoppedReason") or "Local")
            return TxUpdate(session, "ended", readings)
        return TxUpdate(session, "started" if event == "Started" else "meter", readings)

    def _read(self, session: Session, values: list[tuple[float | None, float, str | None]]) -> tuple[Reading, ...]:
        """Readings in message order, each with the baseline it must not fall below."""
        out = []
        for at, wh, context in values:
            last_at, last_wh = session.last_at, session.last_wh
            history = at is not None and last_at is not None and at < last_at
            out.append(Reading(at, wh, None if history else last_wh, context))
            if not history:
                if last_wh is not None and wh < last_wh - DROP_TOLERANCE_WH:
                    session.drop_wh += last_wh - wh
                if at is not None and last_at is not None:
                    _interval(session, at, at - last_at, wh, last_wh)
                session.last_wh, session.last_at = wh, at
                session.samples += 1
        return tuple(out)

    def _measure(self, session: Session, meter_values: Any, version: str | None) -> None:
        """Raise the session's measured peak power with the message's Power.Active.Import samples."""
        power = meter_power_w(meter_values, version)
        if power is not None and (session.peak_measured_w is None or power > session.peak_measured_w):
            session.peak_measured_w = power

    def _remote_start(self, msg: OcppMessage, body: dict[str, Any]) -> None:
        tag = payload_id_tag(body)
        if tag is not None:
            self._remote_starts.pop(tag, None)
            self._remote_starts[tag] = msg.ts
            while len(self._remote_starts) > MAX_REMOTE_STARTS:
                del self._remote_starts[next(iter(self._remote_starts))]

    def _was_remote_start(self, tag: str | None, ts: float) -> bool:
        """A remote start for tag came shortly before ts (it is used up: one start per command)."""
        if tag is None:
            return False
        sent = self._remote_starts.get(tag)
        if sent is None or not 0.0 <= ts - sent <= REMOTE_START_WINDOW_S:
            return False
        del self._remote_starts[tag]
        return True

    def _end(self, session: Session, msg: OcppMessage, at: float | None, stop: float | None, reason: Any) -> None:
        if session.ended_ts is None:
            session.ended_ts, session.ended_at = msg.ts, at
            session.meter_stop_wh, session.stop_reason = stop, str(reason)

    def _session(self, msg: OcppMessage, tx_id: str, connector: Any, id_tag: Any) -> Session:
        session = self.sessions.get(tx_id)
        if session is None:
            session = self._new(msg, tx_id, _int(connector), id_tag, seen_start=False)
        elif session.id_tag is None and isinstance(id_tag, str):
            session.id_tag = id_tag
        return session

    def _new(self, msg: OcppMessage, tx_id: str, connector: int | None, id_tag: Any,
             seen_start: bool = True) -> Session:
        session = Session(tx_id, msg.charge_point_id, connector, id_tag if isinstance(id_tag, str) else None,
                          seen_start, msg.ts, msg.message_id, msg.connection_id, version=msg.ocpp_version)
        self.sessions.pop(tx_id, None)
        self.sessions[tx_id] = session
        while len(self.sessions) > self.max_sessions:
            oldest = next((k for k, s in self.sessions.items() if not s.open), next(iter(self.sessions)))
            del self.sessions[oldest]
        return session


def meter_power_w(meter_values: Any, version: str | None) -> float | None:
    """The highest total active import power of a meterValue list in W, None when it has none.

    A sampledValue without phase is the total; without one, the per-phase values of the entry
    are summed. Units W or kW (1.6 ``unit``, 2.x ``unitOfMeasure`` with its multiplier); a
    missing unit reads as W. Signed data and meters other than the outlet's are skipped.
    """
    best: float | None = None
    for entry in meter_values if isinstance(meter_values, list) else ():
        sampled_values = entry.get("sampledValue") if isinstance(entry, dict) else None
        total, phases = None, None
        for sampled in sampled_values if isinstance(sampled_values, list) else ():
            watts = _power_sample_w(sampled, version)
            if watts is None:
                continue
            if sampled.get("phase") is None:
                total = watts
            else:
                phases = watts + (phases or 0.0)
        value = total if total is not None else phases
        if value is not None and (best is None or value > best):
            best = value
    return best


def _power_sample_w(sampled: Any, version: str | None) -> float | None:
    if not isinstance(sampled, dict) or sampled.get("measurand") != POWER:
        return None
    if sampled.get("location", "Outlet") != "Outlet" or sampled.get("format") == "SignedData":
        return None
    if version == "1.6":
        unit, scale = sampled.get("unit", "W"), 0
    else:
        measure = as_object(sampled.get("unitOfMeasure"))
        unit, scale = measure.get("unit", "W"), measure.get("multiplier", 0)
    factor = UNIT_W.get(unit) if isinstance(unit, str) else None
    value = _number(sampled.get("value"))
    if factor is None or value is None or not isinstance(scale, int) or isinstance(scale, bool):
        return None
    return value * factor * 10.0**scale


def _interval(session: Session, at: float, gap: float, wh: float, last_wh: float | None) -> None:
    """Gap, implied power and charging state of the interval ending with a reading at ``at``."""
    session.max_gap_s = max(session.max_gap_s, gap)
    if last_wh is None:
        return
    power = (wh - last_wh) * 3600.0 / (gap if gap > MIN_INTERVAL_S else MIN_INTERVAL_S)
    if session.peak_implied_w is None or power > session.peak_implied_w:
        session.peak_implied_w = power
    if power >= RISING_W:
        session.last_rise_at = at


def _number(value: Any) -> float | None:
    """A register value: a number (2.x) or a decimal string (1.6); None otherwise."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    elif isinstance(value, NUMBERS) and not isinstance(value, bool):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
