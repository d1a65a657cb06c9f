"""Craft pcap/pcapng captures of OCPP-J over WebSocket traffic, for tests and benchmarks.

Standard library only. Builds every layer by hand: Ethernet, IPv4 (or IPv6), TCP with
correct checksums and sequence/acknowledgement numbers, the HTTP/1.1 upgrade, RFC 6455
WebSocket frames (masking, 7/16/64-bit lengths, fragmentation, control frames) and the
RFC 7692 permessage-deflate extension, with or without context takeover.

Typical use::

    with PcapWriter("x.pcap") as w:
        ocpp_session(w, [(True, '[2,"1","Heartbeat",{}]'),
                         (False, '[3,"1",{"currentTime":"2024-01-01T00:00:00Z"}]')],
                     deflate=True)

Lower-level pieces (:class:`TcpFlow`, :class:`WsSession`, :func:`ws_frame`, ...) let a test
craft odd traffic: retransmissions, out-of-order segments, frames split across segments,
forced 64-bit lengths, unmasked client frames, interleaved pings.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import BinaryIO, Self

__all__ = [
    "DEFAULT_WS_KEY",
    "MSS",
    "DeflateCompressor",
    "PcapWriter",
    "TcpFlow",
    "WsSession",
    "http_upgrade_request",
    "http_upgrade_response",
    "ocpp_session",
    "split_sizes",
    "ws_accept",
    "ws_frame",
]

#: Largest TCP payload one crafted segment carries (fits an IPv4 datagram with room to spare).
MSS = 65000
#: The sample key of RFC 6455 section 1.3; the default Sec-WebSocket-Key.
DEFAULT_WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_LINKTYPE_ETHERNET = 1
_LITTLE = sys.byteorder == "little"

# TCP flag bits.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# WebSocket opcodes.
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# --------------------------------------------------------------------------- capture files


class PcapWriter:
    """Write link-layer frames to a classic pcap or a pcapng file.

    Classic pcap uses linktype 1 (Ethernet) and microsecond timestamps (nanosecond when
    ``nanosecond=True``, magic ``a1b23c4d``). pcapng writes one Section Header Block, one
    Interface Description Block (Ethernet; ``if_tsresol`` 9 when ``nanosecond``) and one
    Enhanced Packet Block per frame. Use as a context manager; ``packets`` counts frames.
    """

    def __init__(
        self,
        dest: str | BinaryIO,
        *,
        pcapng: bool = False,
        nanosecond: bool = False,
        snaplen: int = 262144,
    ) -> None:
        """Open ``dest`` (a path, or a binary file object left open by close); write the header."""
        if isinstance(dest, str):
            self._fh: BinaryIO = open(dest, "wb", buffering=1 << 20)  # noqa: SIM115
            self._owns = True
        else:
            self._fh = dest
            self._owns = False
        self.pcapng = pcapng
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.packets = 0
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        self._write = self._fh.write
        if pcapng:
            self._write_pcapng_header()
        else:
            magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
            self._write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, _LINKTYPE_ETHERNET))

    def _write_pcapng_header(self) -> None:
        shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
        self._write(struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body)
        self._write(struct.pack("<I", 12 + len(shb_body)))
        opts = b""
        if self.nanosecond:
            opts = struct.pack("<HHB3x", 9, 1, 9)  # if_tsresol = 10^-9
        opts += struct.pack("<HH", 0, 0)  # opt_endofopt
        idb_body = struct.pack("<HHI", _LINKTYPE_ETHERNET, 0, self.snaplen) + opts
        total = 12 + len(idb_body)
        self._write(struct.pack("<II", 1, total) + idb_body + struct.pack("<I", total))

    def write(self, ts: float, frame: bytes) -> None:
        """Append one frame captured at ``ts`` (seconds since the epoch, float)."""
        units = round(ts * self._scale)
        orig = len(frame)
        if orig > self.snaplen:
            frame = frame[: self.snaplen]
        caplen = len(frame)
        if self.pcapng:
            pad = -caplen & 3
            total = 32 + caplen + pad
            self._write(
                struct.pack(
                    "<IIIIIII",
                    6,
                    total,
                    0,
                    units >> 32,
                    units & 0xFFFFFFFF,
                    caplen,
                    orig,
                )
                + frame
                + b"\0" * pad
                + struct.pack("<I", total)
            )
        else:
            sec, frac = divmod(units, self._scale)
            self._write(struct.pack("<IIII", sec, frac, caplen, orig) + frame)
        self.packets += 1

    def close(self) -> None:
        """Flush, and close the file if this writer opened it."""
        self._fh.flush()
        if self._owns:
            self._fh.close()

    def __enter__(self) -> Self:
        """Return the writer itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the writer (see :meth:`close`)."""
        self.close()


# --------------------------------------------------------------------------- IP / TCP


def _csum_sum(data: bytes) -> int:
    """One's-complement sum of ``data`` as native-order 16-bit words (unfolded)."""
    if len(data) & 1:
        data += b"\0"
    return sum(array("H", data))


def _csum_finish(total: int) -> bytes:
    """Fold, complement and return the checksum as two bytes in network order."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("=H", ~total & 0xFFFF)


def _ip_bytes(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


class _Endpoint:
    __slots__ = ("ip", "ip_id", "isn", "last", "mac", "port", "seq")

    def __init__(self, ip: str, port: int, mac: str, isn: int) -> None:
        self.ip = _ip_bytes(ip)
        self.port = port
        self.mac = _mac(mac)
        self.isn = isn
        self.seq = isn
        self.ip_id = isn & 0xFFFF
        self.last: tuple[int, bytes, int] | None = None  # (seq, payload, flags) of last data


def split_sizes(length: int, segments: Sequence[int] | None, mss: int = MSS) -> list[int]:
    """Split ``length`` bytes by the given sizes; the rest (or all, if None) goes in MSS chunks.

    Raises ValueError when a size is not positive, exceeds ``mss``, or the sizes add up to
    more than ``length``.
    """
    sizes: list[int] = []
    used = 0
    for size in segments or ():
        if size <= 0 or size > mss:
            raise ValueError(f"segment size {size} outside 1..{mss}")
        sizes.append(size)
        used += size
    if used > length:
        raise ValueError(f"segment sizes add up to {used} > {length} bytes of data")
    rest = length - used
    while rest > 0:
        size = min(rest, mss)
        sizes.append(size)
        rest -= size
    if not sizes:
        sizes.append(0)
    return sizes


class TcpFlow:
    """One TCP connection between ``client`` and ``server``, over IPv4 (or IPv6) and Ethernet.

    Tracks sequence and acknowledgement numbers of both sides and computes IP and TCP
    checksums. Every packet is written at the flow's clock ``now`` (seconds), which each
    packet advances by ``tick``; methods taking ``t`` move the clock there first.
    ``packets`` counts the frames this flow wrote.
    """

    def __init__(
        self,
        writer: PcapWriter,
        client: tuple[str, int] = ("127.0.0.1", 40000),
        server: tuple[str, int] = ("127.0.0.1", 9000),
        t0: float = 1_700_000_000.0,
        *,
        tick: float = 0.00002,
        window: int = 65535,
        client_mac: str = "02:00:00:00:00:01",
        server_mac: str = "02:00:00:00:00:02",
        client_isn: int | None = None,
        server_isn: int | None = None,
        ttl: int = 64,
    ) -> None:
        """Describe the connection; nothing is written until a method sends a packet.

        ``ttl`` is the IPv4 TTL / IPv6 hop limit of every packet; set ``flow.ttl`` to change it.
        """
        self.writer = writer
        self.ttl = ttl
        self.now = t0
        self.tick = tick
        self.window = window
        self.packets = 0
        if client_isn is None:
            client_isn = (zlib.crc32(f"{client}{server}c".encode()) * 2654435761) & 0xFFFFFFFF
        if server_isn is None:
            server_isn = (zlib.crc32(f"{client}{server}s".encode()) * 2654435761) & 0xFFFFFFFF
        self.c = _Endpoint(client[0], client[1], client_mac, client_isn)
        self.s = _Endpoint(server[0], server[1], server_mac, server_isn)
        self.v6 = len(self.c.ip) == 16
        if self.v6 != (len(self.s.ip) == 16):
            raise ValueError("client and server must both be IPv4 or both IPv6")
        self._ethertype = b"\x86\xdd" if self.v6 else b"\x08\x00"
        self._eth = {
            True: self.s.mac + self.c.mac + self._ethertype,
            False: self.c.mac + self.s.mac + self._ethertype,
        }
        # Constant parts of the checksum pseudo-header sums, per direction.
        self._pseudo = _csum_sum(self.c.ip + self.s.ip) + (6 << 8 if _LITTLE else 6)

    # -- raw packet

    def _sides(self, from_client: bool) -> tuple[_Endpoint, _Endpoint]:
        return (self.c, self.s) if from_client else (self.s, self.c)

    def packet(
        self,
        from_client: bool,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        options: bytes = b"",
        t: float | None = None,
    ) -> None:
        """Write one TCP segment as is (no seq bookkeeping); ``seq``/``ack`` default to current."""
        src, dst = self._sides(from_client)
        if t is not None:
            self.now = t
        if seq is None:
            seq = src.seq
        if ack is None:
            ack = dst.seq if flags & ACK else 0
        if len(options) & 3:
            options += b"\x01" * (-len(options) & 3)  # NOP padding
        hlen = 20 + len(options)
        tcp = (
            struct.pack(
                "!HHIIBBH",
                src.port,
                dst.port,
                seq & 0xFFFFFFFF,
                ack & 0xFFFFFFFF,
                (hlen // 4) << 4,
                flags,
                self.window,
            )
            + b"\0\0\0\0"
            + options
        )
        seg_len = hlen + len(payload)
        total = self._pseudo + _csum_sum(tcp + struct.pack("!H", seg_len) + payload)
        tcp = tcp[:16] + _csum_finish(total) + tcp[18:]
        if self.v6:
            ip = struct.pack("!IHBB", 0x60000000, seg_len, 6, self.ttl) + src.ip + dst.ip
        else:
            src.ip_id = (src.ip_id + 1) & 0xFFFF
            head = struct.pack("!BBHHHBB", 0x45, 0, 20 + seg_len, src.ip_id, 0x4000, self.ttl, 6)
            addrs = src.ip + dst.ip
            ip = head + _csum_finish(_csum_sum(head + addrs)) + addrs
        self.writer.write(self.now, self._eth[from_client] + ip + tcp + payload)
        self.now += self.tick
        self.packets += 1

    # -- connection life cycle

    def handshake(self, t: float | None = None) -> None:
        """SYN, SYN/ACK, ACK (the SYNs carry an MSS option)."""
        if t is not None:
            self.now = t
        mss_opt = struct.pack("!BBH", 2, 4, 65495)
        self.c.seq = self.c.isn
        self.s.seq = self.s.isn
        self.packet(True, SYN, options=mss_opt)
        self.c.seq += 1
        self.packet(False, SYN | ACK, options=mss_opt)
        self.s.seq += 1
        self.packet(True, ACK)

    def send(
        self,
        from_client: bool,
        data: bytes,
        *,
        segments: Sequence[int] | None = None,
        t: float | None = None,
        ack: bool = False,
    ) -> None:
        """Send ``data`` in order, split by ``segments`` sizes (see :func:`split_sizes`).

        Each segment carries ACK, the last one also PSH. With ``ack=True`` the peer then
        answers with one pure ACK, as a real stack would.
        """
        if t is not None:
            self.now = t
        src, _ = self._sides(from_client)
        sizes = split_sizes(len(data), segments)
        off = 0
        for i, size in enumerate(sizes):
            chunk = data[off : off + size]
            flags = ACK | PSH if i == len(sizes) - 1 else ACK
            src.last = (src.seq, chunk, flags)
            self.packet(from_client, flags, chunk)
            src.seq += size
            off += size
        if ack:
            self.ack(not from_client)

    def ack(self, from_client: bool, t: float | None = None) -> None:
        """A pure ACK from one side acknowledging everything the other sent."""
        self.packet(from_client, ACK, t=t)

    def retransmit_last(self, from_client: bool, t: float | None = None) -> None:
        """Re-emit the last data segment sent by that side, byte for byte (a retransmission)."""
        src, _ = self._sides(from_client)
        if src.last is None:
            raise ValueError("no data segment to retransmit")
        seq, chunk, flags = src.last
        self.packet(from_client, flags, chunk, seq=seq, t=t)

    def send_out_of_order(
        self,
        from_client: bool,
        data: bytes,
        order: Sequence[int],
        segments: Sequence[int],
        *,
        t: float | None = None,
    ) -> None:
        """Split ``data`` by ``segments``; emit the pieces in ``order`` (indices), each at its seq."""
        if t is not None:
            self.now = t
        src, _ = self._sides(from_client)
        sizes = split_sizes(len(data), segments)
        if sorted(order) != list(range(len(sizes))):
            raise ValueError(f"order must be a permutation of 0..{len(sizes) - 1}")
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        base = src.seq
        for idx in order:
            chunk = data[offsets[idx] : offsets[idx + 1]]
            flags = ACK | PSH if idx == len(sizes) - 1 else ACK
            src.last = (base + offsets[idx], chunk, flags)
            self.packet(from_client, flags, chunk, seq=base + offsets[idx])
        src.seq = base + len(data)

    def close(self, from_client: bool = True, t: float | None = None) -> None:
        """FIN/ACK from one side, FIN/ACK from the other, final ACK."""
        if t is not None:
            self.now = t
        a, b = self._sides(from_client)
        self.packet(from_client, FIN | ACK)
        a.seq += 1
        self.packet(not from_client, FIN | ACK)
        b.seq += 1
        self.packet(from_client, ACK)

    def reset(self, from_client: bool, t: float | None = None) -> None:
        """Abort the connection with RST/ACK from one side."""
        self.packet(from_client, RST | ACK, t=t)


# --------------------------------------------------------------------------- HTTP upgrade


def ws_accept(key: str) -> str:
    """The Sec-WebSocket-Accept value answering Sec-WebSocket-Key ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode()


def http_upgrade_request(
    path: str,
    subprotocols: Sequence[str],
    *,
    host: str = "127.0.0.1:9000",
    key: str = DEFAULT_WS_KEY,
    basic_auth: tuple[str, str] | None = None,
    deflate: bool = False,
    deflate_params: str = "",
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The client's HTTP/1.1 GET asking to upgrade to WebSocket (RFC 6455 section 4.1).

    ``deflate`` offers permessage-deflate with ``client_max_window_bits``; ``deflate_params``
    (e.g. ``"client_no_context_takeover; server_no_context_takeover"``) is appended.
    """
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    if deflate:
        ext = "permessage-deflate; client_max_window_bits"
        if deflate_params:
            ext += "; " + deflate_params
        lines.append("Sec-WebSocket-Extensions: " + ext)
    if basic_auth is not None:
        cred = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        lines.append(f"Authorization: Basic {cred}")
    lines.extend(f"{k}: {v}" for k, v in extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_REASONS = {
    101: "Switching Protocols",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    500: "Internal Server Error",
}


def http_upgrade_response(
    subprotocol: str | None,
    *,
    deflate_response: str | None = None,
    status: int = 101,
    key: str = DEFAULT_WS_KEY,
) -> bytes:
    """The server's answer: ``101 Switching Protocols`` with the Accept for ``key``, or an error.

    ``deflate_response`` is the accepted Sec-WebSocket-Extensions value, e.g.
    ``"permessage-deflate"`` or ``"permessage-deflate; server_no_context_takeover"``.
    A non-101 ``status`` gives a bodiless error response with Content-Length: 0.
    """
    reason = _REASONS.get(status, "Status")
    if status != 101:
        lines = [
            f"HTTP/1.1 {status} {reason}",
            "Content-Length: 0",
            "Connection: close",
        ]
        if status == 401:
            lines.append('WWW-Authenticate: Basic realm="ocpp"')
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
    lines = [
        f"HTTP/1.1 101 {reason}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {ws_accept(key)}",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if deflate_response is not None:
        lines.append(f"Sec-WebSocket-Extensions: {deflate_response}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- WebSocket


def _xor_mask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def ws_frame(
    payload: bytes,
    *,
    opcode: int = OP_TEXT,
    fin: bool = True,
    mask: bytes | None = None,
    rsv1: bool = False,
    force_len_bits: int | None = None,
) -> bytes:
    """One RFC 6455 frame. ``mask`` (4 bytes) masks the payload, as clients must.

    The length uses the shortest form unless ``force_len_bits`` (7, 16 or 64) asks for a
    given one (a non-minimal length is legal per the RFC's wire format, though "SHOULD" not).
    """
    n = len(payload)
    bits = force_len_bits
    if bits is None:
        bits = 7 if n <= 125 else 16 if n <= 0xFFFF else 64
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    mbit = 0x80 if mask is not None else 0
    if bits == 7:
        if n > 125:
            raise ValueError(f"payload of {n} bytes does not fit a 7-bit length")
        head = struct.pack("!BB", b0, mbit | n)
    elif bits == 16:
        if n > 0xFFFF:
            raise ValueError(f"payload of {n} bytes does not fit a 16-bit length")
        head = struct.pack("!BBH", b0, mbit | 126, n)
    elif bits == 64:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    else:
        raise ValueError("force_len_bits must be 7, 16 or 64")
    if mask is None:
        return head + payload
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    return head + mask + _xor_mask(payload, mask)


class DeflateCompressor:
    """Sender side of RFC 7692 permessage-deflate.

    ``compress`` returns the message payload: raw deflate, flushed with Z_SYNC_FLUSH, the
    trailing ``00 00 ff ff`` removed. With ``no_context_takeover`` each message starts a new
    LZ77 window; otherwise the window carries over from message to message.
    """

    def __init__(
        self,
        *,
        no_context_takeover: bool = False,
        window_bits: int = 15,
        level: int = 6,
    ) -> None:
        """``window_bits`` 9..15 (zlib cannot produce raw deflate with an 8-bit window)."""
        if not 9 <= window_bits <= 15:
            raise ValueError("window_bits must be 9..15")
        self.no_context_takeover = no_context_takeover
        self.window_bits = window_bits
        self.level = level
        self._c = self._new()

    def _new(self) -> zlib._Compress:
        return zlib.compressobj(self.level, zlib.DEFLATED, -self.window_bits)

    def compress(self, message: bytes) -> bytes:
        """Compress one whole message."""
        if self.no_context_takeover:
            self._c = self._new()
        out = self._c.compress(message) + self._c.flush(zlib.Z_SYNC_FLUSH)
        if out.endswith(b"\x00\x00\xff\xff"):
            out = out[:-4]
        return out


class WsSession:
    """An OCPP-J WebSocket connection on a :class:`TcpFlow`, built step by step.

    ``open`` does the TCP handshake and HTTP upgrade; ``message`` sends one text message
    (optionally compressed, fragmented and with a ping/pong inside); ``close`` ends the
    WebSocket and the TCP connection. Each WebSocket frame goes in its own TCP segment
    (``coalesce=True`` puts all frames of one message in one segment); with ``acks`` the
    receiver ACKs every segment. Mask keys come from a seeded RNG, so output is deterministic.
    """

    def __init__(
        self,
        flow: TcpFlow,
        *,
        path: str = "/ocpp/CP001",
        subprotocol: str | None = "ocpp1.6",
        deflate: bool = False,
        context_takeover: bool = True,
        mask_client: bool = True,
        acks: bool = True,
        coalesce: bool = False,
        basic_auth: tuple[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        """Describe the session; nothing is written until ``open``."""
        self.flow = flow
        self.path = path
        self.subprotocol = subprotocol
        self.deflate = deflate
        self.context_takeover = context_takeover
        self.mask_client = mask_client
        self.acks = acks
        self.coalesce = coalesce
        self.basic_auth = basic_auth
        self._rng = random.Random(seed)
        nct = not context_takeover
        self._comp = {
            True: DeflateCompressor(no_context_takeover=nct),
            False: DeflateCompressor(no_context_takeover=nct),
        }
        self.messages = 0

    def _mask(self, from_client: bool) -> bytes | None:
        if from_client and self.mask_client:
            return self._rng.getrandbits(32).to_bytes(4, "big")
        return None

    def _send(self, from_client: bool, data: bytes, t: float | None = None) -> None:
        self.flow.send(from_client, data, t=t, ack=self.acks)

    def open(self, t: float | None = None, *, status: int = 101) -> None:
        """TCP handshake, upgrade request and response (``status`` != 101 refuses it)."""
        self.flow.handshake(t)
        params = "" if self.context_takeover else "client_no_context_takeover; server_no_context_takeover"
        host = f"{_ip_text(self.flow.s.ip)}:{self.flow.s.port}"
        protos = [self.subprotocol] if self.subprotocol else []
        req = http_upgrade_request(
            self.path,
            protos,
            host=host,
            basic_auth=self.basic_auth,
            deflate=self.deflate,
            deflate_params=params,
        )
        self._send(True, req)
        resp_ext = None
        if self.deflate:
            resp_ext = "permessage-deflate" + ("; " + params if params else "")
        self._send(
            False,
            http_upgrade_response(self.subprotocol, deflate_response=resp_ext, status=status),
        )

    def frames(
        self,
        from_client: bool,
        text: str | bytes,
        *,
        fragments: int = 1,
        opcode: int = OP_TEXT,
    ) -> list[bytes]:
        """The wire frames of one message (compressed if deflate), split into ``fragments``."""
        data = text.encode() if isinstance(text, str) else text
        if self.deflate:
            data = self._comp[from_client].compress(data)
        fragments = max(1, min(fragments, max(1, len(data))))
        step, extra = divmod(len(data), fragments)
        out: list[bytes] = []
        off = 0
        for i in range(fragments):
            size = step + (1 if i < extra else 0)
            out.append(
                ws_frame(
                    data[off : off + size],
                    opcode=opcode if i == 0 else OP_CONT,
                    fin=i == fragments - 1,
                    rsv1=self.deflate and i == 0,
                    mask=self._mask(from_client),
                )
            )
            off += size
        return out

    def message(
        self,
        from_client: bool,
        text: str | bytes,
        *,
        fragments: int = 1,
        ping: bool = False,
        t: float | None = None,
    ) -> None:
        """Send one text message; with ``ping``, a ping and its pong follow its first frame."""
        frames = self.frames(from_client, text, fragments=fragments)
        if t is not None:
            self.flow.now = t
        if self.coalesce and not ping:
            self._send(from_client, b"".join(frames))
        else:
            for i, fr in enumerate(frames):
                self._send(from_client, fr)
                if ping and i == 0:
                    self.ping(from_client)
        self.messages += 1

    def ping(self, from_client: bool, payload: bytes = b"hb") -> None:
        """A ping from one side and the peer's pong (control frames are never compressed)."""
        self._send(from_client, ws_frame(payload, opcode=OP_PING, mask=self._mask(from_client)))
        self._send(
            not from_client,
            ws_frame(payload, opcode=OP_PONG, mask=self._mask(not from_client)),
        )

    def close(
        self,
        code: int = 1000,
        reason: str = "",
        t: float | None = None,
        *,
        ws_close: bool = True,
    ) -> None:
        """Close handshake (client first) then TCP FIN exchange."""
        if t is not None:
            self.flow.now = t
        if ws_close:
            body = struct.pack("!H", code) + reason.encode()
            self._send(True, ws_frame(body, opcode=OP_CLOSE, mask=self._mask(True)))
            self._send(False, ws_frame(body, opcode=OP_CLOSE))
        self.flow.close(from_client=False)


def _ip_text(packed: bytes) -> str:
    ip = ipaddress.ip_address(packed)
    return f"[{ip}]" if ip.version == 6 else str(ip)


def ocpp_session(
    writer: PcapWriter,
    messages: Sequence[tuple[bool, str]],
    *,
    client: tuple[str, int] = ("127.0.0.1", 40000),
    server: tuple[str, int] = ("127.0.0.1", 9000),
    t0: float = 1_700_000_000.0,
    interval: float = 0.01,
    path: str = "/ocpp/CP001",
    subprotocol: str | None = "ocpp1.6",
    deflate: bool = False,
    context_takeover: bool = True,
    mask_client: bool = True,
    fragments: int = 1,
    ping_every: int = 0,
    acks: bool = True,
    coalesce: bool = False,
    basic_auth: tuple[str, str] | None = None,
    close: bool = True,
    seed: int = 0,
) -> WsSession:
    """Write one whole OCPP-J session: handshake, upgrade, ``messages``, close.

    ``messages`` are ``(from_client, json_text)`` pairs, sent ``interval`` seconds apart.
    Every message is split into ``fragments`` frames (of its compressed payload when
    ``deflate``). With ``ping_every=k`` every k-th message has a ping/pong from the same
    sender right after its first frame (inside the fragmented message when ``fragments`` > 1).
    Returns the :class:`WsSession` (its ``flow.packets`` counts the packets written).

    Note: tshark 4.0 does not inflate fragmented compressed messages (``deflate`` with
    ``fragments`` > 1); it shows their compressed bytes as ``websocket.payload.text``.
    """
    flow = TcpFlow(writer, client, server, t0)
    ws = WsSession(
        flow,
        path=path,
        subprotocol=subprotocol,
        deflate=deflate,
        context_takeover=context_takeover,
        mask_client=mask_client,
        acks=acks,
        coalesce=coalesce,
        basic_auth=basic_auth,
        seed=seed,
    )
    ws.open()
    for i, (from_client, text) in enumerate(messages, 1):
        ping = ping_every > 0 and i % ping_every == 0
        ws.message(
            from_client,
            text,
            fragments=fragments,
            ping=ping,
            t=max(flow.now, t0 + i * interval),
        )
    if close:
        ws.close(t=max(flow.now, t0 + (len(messages) + 1) * interval))
    return ws
