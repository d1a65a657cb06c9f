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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import MAX_PENDING_CALLS, ChargePointContext
from detectors.rules import Rule
from detectors.schemas import Acceptor, Validator, acceptor, first_violation, lenient_validator, stable_message

UNEXPECTED_RESPONSE = "CW-MITM-006"
SLOW_ROUND_TRIP = "CW-MITM-007"

# CALLERRORs a peer sends for a frame it could not parse: that frame may be one the collector
# could not decode either (a dead letter), so its id cannot be matched and proves nothing.
UNPARSED_FRAME_ERRORS = frozenset({"FormationViolation", "FormatViolation", "ProtocolError", "RpcFrameworkError",
                                   "MessageTypeNotSupported"})
# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
CALL, CALLRESULT, CALLERROR = int(MessageType.CALL), int(MessageType.CALLRESULT), int(MessageType.CALLERROR)
ANSWERS = frozenset({CALLRESULT, CALLERROR})
CP_TO_CSMS = Direction.CP_TO_CSMS
_UNKNOWN: Any = object()  # not looked up yet (None: no schema)
MAD_TO_SIGMA = 1.4826  # scales the median absolute deviation to a normal standard deviation
MEMORY = "memory"  # the one state entry: a _Memory


def _median(ordered: list[float]) -> float:
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _median_and_mad(samples: Iterable[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    median = _median(ordered)
    return median, _median(sorted(abs(v - median) for v in ordered))


@dataclass(slots=True)
class _Party:
    """What is remembered of one answering party (the charge point or the central system), in
    two fixed-size rings of typed values that overwrite their oldest entry."""

    # Hashes of the ids it answered last: 8 bytes each, and a collision only silences one finding.
    # Empty slots hold -1, which hash() never returns.
    answered: array  # type: ignore[type-arg]
    # Its last round trips in seconds, as float32 (µs precision is plenty); the first rtt_count are filled.
    round_trips: array  # type: ignore[type-arg]
    next_answered: int = 0
    next_rtt: int = 0
    rtt_count: int = 0


@dataclass(slots=True)
class _Memory:
    """This detector's state for one charge point."""

    cp: _Party
    csms: _Party
    evicted_ts: float = float("-inf")  # last time a CALL pushed the oldest pending CALL out of the context


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
        self.schema_on = self.check_schema and self.unexpected_on
        # The response schema of each (version, action): a fast acceptor and the validator.
        self._checks: dict[tuple[str | None, str | None], tuple[Acceptor, Validator] | None] = {}

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        mtype = msg.message_type
        if mtype == CALL:
            if len(ctx.pending) >= MAX_PENDING_CALLS:  # applying it will push the oldest pending CALL out
                self._memory(state).evicted_ts = msg.ts
            return []
        if mtype not in ANSWERS:
            return []
        from_cp = msg.direction is CP_TO_CSMS
        request = ctx.pending.get(("csms" if from_cp else "cp", msg.message_id))  # = ctx.request_for(msg)
        if request is None:
            return self._unmatched(msg, ctx, state) if self.unexpected_on else []
        memory: _Memory = state.get(MEMORY) or self._memory(state)
        party = memory.cp if from_cp else memory.csms
        # What follows runs for every answer, so the ring updates are written out here.
        index = party.next_answered  # remember the answered id
        party.answered[index] = hash(msg.message_id)
        party.next_answered = (index + 1) % self.answered_memory
        finding = slow = None
        if mtype == CALLRESULT and self.schema_on:  # CW-MITM-006: the answer against its response schema
            check = self._checks.get((msg.ocpp_version, request.action), _UNKNOWN)
            if check is _UNKNOWN:
                check = self._lookup(msg.ocpp_version, request.action)
            if check is not None and not check[0](msg.payload):  # the acceptor clears most answers at once
                finding = self._misfit(msg, request, check[1])
        if self.slow_on and request.action not in self.exclude:  # CW-MITM-007: the round trip
            rtt = msg.ts - request.ts
            if not rtt < 0:  # negative: the clocks of two collectors disagree, not a round trip
                count = party.rtt_count
                if rtt >= self.min_latency_s and count >= self.min_samples:
                    slow = self._slow(msg, request, rtt, party.round_trips[:count])
                index = party.next_rtt  # remember it
                party.round_trips[index] = rtt
                party.next_rtt = (index + 1) % self.window
                if count < self.window:
                    party.rtt_count = count + 1
        if slow is not None:
            return [finding, slow] if finding is not None else [slow]
        return [finding] if finding is not None else []

    def _memory(self, state: State) -> _Memory:
        """The state of this charge point, created empty on first use."""
        memory: _Memory | None = state.get(MEMORY)
        if memory is None:
            memory = state[MEMORY] = _Memory(self._party(), self._party())
        return memory

    def _party(self) -> _Party:
        return _Party(array("q", [-1]) * self.answered_memory, array("f", bytes(4 * self.window)))

    # --- CW-MITM-006: answers to nothing ------------------------------------------------

    def _unmatched(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        conn = ctx.connection(msg.connection_id)
        if conn is None or not conn.from_upgrade or msg.ts - conn.opened_ts < self.min_after_upgrade_s:
            return []
        memory = self._memory(state)
        if memory.evicted_ts >= conn.opened_ts:
            return []  # a CALL sent since the upgrade may have been pushed out of the pending list
        if hash(msg.message_id) in (memory.cp if msg.direction is CP_TO_CSMS else memory.csms).answered:
            return []  # answered before: a repeated answer, not one to an unknown CALL
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        code = payload.get("errorCode")
        if msg.message_type == CALLERROR and isinstance(code, str) and code in UNPARSED_FRAME_ERRORS:
            return []
        caller = "central system" if msg.sender == "cp" else "charge point"
        kind = "CALLRESULT" if msg.message_type == CALLRESULT else "CALLERROR"
        return [Finding(
            UNEXPECTED_RESPONSE,
            f"{msg.sender} sent a {kind} for message id {msg.message_id}, which the {caller} never sent as a "
            f"CALL on this connection (watched since its upgrade {msg.ts - conn.opened_ts:.0f}s earlier)",
            {"kind": "unmatched_response", "responder": msg.sender, "message_type": msg.message_type,
             "connection_opened_ts": conn.opened_ts, "after_upgrade_s": round(msg.ts - conn.opened_ts, 3),
             "payload": msg.payload})]

    # --- CW-MITM-006: answers that do not fit ---------------------------------------------

    def _misfit(self, msg: OcppMessage, request: OcppMessage, validate: Validator) -> Finding | None:
        """The answer's violation of its action's response schema (collector-written values tolerated)."""
        violation = first_violation(validate, msg.payload)
        if violation is None:
            return None
        error = stable_message(violation)
        return Finding(
            UNEXPECTED_RESPONSE,
            f"{msg.sender}'s CALLRESULT to {request.action} {msg.message_id} does not fit the "
            f"{request.action} response schema: {error}",
            {"kind": "response_schema", "responder": msg.sender, "request_action": request.action,
             "request_message_id": request.message_id, "request_ts": request.ts, "error": error,
             "payload": msg.payload})

    def _lookup(self, version: str | None, action: str | None) -> tuple[Acceptor, Validator] | None:
        """The response schema of (version, action), looked up once (None: no schema)."""
        check = None
        if version and action:
            validate = lenient_validator(version, action, True, self.check_formats)
            accept = acceptor(version, action, True, self.check_formats)
            check = None if validate is None or accept is None else (accept, validate)
        self._checks[(version, action)] = check
        return check

    # --- CW-MITM-007 ----------------------------------------------------------------------

    def _slow(self, msg: OcppMessage, request: OcppMessage, rtt: float, baseline: Sequence[float]) -> Finding | None:
        """The round trip against the baseline of the responder's last ones."""
        samples = len(baseline)
        median, mad = _median_and_mad(baseline)
        threshold = max(self.min_latency_s, median * self.min_ratio, median + self.mad_k * MAD_TO_SIGMA * mad)
        if not rtt > threshold:
            return None
        return Finding(
            SLOW_ROUND_TRIP,
            f"{msg.sender} answered {request.action} {msg.message_id} after {rtt:.2f}s; its usual round trip "
            f"is {median:.3f}s (median of the last {samples}, threshold {threshold:.2f}s)",
            {"responder": msg.sender, "request_action": request.action, "request_ts": request.ts,
             "round_trip_s": round(rtt, 6), "median_s": round(median, 6), "mad_s": round(mad, 6),
             "threshold_s": round(threshold, 6), "samples": samples})
