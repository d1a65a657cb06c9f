"""Line parsers of the OCPP message logs the log collector reads.

A central system that terminates TLS is the only place where a profile 2/3 fleet's OCPP text is
visible; its logs are one way in. Each parser turns one log line into a :class:`LogEntry` (who,
which direction, when, and the OCPP-J frame exactly as sent) or says why it cannot:

- ``jsonl``: the JSON-lines schema we recommend CSMS integrators emit (README, *Collector — CSMS
  logs*): ``ts``, ``charge_point_id``, ``direction``, ``frame`` and optional connection facts.
- ``ocpp-lib``: the PyPI ``ocpp`` library's own ``"%s: send %s"`` / ``"%s: receive message %s"``
  lines, written by Python logging with a format that starts with ``%(asctime)s``.
- ``steve``: SteVe's ``WebSocketLogger`` lines (``[chargeBoxId=…, sessionId=…] Sending: …`` /
  ``Received: …``) under its logback/log4j2 patterns ``[%-5level] %d %c (%thread) - %msg``.

Timestamps always come from the line, never from the clock.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chargewatch.config import LOG_FORMATS
from chargewatch.errors import ConfigError, DecodeError
from chargewatch.model import version_from_subprotocol

FORMATS = LOG_FORMATS
EPOCH_MS_ABOVE = 1e11  # a numeric ts above this is in milliseconds (1e11 s is the year 5138)

Endpoint = tuple[str, int]

_TS = r"(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
_LEVEL = r"(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|TRACE)"
_SEP = r"[ :|\-]+"
# The ocpp library logs to the "ocpp" logger (or a child of it an operator passes in).
_OCPP_LIB = re.compile(rf"^{_TS}{_SEP}(?:{_LEVEL}{_SEP})?(?P<logger>ocpp(?:\.[\w.\-]+)?){_SEP}(?:{_LEVEL}{_SEP})?"
                       r"(?P<cp>.+?): (?P<verb>send|receive message) (?P<frame>.*)$")
_STEVE = re.compile(rf"^\[{_LEVEL}\s*\] {_TS} (?P<logger>\S+)(?: \((?P<thread>[^)]*)\))? - "
                    r"\[chargeBoxId=(?P<cp>.*?), sessionId=(?P<session>[^\]]*)\] (?P<verb>Sending|Received): "
                    r"(?P<frame>.*)$")
# A line of some log layout we know (it starts with a time), carrying no OCPP message.
_OTHER = re.compile(rf"^(?:\[{_LEVEL}\s*\] )?{_TS}\b")

_DIRECTIONS = {"cp->csms": True, "in": True, "csms->cp": False, "out": False}


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One OCPP-J frame a log line reports."""

    ts: float
    charge_point_id: str
    from_cp: bool
    frame: str
    connection: str = ""  # what the format says identifies the connection ("" when nothing)
    version: str | None = None
    client: Endpoint | None = None
    server: Endpoint | None = None
    tls: dict[str, Any] | None = None


class LineError(DecodeError):
    """A log line that cannot become a message; kind is its dead-letter counter."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def zone(name: str) -> tzinfo:
    """The time zone of log timestamps without an offset: an IANA name, UTC or ±HH:MM."""
    match = re.fullmatch(r"([+-])(\d\d):?(\d\d)", name)
    if match:
        delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
        return timezone(-delta if match[1] == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"[collector] log_timezone {name!r} is neither an IANA zone nor +HH:MM") from None


def parse_time(text: str, tz: tzinfo) -> float:
    """Seconds since the epoch of an RFC 3339 / ISO 8601 time (``,`` or ``.`` before the fraction)."""
    try:
        moment = datetime.fromisoformat(text.replace(",", ".", 1))
    except ValueError:
        raise LineError("log_bad_time", f"unparsable time {text[:64]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def parse_line(line: str, fmt: str, tz: tzinfo) -> LogEntry | None:
    """The frame one log line reports; None for a line of a known layout that carries none.

    fmt is one of FORMATS or "auto" (each line tried against every format). Raises LineError
    (``unknown_log_line``, ``log_bad_time``, ``invalid_log_json``, ``log_bad_record``).
    """
    if fmt in ("jsonl", "auto") and line.startswith("{"):
        return _jsonl(line, tz)
    if fmt in ("ocpp-lib", "auto"):
        match = _OCPP_LIB.match(line)
        if match:
            return LogEntry(parse_time(match["ts"], tz), match["cp"], match["verb"] == "receive message",
                            match["frame"])
    if fmt in ("steve", "auto"):
        match = _STEVE.match(line)
        if match:
            return LogEntry(parse_time(match["ts"], tz), match["cp"], match["verb"] == "Received",
                            match["frame"], connection=f"steve:{match['session']}")
    if fmt != "jsonl" and _OTHER.match(line):
        return None
    raise LineError("unknown_log_line", f"not a {fmt if fmt != 'auto' else 'known'} OCPP log line")


def recognised(line: str) -> bool:
    """Whether line is an OCPP message line of some known format (used to sniff a file's kind)."""
    try:
        return parse_line(line, "auto", UTC) is not None
    except LineError as exc:
        return exc.kind != "unknown_log_line"


def _jsonl(line: str, tz: tzinfo) -> LogEntry:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise LineError("invalid_log_json", f"log line is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LineError("log_bad_record", "log line is JSON but not an object")
    ts = _jsonl_time(doc.get("ts"), tz)
    cp_id, frame = doc.get("charge_point_id"), doc.get("frame")
    direction = doc.get("direction")
    from_cp = _DIRECTIONS.get(direction) if isinstance(direction, str) else None
    if not isinstance(cp_id, str) or not cp_id or not isinstance(frame, str) or from_cp is None:
        raise LineError("log_bad_record", "needs charge_point_id (string), frame (string) and direction "
                                          "(cp->csms, csms->cp, in or out)")
    version = doc.get("ocpp_version")
    if not isinstance(version, str):
        version = version_from_subprotocol(doc["subprotocol"]) if isinstance(doc.get("subprotocol"), str) else None
    tls = doc.get("tls")
    return LogEntry(ts, cp_id, from_cp, frame, connection=str(doc.get("connection_id") or ""), version=version,
                    client=_endpoint(doc, "client"), server=_endpoint(doc, "server"),
                    tls=tls if isinstance(tls, dict) else None)


def _jsonl_time(value: Any, tz: tzinfo) -> float:
    if isinstance(value, bool) or value is None:
        raise LineError("log_bad_time", "ts missing (RFC 3339 string or epoch seconds)")
    if isinstance(value, int | float):
        return float(value) / 1000 if value > EPOCH_MS_ABOVE else float(value)
    if isinstance(value, str):
        return parse_time(value, tz)
    raise LineError("log_bad_time", f"ts of type {type(value).__name__}")


def _endpoint(doc: dict[str, Any], side: str) -> Endpoint | None:
    ip, port = doc.get(f"{side}_ip"), doc.get(f"{side}_port")
    if not isinstance(ip, str) or not ip:
        return None
    return ip, port if isinstance(port, int) and not isinstance(port, bool) else 0
