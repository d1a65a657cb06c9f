"""OCPP-J frame decoding: the JSON array RPC framing of OCPP over WebSocket.

Structural errors (not JSON, not an array, unknown type id, wrong arity) raise
:class:`FrameError`; deviations a detector should see but that still leave a usable message
(integer message id, over-long id, non-object payload, type 5/6 outside 2.1) become flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chargewatch.errors import DecodeError
from chargewatch.model import MessageType

ARITY = {2: 4, 3: 3, 4: 5, 5: 5, 6: 4}
MAX_MESSAGE_ID = 36
# OCPP payloads nest a handful of levels; far deeper JSON is hostile and would exhaust the stack
# (json.loads raises RecursionError, and so would the recursive redaction walk after it).
MAX_JSON_DEPTH = 64


class FrameError(DecodeError):
    """A frame that is not OCPP-J; kind is the counter name."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Frame:
    """The parts of one OCPP-J frame."""

    message_type: int
    message_id: str
    action: str | None
    payload: Any
    flags: tuple[str, ...]


def decode_frame(data: bytes, version: str | None) -> Frame:
    """Decode one WebSocket text message as OCPP-J."""
    try:
        value = json.loads(data)
    except UnicodeDecodeError as exc:
        raise FrameError("invalid_utf8", f"frame is not UTF-8: {exc}") from exc
    except ValueError as exc:
        raise FrameError("invalid_json", f"frame is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise FrameError("json_too_deep", f"frame nests deeper than the JSON decoder allows: {exc}") from exc
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and _too_deep(value, MAX_JSON_DEPTH):
        raise FrameError("json_too_deep", f"frame nests more than {MAX_JSON_DEPTH} levels of arrays/objects")
    if not isinstance(value, list) or not value:
        raise FrameError("not_ocppj_array", f"frame is a JSON {type(value).__name__}, not an OCPP-J array")
    mtype = value[0]
    if type(mtype) is not int:
        raise FrameError("bad_message_type", f"message type {mtype!r} is not an integer")
    if mtype not in ARITY:
        raise FrameError("unknown_message_type", f"unknown message type {mtype}")
    if len(value) != ARITY[mtype]:
        raise FrameError("bad_frame_shape", f"type {mtype} frame has {len(value)} elements, expected {ARITY[mtype]}")
    flags: list[str] = []
    if mtype >= MessageType.CALLRESULTERROR and version not in (None, "2.1"):
        flags.append("message_type_not_in_version")
    message_id = _message_id(value[1], flags)
    action, payload = _body(mtype, value, flags)
    return Frame(mtype, message_id, action, payload, tuple(flags))


def _too_deep(value: Any, limit: int) -> bool:
    """True when arrays/objects nest more than limit levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _message_id(raw: Any, flags: list[str]) -> str:
    if isinstance(raw, str):
        if len(raw) > MAX_MESSAGE_ID:
            flags.append("message_id_too_long")
        return raw
    flags.append("message_id_not_string")
    return json.dumps(raw)


def _body(mtype: int, value: list[Any], flags: list[str]) -> tuple[str | None, Any]:
    if mtype in (MessageType.CALL, MessageType.SEND):
        action, payload = value[2], value[3]
        if not isinstance(action, str):
            raise FrameError("bad_frame_shape", f"action {action!r} is not a string")
        if not isinstance(payload, dict):
            flags.append("payload_not_object")
        return action, payload
    if mtype == MessageType.CALLRESULT:
        if not isinstance(value[2], dict):
            flags.append("payload_not_object")
        return None, value[2]
    code, description, details = value[2], value[3], value[4]
    if not isinstance(code, str):
        raise FrameError("bad_frame_shape", f"error code {code!r} is not a string")
    return None, {"errorCode": code, "errorDescription": description, "errorDetails": details}
