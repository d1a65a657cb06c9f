"""OCPP-J text messages of one connection into records: the step every collector shares.

The pcap and live collectors reach it after TCP reassembly and WebSocket decoding; the log
collector and the mirroring proxy hand it the frames they see. Whatever the source, a message
goes through the same steps: OCPP-J decoding (:mod:`collectors.ocppj`), answers inheriting the
action of the CALL they answer, redaction, counting, and a record or a counted dead letter in
the sink.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chargewatch.catalog import ActionInfo, Catalog
from chargewatch.model import Direction, OcppMessage, Record
from chargewatch.redaction import Redactor
from collectors.ocppj import CALL, RESPONSES, SEND, FrameError, decode_frame
from collectors.stats import CollectorStats, DeadLetter

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CP_TO_CSMS = Direction.CP_TO_CSMS
_CSMS_TO_CP = Direction.CSMS_TO_CP

Endpoint = tuple[str, int]
MAX_PENDING = 1024  # unanswered CALL ids remembered per connection (answers beyond are "unmatched")


class Sink(Protocol):
    """Where a collector puts what it decoded."""

    def record(self, record: Record) -> None: ...

    def dead_letter(self, letter: DeadLetter) -> None: ...


@dataclass
class DecodeContext:
    """Everything a connection decoder needs from its collector."""

    sink: Sink
    stats: CollectorStats
    redactor: Redactor
    catalog: Catalog
    source: str
    max_message: int
    # Parallel analysis: this process decodes the charge points that hash to share_index (of
    # share_count); share 0 also reports what belongs to no charge point (packets, streams
    # that are not OCPP), so nothing is counted twice.
    share_index: int = 0
    share_count: int = 1
    # Use the native extension's WebSocket frame decoder when it is installed (False: the Python
    # reference, as ``[collector] pcap_decoder = "python"`` asks).
    native: bool = True

    def __post_init__(self) -> None:
        self._bounds = share_bounds(self.share_index, self.share_count)

    @property
    def primary(self) -> bool:
        return self.share_index == 0

    def owns(self, cp_id: str) -> bool:
        """Whether this process decodes the connections of charge point cp_id."""
        if self.share_count == 1:
            return True
        low, high = self._bounds
        return low <= zlib.crc32(cp_id.encode()) % SHARE_BUCKETS < high


#: Charge points are split over the shares of a parallel analysis by a hash of their identity
#: into this many buckets, in contiguous ranges.
SHARE_BUCKETS = 1 << 16
#: Share 0 (the parent process) also merges the other shares' correlation records and runs the
#: correlation stages: it takes this fraction of a full share of the charge points. 0.85 balances
#: the two processes on the benchmark capture (``bench/bench_analyze.py``).
PRIMARY_WEIGHT = 0.85


def share_bounds(index: int, count: int) -> tuple[int, int]:
    """The bucket range [low, high) of share index of count."""
    total = PRIMARY_WEIGHT + (count - 1)

    def edge(i: int) -> int:
        return SHARE_BUCKETS if i >= count else round(SHARE_BUCKETS * (PRIMARY_WEIGHT + i - 1) / total) if i else 0

    return edge(index), edge(index + 1)


class MessageBuilder:
    """Builds the records of one connection's OCPP-J messages (client = the charge point)."""

    def __init__(self, ctx: DecodeContext, connection: str, client: Endpoint, server: Endpoint) -> None:
        self.ctx = ctx
        self.connection = connection
        self.client, self.server = client, server
        self.cp_id: str | None = None
        self.version: str | None = None
        # The catalog's actions of the negotiated version (None: a version the catalog does not know).
        self._actions: dict[str, ActionInfo] | None = None
        self._pending: dict[tuple[bool, str], str] = {}

    def negotiated(self, version: str | None) -> None:
        """The OCPP version the connection's upgrade settled (cp_id is set once the request names it)."""
        self.version = version
        self._actions = self.ctx.catalog.actions.get(version) if version is not None else None

    def pending_calls(self) -> list[tuple[bool, str, str]]:
        """The unanswered CALLs (sent by the client?, message id, action): all a collector that
        restarts mid-connection must save to pair the answers that come after the restart."""
        return [(from_client, mid, action) for (from_client, mid), action in self._pending.items()]

    def restore_pending(self, calls: list[tuple[bool, str, str]]) -> None:
        """Unanswered CALLs saved by :meth:`pending_calls` before a restart."""
        for from_client, mid, action in calls:
            self._pending[(from_client, mid)] = action

    def message(self, from_client: bool, data: bytes, ts: float, source: str, frame_size: int,
                transport_flags: Sequence[str] = (), ttl: int | None = None) -> None:
        """One WebSocket text message (data: its bytes) into the sink, as a record or a dead letter.

        transport_flags: what the transport noticed about the frame (e.g. ``binary_frame``).
        """
        try:
            frame = decode_frame(data, self.version)
        except FrameError as exc:
            self.dead(ts, exc.kind, str(exc), data, source)
            return
        flags = frame.flags
        if transport_flags:
            flags += transport_flags
        action = self._action(from_client, frame.message_type, frame.message_id, frame.action, flags)
        direction = _CP_TO_CSMS if from_client else _CSMS_TO_CP
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        payload = self.ctx.redactor.payload(action, frame.payload, data)
        stats = self.ctx.stats
        if flags:
            stats.flags.update(flags)
        stats.messages += 1
        # Positional, in field order (keywords cost more than half a microsecond per message):
        self.ctx.sink.record(OcppMessage(
            ts, self.cp_id or "", direction, src[0], src[1], dst[0], dst[1],  # ts .. dst_port
            self.version, frame.message_type, frame.message_id, action, payload,  # ocpp_version .. payload
            frame_size, self.connection, source, tuple(flags), ttl))  # frame_size .. ip_ttl

    def dead(self, ts: float, kind: str, detail: str, raw: bytes, source: str) -> None:
        """A counted dead letter about this connection."""
        if self.cp_id is None and not self.ctx.primary:
            return  # not attributed to a charge point: share 0 reports it
        self.ctx.stats.error(kind)
        self.ctx.sink.dead_letter(DeadLetter.of(ts, kind, detail, source, raw, self.connection, self.cp_id))

    def _action(self, from_client: bool, mtype: int, mid: str, action: str | None, flags: list[str]) -> str | None:
        if mtype == CALL:
            assert action is not None
            pending = self._pending
            pending[(from_client, mid)] = action
            if len(pending) > MAX_PENDING:
                del pending[next(iter(pending))]
            if self._actions is not None and action not in self._actions:
                flags.append("unknown_action")
            return action
        if mtype == SEND:
            return action
        if mtype in RESPONSES:
            answered = self._pending.pop((not from_client, mid), None)
            if answered is None:
                flags.append("unmatched_response")
            return answered
        return None  # CALLRESULTERROR answers a CALLRESULT, which carries no action
