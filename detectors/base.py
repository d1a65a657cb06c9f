"""What a detector is: a function of (record, its own per-key state) to findings.

State is a plain JSON-compatible dict owned by the runner, one per (state key, detector),
so it can be dropped on rebalance and rebuilt by replaying the retained topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from chargewatch.model import ConnectionEvent, OcppMessage

State = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    """A rule fired; the runner turns it into an alert with the rule's metadata."""

    rule_id: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


class Detector(Protocol):
    """A stateful check. Time comes from the records, never from the clock."""

    name: str
    rule_ids: tuple[str, ...]

    def on_message(self, msg: OcppMessage, state: State) -> list[Finding]: ...

    def on_connection(self, event: ConnectionEvent, state: State) -> list[Finding]: ...
