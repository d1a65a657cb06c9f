"""OCPP-J frame decoding: the JSON array RPC framing of OCPP over WebSocket.

Structural errors (not JSON, not an array, unknown type id, wrong arity) raise
:class:`FrameError`; deviations a detector should see but that still leave a usable message
(integer message id, over-long id, non-object payload, type 5/6 outside 2.1) become flags.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from chargewatch.errors import DecodeError
from chargewatch.model import MessageType

ARITY = {2: 4, 3: 3, 4: 5, 5: 5, 6: 4}
MAX_MESSAGE_ID = 36
# OCPP payloads nest a handful of levels; far deeper JSON is hostile and would exhaust the stack
# (json.loads raises RecursionError, and so would the recursive redaction walk after it).
MAX_JSON_DEPTH = 64
# orjson turns integers beyond 64 bits into floats where the standard library keeps them exact;
# they need 19 digits or more, which these find in one C-speed pass (every digit becomes "0").
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
# Message types as module constants: an enum attribute lookup per frame adds up on the hot path.
CALL = MessageType.CALL
CALLRESULT = MessageType.CALLRESULT
CALLRESULTERROR = MessageType.CALLRESULTERROR
SEND = MessageType.SEND
WITH_ACTION = frozenset({CALL, SEND})  # types that carry an action
RESPONSES = frozenset({CALLRESULT, MessageType.CALLERROR})  # types that answer a CALL


class FrameError(DecodeError):
    """A frame that is not OCPP-J; kind is the counter name."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(slots=True)
class Frame:
    """The parts of one OCPP-J frame (treated as immutable; not frozen, which is slow to build)."""

    message_type: int
    message_id: str
    action: str | None
    payload: Any
    flags: list[str]  # the caller may add its own (transport) flags


def scan_json(data: bytes) -> tuple[int, bool]:
    """(number of ``[`` and ``{``: an upper bound of the nesting depth, whether a run of 19 or
    more digits occurs: an integer orjson may not keep exact). The reference of the native
    extension's one-pass version, which replaces it when installed."""
    return data.count(b"[") + data.count(b"{"), _LONG_DIGITS in data.translate(_DIGITS_TO_ZERO)


def _fastest() -> Callable[[bytes], tuple[int, bool]]:
    try:
        from chargewatch_native import scan_json as native
    except ImportError:  # the extension is optional: see collectors.native
        return scan_json
    return native


_scan_json = _fastest()


def decode_frame(data: bytes, version: str | None) -> Frame:
    """Decode one WebSocket text message as OCPP-J."""
    brackets, long_digits = _scan_json(data)
    try:
        value = _loads(data, brackets <= MAX_JSON_DEPTH and not long_digits)
    except UnicodeDecodeError as exc:
        raise FrameError("invalid_utf8", f"frame is not UTF-8: {exc}") from exc
    except ValueError as exc:
        raise FrameError("invalid_json", f"frame is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise FrameError("json_too_deep", f"frame nests deeper than the JSON decoder allows: {exc}") from exc
    if brackets > MAX_JSON_DEPTH and _too_deep(value, MAX_JSON_DEPTH):
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
    if mtype >= CALLRESULTERROR and version not in (None, "2.1"):
        flags.append("message_type_not_in_version")
    message_id = _message_id(value[1], flags)
    action, payload = _body(mtype, value, flags)
    return Frame(mtype, message_id, action, payload, flags)


def _loads(data: bytes, plain: bool) -> Any:
    """json.loads, about twice as fast on plain frames.

    The standard library stays the reference. orjson gets only plain frames: shallow (nesting
    at most MAX_JSON_DEPTH: a deep one must fail or pass exactly as json.loads decides) and
    without a run of 19 digits (orjson would turn a 64-bit overflowing integer into a float);
    what it accepts, it parses as json.loads does. Anything it refuses goes to json.loads,
    which accepts some of it (NaN, Infinity, a BOM, lone surrogates) and raises the errors the
    counters are named after.
    """
    if plain:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


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
    if mtype in WITH_ACTION:
        action, payload = value[2], value[3]
        if not isinstance(action, str):
            raise FrameError("bad_frame_shape", f"action {action!r} is not a string")
        if not isinstance(payload, dict):
            flags.append("payload_not_object")
        return action, payload
    if mtype == CALLRESULT:
        if not isinstance(value[2], dict):
            flags.append("payload_not_object")
        return None, value[2]
    code, description, details = value[2], value[3], value[4]
    if not isinstance(code, str):
        raise FrameError("bad_frame_shape", f"error code {code!r} is not a string")
    return None, {"errorCode": code, "errorDescription": description, "errorDetails": details}
