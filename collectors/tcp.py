"""TCP stream reassembly per connection and direction.

Handles segments split across packets, retransmissions (overlaps are trimmed), out-of-order
arrival (buffered up to a bound) and sequence wrap-around. A hole that is never filled is
reported once (``tcp_gap``) and the bytes after it are still delivered, flagged, so the
consumer can decide whether it can resynchronise.

The common case, a segment starting exactly at ``next_seq`` while nothing is buffered, has its
own fast path (:meth:`HalfStream.advance`); :meth:`HalfStream.accept` is the general path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEQ_MOD = 1 << 32
MAX_PENDING_BYTES = 4 << 20  # out-of-order bytes buffered per direction before giving up the hole

# Bytes ready for the consumer, in order: (data, gap) where gap=True means bytes before data were lost.
Chunk = tuple[bytes, bool]


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space (signed, wrap-aware)."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


@dataclass(slots=True)
class HalfStream:
    """One direction of a TCP connection."""

    next_seq: int | None = None
    pending: dict[int, bytes] = field(default_factory=dict)
    pending_bytes: int = 0
    finished: bool = False

    def advance(self, seq: int, size: int) -> bool:
        """The fast path: when size bytes at seq simply continue the stream and nothing is
        buffered, take them (True: the caller delivers the payload as is). Same result as accept."""
        if seq != self.next_seq or self.pending:
            return False
        self.next_seq = (seq + size) % SEQ_MOD
        return True

    def accept(self, seq: int, payload: bytes) -> list[Chunk]:
        """Take one segment's payload; returns the bytes now deliverable in order."""
        out: list[Chunk] = []
        if self.next_seq is None:
            self.next_seq = seq
        offset = seq_diff(seq, self.next_seq)
        if offset < 0:
            if -offset >= len(payload):
                return out  # pure retransmission
            payload = payload[-offset:]
            offset = 0
        if offset > 0:
            self._hold(seq, payload, out)
            return out
        self._emit(payload, False, out)
        self._drain(out)
        return out

    def _hold(self, seq: int, payload: bytes, out: list[Chunk]) -> None:
        if len(payload) > len(self.pending.get(seq, b"")):
            self.pending_bytes += len(payload) - len(self.pending.get(seq, b""))
            self.pending[seq] = payload
        if self.pending_bytes > MAX_PENDING_BYTES:
            self.skip_hole(out)

    def _emit(self, payload: bytes, gap: bool, out: list[Chunk]) -> None:
        assert self.next_seq is not None
        self.next_seq = (self.next_seq + len(payload)) % SEQ_MOD
        if payload:
            out.append((payload, gap))

    def _drain(self, out: list[Chunk]) -> None:
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
                self._emit(payload[overlap:], False, out)

    def skip_hole(self, out: list[Chunk]) -> bool:
        """Give up on the missing bytes: jump to the earliest buffered segment, adding what
        becomes deliverable to out. True if there was a hole to skip."""
        if not self.pending or self.next_seq is None:
            return False
        base = self.next_seq
        first = min(self.pending, key=lambda s: seq_diff(s, base))
        payload = self.pending.pop(first)
        self.pending_bytes -= len(payload)
        self.next_seq = first
        self._emit(payload, True, out)
        self._drain(out)
        return True
