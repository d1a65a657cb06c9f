"""CW-CMD-006: a remote start for an idTag this charge point has never dealt with.

A central system normally starts remotely for a driver who uses the station (an app user
whose token the station has seen in an Authorize, a transaction or the local list). A remote
start for a token the station never saw is how someone with CSMS access (or in the middle)
gets free energy on somebody else's account, or starts sessions to block connectors.

Tokens are the collector's pseudonyms, compared as is. The rule judges only after it has
watched the charge point for ``warmup_s`` seconds of capture time (gaps in the capture longer
than ``MAX_GAP_S`` do not count as watching), so a monitor started mid-stream stays quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage, payload_id_tag
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule

UNKNOWN_TAG_REMOTE_START = "CW-CMD-006"
REMOTE_STARTS = frozenset({"RemoteStartTransaction", "RequestStartTransaction"})
TAG_SOURCES = frozenset({"Authorize", "StartTransaction", "StopTransaction", "TransactionEvent", "ReserveNow",
                         "SendLocalList"})
MAX_GAP_S = 3600.0  # a longer silence is a capture gap, not time spent watching
CALL = int(MessageType.CALL)
CSMS_TO_CP = Direction.CSMS_TO_CP
WATCH = "watch"  # the one state entry: a _Watch


@dataclass(slots=True)
class _Watch:
    """How long we watched the charge point, and the idTags it dealt with."""

    last_ts: float  # time of the latest record
    watched_s: float = 0.0  # time spent watching so far
    tags: dict[str, None] = field(default_factory=dict)  # an ordered set: most recently seen last

    def advance(self, ts: float) -> None:
        """Add the time since the previous record (gaps excluded)."""
        gap = ts - self.last_ts
        if gap > 0:
            if gap <= MAX_GAP_S:
                self.watched_s += gap
            self.last_ts = ts


class RemoteStartDetector:
    """CW-CMD-006."""

    name: str = "remote_start"
    rule_ids: tuple[str, ...] = (UNKNOWN_TAG_REMOTE_START,)
    actions: frozenset[str] | None = None  # every record counts towards the time spent watching

    def __init__(self, rules: dict[str, Rule]) -> None:
        rule = rules[UNKNOWN_TAG_REMOTE_START]
        self.warmup_s = float(rule.param("warmup_s"))
        self.max_tags = int(rule.param("max_tags"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        watch: _Watch | None = state.get(WATCH)
        if watch is None:
            state[WATCH] = _Watch(event.ts)
        else:
            watch.advance(event.ts)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        watch: _Watch | None = state.get(WATCH)
        if watch is None:
            watch = state[WATCH] = _Watch(msg.ts)
        else:  # watch.advance(msg.ts), inlined: this runs for every message
            gap = msg.ts - watch.last_ts
            if gap > 0:
                if gap <= MAX_GAP_S:
                    watch.watched_s += gap
                watch.last_ts = msg.ts
        if msg.message_type != CALL:
            return []
        action = msg.action
        if action in TAG_SOURCES:
            self._remember(watch.tags, _tags(action, msg.payload))
        elif action in REMOTE_STARTS and msg.direction is CSMS_TO_CP:
            return self._judge(msg, watch)
        return []

    def _judge(self, msg: OcppMessage, watch: _Watch) -> list[Finding]:
        tag = payload_id_tag(msg.payload)
        watched = watch.watched_s
        if tag is None or watched < self.warmup_s:
            return []
        tags = watch.tags
        if tag in tags:
            tags[tag] = tags.pop(tag)  # most recently used last: it survives the cap longest
            return []
        return [Finding(UNKNOWN_TAG_REMOTE_START,
                        f"{msg.action} for idTag {tag}, which this charge point has not seen in "
                        f"{watched / 3600:.1f}h of watching",
                        {"id_tag": tag, "watched_s": round(watched, 1), "known_tags": len(tags),
                         "payload": msg.payload})]

    def _remember(self, tags: dict[str, None], found: list[str]) -> None:
        """Add tags as most recently seen (a dict used as an ordered set), forgetting the oldest over the cap."""
        for tag in found:
            tags.pop(tag, None)
            tags[tag] = None
        while len(tags) > self.max_tags:
            del tags[next(iter(tags))]


def _tags(action: str | None, payload: Any) -> list[str]:
    if action == "SendLocalList":
        entries = payload.get("localAuthorizationList") if isinstance(payload, dict) else None
        return [t for t in map(payload_id_tag, entries) if t is not None] if isinstance(entries, list) else []
    tag = payload_id_tag(payload)
    return [tag] if tag is not None else []
