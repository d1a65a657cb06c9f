"""TCP stream reassembly per connection and direction.

Handles segments split across packets, retransmissions (overlaps are trimmed), out-of-order
arrival (buffered up to a bound) and sequence wrap-around. A hole that is never filled is
reported once (``tcp_gap``) and the bytes after it are still delivered, flagged, so the
consumer can decide whether it can resynchronise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SEQ_MOD = 1 << 32
MAX_PENDING_BYTES = 4 << 20  # out-of-order bytes buffered per direction before giving up the hole


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space (signed, wrap-aware)."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


@dataclass
class HalfStream:
    """One direction of a TCP connection."""

    next_seq: int | None = None
    pending: dict[int, bytes] = field(default_factory=dict)
    pending_bytes: int = 0
    finished: bool = False

    def accept(self, seq: int, payload: bytes, deliver: Callable[[bytes, bool], None]) -> None:
        """Take one segment's payload; deliver in-order bytes (gap=True after a lost hole)."""
        if self.next_seq is None:
            self.next_seq = seq
        offset = seq_diff(seq, self.next_seq)
        if offset < 0:
            if -offset >= len(payload):
                return  # pure retransmission
            payload = payload[-offset:]
            offset = 0
        if offset > 0:
            self._hold(seq, payload, deliver)
            return
        self._emit(payload, deliver, gap=False)
        self._drain(deliver)

    def _hold(self, seq: int, payload: bytes, deliver: Callable[[bytes, bool], None]) -> None:
        if len(payload) > len(self.pending.get(seq, b"")):
            self.pending_bytes += len(payload) - len(self.pending.get(seq, b""))
            self.pending[seq] = payload
        if self.pending_bytes > MAX_PENDING_BYTES:
            self.skip_hole(deliver)

    def _emit(self, payload: bytes, deliver: Callable[[bytes, bool], None], gap: bool) -> None:
        assert self.next_seq is not None
        self.next_seq = (self.next_seq + len(payload)) % SEQ_MOD
        if payload:
            deliver(payload, gap)

    def _drain(self, deliver: Callable[[bytes, bool], None]) -> None:
        while self.pending:
            assert self.next_seq is not None
            ready = None
            for seq in self.pending:
                if seq_diff(seq, self.next_seq) <= 0:
                    ready = seq
                    break
            if ready is None:
                return
            payload = self.pending.pop(ready)
            self.pending_bytes -= len(payload)
            overlap = -seq_diff(ready, self.next_seq)
            if overlap < len(payload):
                self._emit(payload[overlap:], deliver, gap=False)

    def skip_hole(self, deliver: Callable[[bytes, bool], None]) -> bool:
        """Give up on the missing bytes: jump to the earliest buffered segment. True if any."""
        if not self.pending or self.next_seq is None:
            return False
        base = self.next_seq
        first = min(self.pending, key=lambda s: seq_diff(s, base))
        payload = self.pending.pop(first)
        self.pending_bytes -= len(payload)
        self.next_seq = first
        self._emit(payload, deliver, gap=True)
        self._drain(deliver)
        return True
