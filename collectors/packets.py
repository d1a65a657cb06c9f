"""Link, IP and TCP header parsing by hand: the hot path never dissects with scapy.

Supported link types: Ethernet (with 802.1Q/QinQ tags), Linux cooked v1/v2, raw IP and BSD
loopback. IPv4 (non-fragmented) and IPv6 (without extension headers before TCP).

A segment names its flow by a *flow key*: the raw source address, destination address, source
port and destination port bytes, concatenated (12 bytes for IPv4, 36 for IPv6). Keys are cheap
to take from a frame and to look up; address strings are only built (:func:`endpoints`) when a
connection needs them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

Endpoint = tuple[str, int]
# One TCP segment: (flow key, sequence number, flags, payload, IPv4 TTL or IPv6 hop limit).
Segment = tuple[bytes, int, int, bytes, int]

_TCP = struct.Struct("!4xI4xBB")  # seq, data offset, flags (ports are taken raw, into the key)
# Ethernet + IPv4 without options + TCP, in one call: ethertype, version/IHL, total length,
# fragment field, TTL, protocol, flow key (addresses and ports are adjacent here), seq, data offset, flags.
_ETH_IPV4_TCP = struct.Struct("!12xHBxH2xHBB2x12sI4xBB")


class PacketSkip(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The packet is valid but not TCP/IP we decode (ARP, UDP, ...); reason says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PacketError(Exception):
    """The packet is malformed or truncated; reason is the counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def network_layer(linktype: int, frame: bytes) -> tuple[int, int]:
    """(ethertype, offset of the IP header) for a link-layer frame."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            raise PacketError("truncated_link_header")
        etype = int.from_bytes(frame[12:14], "big")
        off = 14
        while etype in ETH_VLAN:
            if len(frame) < off + 4:
                raise PacketError("truncated_link_header")
            etype = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
        return etype, off
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            raise PacketError("truncated_link_header")
        return int.from_bytes(frame[14:16], "big"), 16
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            raise PacketError("truncated_link_header")
        return int.from_bytes(frame[0:2], "big"), 20
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            raise PacketError("truncated_link_header")
        return (ETH_IPV4 if frame[0] >> 4 == 4 else ETH_IPV6), 0
    if linktype == LINKTYPE_NULL:
        if len(frame) < 4:
            raise PacketError("truncated_link_header")
        family = int.from_bytes(frame[:4], "little")
        return (ETH_IPV4 if family == 2 else ETH_IPV6), 4
    raise PacketSkip(f"linktype_{linktype}")


def parse_segment(linktype: int, frame: bytes) -> Segment:
    """The TCP segment inside a frame; PacketSkip for non-TCP, PacketError when malformed."""
    if linktype == LINKTYPE_ETHERNET and len(frame) >= 54:
        # Fast path, nearly every packet: untagged Ethernet, IPv4 without options, unfragmented TCP.
        etype, ver_ihl, total, frag, ttl, proto, key, seq, data_off, flags = _ETH_IPV4_TCP.unpack_from(frame)
        plain = etype == ETH_IPV4 and ver_ihl == 0x45 and proto == 6 and not frag & 0x3FFF
        if plain and 20 <= total <= len(frame) - 14:
            if total < 40:
                raise PacketError("truncated_tcp_header")
            header_len = (data_off >> 4) * 4
            if header_len < 20 or header_len > total - 20:
                raise PacketError("bad_tcp_header")
            return key, seq, flags, frame[34 + header_len:14 + total], ttl
    etype, off = network_layer(linktype, frame)
    if etype == ETH_IPV4:
        addrs, ttl, proto, off, end = _ipv4(frame, off)
    elif etype == ETH_IPV6:
        addrs, ttl, proto, off, end = _ipv6(frame, off)
    elif etype == 0x0806:
        raise PacketSkip("arp")
    else:
        raise PacketSkip("non_ip")
    if proto != 6:
        raise PacketSkip("non_tcp")
    return _tcp(frame, addrs, ttl, off, end)


def _tcp(frame: bytes, addrs: bytes, ttl: int, off: int, end: int) -> Segment:
    if end - off < 20:
        raise PacketError("truncated_tcp_header")
    seq, data_off, flags = _TCP.unpack_from(frame, off)
    header_len = (data_off >> 4) * 4
    if header_len < 20 or off + header_len > end:
        raise PacketError("bad_tcp_header")
    return addrs + frame[off:off + 4], seq, flags, frame[off + header_len:end], ttl


def _ipv4(frame: bytes, off: int) -> tuple[bytes, int, int, int, int]:
    """(source and destination address bytes, TTL, protocol, TCP offset, end of the IP packet)."""
    if len(frame) < off + 20:
        raise PacketError("truncated_ip_header")
    ihl = (frame[off] & 0x0F) * 4
    total = int.from_bytes(frame[off + 2:off + 4], "big")
    frag = int.from_bytes(frame[off + 6:off + 8], "big")
    if frag & 0x3FFF:
        raise PacketSkip("ip_fragment")
    if ihl < 20:
        raise PacketError("bad_ip_header")
    # total == 0 happens with TSO on captures taken on the sending host: trust the capture length.
    end = len(frame) if total == 0 else off + total
    if end > len(frame):
        raise PacketError("truncated_packet")
    return frame[off + 12:off + 20], frame[off + 8], frame[off + 9], off + ihl, end


def _ipv6(frame: bytes, off: int) -> tuple[bytes, int, int, int, int]:
    """(source and destination address bytes, hop limit, next header, TCP offset, end of the IP packet)."""
    if len(frame) < off + 40:
        raise PacketError("truncated_ip_header")
    plen = int.from_bytes(frame[off + 4:off + 6], "big")
    end = off + 40 + plen
    if end > len(frame):
        raise PacketError("truncated_packet")
    return frame[off + 8:off + 40], frame[off + 7], frame[off + 6], off + 40, end


def reverse_key(key: bytes) -> bytes:
    """The flow key of the opposite direction (addresses and ports swapped)."""
    n = (len(key) - 4) // 2
    return key[n:2 * n] + key[:n] + key[2 * n + 2:] + key[2 * n:2 * n + 2]


def endpoints(key: bytes) -> tuple[Endpoint, Endpoint]:
    """(source, destination) of a flow key as (address string, port)."""
    n = (len(key) - 4) // 2
    if n == 4:
        src, dst = socket.inet_ntoa(key[:4]), socket.inet_ntoa(key[4:8])
    else:
        src, dst = str(ipaddress.IPv6Address(key[:n])), str(ipaddress.IPv6Address(key[n:2 * n]))
    return (src, int.from_bytes(key[2 * n:2 * n + 2], "big")), (dst, int.from_bytes(key[2 * n + 2:], "big"))
