"""Message-id replay: an id reused with other content, or re-sent after it was answered.

Per charge point and sender, a bounded history of CALL ids remembers a digest of the
action and payload and how the CALL was answered. A repeat with the same content after a
CALLERROR or without an answer is a legal retry (OCPP-J errata) and stays silent.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from chargewatch.model import ConnectionEvent, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule

DIFFERENT = "CW-REPLAY-001"
AFTER_ANSWER = "CW-REPLAY-002"


def content_digest(action: str | None, payload: Any) -> str:
    """Digest of what a CALL says (redacted payloads keep pseudonyms stable, so this compares).

    Canonical JSON with sorted keys; orjson does it about 4x faster than ``json`` on this hot
    path, and ``json`` takes over for what orjson refuses (integers beyond 64 bits)."""
    try:
        text = orjson.dumps([action, payload], option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = json.dumps([action, payload], sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(text, digest_size=12).hexdigest()


class ReplayDetector:
    """CW-REPLAY-001 and CW-REPLAY-002."""

    name: str = "replay"
    rule_ids: tuple[str, ...] = (DIFFERENT, AFTER_ANSWER)

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.history_size = int(rules[DIFFERENT].param("history_size"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.message_type == MessageType.CALL:
            return self._call(msg, state)
        if msg.message_type in (MessageType.CALLRESULT, MessageType.CALLERROR):
            self._answer(msg, state)
        return []

    def _call(self, msg: OcppMessage, state: State) -> list[Finding]:
        ids: dict[str, list[Any]] = state.setdefault(msg.sender, {})
        digest = content_digest(msg.action, msg.payload)
        previous = ids.pop(msg.message_id, None)
        ids[msg.message_id] = [digest, None, msg.ts, msg.action, None]
        while len(ids) > self.history_size:
            del ids[next(iter(ids))]
        if previous is None:
            return []
        old_digest, answer, old_ts, old_action, answer_ts = previous
        if old_digest != digest:
            return [Finding(DIFFERENT,
                            f"{msg.sender} reused message id {msg.message_id} for a different "
                            f"{msg.action} (first used for {old_action} {msg.ts - old_ts:.1f}s earlier)",
                            {"original_action": old_action, "original_ts": old_ts, "original_digest": old_digest,
                             "new_digest": digest, "payload": msg.payload, "sender": msg.sender})]
        if answer == "result":
            return [Finding(AFTER_ANSWER,
                            f"{msg.sender} re-sent {msg.action} {msg.message_id} "
                            f"{msg.ts - answer_ts:.1f}s after it was answered with a CALLRESULT",
                            {"original_ts": old_ts, "answered_ts": answer_ts,
                             "answered_after_s": round(msg.ts - answer_ts, 6), "payload": msg.payload,
                             "sender": msg.sender})]
        return []

    def _answer(self, msg: OcppMessage, state: State) -> None:
        caller = "csms" if msg.sender == "cp" else "cp"
        entry = state.get(caller, {}).get(msg.message_id)
        if entry is not None and entry[1] is None:
            entry[1] = "result" if msg.message_type == MessageType.CALLRESULT else "error"
            entry[4] = msg.ts
