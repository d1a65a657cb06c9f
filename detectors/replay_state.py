"""Transaction-state replay: answers given twice, stale clocks, reused or dead transactions.

What a replay of captured traffic (or an injected message) breaks is state: a CALL gets a
second answer, a transaction id comes back, a connector starts twice, a stopped transaction
is stopped again, a seqNo runs backwards. Each check compares a message with what this
charge point's earlier messages established, and stays silent about what may predate the
capture (mid-stream starts, unknown transactions, queued offline traffic).

State per charge point (bounded): recent answers (count and age), the last ``history_size``
transaction ids (least recently used forgotten first), the last accepted boot, the central
system's clock offset, and which connections have drained their offline queues. Capture time
running backwards for a charge point means the input is not one continuous capture (files
analysed out of order, an old capture re-published): that state restarts rather than compare
unrelated captures.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from chargewatch.model import ConnectionEvent, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.ocpptime import iso_time
from detectors.replay import content_digest
from detectors.replay_clock import CLOCK_SKEW, ClockSkewCheck, event_time, note_csms_time
from detectors.rules import Rule

ANSWERED_TWICE = "CW-REPLAY-003"
TX_ID_REUSE = "CW-REPLAY-005"
CONNECTOR_BUSY = "CW-REPLAY-006"
STOPPED_TX = "CW-REPLAY-007"
SEQ_NO = "CW-REPLAY-008"
ANSWER_NAMES = {MessageType.CALLRESULT: "CALLRESULT", MessageType.CALLERROR: "CALLERROR"}
# Stops that a reboot causes: they may end a transaction that started before the capture.
REBOOT_STOPS = frozenset({"PowerLoss", "Reboot", "HardReset", "SoftReset", "ImmediateReset"})
REBOOT_TRIGGERS = frozenset({"ResetCommand", "TxResumed"})
BOOT_TRIGGER_WINDOW_S = 300.0  # a BootNotification this soon after TriggerMessage(BootNotification) was asked for
# An answered CALL: answer time, answer type, connection, the CALL's action, answer payload.
Answer = tuple[float, int, str, str | None, Any]


@dataclass(slots=True)
class TxMemory:
    """What the charge point's messages told us about one transaction id."""

    first_ts: float
    first_message_id: str
    first_action: str
    start_digest: str | None = None
    stop_digest: str | None = None
    stop_connection: str | None = None
    stop_message_id: str | None = None
    seq_no: int | None = None
    seq_digest: str | None = None
    seq_message_id: str | None = None
    seq_offline: bool = False
    seq_connection: str | None = None
    refused: bool = False  # the central system did not accept its start (it may end without a stop)


class ReplayStateDetector:
    """CW-REPLAY-003 to CW-REPLAY-008."""

    name: str = "replay_state"
    rule_ids: tuple[str, ...] = (ANSWERED_TWICE, CLOCK_SKEW, TX_ID_REUSE, CONNECTOR_BUSY, STOPPED_TX, SEQ_NO)

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.answer_window = float(rules[ANSWERED_TWICE].param("window_s"))
        self.answer_history = int(rules[ANSWERED_TWICE].param("history_size"))
        self.tx_history = int(rules[TX_ID_REUSE].param("history_size"))
        self.boot_grace = float(rules[STOPPED_TX].param("boot_grace_s"))
        self.clock = ClockSkewCheck(rules[CLOCK_SKEW])

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        _continuity(state, event.ts)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        _continuity(state, msg.ts)
        kind = msg.message_type
        if kind == MessageType.CALL:
            answered = state.get("answered")
            if answered:  # a re-sent CALL may be answered again
                answered.pop((msg.sender, msg.message_id), None)
            if not isinstance(msg.payload, dict):
                return []
            if msg.sender == "cp":
                return self._cp_call(msg, ctx, state)
            if msg.action == "TriggerMessage" and msg.payload.get("requestedMessage") == "BootNotification":
                state["boot_trigger_ts"] = msg.ts
            return []
        if kind in ANSWER_NAMES:
            return self._answer(msg, ctx, state)
        return []

    # --- CW-REPLAY-003: one CALL, two answers ---------------------------------------------

    def _answer(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        caller = "csms" if msg.sender == "cp" else "cp"
        answered: OrderedDict[tuple[str, str], Answer] = state.setdefault("answered", OrderedDict())
        request = ctx.request_for(msg)
        if request is None:
            first = answered.get((caller, msg.message_id))
            if first is None or (first[1] == msg.message_type and first[4] == msg.payload):
                return []  # no answer seen, or the same answer sent twice (harmless)
            return [_answered_twice(msg, caller, first)]
        answered[(caller, msg.message_id)] = (msg.ts, msg.message_type, msg.connection_id, request.action,
                                              msg.payload)
        while answered and (len(answered) > self.answer_history
                            or next(iter(answered.values()))[0] < msg.ts - self.answer_window):
            answered.popitem(last=False)
        if msg.sender != "csms" or msg.message_type != MessageType.CALLRESULT or not isinstance(msg.payload, dict):
            return []
        if request.action in ("BootNotification", "Heartbeat"):
            note_csms_time(state, msg)
        if request.action == "BootNotification" and msg.payload.get("status") == "Accepted":
            _note_boot(msg, request, state)
        elif request.action == "StartTransaction":
            return self._start_result16(msg, request, state)
        return []

    # --- charge-point CALLs ------------------------------------------------------------------

    def _cp_call(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        action = msg.action
        if action == "TransactionEvent":
            return self.clock.check(msg, ctx, state) + self._transaction_event(msg, ctx, state)
        if action == "StartTransaction":
            return self.clock.check(msg, ctx, state) + self._busy_connector16(msg, ctx, state)
        if action == "StopTransaction":
            return self.clock.check(msg, ctx, state) + self._stop16(msg, ctx, state)
        if action == "MeterValues":
            tx_id = msg.payload.get("transactionId")
            if tx_id is not None:
                self._remember(state, str(tx_id), msg)
            return self.clock.check(msg, ctx, state)
        if action in ("StatusNotification", "SecurityEventNotification"):
            return self.clock.check(msg, ctx, state)
        return []

    def _txs(self, state: State) -> OrderedDict[str, TxMemory]:
        txs: OrderedDict[str, TxMemory] | None = state.get("txs")
        if txs is None:
            txs = state["txs"] = OrderedDict()
        return txs

    def _remember(self, state: State, tx_id: str, msg: OcppMessage) -> TxMemory:
        """The memory of tx_id (created from msg if new), marked most recently used."""
        txs = self._txs(state)
        memory = txs.get(tx_id)
        if memory is None:
            memory = txs[tx_id] = TxMemory(msg.ts, msg.message_id, msg.action or "")
            while len(txs) > self.tx_history:
                txs.popitem(last=False)
        else:
            txs.move_to_end(tx_id)
        return memory

    # --- 1.6 ---------------------------------------------------------------------------------

    def _start_result16(self, msg: OcppMessage, request: OcppMessage, state: State) -> list[Finding]:
        """CW-REPLAY-005 (1.6): the central system hands out a transaction id this charge point used."""
        tx_id = msg.payload.get("transactionId")
        if not isinstance(tx_id, int) or isinstance(tx_id, bool):
            return []
        info = msg.payload.get("idTagInfo")
        digest = content_digest(request.action, request.payload)
        known = self._txs(state).get(str(tx_id))
        memory = self._remember(state, str(tx_id), request)
        # 0 and negative ids are what many central systems answer every rejected start with; the
        # same id again for a start with the same content answers a retry.
        finding = None
        if tx_id > 0 and known is not None and known.start_digest != digest:
            finding = _reused(msg, str(tx_id), known, f"central system assigned transactionId {tx_id} to "
                                                      f"StartTransaction {request.message_id}")
        memory.start_digest = digest
        memory.refused = not isinstance(info, dict) or info.get("status") != "Accepted"
        return [] if finding is None else [finding]

    def _busy_connector16(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        """CW-REPLAY-006 (1.6): StartTransaction on a connector with an open transaction."""
        connector = msg.payload.get("connectorId")
        open_id = ctx.open_tx_by_connector.get(connector) if isinstance(connector, int) else None
        tx = ctx.transactions.get(open_id) if open_id is not None else None
        if tx is None:
            return []
        if tx.id_tag == msg.payload.get("idTag") and tx.meter_start == msg.payload.get("meterStart"):
            return []  # the same start again: a retry whose answer got lost
        return self._busy(msg, state, connector, tx.transaction_id, tx.started_ts, tx.id_tag)

    def _busy(self, msg: OcppMessage, state: State, connector: Any, open_id: str, since: float,
              id_tag: str | None) -> list[Finding]:
        memory = self._txs(state).get(open_id)
        if since > msg.ts or (memory is not None and (memory.stop_digest is not None or memory.refused)):
            return []  # another capture's, its stop was sent but not (yet) answered, or it was refused
        boot = state.get("boot")
        if boot is not None and boot[0] > since:
            return []  # the charge point rebooted since: the boot may have ended that transaction
        return [Finding(CONNECTOR_BUSY,
                        f"{msg.action} {msg.message_id} starts a transaction on connector {connector}, which has "
                        f"transaction {open_id} open since {iso_time(since)} ({msg.ts - since:.0f}s earlier, "
                        "no stop seen)",
                        {"connector": connector, "open_transaction_id": open_id, "open_since": since,
                         "open_id_tag": id_tag, "payload": msg.payload})]

    def _stop16(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        tx_id = msg.payload.get("transactionId")
        if tx_id is None:
            return []
        digest = content_digest(msg.action, msg.payload)
        return self._stopped(msg, ctx, state, str(tx_id), digest, True, msg.payload.get("reason"))

    # --- 2.0.1 / 2.1 --------------------------------------------------------------------------

    def _transaction_event(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        info = msg.payload.get("transactionInfo")
        tx_raw = info.get("transactionId") if isinstance(info, dict) else None
        if tx_raw is None:
            return []
        tx_id = str(tx_raw)
        event = msg.payload.get("eventType")
        digest = content_digest(msg.action, msg.payload)
        if event == "Started":
            return self._started(msg, ctx, state, tx_id, digest)
        reason = info.get("stoppedReason") if isinstance(info, dict) else None
        if msg.payload.get("triggerReason") in REBOOT_TRIGGERS:
            reason = msg.payload.get("triggerReason")
        findings = self._stopped(msg, ctx, state, tx_id, digest, event == "Ended", reason)
        return findings + self._seq_no(msg, state, tx_id, digest)

    def _started(self, msg: OcppMessage, ctx: ChargePointContext, state: State, tx_id: str,
                 digest: str) -> list[Finding]:
        """CW-REPLAY-005 and -006 (2.x) for a Started event; it also restarts the seqNo baseline."""
        known = self._txs(state).get(tx_id)
        findings: list[Finding] = []
        if known is not None and known.start_digest != digest:
            findings.append(_reused(msg, tx_id, known, f"Started event {msg.message_id} reuses transactionId {tx_id}"))
        evse = msg.payload.get("evse")
        evse_id = evse.get("id") if isinstance(evse, dict) else None
        open_id = ctx.open_tx_by_connector.get(evse_id) if isinstance(evse_id, int) else None
        tx = ctx.transactions.get(open_id) if open_id is not None and open_id != tx_id else None
        if tx is not None:
            findings += self._busy(msg, state, evse_id, tx.transaction_id, tx.started_ts, tx.id_tag)
        memory = self._remember(state, tx_id, msg)
        memory.start_digest = digest
        _set_seq(memory, msg, digest)
        _note_seq(state, msg)
        return findings

    def _seq_no(self, msg: OcppMessage, state: State, tx_id: str, digest: str) -> list[Finding]:
        """CW-REPLAY-008: seqNo repeated with other content, decreasing, or skipping while online."""
        seq = msg.payload.get("seqNo")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return []
        memory = self._remember(state, tx_id, msg)
        last_any = state.get("seq_last")
        _note_seq(state, msg)
        last = memory.seq_no
        if last is None:
            _set_seq(memory, msg, digest)
            return []
        problem = None
        if seq == last and digest != memory.seq_digest:
            problem = "repeats"
        elif seq < last:
            problem = "decreases"
        elif seq > last + 1 and not (msg.payload.get("offline") is True or memory.seq_offline
                                     or memory.seq_connection != msg.connection_id
                                     or (last_any is not None and seq == last_any + 1)):
            problem = "skips"
        finding = None if problem is None else Finding(
            SEQ_NO, f"TransactionEvent {msg.message_id} of transaction {tx_id} {problem} seqNo: {seq} after "
                    f"{last} (message {memory.seq_message_id})"
                    + (" without offline=true" if problem == "skips" else ""),
            {"transaction_id": tx_id, "seq_no": seq, "previous_seq_no": last, "problem": problem,
             "previous_message_id": memory.seq_message_id, "offline": msg.payload.get("offline"),
             "payload": msg.payload})
        if seq > last:
            _set_seq(memory, msg, digest)
        return [] if finding is None else [finding]

    # --- CW-REPLAY-007: stop or update of a dead transaction -----------------------------------

    def _stopped(self, msg: OcppMessage, ctx: ChargePointContext, state: State, tx_id: str, digest: str,
                 stop: bool, reason: Any) -> list[Finding]:
        """A stop (or 2.x update) for a transaction already closed, or one that cannot predate us."""
        tx = ctx.transactions.get(tx_id)
        known = self._txs(state).get(tx_id)
        finding = None
        if tx is not None and tx.closed_ts is not None and tx.closed_ts <= msg.ts:
            retry = (known is not None and stop and known.stop_digest == digest
                     and (known.stop_connection != msg.connection_id or known.stop_message_id == msg.message_id))
            if not retry:
                finding = Finding(STOPPED_TX,
                                  f"{_what(msg)} {msg.message_id} for transaction {tx_id}, closed "
                                  f"{msg.ts - tx.closed_ts:.1f}s earlier",
                                  {"transaction_id": tx_id, "state": "closed", "closed_ts": tx.closed_ts,
                                   "started_ts": tx.started_ts, "closing_message_id": known.stop_message_id
                                   if known is not None else None, "payload": msg.payload})
        elif tx is None and known is None:
            finding = self._unknown(msg, state, tx_id, reason)
        memory = self._remember(state, tx_id, msg)
        if stop and (tx is None or tx.closed_ts is None):
            memory.stop_digest, memory.stop_connection = digest, msg.connection_id
            memory.stop_message_id = msg.message_id
        return [] if finding is None else [finding]

    def _unknown(self, msg: OcppMessage, state: State, tx_id: str, reason: Any) -> Finding | None:
        """A finding when the unknown transaction cannot predate the capture, else None.

        Proof: we saw this charge point's BootNotification accepted (not one asked for by
        TriggerMessage, which reboots nothing), the message is dated more than boot_grace_s
        after that boot, it was not queued offline and its reason is not a reboot's; and no
        message of ours mentioned the transaction since. A transaction that started after
        the boot would have shown us its start.
        """
        boot = state.get("boot")
        if boot is None or boot[2] or msg.payload.get("offline") is True or reason in REBOOT_STOPS | REBOOT_TRIGGERS:
            return None
        when = event_time(state, msg)
        if when is None or when < boot[0] + self.boot_grace:
            return None
        return Finding(STOPPED_TX,
                       f"{_what(msg)} {msg.message_id} for transaction {tx_id}, never started since the "
                       f"BootNotification accepted {msg.ts - boot[0]:.0f}s earlier",
                       {"transaction_id": tx_id, "state": "unknown", "boot_ts": boot[0],
                        "boot_message_id": boot[1], "event_time": round(when, 3), "payload": msg.payload})


def _continuity(state: State, ts: float) -> None:
    """Restart the state when capture time runs backwards (not one continuous capture)."""
    last = state.get("last_ts")
    if last is not None and ts < last:
        state.clear()
    if last is None or ts >= last:
        state["last_ts"] = ts


def _note_boot(result: OcppMessage, request: OcppMessage, state: State) -> None:
    body = request.payload if isinstance(request.payload, dict) else {}
    asked = state.get("boot_trigger_ts")
    triggered = body.get("reason") == "Triggered" or (asked is not None and result.ts - asked < BOOT_TRIGGER_WINDOW_S)
    state["boot"] = (result.ts, request.message_id, triggered)
    state.pop("boot_trigger_ts", None)


def _note_seq(state: State, msg: OcppMessage) -> None:
    seq = msg.payload.get("seqNo")
    if isinstance(seq, int) and not isinstance(seq, bool):
        state["seq_last"] = seq


def _set_seq(memory: TxMemory, msg: OcppMessage, digest: str) -> None:
    seq = msg.payload.get("seqNo")
    memory.seq_no = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    memory.seq_digest, memory.seq_message_id = digest, msg.message_id
    memory.seq_offline, memory.seq_connection = msg.payload.get("offline") is True, msg.connection_id


def _what(msg: OcppMessage) -> str:
    event = msg.payload.get("eventType")
    return f"{msg.action} {event}" if event else str(msg.action)


def _answered_twice(msg: OcppMessage, caller: str, first: Answer) -> Finding:
    first_ts, first_type, first_connection, action, first_payload = first
    answer, earlier = ANSWER_NAMES[MessageType(msg.message_type)], ANSWER_NAMES[MessageType(first_type)]
    return Finding(ANSWERED_TWICE,
                   f"{msg.sender} answered {caller} {action} {msg.message_id} again, differently: a {answer} "
                   f"{msg.ts - first_ts:.3f}s after its {earlier}",
                   {"call_action": action, "caller": caller, "answer": answer, "first_answer": earlier,
                    "first_answer_ts": first_ts, "after_s": round(msg.ts - first_ts, 6),
                    "first_connection_id": first_connection, "first_payload": first_payload,
                    "payload": msg.payload})


def _reused(msg: OcppMessage, tx_id: str, known: TxMemory, what: str) -> Finding:
    return Finding(TX_ID_REUSE,
                   f"{what}, already used by this charge point (first seen in {known.first_action} "
                   f"{known.first_message_id}, {msg.ts - known.first_ts:.0f}s earlier)",
                   {"transaction_id": tx_id, "first_seen_ts": known.first_ts,
                    "first_seen_message_id": known.first_message_id, "first_seen_action": known.first_action,
                    "payload": msg.payload})
