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
from dataclasses import dataclass, field, replace
from typing import Any

from chargewatch.model import ConnectionEvent, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.ocpptime import iso_time
from detectors.replay import CALL, CALLRESULT, FROM_CP, content_digest
from detectors.replay_clock import CLOCK_SKEW, Clock, ClockSkewCheck, Drained, csms_clock, event_time
from detectors.rules import Rule

ANSWERED_TWICE = "CW-REPLAY-003"
TX_ID_REUSE = "CW-REPLAY-005"
CONNECTOR_BUSY = "CW-REPLAY-006"
STOPPED_TX = "CW-REPLAY-007"
SEQ_NO = "CW-REPLAY-008"
ANSWER_NAMES = {MessageType.CALLRESULT: "CALLRESULT", MessageType.CALLERROR: "CALLERROR"}
# The charge-point CALLs these checks read (others are passed over at once) and the CALLs whose
# CALLRESULT they read; tuples (``in`` compares), so an action of any type is just not one of them.
CP_ACTIONS = ("MeterValues", "StatusNotification", "StartTransaction", "StopTransaction", "TransactionEvent",
              "SecurityEventNotification")
RESULTS_READ = ("Heartbeat", "StartTransaction", "BootNotification")
# Stops that a reboot causes: they may end a transaction that started before the capture.
REBOOT_STOPS = frozenset({"PowerLoss", "Reboot", "HardReset", "SoftReset", "ImmediateReset"})
REBOOT_TRIGGERS = frozenset({"ResetCommand", "TxResumed"})
BOOT_TRIGGER_WINDOW_S = 300.0  # a BootNotification this soon after TriggerMessage(BootNotification) was asked for


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


@dataclass(slots=True)
class Memory:
    """This detector's state of one charge point (the ``"memory"`` entry of its state dict)."""

    last_ts: float | None = None  # latest capture time
    # The first answer of each recent CALL by (caller, message id), oldest first, as it names the CALL's
    # action (a copy naming it when the answer itself does not: no container per answer to collect).
    answers: dict[tuple[str, str], OcppMessage] = field(default_factory=dict)
    txs: OrderedDict[str, TxMemory] = field(default_factory=OrderedDict)  # least recently used first
    boot: tuple[float, str, bool] | None = None  # last accepted boot: answer time, CALL id, triggered
    boot_trigger_ts: float | None = None  # TriggerMessage(BootNotification) asked for since that boot
    clock: Clock | None = None
    drained: Drained = field(default_factory=dict)
    seq_last: int | None = None  # the latest seqNo of any transaction


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
        _memory(state, event.ts)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        mem = _memory(state, msg.ts)
        kind = msg.message_type
        if kind == CALL:
            if mem.answers:  # a re-sent CALL may be answered again
                mem.answers.pop(("cp" if msg.direction is FROM_CP else "csms", msg.message_id), None)
            payload = msg.payload
            if msg.direction is FROM_CP:
                return self._cp_call(msg, ctx, mem) if msg.action in CP_ACTIONS and isinstance(payload, dict) else []
            if (msg.action == "TriggerMessage" and isinstance(payload, dict)
                    and payload.get("requestedMessage") == "BootNotification"):
                mem.boot_trigger_ts = msg.ts
            return []
        if kind in ANSWER_NAMES:
            return self._answer(msg, ctx, mem)
        return []

    # --- CW-REPLAY-003: one CALL, two answers ---------------------------------------------

    def _answer(self, msg: OcppMessage, ctx: ChargePointContext, mem: Memory) -> list[Finding]:
        caller = "csms" if msg.direction is FROM_CP else "cp"
        key = (caller, msg.message_id)
        answers = mem.answers
        request = ctx.pending.get(key)  # ctx.request_for(msg), with the key built once
        if request is None:
            first = answers.get(key)
            if first is None or (first.message_type == msg.message_type and first.payload == msg.payload):
                return []  # no answer seen, or the same answer sent twice (harmless)
            return [_answered_twice(msg, caller, first)]
        action = request.action
        answers[key] = msg if msg.action == action else replace(msg, action=action)
        too_old = msg.ts - self.answer_window
        while answers and (len(answers) > self.answer_history or next(iter(answers.values())).ts < too_old):
            del answers[next(iter(answers))]
        if (action not in RESULTS_READ or msg.direction is FROM_CP or msg.message_type != CALLRESULT
                or not isinstance(msg.payload, dict)):
            return []
        if action in ("BootNotification", "Heartbeat"):
            clock = csms_clock(msg)
            if clock is not None:
                mem.clock = clock
        if action == "BootNotification" and msg.payload.get("status") == "Accepted":
            _note_boot(msg, request, mem)
        elif action == "StartTransaction":
            return self._start_result16(msg, request, mem)
        return []

    # --- charge-point CALLs ------------------------------------------------------------------

    def _cp_call(self, msg: OcppMessage, ctx: ChargePointContext, mem: Memory) -> list[Finding]:
        """One of CP_ACTIONS."""
        action = msg.action
        if action == "MeterValues":
            tx_id = msg.payload.get("transactionId")
            if tx_id is not None:
                self._remember(mem, str(tx_id), msg)
            return self.clock.check(msg, ctx, mem.clock, mem.drained)
        findings = self.clock.check(msg, ctx, mem.clock, mem.drained)
        if action == "TransactionEvent":
            return findings + self._transaction_event(msg, ctx, mem)
        if action == "StartTransaction":
            return findings + self._busy_connector16(msg, ctx, mem)
        if action == "StopTransaction":
            return findings + self._stop16(msg, ctx, mem)
        return findings

    def _remember(self, mem: Memory, tx_id: str, msg: OcppMessage) -> TxMemory:
        """The memory of tx_id (created from msg if new), marked most recently used."""
        txs = mem.txs
        memory = txs.get(tx_id)
        if memory is None:
            memory = txs[tx_id] = TxMemory(msg.ts, msg.message_id, msg.action or "")
            while len(txs) > self.tx_history:
                txs.popitem(last=False)
        else:
            txs.move_to_end(tx_id)
        return memory

    # --- 1.6 ---------------------------------------------------------------------------------

    def _start_result16(self, msg: OcppMessage, request: OcppMessage, mem: Memory) -> list[Finding]:
        """CW-REPLAY-005 (1.6): the central system hands out a transaction id this charge point used."""
        tx_id = msg.payload.get("transactionId")
        if not isinstance(tx_id, int) or isinstance(tx_id, bool):
            return []
        info = msg.payload.get("idTagInfo")
        digest = content_digest(request.action, request.payload)
        known = mem.txs.get(str(tx_id))
        memory = self._remember(mem, str(tx_id), request)
        # 0 and negative ids are what many central systems answer every rejected start with; the
        # same id again for a start with the same content answers a retry.
        finding = None
        if tx_id > 0 and known is not None and known.start_digest != digest:
            finding = _reused(msg, str(tx_id), known, f"central system assigned transactionId {tx_id} to "
                                                      f"StartTransaction {request.message_id}")
        memory.start_digest = digest
        memory.refused = not isinstance(info, dict) or info.get("status") != "Accepted"
        return [] if finding is None else [finding]

    def _busy_connector16(self, msg: OcppMessage, ctx: ChargePointContext, mem: Memory) -> list[Finding]:
        """CW-REPLAY-006 (1.6): StartTransaction on a connector with an open transaction."""
        connector = msg.payload.get("connectorId")
        open_id = ctx.open_tx_by_connector.get(connector) if isinstance(connector, int) else None
        tx = ctx.transactions.get(open_id) if open_id is not None else None
        if tx is None:
            return []
        if tx.id_tag == msg.payload.get("idTag") and tx.meter_start == msg.payload.get("meterStart"):
            return []  # the same start again: a retry whose answer got lost
        return self._busy(msg, mem, connector, tx.transaction_id, tx.started_ts, tx.id_tag)

    def _busy(self, msg: OcppMessage, mem: Memory, connector: Any, open_id: str, since: float,
              id_tag: str | None) -> list[Finding]:
        memory = mem.txs.get(open_id)
        if since > msg.ts or (memory is not None and (memory.stop_digest is not None or memory.refused)):
            return []  # another capture's, its stop was sent but not (yet) answered, or it was refused
        boot = mem.boot
        if boot is not None and boot[0] > since:
            return []  # the charge point rebooted since: the boot may have ended that transaction
        return [Finding(CONNECTOR_BUSY,
                        f"{msg.action} {msg.message_id} starts a transaction on connector {connector}, which has "
                        f"transaction {open_id} open since {iso_time(since)} ({msg.ts - since:.0f}s earlier, "
                        "no stop seen)",
                        {"connector": connector, "open_transaction_id": open_id, "open_since": since,
                         "open_id_tag": id_tag, "payload": msg.payload})]

    def _stop16(self, msg: OcppMessage, ctx: ChargePointContext, mem: Memory) -> list[Finding]:
        tx_id = msg.payload.get("transactionId")
        if tx_id is None:
            return []
        digest = content_digest(msg.action, msg.payload)
        return self._stopped(msg, ctx, mem, str(tx_id), digest, True, msg.payload.get("reason"))

    # --- 2.0.1 / 2.1 --------------------------------------------------------------------------

    def _transaction_event(self, msg: OcppMessage, ctx: ChargePointContext, mem: Memory) -> list[Finding]:
        info = msg.payload.get("transactionInfo")
        tx_raw = info.get("transactionId") if isinstance(info, dict) else None
        if tx_raw is None:
            return []
        tx_id = str(tx_raw)
        event = msg.payload.get("eventType")
        digest = content_digest(msg.action, msg.payload)
        if event == "Started":
            return self._started(msg, ctx, mem, tx_id, digest)
        reason = info.get("stoppedReason") if isinstance(info, dict) else None
        trigger = msg.payload.get("triggerReason")
        if isinstance(trigger, str) and trigger in REBOOT_TRIGGERS:
            reason = trigger
        findings = self._stopped(msg, ctx, mem, tx_id, digest, event == "Ended", reason)
        return findings + self._seq_no(msg, mem, tx_id, digest)

    def _started(self, msg: OcppMessage, ctx: ChargePointContext, mem: Memory, tx_id: str,
                 digest: str) -> list[Finding]:
        """CW-REPLAY-005 and -006 (2.x) for a Started event; it also restarts the seqNo baseline."""
        known = mem.txs.get(tx_id)
        findings: list[Finding] = []
        if known is not None and known.start_digest != digest:
            findings.append(_reused(msg, tx_id, known, f"Started event {msg.message_id} reuses transactionId {tx_id}"))
        evse = msg.payload.get("evse")
        evse_id = evse.get("id") if isinstance(evse, dict) else None
        open_id = ctx.open_tx_by_connector.get(evse_id) if isinstance(evse_id, int) else None
        tx = ctx.transactions.get(open_id) if open_id is not None and open_id != tx_id else None
        if tx is not None:
            findings += self._busy(msg, mem, evse_id, tx.transaction_id, tx.started_ts, tx.id_tag)
        memory = self._remember(mem, tx_id, msg)
        memory.start_digest = digest
        _set_seq(memory, msg, digest)
        _note_seq(mem, msg)
        return findings

    def _seq_no(self, msg: OcppMessage, mem: Memory, tx_id: str, digest: str) -> list[Finding]:
        """CW-REPLAY-008: seqNo repeated with other content, decreasing, or skipping while online."""
        seq = msg.payload.get("seqNo")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return []
        memory = self._remember(mem, tx_id, msg)
        last_any = mem.seq_last
        _note_seq(mem, msg)
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

    def _stopped(self, msg: OcppMessage, ctx: ChargePointContext, mem: Memory, tx_id: str, digest: str,
                 stop: bool, reason: Any) -> list[Finding]:
        """A stop (or 2.x update) for a transaction already closed, or one that cannot predate us."""
        tx = ctx.transactions.get(tx_id)
        known = mem.txs.get(tx_id)
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
            finding = self._unknown(msg, mem, tx_id, reason)
        memory = self._remember(mem, tx_id, msg)
        if stop and (tx is None or tx.closed_ts is None):
            memory.stop_digest, memory.stop_connection = digest, msg.connection_id
            memory.stop_message_id = msg.message_id
        return [] if finding is None else [finding]

    def _unknown(self, msg: OcppMessage, mem: Memory, tx_id: str, reason: Any) -> Finding | None:
        """A finding when the unknown transaction cannot predate the capture, else None.

        Proof: we saw this charge point's BootNotification accepted (not one asked for by
        TriggerMessage, which reboots nothing), the message is dated more than boot_grace_s
        after that boot, it was not queued offline and its reason is not a reboot's; and no
        message of ours mentioned the transaction since. A transaction that started after
        the boot would have shown us its start.
        """
        boot = mem.boot
        if (boot is None or boot[2] or msg.payload.get("offline") is True
                or (isinstance(reason, str) and reason in REBOOT_STOPS | REBOOT_TRIGGERS)):
            return None
        when = event_time(mem.clock, msg)
        if when is None or when < boot[0] + self.boot_grace:
            return None
        return Finding(STOPPED_TX,
                       f"{_what(msg)} {msg.message_id} for transaction {tx_id}, never started since the "
                       f"BootNotification accepted {msg.ts - boot[0]:.0f}s earlier",
                       {"transaction_id": tx_id, "state": "unknown", "boot_ts": boot[0],
                        "boot_message_id": boot[1], "event_time": round(when, 3), "payload": msg.payload})


def _memory(state: State, ts: float) -> Memory:
    """The charge point's memory, restarted when capture time runs backwards (not one continuous capture)."""
    mem: Memory | None = state.get("memory")
    if mem is None:
        mem = state["memory"] = Memory()
    last = mem.last_ts
    if last is None or ts >= last:
        mem.last_ts = ts
    elif ts < last:
        mem = state["memory"] = Memory()  # which leaves last_ts unset until the next record
    return mem


def _note_boot(result: OcppMessage, request: OcppMessage, mem: Memory) -> None:
    body = request.payload if isinstance(request.payload, dict) else {}
    asked = mem.boot_trigger_ts
    triggered = body.get("reason") == "Triggered" or (asked is not None and result.ts - asked < BOOT_TRIGGER_WINDOW_S)
    mem.boot = (result.ts, request.message_id, triggered)
    mem.boot_trigger_ts = None


def _note_seq(mem: Memory, msg: OcppMessage) -> None:
    seq = msg.payload.get("seqNo")
    if isinstance(seq, int) and not isinstance(seq, bool):
        mem.seq_last = seq


def _set_seq(memory: TxMemory, msg: OcppMessage, digest: str) -> None:
    seq = msg.payload.get("seqNo")
    memory.seq_no = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    memory.seq_digest, memory.seq_message_id = digest, msg.message_id
    memory.seq_offline, memory.seq_connection = msg.payload.get("offline") is True, msg.connection_id


def _what(msg: OcppMessage) -> str:
    event = msg.payload.get("eventType")
    return f"{msg.action} {event}" if event else str(msg.action)


def _answered_twice(msg: OcppMessage, caller: str, first: OcppMessage) -> Finding:
    action, first_ts = first.action, first.ts
    answer, earlier = ANSWER_NAMES[MessageType(msg.message_type)], ANSWER_NAMES[MessageType(first.message_type)]
    return Finding(ANSWERED_TWICE,
                   f"{msg.sender} answered {caller} {action} {msg.message_id} again, differently: a {answer} "
                   f"{msg.ts - first_ts:.3f}s after its {earlier}",
                   {"call_action": action, "caller": caller, "answer": answer, "first_answer": earlier,
                    "first_answer_ts": first_ts, "after_s": round(msg.ts - first_ts, 6),
                    "first_connection_id": first.connection_id, "first_payload": first.payload,
                    "payload": msg.payload})


def _reused(msg: OcppMessage, tx_id: str, known: TxMemory, what: str) -> Finding:
    return Finding(TX_ID_REUSE,
                   f"{what}, already used by this charge point (first seen in {known.first_action} "
                   f"{known.first_message_id}, {msg.ts - known.first_ts:.0f}s earlier)",
                   {"transaction_id": tx_id, "first_seen_ts": known.first_ts,
                    "first_seen_message_id": known.first_message_id, "first_seen_action": known.first_action,
                    "payload": msg.payload})
