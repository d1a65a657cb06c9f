"""The packets behind an alert, from the capture the records came from, as a redacted pcap.

Records name their origin ``FILE#FRAME`` (``event.reference``; the file by name only). When that
file can be found and read, the frames of the alert's TCP connection (its two endpoints; a new
SYN starts a new connection on a reused port) are read, the connection holding the referenced
frame is chosen, and the frame is checked to be the one the archive says (same time, within a
millisecond), so a different file of the same name is never exported as evidence. The
connection's payloads are redacted in place (:mod:`chargewatch.responder.stream_redact`; TCP
checksums of changed packets recomputed) and its frames within the window are written as a
classic pcap. Every outcome is reported as a status with a sentence, for the manifest.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargewatch.errors import CaptureError
from chargewatch.responder.stream_redact import SYN, Segment, redact_segments
from collectors.packets import ETH_IPV4, ETH_IPV6, PacketError, PacketSkip, network_layer
from collectors.pcapfile import CaptureReader
from collectors.pcapwriter import file_header, record_header

ACK = 0x10
TRIGGER_TOLERANCE_S = 0.0015  # archived times are exact; alert times are cut to the millisecond
Endpoint = tuple[str, int]


@dataclass
class PcapOutcome:
    """What became of the evidence pcap: status ``written``, ``unavailable`` (no capture file to
    read), ``not_a_capture`` (the source is a log, the proxy or live capture), ``mismatch`` (a
    file of that name whose frames are not the archived ones) or ``no_packets``."""

    status: str
    detail: str
    capture: str | None = None
    packets: int = 0
    redaction: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Frame:
    number: int
    ts: float
    linktype: int
    data: bytearray
    from_client: bool
    seq: int
    flags: int
    tcp: tuple[int, int, int, int]  # IP header offset, IP version, TCP header offset, payload start
    end: int  # end of the TCP payload


def parse_reference(reference: str | None) -> tuple[str, int] | None:
    """(file name, frame number) of a ``FILE#FRAME`` reference; None for other sources."""
    if not reference or "#" not in reference or reference.startswith(("proxy:", "live:")):
        return None
    name, _, frame = reference.rpartition("#")
    return (name, int(frame)) if frame.isdigit() and name else None


def locate_capture(name: str, candidates: Sequence[Path]) -> tuple[Path | None, list[str]]:
    """The first of candidates (each a file, or a directory to find name in) that is a file,
    and every place looked at."""
    looked: list[str] = []
    for candidate in candidates:
        path = candidate / name if candidate.is_dir() else candidate
        looked.append(str(path))
        if path.is_file():
            return path, looked
    return None, looked


def write_evidence_pcap(capture: Path, client: Endpoint, server: Endpoint, frame: int, frame_ts: float,
                        since: float, until: float, out: Path) -> PcapOutcome:
    """Write the redacted frames of the connection client<->server that holds frame number
    ``frame`` (captured at frame_ts), between since and until, to out (see the module docstring)."""
    try:
        frames = _flow_frames(capture, _key(client, server), _key(server, client))
    except CaptureError as exc:
        return PcapOutcome("not_a_capture", f"{exc}", str(capture))
    connection = _connection_of(frames, frame)
    if connection is None:
        return PcapOutcome("mismatch", f"{capture}: frame {frame} is not a packet of {client[0]}:{client[1]} <-> "
                                       f"{server[0]}:{server[1]}; not the capture the alert came from", str(capture))
    trigger = next(f for f in connection if f.number == frame)
    if abs(trigger.ts - frame_ts) > TRIGGER_TOLERANCE_S:
        return PcapOutcome("mismatch", f"{capture}: frame {frame} was captured at {trigger.ts:.6f}, the archive says "
                                       f"{frame_ts:.6f}; not the capture the alert came from", str(capture))
    report = _redact(connection)
    chosen = [f for f in connection if since <= f.ts <= until and f.linktype == trigger.linktype]
    if not chosen:
        return PcapOutcome("no_packets", "no packet of the connection in the window", str(capture))
    with out.open("wb") as handle:
        handle.write(file_header(trigger.linktype))
        for f in chosen:
            handle.write(record_header(f.ts, len(f.data), len(f.data)) + bytes(f.data))
    return PcapOutcome("written", f"{len(chosen)} packets of {client[0]}:{client[1]} <-> {server[0]}:{server[1]} "
                                  f"from {capture.name}, redacted", str(capture), len(chosen), report)


def _key(src: Endpoint, dst: Endpoint) -> bytes:
    """Flow key as :mod:`collectors.packets` builds it: addresses, then ports."""
    return (ipaddress.ip_address(src[0]).packed + ipaddress.ip_address(dst[0]).packed
            + struct.pack("!HH", src[1], dst[1]))


def _flow_frames(capture: Path, client_key: bytes, server_key: bytes) -> list[_Frame]:
    found: list[_Frame] = []
    for number, ts, linktype, data in CaptureReader(capture):
        parsed = _tcp(linktype, data)
        if parsed is None or parsed[0] not in (client_key, server_key):
            continue
        key, seq, flags, offsets, end = parsed
        found.append(_Frame(number, ts, linktype, bytearray(data), key == client_key, seq, flags, offsets, end))
    return found


def _tcp(linktype: int, frame: bytes) -> tuple[bytes, int, int, tuple[int, int, int, int], int] | None:
    """(flow key, seq, flags, (IP offset, IP version, TCP offset, payload start), payload end) of a
    TCP/IP frame; None for anything else (other protocols, fragments, malformed frames)."""
    try:
        ethertype, ip = network_layer(linktype, frame)
    except (PacketError, PacketSkip):
        return None
    if ethertype == ETH_IPV4 and len(frame) >= ip + 20:
        ihl, total = (frame[ip] & 0x0F) * 4, int.from_bytes(frame[ip + 2:ip + 4], "big")
        fragmented = int.from_bytes(frame[ip + 6:ip + 8], "big") & 0x3FFF
        if frame[ip + 9] != 6 or fragmented or ihl < 20:
            return None
        addrs, tcp, end, version = frame[ip + 12:ip + 20], ip + ihl, ip + total, 4
    elif ethertype == ETH_IPV6 and len(frame) >= ip + 40:
        if frame[ip + 6] != 6:
            return None
        addrs, tcp, version = frame[ip + 8:ip + 40], ip + 40, 6
        end = tcp + int.from_bytes(frame[ip + 4:ip + 6], "big")
    else:
        return None
    if end > len(frame) or tcp + 20 > end:
        return None
    start = tcp + (frame[tcp + 12] >> 4) * 4
    if start > end:
        return None
    seq = int.from_bytes(frame[tcp + 4:tcp + 8], "big")
    return bytes(addrs) + bytes(frame[tcp:tcp + 4]), seq, frame[tcp + 13], (ip, version, tcp, start), end


def _connection_of(frames: list[_Frame], number: int) -> list[_Frame] | None:
    """The frames of the connection (split at each client SYN) holding frame number."""
    connections: list[list[_Frame]] = [[]]
    for f in frames:
        if f.from_client and f.flags & SYN and not f.flags & ACK and connections[-1]:
            connections.append([])
        connections[-1].append(f)
    return next((c for c in connections if any(f.number == number for f in c)), None)


def _redact(connection: list[_Frame]) -> dict[str, Any]:
    segments = [Segment(f.from_client, f.seq, f.flags, bytes(f.data[f.tcp[3]:f.end])) for f in connection]
    payloads, report = redact_segments(segments)
    changed = 0
    for f, payload in zip(connection, payloads, strict=True):
        if payload is not None:
            f.data[f.tcp[3]:f.end] = payload
            _fix_checksum(f)
            changed += 1
    return {"packets_changed": changed, "authorization_headers": report.authorization_headers,
            "values_masked": report.values_masked, "messages_blanked": report.messages_blanked,
            "bytes_blanked_unparsed": report.bytes_blanked_unparsed, "notes": report.notes}


def _fix_checksum(f: _Frame) -> None:
    """Recompute the TCP checksum of a frame whose payload changed."""
    ip, version, tcp, _start = f.tcp
    data = f.data
    length = f.end - tcp
    if version == 4:
        pseudo = bytes(data[ip + 12:ip + 20]) + struct.pack("!BBH", 0, 6, length)
    else:
        pseudo = bytes(data[ip + 8:ip + 40]) + struct.pack("!I3xB", length, 6)
    data[tcp + 16:tcp + 18] = b"\x00\x00"
    data[tcp + 16:tcp + 18] = struct.pack("!H", _ones_complement(pseudo + bytes(data[tcp:f.end])))


def _ones_complement(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
