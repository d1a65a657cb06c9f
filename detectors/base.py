"""What a detector is: a function of (record, the key's context, its own state) to findings.

The runner owns all state: one :class:`~detectors.context.ChargePointContext` per key and one
plain dict per (key, detector). State is rebuilt by replaying the retained topic after a
crash or rebalance, so it needs no serialisation; it must stay bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from chargewatch.model import ConnectionEvent, OcppMessage
from detectors.context import ChargePointContext

State = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    """A rule fired; the runner turns it into an alert with the rule's metadata."""

    rule_id: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # The message the alert describes when it is not the record being processed (a correlation
    # rule that learns late that an earlier message belongs to a burst); None: the current record.
    about: OcppMessage | None = None


class Detector(Protocol):
    """A stateful check. Time comes from the records, never from the clock.

    A detector may also have ``actions: frozenset[str] | None``: the OCPP actions whose
    messages it wants (responses carry their CALL's action). The runner then hands it only
    those; absent or None, it gets every message. Connection events go to every detector.
    """

    name: str
    rule_ids: tuple[str, ...]

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]: ...

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]: ...
