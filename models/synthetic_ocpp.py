"""One planned charging session -> the OCPP records a collector would have produced for it.

A :class:`Plan` says who charges where, when, how long, with what power curve, and how an
anomaly distorts what the charge point reports (register inflation, a jump or a fall of the
register, missing meter values, a wrong stop time). :class:`Renderer` writes it as OCPP 1.6
(Authorize or RemoteStartTransaction, StartTransaction, MeterValues, StopTransaction) or 2.0.1
(Authorize or RequestStartTransaction, TransactionEvent Started / Updated / Ended) records,
every CALL with its CALLRESULT, tokens already pseudonymised, as :class:`OcppMessage` objects.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage, Record
from models.fleet import ChargePoint

CSMS_IP, CSMS_PORT = "10.0.0.1", 9000
REGISTER = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
CALL, RESULT = int(MessageType.CALL), int(MessageType.CALLRESULT)
UP, DOWN = Direction.CP_TO_CSMS, Direction.CSMS_TO_CP
TRIGGER_OF_STOP = {"EVDisconnected": "EVDeparted", "Local": "StopAuthorized", "Remote": "RemoteStop"}
DROP_SAMPLE = 0.01  # chance that a meter value is lost (a benign gap of two intervals)


@dataclass(slots=True)
class Plan:
    """One session to render. Times in seconds; ``arrival`` is epoch seconds (UTC)."""

    cp: ChargePoint
    arrival: float
    dwell_s: float  # connected time
    token: str
    power_w: float  # AC: constant charging power; DC: the plateau before the taper
    need_wh: float  # energy the vehicle takes if it stays long enough
    battery: tuple[float, float, float, float, float] | None = None  # DC: capacity Wh, soc0, target, knee, floor
    remote_start: bool = False
    stop_reason: str = "EVDisconnected"
    kind: str = ""  # anomaly kind ("" = benign)
    energy_scale: float = 1.0  # register increments reported = real ones x this
    stop_clock_s: float = 0.0  # added to the stop time the charge point reports
    gap: tuple[float, float] | None = None  # (from, to) after arrival: no meter values
    step: tuple[float, float] | None = None  # (at, Wh): the register jumps by Wh (negative: falls)
    connector: int = 1
    tx_id: str = ""


def charge_time_s(plan: Plan) -> float:
    """Seconds until the vehicle has taken ``need_wh`` (it may leave earlier)."""
    if plan.battery is None:
        return plan.need_wh * 3600.0 / plan.power_w if plan.power_w > 0 else 0.0
    cap, soc0, target, knee, floor = plan.battery
    a = (1.0 - floor) / (1.0 - knee)
    plateau_end = min(max(knee, soc0), target)
    t1 = (plateau_end - soc0) * cap * 3600.0 / plan.power_w
    if target <= plateau_end:
        return t1
    u0, u_target = 1.0 - a * (plateau_end - knee), 1.0 - a * (target - knee)
    return t1 + math.log(u0 / u_target) * cap * 3600.0 / (a * plan.power_w)


def energy_curve(plan: Plan, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy delivered (Wh) by each time t (s after arrival) and the power (W) at it.

    AC: constant power until the vehicle has what it wants. DC: constant power up to the knee
    state of charge, then power falling linearly with the state of charge down to ``floor`` x
    the plateau at 100 % (an exponential decay in time), until the target state of charge.
    """
    full = charge_time_s(plan)
    if plan.battery is None:
        energy = np.minimum(plan.power_w * t / 3600.0, plan.need_wh)
        return energy, np.where(t < full, plan.power_w, 0.0)
    cap, soc0, target, knee, floor = plan.battery
    a = (1.0 - floor) / (1.0 - knee)
    plateau_end = min(max(knee, soc0), target)
    t1 = (plateau_end - soc0) * cap * 3600.0 / plan.power_w
    k = a * plan.power_w / (cap * 3600.0)
    u0 = 1.0 - a * (plateau_end - knee)
    decay = u0 * np.exp(-k * np.maximum(t - t1, 0.0))
    soc = np.where(t <= t1, soc0 + plan.power_w * t / (cap * 3600.0), knee + (1.0 - decay) / a)
    soc = np.minimum(soc, target)
    power = np.where(t < t1, plan.power_w, np.where(t < full, plan.power_w * decay, 0.0))
    return (soc - soc0) * cap, power


def iso(ts: float) -> str:
    """An OCPP dateTime (UTC, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_many(ts: np.ndarray) -> list[str]:
    """:func:`iso` of many times at once (numpy formats them ~20x faster than datetime)."""
    stamps = np.datetime_as_string(np.round(ts * 1000.0).astype("datetime64[ms]"), unit="ms")
    return [stamp + "Z" for stamp in stamps.tolist()]


class Renderer:
    """Writes plans as records; keeps each connector's lifetime register and the message ids."""

    def __init__(self, rng: np.random.Generator, first_transaction_id: int = 10_000) -> None:
        self.rng = rng
        self.next_tx = first_transaction_id
        self.registers: dict[tuple[str, int], float] = {}
        self.counter = 0
        self.message_plans: dict[str, Plan] = {}  # message id -> the session it belongs to

    def boot(self, cp: ChargePoint, ts: float) -> list[Record]:
        """The connection upgrade and the BootNotification that open a charge point's stream."""
        conn = _connection_id(cp)
        event = ConnectionEvent(ts, "upgrade", conn, cp.id, cp.ip, 40000, CSMS_IP, CSMS_PORT, path=f"/ocpp/{cp.id}",
                                subprotocols_offered=(_subprotocol(cp),), subprotocol=_subprotocol(cp),
                                ocpp_version=cp.version, status=101, source="synthetic")
        body = ({"chargePointVendor": "Synthetic", "chargePointModel": cp.charger.name} if cp.version == "1.6" else
                {"reason": "PowerUp", "chargingStation": {"vendorName": "Synthetic", "model": cp.charger.name}})
        answer = {"status": "Accepted", "currentTime": iso(ts), "interval": 300}
        return [event, *self._exchange(cp, ts + 0.01, "BootNotification", body, answer)]

    def session(self, plan: Plan) -> list[OcppMessage]:
        """Every record of one session, in time order."""
        cp, key = plan.cp, (plan.cp.id, plan.connector)
        start = self.registers.get(key)
        if start is None:
            start = float(self.rng.uniform(1e5, 5e7))
        times = self._sample_times(plan)
        energy, power = energy_curve(plan, np.append(times, plan.dwell_s))
        reported = start + energy * plan.energy_scale
        if plan.step is not None:
            reported = reported + np.where(np.append(times, plan.dwell_s) >= plan.step[0], plan.step[1], 0.0)
        self.registers[key] = start + float(energy[-1]) + float(self.rng.uniform(0, 50))  # idle consumption
        if not plan.tx_id:
            plan.tx_id = str(self.next_tx) if cp.version == "1.6" else str(uuid.UUID(bytes=self.rng.bytes(16)))
            self.next_tx += 1
        write = self._session_16 if cp.version == "1.6" else self._session_2x
        records = write(plan, start, times, reported, power)
        for record in records[::2]:  # each CALL (its result has the same id)
            self.message_plans[record.message_id] = plan
        return records

    def _sample_times(self, plan: Plan) -> np.ndarray:
        interval = plan.cp.sample_interval_s
        phase = float(self.rng.uniform(0.2, 1.0)) * interval
        times = np.arange(phase, plan.dwell_s - 1.0, interval)
        times = times[self.rng.random(len(times)) >= DROP_SAMPLE]
        if plan.gap is not None:
            times = times[(times < plan.gap[0]) | (times > plan.gap[1])]
        return times

    # --- OCPP 1.6 -------------------------------------------------------------------------

    def _session_16(self, plan: Plan, start: float, times: np.ndarray, reported: np.ndarray,
                    power: np.ndarray) -> list[OcppMessage]:
        cp, t0, tag, tx = plan.cp, plan.arrival, plan.token, int(plan.tx_id)
        out: list[OcppMessage] = []
        if plan.remote_start:
            out += self._exchange(cp, t0 - 40.0, "RemoteStartTransaction",
                                  {"idTag": tag, "connectorId": plan.connector}, {"status": "Accepted"}, DOWN)
        else:
            out += self._exchange(cp, t0 - 5.0, "Authorize", {"idTag": tag}, {"idTagInfo": {"status": "Accepted"}})
        out += self._exchange(cp, t0, "StartTransaction",
                              {"connectorId": plan.connector, "idTag": tag, "meterStart": round(start),
                               "timestamp": iso(t0)},
                              {"transactionId": tx, "idTagInfo": {"status": "Accepted"}})
        stamps = iso_many(t0 + times)
        for i, offset in enumerate(times.tolist()):
            values = [_register_16(cp, float(reported[i])), *_power_16(cp, float(power[i]))]
            out += self._exchange(cp, t0 + offset, "MeterValues",
                                  {"connectorId": plan.connector, "transactionId": tx,
                                   "meterValue": [{"timestamp": stamps[i], "sampledValue": values}]}, {})
        end = t0 + plan.dwell_s
        if plan.stop_reason == "Remote":
            out += self._exchange(cp, end - 3.0, "RemoteStopTransaction", {"transactionId": tx},
                                  {"status": "Accepted"}, DOWN)
        stop = {"transactionId": tx, "meterStop": round(float(reported[-1])), "timestamp": iso(end + plan.stop_clock_s),
                "reason": plan.stop_reason, "idTag": tag}
        return out + self._exchange(cp, end, "StopTransaction", stop, {"idTagInfo": {"status": "Accepted"}})

    # --- OCPP 2.0.1 -----------------------------------------------------------------------

    def _session_2x(self, plan: Plan, start: float, times: np.ndarray, reported: np.ndarray,
                    power: np.ndarray) -> list[OcppMessage]:
        cp, t0, tx = plan.cp, plan.arrival, plan.tx_id
        id_token = {"idToken": plan.token, "type": "ISO14443"}
        evse = {"id": plan.connector, "connectorId": 1}
        out: list[OcppMessage] = []
        info: dict[str, Any] = {"transactionId": tx, "chargingState": "Charging"}
        if plan.remote_start:
            remote_id = int(self.rng.integers(1, 2**31 - 1))
            info["remoteStartId"] = remote_id
            out += self._exchange(cp, t0 - 40.0, "RequestStartTransaction",
                                  {"idToken": id_token, "remoteStartId": remote_id, "evseId": plan.connector},
                                  {"status": "Accepted"}, DOWN)
        else:
            out += self._exchange(cp, t0 - 5.0, "Authorize", {"idToken": id_token},
                                  {"idTokenInfo": {"status": "Accepted"}})
        begin = [{"timestamp": iso(t0), "sampledValue": [_register_2x(cp, start, "Transaction.Begin")]}]
        out += self._exchange(cp, t0, "TransactionEvent",
                              {"eventType": "Started", "timestamp": iso(t0), "seqNo": 0, "evse": evse,
                               "triggerReason": "RemoteStart" if plan.remote_start else "Authorized",
                               "transactionInfo": info, "idToken": id_token, "meterValue": begin},
                              {"idTokenInfo": {"status": "Accepted"}})
        stamps = iso_many(t0 + times)
        for i, offset in enumerate(times.tolist()):
            watts = float(power[i])
            values = [_register_2x(cp, float(reported[i]), "Sample.Periodic"), *_power_2x(cp, watts)]
            state = "Charging" if watts > 0 else "SuspendedEV"
            out += self._exchange(cp, t0 + offset, "TransactionEvent",
                                  {"eventType": "Updated", "timestamp": stamps[i], "seqNo": i + 1,
                                   "triggerReason": "MeterValuePeriodic",
                                   "transactionInfo": {"transactionId": tx, "chargingState": state},
                                   "meterValue": [{"timestamp": stamps[i], "sampledValue": values}]}, {})
        end = t0 + plan.dwell_s
        if plan.stop_reason == "Remote":
            out += self._exchange(cp, end - 3.0, "RequestStopTransaction", {"transactionId": tx},
                                  {"status": "Accepted"}, DOWN)
        stamp = iso(end + plan.stop_clock_s)
        final = [{"timestamp": stamp, "sampledValue": [_register_2x(cp, float(reported[-1]), "Transaction.End")]}]
        ended = {"eventType": "Ended", "timestamp": stamp, "seqNo": len(times) + 1,
                 "triggerReason": TRIGGER_OF_STOP[plan.stop_reason],
                 "transactionInfo": {"transactionId": tx, "chargingState": "Idle", "stoppedReason": plan.stop_reason},
                 "meterValue": final}
        return out + self._exchange(cp, end, "TransactionEvent", ended, {})

    def _exchange(self, cp: ChargePoint, ts: float, action: str, body: dict[str, Any], answer: dict[str, Any],
                  direction: Direction = UP) -> list[OcppMessage]:
        """A CALL and its CALLRESULT (50 ms later), as the collector records them."""
        self.counter += 1
        mid = f"s{self.counter:08x}"
        conn = _connection_id(cp)
        up = direction is UP
        cp_end, csms_end = (cp.ip, 40000), (CSMS_IP, CSMS_PORT)
        src, dst = (cp_end, csms_end) if up else (csms_end, cp_end)
        call_size = len(orjson.dumps([CALL, mid, action, body]))
        result_size = len(orjson.dumps([RESULT, mid, answer]))
        return [OcppMessage(ts, cp.id, direction, src[0], src[1], dst[0], dst[1], cp.version, CALL, mid, action, body,
                            call_size, conn, "synthetic"),
                OcppMessage(ts + 0.05, cp.id, DOWN if up else UP, dst[0], dst[1], src[0], src[1], cp.version, RESULT,
                            mid, action, answer, result_size, conn, "synthetic")]


def _connection_id(cp: ChargePoint) -> str:
    return "Csyn-" + cp.id


def _subprotocol(cp: ChargePoint) -> str:
    return "ocpp" + cp.version


def _register_16(cp: ChargePoint, wh: float) -> dict[str, Any]:
    unit = cp.register_unit[0]
    value = f"{wh:.0f}" if unit == "Wh" else f"{wh / 1000.0:.3f}"
    return {"value": value, "context": "Sample.Periodic", "measurand": REGISTER, "unit": unit}


def _power_16(cp: ChargePoint, watts: float) -> list[dict[str, Any]]:
    if cp.power_unit == "phases":
        return [{"value": f"{watts / 3.0:.0f}", "measurand": POWER, "phase": phase, "unit": "W"}
                for phase in ("L1", "L2", "L3")]
    value = f"{watts:.0f}" if cp.power_unit == "W" else f"{watts / 1000.0:.2f}"
    return [{"value": value, "measurand": POWER, "unit": cp.power_unit}]


def _register_2x(cp: ChargePoint, wh: float, context: str) -> dict[str, Any]:
    unit, multiplier = cp.register_unit
    value = round(wh, 0) if unit == "Wh" and multiplier == 0 else round(wh / 1000.0, 3)
    return {"value": value, "context": context, "measurand": REGISTER,
            "unitOfMeasure": {"unit": unit, "multiplier": multiplier}}


def _power_2x(cp: ChargePoint, watts: float) -> list[dict[str, Any]]:
    if cp.power_unit == "phases":
        return [{"value": round(watts / 3.0, 0), "measurand": POWER, "phase": phase,
                 "unitOfMeasure": {"unit": "W"}} for phase in ("L1", "L2", "L3")]
    if cp.power_unit == "W":
        return [{"value": round(watts, 0), "measurand": POWER, "unitOfMeasure": {"unit": "W", "multiplier": 0}}]
    return [{"value": round(watts / 1000.0, 2), "measurand": POWER, "unitOfMeasure": {"unit": "W", "multiplier": 3}}]
