"""OCPP dateTime values: the one parser every detector reads payload times with."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

MAX_LENGTH = 40  # longer is not an RFC 3339 time; not worth parsing (or caching)


def parse_time(value: Any) -> float | None:
    """Epoch seconds of an OCPP dateTime (RFC 3339; a missing zone reads as UTC), None if malformed.

    The same timestamp string is read by several detectors for one message, so parsed values
    are cached (bounded)."""
    if not isinstance(value, str) or len(value) > MAX_LENGTH:
        return None
    return _parse(value)


@lru_cache(maxsize=4096)
def _parse(value: str) -> float | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso_time(ts: float) -> str:
    """A capture time for a human-readable reason (UTC, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
