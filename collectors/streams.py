"""Connection tracking: packets in, per-connection ordered bytes out to a ConnectionDecoder.

The same :class:`PacketProcessor` serves pcap files and live capture, so both decode alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from collectors.packets import ACK, FIN, RST, SYN, PacketError, PacketSkip, parse_segment
from collectors.session import ConnectionDecoder, DecodeContext
from collectors.stats import CollectorStats, DeadLetter
from collectors.tcp import HalfStream

Endpoint = tuple[str, int]
FlowKey = tuple[Endpoint, Endpoint]


@dataclass
class TcpConnection:
    """One tracked TCP connection."""

    client: Endpoint | None
    start_ts: float
    halves: dict[Endpoint, HalfStream] = field(default_factory=dict)
    fins: set[Endpoint] = field(default_factory=set)
    decoder: ConnectionDecoder | None = None
    midstream: bool = False


def _feeder(decoder: ConnectionDecoder, from_client: bool, ts: float, ref: str) -> Callable[[bytes, bool], None]:
    """The delivery callback of one direction: reassembled bytes into the connection decoder."""

    def feed(data: bytes, gap: bool) -> None:
        decoder.feed(from_client, data, ts, ref, gap)

    return feed


def _key(a: Endpoint, b: Endpoint) -> FlowKey:
    return (a, b) if a <= b else (b, a)


class PacketProcessor:
    """Feeds raw link-layer frames through TCP reassembly into connection decoders."""

    def __init__(self, ctx: DecodeContext) -> None:
        self.ctx = ctx
        self.connections: dict[FlowKey, TcpConnection] = {}
        # Packet-level counters belong to share 0 of a parallel analysis; the others count into scratch.
        self.stats = ctx.stats if ctx.primary else CollectorStats()

    def packet(self, number: int, ts: float, linktype: int, data: bytes) -> None:
        """Process one captured frame (number is its 1-based index in the source)."""
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(data)
        try:
            seg = parse_segment(linktype, data)
        except PacketSkip as skip:
            stats.ignored[skip.reason] += 1
            return
        except PacketError as err:
            stats.error(err.reason)
            if self.ctx.primary:
                self.ctx.sink.dead_letter(DeadLetter.of(ts, err.reason, "malformed packet", self._ref(number), data))
            return
        src, dst = (seg.src, seg.sport), (seg.dst, seg.dport)
        if not seg.payload and not seg.flags & SYN and _key(src, dst) not in self.connections:
            return  # a bare ACK/FIN/RST of a connection already closed (or never seen): nothing to track
        conn = self._connection(src, dst, seg.flags, ts)
        ref = self._ref(number)
        if seg.flags & SYN:
            conn.halves[src] = HalfStream(next_seq=(seg.seq + 1) % (1 << 32))
        if seg.payload:
            self._payload(conn, src, dst, seg.seq, seg.payload, ts, ref)
        if seg.flags & (FIN | RST):
            self._finish(conn, src, dst, seg.flags, ts)

    def _ref(self, number: int) -> str:
        return f"{self.ctx.source}#{number}"

    def _connection(self, src: Endpoint, dst: Endpoint, flags: int, ts: float) -> TcpConnection:
        key = _key(src, dst)
        conn = self.connections.get(key)
        is_syn = flags & SYN and not flags & ACK
        if conn is not None and is_syn and (conn.fins or conn.decoder is not None):
            self._close(key, conn, ts, observed=True)  # port reuse: a new connection
            conn = None
        if conn is None:
            client = src if is_syn else (dst if flags & SYN else None)
            conn = TcpConnection(client=client, start_ts=ts)
            self.connections[key] = conn
            self.stats.tcp_connections += 1
        return conn

    def _payload(self, conn: TcpConnection, src: Endpoint, dst: Endpoint, seq: int, payload: bytes,
                 ts: float, ref: str) -> None:
        if conn.midstream or (conn.decoder is not None and conn.decoder.state == "foreign"):
            return
        if conn.client is None:
            if not payload.startswith(b"GET "):
                conn.midstream = True
                self.stats.ignored["midstream_connection"] += 1
                return
            conn.client = src
        if conn.decoder is None:
            server = dst if conn.client == src else src
            conn.decoder = ConnectionDecoder(self.ctx, conn.client, server, conn.start_ts)
        half = conn.halves.setdefault(src, HalfStream())
        half.accept(seq, payload, _feeder(conn.decoder, src == conn.client, ts, ref))

    def _finish(self, conn: TcpConnection, src: Endpoint, dst: Endpoint, flags: int, ts: float) -> None:
        conn.fins.add(src)
        if flags & RST or len(conn.fins) == 2:
            self._close(_key(src, dst), conn, ts, observed=True)

    def _close(self, key: FlowKey, conn: TcpConnection, ts: float, observed: bool) -> None:
        decoder = conn.decoder
        if decoder is not None:
            for endpoint, half in conn.halves.items():
                feed = _feeder(decoder, endpoint == conn.client, ts, decoder.last_ref)
                while half.skip_hole(feed):
                    pass
            decoder.close(ts, observed)
        self.connections.pop(key, None)

    def finish(self, ts: float) -> None:
        """End of input: flush every connection still open (not reported as closed)."""
        for key, conn in list(self.connections.items()):
            self._close(key, conn, ts, observed=False)
