"""CW-MITM-009: the IP TTL of one side of a connection changes while the connection lives.

Every packet of a TCP connection travels the same path and starts with the same TTL, so a tap
sees one value per side for the life of the connection. The first message of each side sets
its baseline; a value not seen before on that side, at least ``min_change`` away from the
baseline, is reported once (a relay that inserted itself adds a hop; an injector starts from
its own operating system's initial TTL). Records without IP headers (logs, the proxy) carry
no TTL and are not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from chargewatch.model import ConnectionEvent, Direction, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule

TTL_CHANGE = "CW-MITM-009"
MAX_CONNECTIONS = 8  # connection sides followed per charge point (the oldest is forgotten first)
SIDES = "sides"  # the one state entry: Sides


@dataclass(slots=True)
class _Side:
    """One side of one connection: its baseline TTL, the message that set it, and every TTL seen."""

    baseline: int
    message_id: str
    ts: float
    seen: set[int]


# (connection id, direction) -> its side
Sides = dict[tuple[str, Direction], _Side]


class HopCountDetector:
    """CW-MITM-009."""

    name: str = "mitm_ttl"
    rule_ids: tuple[str, ...] = (TTL_CHANGE,)

    def __init__(self, rules: dict[str, Rule]) -> None:
        rule = rules[TTL_CHANGE]
        self.min_change = int(rule.param("min_change"))
        self.max_values = int(rule.param("max_values"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        sides: Sides | None = state.get(SIDES)
        if event.kind == "closed" and sides:
            sides.pop((event.connection_id, Direction.CP_TO_CSMS), None)
            sides.pop((event.connection_id, Direction.CSMS_TO_CP), None)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        ttl = msg.ip_ttl
        if ttl is None:
            return []
        sides: Sides | None = state.get(SIDES)
        if sides is None:
            sides = state[SIDES] = {}
        key = (msg.connection_id, msg.direction)
        side = sides.get(key)
        if side is None:
            while len(sides) >= MAX_CONNECTIONS:
                del sides[next(iter(sides))]
            sides[key] = _Side(ttl, msg.message_id, msg.ts, {ttl})
            return []
        if ttl in side.seen:  # the common case: a TTL this side has shown before
            return []
        seen = side.seen
        if len(seen) >= self.max_values:
            return []
        seen.add(ttl)
        baseline, base_id, base_ts = side.baseline, side.message_id, side.ts
        change = ttl - baseline
        if abs(change) < self.min_change:
            return []
        return [Finding(TTL_CHANGE,
                        f"{msg.sender}'s packets on this connection now arrive with TTL {ttl}, not {baseline} "
                        f"as since its message {base_id} ({msg.ts - base_ts:.1f}s earlier)",
                        {"sender": msg.sender, "ttl": ttl, "baseline_ttl": baseline, "change": change,
                         "baseline_message_id": base_id, "baseline_ts": base_ts,
                         "ttls_seen": sorted(seen), "source_ip": msg.src_ip})]
