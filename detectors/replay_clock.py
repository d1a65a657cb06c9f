"""Payload timestamps against the clock (CW-REPLAY-004), and the clock other rules read times with.

A charge point sets its clock from the central system's ``currentTime`` (BootNotification and
Heartbeat answers, 1.6 §4.2/§4.6, 2.0.1 B01/G02). A timestamp is therefore compared with the
central system's clock: capture time + the offset its latest currentTime showed. Until one is
seen (a capture started mid-stream; every heartbeat answer carries one) there is no judgement:
a fleet whose central system, or whose monitor, runs off the right time is not a fleet of
replays.

Old timestamps are legitimate for what a charge point queued while it was offline (2.x
TransactionEvent says so with ``offline=true``; 1.6 transaction messages and security events
are queued without saying so, 1.6 §3.7, 2.0.1 A04.FR.02). The heuristic for those: a stale
message is excused while its connection may still be draining an offline queue, that is

* no current message of the same queue (transaction, status, security) has been delivered
  on this connection yet (queues drain in order, before new messages: 1.6 §3.7), and
* the charge point was not seen online at the claimed time: no known connection of it
  (``ctx.connections``: opened/first seen .. last traffic) spans the claimed time with the
  tolerance to spare. An event retried just after a connection dropped lies within the
  tolerance of that connection's last traffic, so it is excused too.

A connection joined mid-stream counts from its first message, so what it delivers before any
current message may be a drain that began before the capture, and stays silent.
"""

from __future__ import annotations

from typing import Any

from chargewatch.model import OcppMessage
from detectors.base import Finding
from detectors.context import ChargePointContext
from detectors.ocpptime import iso_time, parse_time
from detectors.rules import Rule

CLOCK_SKEW = "CW-REPLAY-004"
# The queue each timestamped charge-point message waits in while the charge point is offline.
QUEUES = {"StartTransaction": "transaction", "StopTransaction": "transaction", "MeterValues": "transaction",
          "TransactionEvent": "transaction", "StatusNotification": "status",
          "SecurityEventNotification": "security"}
MAX_TRACKED_CONNECTIONS = 8
# The central system's clock as its latest currentTime showed it: (seconds it runs ahead of the
# capture clock, message id of that answer, capture time of that answer).
Clock = tuple[float, str, float]
# The queues each recent connection delivered a current message of (oldest connection first).
Drained = dict[str, set[str]]


def claimed_epoch(action: str | None, payload: dict[str, Any]) -> float | None:
    """Epoch seconds of the time a message says it describes, None if it says none.

    MeterValues carries one time per sample: the newest counts. The meter values inside a
    StopTransaction or an Ended event legitimately span the whole transaction and are ignored.
    """
    if action != "MeterValues":
        return parse_time(payload.get("timestamp"))
    newest: float | None = None
    values = payload.get("meterValue")
    for value in values if isinstance(values, list) else ():
        if isinstance(value, dict):
            when = parse_time(value.get("timestamp"))
            if when is not None and (newest is None or when > newest):
                newest = when
    return newest


def claimed_field(action: str | None, payload: dict[str, Any], when: float) -> tuple[str, str]:
    """(field, raw value) that claimed_epoch read when from (for MeterValues, the first sample
    with the newest time): what a finding names, looked up only when one fires."""
    if action != "MeterValues":
        return "timestamp", str(payload["timestamp"])
    values = payload["meterValue"]
    i = next(i for i, value in enumerate(values)
             if isinstance(value, dict) and parse_time(value.get("timestamp")) == when)
    return f"meterValue[{i}].timestamp", values[i]["timestamp"]


def csms_clock(result: OcppMessage) -> Clock | None:
    """The central system's clock shown by a currentTime in result (None: it shows none)."""
    payload = result.payload if isinstance(result.payload, dict) else {}
    when = parse_time(payload.get("currentTime"))
    return None if when is None else (when - result.ts, result.message_id, result.ts)


def csms_offset(clock: Clock | None) -> float:
    """Seconds the central system's clock runs ahead of the capture clock (0 when never seen)."""
    return 0.0 if clock is None else float(clock[0])


def event_time(clock: Clock | None, msg: OcppMessage) -> float | None:
    """The time msg claims to describe, on the capture clock (None when it claims none)."""
    when = claimed_epoch(msg.action, msg.payload) if isinstance(msg.payload, dict) else None
    return None if when is None else when - csms_offset(clock)


class ClockSkewCheck:
    """CW-REPLAY-004's judgement of one charge-point message."""

    def __init__(self, rule: Rule) -> None:
        self.max_age = float(rule.param("max_age_s"))
        self.max_ahead = float(rule.param("max_ahead_s"))

    def check(self, msg: OcppMessage, ctx: ChargePointContext, clock: Clock | None,
              drained: Drained) -> list[Finding]:
        """Findings for msg given the central system's clock; notes in drained what it delivered."""
        when = claimed_epoch(msg.action, msg.payload)
        if when is None or clock is None:  # no time claimed, or the reference clock is not known yet
            return []
        offset = clock[0]
        skew = when - (msg.ts + offset)
        queue = QUEUES.get(msg.action or "", "other")
        if -self.max_age <= skew <= self.max_ahead:
            queues = drained.get(msg.connection_id)
            if queues is None:
                queues = drained[msg.connection_id] = set()
                while len(drained) > MAX_TRACKED_CONNECTIONS:
                    del drained[next(iter(drained))]
            queues.add(queue)
            return []
        field, raw = claimed_field(msg.action, msg.payload, when)
        evidence: dict[str, Any] = {
            "field": field, "claimed": raw, "skew_s": round(skew, 3), "csms_offset_s": round(offset, 3),
            "csms_time_message_id": clock[1], "skew_vs_capture_s": round(when - msg.ts, 3), "payload": msg.payload}
        if skew > 0:
            evidence["tolerance_s"] = self.max_ahead
            why = "ahead of"
        else:
            evidence["tolerance_s"] = self.max_age
            cause = self._unexcused(msg, ctx, drained, when - offset, queue)
            if cause is None:
                return []
            evidence.update(cause)
            why = "behind"
        return [Finding(CLOCK_SKEW,
                        f"{msg.action} {field} {raw} is {abs(skew):.0f}s {why} the central system's clock "
                        f"(tolerance {evidence['tolerance_s']:.0f}s)"
                        + (f"; {evidence['why_not_queued']}" if "why_not_queued" in evidence else ""),
                        evidence)]

    def _unexcused(self, msg: OcppMessage, ctx: ChargePointContext, drained: Drained, when: float,
                   queue: str) -> dict[str, Any] | None:
        """Why a stale message cannot be an offline-queued one, or None when it may be."""
        if msg.action == "TransactionEvent" and msg.payload.get("offline") is True:
            return None
        if queue in drained.get(msg.connection_id, ()):
            return {"why_not_queued": f"connection {msg.connection_id} had already delivered a current "
                                      f"{queue} message, so its offline queue was empty",
                    "offline": msg.payload.get("offline")}
        online = _online_at(ctx, msg, when, self.max_age)
        if online is None:
            return None
        cid, since, until = online
        return {"why_not_queued": f"the charge point was online then (connection {cid} carried traffic "
                                  f"from {iso_time(since)} to {iso_time(until)})",
                "online_connection": cid, "online_from": since, "online_until": until,
                "offline": msg.payload.get("offline")}


def _online_at(ctx: ChargePointContext, msg: OcppMessage, when: float, slack: float) -> tuple[str, float, float] | None:
    """A known connection that carried the charge point's traffic around when (slack inside)."""
    for conn in ctx.connections.values():
        if conn.opened_ts > msg.ts:  # from another capture (input not in time order)
            continue
        until = msg.ts if conn.connection_id == msg.connection_id else conn.last_ts
        if conn.opened_ts + slack < when < until - slack:
            return conn.connection_id, conn.opened_ts, until
    return None
