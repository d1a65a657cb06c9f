"""Counters and dead-letter records: bad input is counted and kept aside, never silent."""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

EXCERPT_BYTES = 512


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be turned into a record, with where it came from."""

    ts: float
    kind: str
    detail: str
    source: str
    connection_id: str | None = None
    charge_point_id: str | None = None
    excerpt_b64: str = ""

    @classmethod
    def of(cls, ts: float, kind: str, detail: str, source: str, raw: bytes = b"",
           connection_id: str | None = None, charge_point_id: str | None = None) -> DeadLetter:
        excerpt = base64.b64encode(raw[:EXCERPT_BYTES]).decode() if raw else ""
        return cls(ts, kind, detail, source, connection_id, charge_point_id, excerpt)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["record"] = "deadletter"
        return data


@dataclass
class CollectorStats:
    """What a collector saw: volumes, and every error by kind."""

    packets: int = 0
    bytes: int = 0
    tcp_connections: int = 0
    websocket_connections: int = 0
    messages: int = 0
    connection_events: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # Facts about decoded messages (e.g. unknown_action); detectors judge them, they are not errors.
    flags: Counter[str] = field(default_factory=Counter)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: CollectorStats) -> None:
        for name in ("packets", "bytes", "tcp_connections", "websocket_connections", "messages",
                     "connection_events"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ignored.update(other.ignored)
        self.errors.update(other.errors)
        self.flags.update(other.flags)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ignored"] = dict(sorted(self.ignored.items()))
        data["errors"] = dict(sorted(self.errors.items()))
        data["flags"] = dict(sorted(self.flags.items()))
        return data
