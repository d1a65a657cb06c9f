"""TLS handshake parsing, fingerprints and ARP bindings, without live capture.

The JA4 figures are the worked example of FoxIO's specification (technical_details/JA4.md):
its cipher list hashes to 8daaf6152771 and its extension/signature list to e5627efa2ab1. ARP
frames are built with scapy into a pcap and read back through the pcap collector and the
detectors.
"""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.l2 import ARP, Ether
from scapy.utils import wrpcap

from chargewatch.config import Config, with_overrides
from chargewatch.embedded import analyze
from collectors.tls import ClientHello, TlsHandshake, is_grease
from tests.framecheck import collect

SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C,
                0x009D, 0x002F, 0x0035]
SPEC_EXTENSIONS = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023, 0x0012,
                   0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
SPEC_SIGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def _vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def _u16(values: list[int]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def _ext_data(ext: int) -> bytes:
    if ext == 0x0000:
        return _vec(b"\x00" + _vec(b"csms.example.net", 2), 2)
    if ext == 0x0010:
        return _vec(_vec(b"h2", 1) + _vec(b"http/1.1", 1), 2)
    if ext == 0x002B:
        return _vec(_u16([0x0A0A, 0x0304, 0x0303]), 1)
    if ext == 0x000D:
        return _vec(_u16(SPEC_SIGS), 2)
    if ext == 0x000A:
        return _vec(_u16([0x1A1A, 0x001D, 0x0017]), 2)
    if ext == 0x000B:
        return _vec(b"\x00", 1)
    return b""


def client_hello() -> bytes:
    """The spec example's ClientHello as one TLS record, with GREASE values mixed in."""
    exts = [0x0A0A, *SPEC_EXTENSIONS]
    body = (b"\x03\x03" + bytes(32) + _vec(bytes(32), 1) + _vec(_u16([0x2A2A, *SPEC_CIPHERS]), 2) + _vec(b"\x00", 1)
            + _vec(b"".join(struct.pack("!H", e) + _vec(_ext_data(e), 2) for e in exts), 2))
    message = b"\x01" + _vec(body, 3)
    return b"\x16\x03\x01" + _vec(message, 2)


def test_ja4_matches_the_specification_example() -> None:
    record = client_hello()
    hello = ClientHello.parse(record[9:])
    assert hello.ja4() == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert hello.sni == "csms.example.net" and hello.alpn == ["h2", "http/1.1"]
    assert hello.ja3_string().split(",")[1] == "-".join(str(c) for c in SPEC_CIPHERS)
    assert hello.ja3_string().split(",")[3] == "29-23"
    assert is_grease(0x0A0A) and is_grease(0xFAFA) and not is_grease(0x0A0B)


def test_handshake_split_byte_by_byte_parses_like_one_piece() -> None:
    problems: list[str] = []
    whole, split = TlsHandshake(lambda k, d, r: problems.append(k)), TlsHandshake(lambda k, d, r: problems.append(k))
    record = client_hello()
    whole.feed(True, record)
    for i in range(len(record)):
        split.feed(True, record[i:i + 1])
    assert problems == []
    assert whole.metadata() == split.metadata()
    assert split.metadata()["ja4"] == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert split.metadata()["client_versions"] == ["TLSv1.3", "TLSv1.2"]


def test_malformed_handshake_is_counted_never_raised() -> None:
    problems: list[str] = []
    hs = TlsHandshake(lambda kind, detail, raw: problems.append(kind))
    record = bytearray(client_hello())
    record[9 + 2 + 32] = 200  # session id length runs past the message
    hs.feed(True, bytes(record))
    hs.feed(True, b"\x16\x03\x01\x00\x05hello")  # ignored after the failure
    assert problems == ["tls_malformed"] and hs.done and hs.client is None


def _arp_pcap(path: Path) -> None:
    gw, spoof, cp = "00:16:3e:00:00:01", "de:ad:be:ef:00:66", "02:00:00:00:00:05"
    frames = [Ether(src=gw, dst=cp) / ARP(op=2, hwsrc=gw, psrc="10.9.0.1", hwdst=cp, pdst="10.9.0.5"),
              Ether(src=gw, dst=cp) / ARP(op=2, hwsrc=gw, psrc="10.9.0.1", hwdst=cp, pdst="10.9.0.5")]
    frames += [Ether(src=spoof, dst="ff:ff:ff:ff:ff:ff")
               / ARP(op=2, hwsrc=spoof, psrc="10.9.0.1", hwdst="ff:ff:ff:ff:ff:ff", pdst="10.9.0.1")
               for _ in range(12)]
    frames.append(Ether(src=cp, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=cp, psrc="0.0.0.0", pdst="10.9.0.5"))
    for i, frame in enumerate(frames):
        frame.time = 1795000000.0 + i
    wrpcap(str(path), frames)


def test_arp_frames_become_binding_events_and_alerts(tmp_path: Path) -> None:
    path = tmp_path / "arp.pcap"
    _arp_pcap(path)
    collected = collect(path)
    events = [e for e in collected.events if e.kind == "arp"]
    assert len(events) == 13  # first binding, then every gratuitous one; the repeat and the probe only counted
    assert collected.stats.ignored["arp_repeat"] == 1 and collected.stats.ignored["arp_probe"] == 1
    first, change = events[0].link, events[1].link
    assert first is not None and change is not None
    assert (first["sender_ip"], first["sender_mac"], first["gratuitous"]) == ("10.9.0.1", "00:16:3e:00:00:01", False)
    assert (change["previous_mac"], change["sender_mac"], change["gratuitous"]) == (
        "00:16:3e:00:00:01", "de:ad:be:ef:00:66", True)
    policy = tmp_path / "policy.toml"
    policy.write_text('csms_endpoints = [{ ip = "10.9.0.1" }]\n')
    config = with_overrides(Config(), redaction={"key": "00ff" * 16}, detector={"policy_file": str(policy)})
    alerts = analyze([path], config).alerts
    assert sorted(a.rule_id for a in alerts) == ["CW-MITM-013", "CW-MITM-014"]
    spoof = next(a for a in alerts if a.rule_id == "CW-MITM-013")
    assert spoof.evidence["previous_mac"] == "00:16:3e:00:00:01" and spoof.evidence["mac"] == "de:ad:be:ef:00:66"


def test_truncated_arp_is_a_counted_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "short.pcap"
    header = bytes(Ether(src="02:00:00:00:00:05", dst="ff:ff:ff:ff:ff:ff", type=0x0806))
    frame = header + bytes.fromhex("0001080006040001")  # the ARP header stops after the opcode
    wrpcap(str(path), [Ether(frame)])
    collected = collect(path)
    assert collected.stats.errors == {"truncated_arp": 1}
    assert [d.kind for d in collected.dead_letters] == ["truncated_arp"]
