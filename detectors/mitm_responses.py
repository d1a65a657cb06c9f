"""Man-in-the-middle indicators in the answers: who answers what, with what, and how fast.

* CW-MITM-006: a CALLRESULT/CALLERROR answering a CALL never sent on a connection we watched
  from its upgrade (an injected answer), or a CALLRESULT whose payload does not fit the response
  schema of the CALL it answers (a spoofed or altered answer). Requests are someone else's.
* CW-MITM-007: a round trip far slower than the charge point's own recent ones, per answering
  party (a relay in the path adds latency on its side only).

An unmatched answer is judged only when the context proves the CALL cannot predate the
capture: the connection was seen from its upgrade, the answer came ``min_after_upgrade_s``
later, no pending CALL was pushed out of the context's bounded list since, and the id was not
answered recently (a duplicated answer is not an unknown one).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import MAX_PENDING_CALLS, ChargePointContext
from detectors.rules import Rule
from detectors.schemas import Validator, first_violation, lenient_validator

UNEXPECTED_RESPONSE = "CW-MITM-006"
SLOW_ROUND_TRIP = "CW-MITM-007"

# CALLERRORs a peer sends for a frame it could not parse: that frame may be one the collector
# could not decode either (a dead letter), so its id cannot be matched and proves nothing.
UNPARSED_FRAME_ERRORS = frozenset({"FormationViolation", "FormatViolation", "ProtocolError", "RpcFrameworkError",
                                   "MessageTypeNotSupported"})
CALL, CALLRESULT = int(MessageType.CALL), int(MessageType.CALLRESULT)
ANSWERS = frozenset({int(MessageType.CALLRESULT), int(MessageType.CALLERROR)})
_UNKNOWN: Any = object()  # not looked up yet (None: no schema)
MAD_TO_SIGMA = 1.4826  # scales the median absolute deviation to a normal standard deviation


@dataclass(slots=True)
class _Ring:
    """The last values of a series in a fixed-size typed buffer (round trips, answered-id hashes)."""

    values: array  # type: ignore[type-arg]
    next_index: int = 0
    count: int = 0

    def add(self, value: float) -> None:
        self.values[self.next_index] = value
        self.next_index = (self.next_index + 1) % len(self.values)
        self.count = min(self.count + 1, len(self.values))

    def __contains__(self, value: float) -> bool:
        return value in self.values[: self.count]

    def median_and_mad(self) -> tuple[float, float]:
        samples = sorted(self.values[: self.count])
        median = _median(samples)
        return median, _median(sorted(abs(v - median) for v in samples))


def _median(ordered: list[float]) -> float:
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class MitmResponseDetector:
    """CW-MITM-006 and CW-MITM-007."""

    name: str = "mitm_responses"
    rule_ids: tuple[str, ...] = (UNEXPECTED_RESPONSE, SLOW_ROUND_TRIP)

    def __init__(self, rules: dict[str, Rule]) -> None:
        unexpected, slow = rules[UNEXPECTED_RESPONSE], rules[SLOW_ROUND_TRIP]
        self.unexpected_on, self.slow_on = unexpected.enabled, slow.enabled
        self.min_after_upgrade_s = float(unexpected.param("min_after_upgrade_s"))
        self.answered_memory = int(unexpected.param("answered_memory"))
        self.check_schema = bool(unexpected.param("check_schema"))
        self.check_formats = bool(unexpected.param("check_formats"))
        self.window = int(slow.param("window"))
        self.min_samples = int(slow.param("min_samples"))
        self.mad_k = float(slow.param("mad_k"))
        self.min_ratio = float(slow.param("min_ratio"))
        self.min_latency_s = float(slow.param("min_latency_s"))
        self.exclude = frozenset(str(a) for a in slow.param("exclude_actions"))
        self._checks: dict[tuple[str | None, str | None], Validator | None] = {}

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        mtype = msg.message_type
        if mtype == CALL:
            if len(ctx.pending) >= MAX_PENDING_CALLS:  # applying it will push the oldest pending CALL out
                state["evicted_ts"] = msg.ts
            return []
        if mtype not in ANSWERS:
            return []
        from_cp = msg.direction is Direction.CP_TO_CSMS
        responder = "cp" if from_cp else "csms"
        request = ctx.pending.get(("csms" if from_cp else "cp", msg.message_id))  # = ctx.request_for(msg)
        if request is None:
            return self._unmatched(msg, ctx, state) if self.unexpected_on else []
        answered: _Ring | None = state.get(responder)
        if answered is None:  # hashes of the ids: 8 bytes each, and a collision only silences one finding
            answered = state[responder] = _Ring(array("q", bytes(8 * self.answered_memory)))
        answered.add(hash(msg.message_id))
        finding = None
        if mtype == CALLRESULT and self.check_schema and self.unexpected_on:
            finding = self._schema(msg, request)
        if self.slow_on and request.action not in self.exclude:
            slow = self._latency(msg, request, responder, state)
            if slow is not None:
                return [finding, slow] if finding is not None else [slow]
        return [finding] if finding is not None else []

    # --- CW-MITM-006: answers to nothing ------------------------------------------------

    def _unmatched(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        conn = ctx.connection(msg.connection_id)
        if conn is None or not conn.from_upgrade or msg.ts - conn.opened_ts < self.min_after_upgrade_s:
            return []
        if state.get("evicted_ts", float("-inf")) >= conn.opened_ts:
            return []  # a CALL sent since the upgrade may have been pushed out of the pending list
        if hash(msg.message_id) in state.get(msg.sender, ()):
            return []  # answered before: a repeated answer, not one to an unknown CALL
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        if msg.message_type == MessageType.CALLERROR and payload.get("errorCode") in UNPARSED_FRAME_ERRORS:
            return []
        caller = "central system" if msg.sender == "cp" else "charge point"
        kind = "CALLRESULT" if msg.message_type == MessageType.CALLRESULT else "CALLERROR"
        return [Finding(
            UNEXPECTED_RESPONSE,
            f"{msg.sender} sent a {kind} for message id {msg.message_id}, which the {caller} never sent as a "
            f"CALL on this connection (watched since its upgrade {msg.ts - conn.opened_ts:.0f}s earlier)",
            {"kind": "unmatched_response", "responder": msg.sender, "message_type": msg.message_type,
             "connection_opened_ts": conn.opened_ts, "after_upgrade_s": round(msg.ts - conn.opened_ts, 3),
             "payload": msg.payload})]

    # --- CW-MITM-006: answers that do not fit ---------------------------------------------

    def _schema(self, msg: OcppMessage, request: OcppMessage) -> Finding | None:
        """The answer against its action's response schema (tolerant of collector-written values)."""
        key = (msg.ocpp_version, request.action)
        check = self._checks.get(key, _UNKNOWN)
        if check is _UNKNOWN:  # looked up once per (version, action); the validators are cached too
            check = self._checks[key] = (lenient_validator(key[0], key[1], True, self.check_formats)
                                         if key[0] and key[1] else None)
        if check is None:
            return None
        violation = first_violation(check, msg.payload)
        if violation is None:
            return None
        error = str(violation.message)
        return Finding(
            UNEXPECTED_RESPONSE,
            f"{msg.sender}'s CALLRESULT to {request.action} {msg.message_id} does not fit the "
            f"{request.action} response schema: {error}",
            {"kind": "response_schema", "responder": msg.sender, "request_action": request.action,
             "request_message_id": request.message_id, "request_ts": request.ts, "error": error,
             "payload": msg.payload})

    # --- CW-MITM-007 ----------------------------------------------------------------------

    def _latency(self, msg: OcppMessage, request: OcppMessage, responder: str, state: State) -> Finding | None:
        rtt = msg.ts - request.ts
        if rtt < 0:
            return None  # clocks of two collectors disagree; not a round trip
        key = "rtt_cp" if responder == "cp" else "rtt_csms"
        ring: _Ring | None = state.get(key)
        if ring is None:
            ring = state[key] = _Ring(array("f", bytes(4 * self.window)))  # float32: µs precision is plenty
        finding = None
        if rtt >= self.min_latency_s and ring.count >= self.min_samples:
            median, mad = ring.median_and_mad()
            threshold = max(self.min_latency_s, median * self.min_ratio, median + self.mad_k * MAD_TO_SIGMA * mad)
            if rtt > threshold:
                finding = self._slow(msg, request, rtt, median, mad, threshold, ring.count)
        ring.add(rtt)
        return finding

    def _slow(self, msg: OcppMessage, request: OcppMessage, rtt: float, median: float, mad: float,
              threshold: float, samples: int) -> Finding:
        return Finding(
            SLOW_ROUND_TRIP,
            f"{msg.sender} answered {request.action} {msg.message_id} after {rtt:.2f}s; its usual round trip "
            f"is {median:.3f}s (median of the last {samples}, threshold {threshold:.2f}s)",
            {"responder": msg.sender, "request_action": request.action, "request_ts": request.ts,
             "round_trip_s": round(rtt, 6), "median_s": round(median, 6), "mad_s": round(mad, 6),
             "threshold_s": round(threshold, 6), "samples": samples})
