"""Connection tracking: packets in, per-connection ordered bytes out to a ConnectionDecoder.

The same :class:`PacketProcessor` serves pcap files and live capture, so both decode alike.

Connections are found by flow key (raw address and port bytes, see :mod:`collectors.packets`);
both directions' keys name the same :class:`TcpConnection`. Most packets take the fast path of
:meth:`PacketProcessor.packet`: a data segment of a known connection, in order, handed straight
to its decoder. Everything else (SYN, FIN, RST, new flows, out-of-order data) takes the general
path, which is the reference behaviour the fast path must match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from collectors.arp import ArpTracker
from collectors.frames import DecodeContext
from collectors.packets import ACK, FIN, RST, SYN, PacketError, PacketSkip, endpoints, parse_segment, reverse_key
from collectors.session import ConnectionDecoder
from collectors.stats import CollectorStats, DeadLetter
from collectors.tcp import SEQ_MOD, HalfStream

_CONTROL = SYN | FIN | RST


@dataclass(eq=False, slots=True)
class TcpConnection:
    """One tracked TCP connection; directions are named by their flow keys."""

    keys: tuple[bytes, bytes]  # the flow keys of both directions (the first packet's first)
    client: bytes | None  # the key of the client -> server direction, once known
    start_ts: float
    halves: dict[bytes, HalfStream] = field(default_factory=dict)
    fins: set[bytes] = field(default_factory=set)
    decoder: ConnectionDecoder | None = None
    midstream: bool = False


class PacketProcessor:
    """Feeds raw link-layer frames through TCP reassembly into connection decoders."""

    def __init__(self, ctx: DecodeContext) -> None:
        self.ctx = ctx
        self.connections: dict[bytes, TcpConnection] = {}  # both flow keys of each connection
        # Packet-level counters belong to share 0 of a parallel analysis; the others count into scratch.
        self.stats = ctx.stats if ctx.primary else CollectorStats()
        self.arp = ArpTracker(ctx, self.stats)
        # Set by a front end that can drop a connection's data segments before they reach Python
        # (``ignore(key)``: that flow and its reverse, until their next SYN, FIN or RST) and must
        # hear when such a connection is gone (``unignore(key)``).
        self.ignore: Callable[[bytes], None] | None = None
        self.unignore: Callable[[bytes], None] | None = None

    def packet(self, number: int, ts: float, linktype: int, data: bytes) -> None:
        """Process one captured frame (number is its 1-based index in the source)."""
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(data)
        try:
            key, seq, flags, payload, ttl = parse_segment(linktype, data)
        except PacketSkip as skip:
            if skip.reason == "arp":
                self.arp.frame(number, ts, linktype, data)
            else:
                stats.ignored[skip.reason] += 1
            return
        except PacketError as err:
            stats.error(err.reason)
            if self.ctx.primary:
                source = f"{self.ctx.source}#{number}"
                self.ctx.sink.dead_letter(DeadLetter.of(ts, err.reason, "malformed packet", source, data))
            return
        if not payload and not flags & _CONTROL:
            return  # a bare ACK changes nothing, whatever connection it belongs to
        self.segment(number, ts, key, seq, flags, payload, ttl)

    def segment(self, number: int, ts: float, key: bytes, seq: int, flags: int, payload: bytes, ttl: int) -> None:
        """Process one parsed TCP segment (not a bare ACK) of packet number; its packet is
        already counted (the native front end parses, counts and calls this)."""
        conn = self.connections.get(key)
        if conn is None or flags & _CONTROL:
            self._general(conn, key, seq, flags, payload, ts, number, ttl)
            return
        decoder = conn.decoder
        if decoder is None:
            self._payload(conn, key, seq, payload, ts, number, ttl)
            return
        if decoder.state == "foreign":
            # Another process of a parallel analysis decodes this connection; the native front
            # end can drop its data before it reaches Python.
            if self.ignore is not None:
                self.ignore(key)
            return
        half = conn.halves.get(key)
        if half is not None and half.advance(seq, len(payload)):
            decoder.feed(key == conn.client, payload, ts, number, ttl, False)
        else:
            self._payload(conn, key, seq, payload, ts, number, ttl)

    def _general(self, conn: TcpConnection | None, key: bytes, seq: int, flags: int, payload: bytes, ts: float,
                 number: int, ttl: int) -> None:
        """Any segment: connection set-up and tear-down, and the first packets of a flow."""
        if conn is None and not payload and not flags & SYN:
            return  # a bare ACK/FIN/RST of a connection already closed (or never seen): nothing to track
        conn = self._connection(conn, key, flags, ts)
        if flags & SYN:
            conn.halves[key] = HalfStream(next_seq=(seq + 1) % SEQ_MOD)
        if payload:
            self._payload(conn, key, seq, payload, ts, number, ttl)
        if flags & (FIN | RST):
            self._finish(conn, key, flags, ts)

    def _connection(self, conn: TcpConnection | None, key: bytes, flags: int, ts: float) -> TcpConnection:
        is_syn = flags & SYN and not flags & ACK
        if conn is not None and is_syn and (conn.fins or conn.decoder is not None):
            self._close(conn, ts, observed=True)  # port reuse: a new connection
            conn = None
        if conn is None:
            reverse = reverse_key(key)
            client = key if is_syn else (reverse if flags & SYN else None)
            conn = TcpConnection(keys=(key, reverse), client=client, start_ts=ts)
            self.connections[key] = self.connections[reverse] = conn
            self.stats.tcp_connections += 1
        return conn

    def _payload(self, conn: TcpConnection, key: bytes, seq: int, payload: bytes, ts: float, number: int,
                 ttl: int) -> None:
        if conn.midstream or (conn.decoder is not None and conn.decoder.state == "foreign"):
            return
        if conn.client is None:
            if not payload.startswith(b"GET "):
                conn.midstream = True
                self.stats.ignored["midstream_connection"] += 1
                return
            conn.client = key
        if conn.decoder is None:
            client, server = endpoints(conn.client)
            conn.decoder = ConnectionDecoder(self.ctx, client, server, conn.start_ts)
        half = conn.halves.get(key)
        if half is None:
            half = conn.halves[key] = HalfStream()
        from_client = key == conn.client
        for chunk, gap in half.accept(seq, payload):
            conn.decoder.feed(from_client, chunk, ts, number, ttl, gap)

    def _finish(self, conn: TcpConnection, key: bytes, flags: int, ts: float) -> None:
        conn.fins.add(key)
        if flags & RST or len(conn.fins) == 2:
            self._close(conn, ts, observed=True)

    def _close(self, conn: TcpConnection, ts: float, observed: bool) -> None:
        decoder = conn.decoder
        if decoder is not None:
            for key, half in conn.halves.items():
                chunks: list[tuple[bytes, bool]] = []
                while half.skip_hole(chunks):
                    pass
                for chunk, gap in chunks:  # no packet of their own: they keep the last packet's reference
                    decoder.feed(key == conn.client, chunk, ts, decoder.last_number, None, gap)
            decoder.close(ts, observed)
        for key in conn.keys:
            self.connections.pop(key, None)
        if self.unignore is not None:
            self.unignore(conn.keys[0])

    def finish(self, ts: float) -> None:
        """End of input: flush every connection still open (not reported as closed)."""
        for conn in {id(c): c for c in self.connections.values()}.values():
            self._close(conn, ts, observed=False)
