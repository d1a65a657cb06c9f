"""read_capture end to end on crafted captures: TCP reassembly, HTTP upgrade, OCPP-J semantics."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from chargewatch.model import ConnectionEvent, OcppMessage
from collectors.stats import CollectorStats
from tests.collector_helpers import REDACTOR, capture, client_frame, decode, server_frame, texts, upgraded_flow
from tests.pcapgen import ACK, PcapWriter, TcpFlow, http_upgrade_request, http_upgrade_response, ocpp_session

BOOT = ('[2,"b1","BootNotification",{"chargePointVendor":"Acme","chargePointModel":"' + "M" * 300 + '"}]')
BOOT_OK = '[3,"b1",{"status":"Accepted","currentTime":"2024-01-01T00:00:00Z","interval":300}]'
HB = '[2,"h1","Heartbeat",{}]'
HB_OK = '[3,"h1",{"currentTime":"2024-01-01T00:00:00Z"}]'
BOOT_PAYLOAD = {"chargePointVendor": "Acme", "chargePointModel": "M" * 300}
BOOT_OK_PAYLOAD = {"status": "Accepted", "currentTime": "2024-01-01T00:00:00Z", "interval": 300}
EXPECTED = [("cp->csms", 2, "b1", "BootNotification", BOOT_PAYLOAD),
            ("csms->cp", 3, "b1", "BootNotification", BOOT_OK_PAYLOAD),
            ("cp->csms", 2, "h1", "Heartbeat", {}),
            ("csms->cp", 3, "h1", "Heartbeat", {"currentTime": "2024-01-01T00:00:00Z"})]


def counts(s: CollectorStats) -> tuple[int, int, int, int, dict[str, int], dict[str, int]]:
    """tcp, websocket connections, messages, connection events, errors, ignored."""
    return s.tcp_connections, s.websocket_connections, s.messages, s.connection_events, dict(s.errors), dict(s.ignored)


def test_plain_session_counts(tmp_path: Path) -> None:
    stats, sink = decode(capture(tmp_path / "s.pcap", lambda w: ocpp_session(
        w, [(True, BOOT), (False, BOOT_OK), (True, HB), (False, HB_OK)])))
    assert texts(sink) == EXPECTED
    assert counts(stats) == (1, 1, 4, 2, {}, {})
    assert [e.kind for e in sink.events] == ["upgrade", "closed"]
    assert [(m.src_port, m.dst_port) for m in sink.messages] == [(40000, 9000), (9000, 40000)] * 2


def test_message_split_across_many_segments(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        flow = TcpFlow(w)
        flow.handshake()
        flow.send(True, http_upgrade_request("/ocpp/CP001", ["ocpp1.6"]), segments=[1, 1, 1, 2, 7, 30])
        flow.send(False, http_upgrade_response("ocpp1.6"), segments=[3, 9])
        flow.send(True, client_frame(BOOT), segments=[1, 1, 2, 4, 100, 17])
        flow.send(False, server_frame(BOOT_OK), segments=[5, 5, 5])
        flow.send(True, client_frame(HB) + client_frame(HB.replace("h1", "h2")), segments=[30])  # 1 frame + 1 split
        flow.send(False, server_frame(HB_OK) + server_frame(HB_OK.replace("h1", "h2")))  # 2 frames in 1 segment
        flow.close()

    stats, sink = decode(capture(tmp_path / "split.pcap", build))
    assert texts(sink) == [*EXPECTED[:2], EXPECTED[2], ("cp->csms", 2, "h2", "Heartbeat", {}), EXPECTED[3],
                           ("csms->cp", 3, "h2", "Heartbeat", {"currentTime": "2024-01-01T00:00:00Z"})]
    assert counts(stats) == (1, 1, 6, 2, {}, {})


def test_out_of_order_segments(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        flow = TcpFlow(w)
        flow.handshake()
        flow.send_out_of_order(True, http_upgrade_request("/ocpp/CP001", ["ocpp1.6"]), [1, 0], [20])
        flow.send(False, http_upgrade_response("ocpp1.6"))
        flow.send_out_of_order(True, client_frame(BOOT), [3, 1, 0, 2], [10, 50, 100])
        flow.send_out_of_order(False, server_frame(BOOT_OK), [1, 0], [40])
        flow.send_out_of_order(True, client_frame(HB), [2, 1, 0], [1, 1])
        flow.send(False, server_frame(HB_OK))
        flow.close()

    stats, sink = decode(capture(tmp_path / "ooo.pcap", build))
    assert texts(sink) == EXPECTED
    assert counts(stats) == (1, 1, 4, 2, {}, {})


def test_retransmissions_give_no_duplicates(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w)
        flow.retransmit_last(False)  # the upgrade response again
        data = client_frame(BOOT)
        flow.send(True, data, segments=[100])
        flow.retransmit_last(True)
        start = flow.c.seq - len(data)
        flow.packet(True, ACK, data[:150], seq=start)  # overlaps, carries nothing new
        flow.send(False, server_frame(BOOT_OK))
        flow.retransmit_last(False)
        hb = client_frame(HB)
        flow.packet(True, ACK, hb[:10])
        flow.packet(True, ACK, hb, seq=flow.c.seq)  # retransmission covering old and new bytes
        flow.c.seq += len(hb)
        flow.send(False, server_frame(HB_OK))
        flow.close()

    stats, sink = decode(capture(tmp_path / "rtx.pcap", build))
    assert texts(sink) == EXPECTED
    assert counts(stats) == (1, 1, 4, 2, {}, {})


@pytest.mark.parametrize("closed", [True, False])
def test_tcp_gap_counted_and_direction_stops(tmp_path: Path, closed: bool) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w)
        flow.send(True, client_frame(BOOT))
        flow.send(False, server_frame(BOOT_OK))
        lost = client_frame(HB)
        base = flow.c.seq
        flow.packet(True, ACK, lost[:5], seq=base)
        flow.packet(True, ACK, lost[15:], seq=base + 15)  # bytes 5..15 never captured
        flow.c.seq = base + len(lost)
        flow.send(True, client_frame(HB.replace("h1", "h2")))
        flow.send(False, server_frame(HB_OK))
        if closed:
            flow.close()

    stats, sink = decode(capture(tmp_path / "gap.pcap", build))
    assert texts(sink) == [*EXPECTED[:2], ("csms->cp", 3, "h1", None, {"currentTime": "2024-01-01T00:00:00Z"})]
    assert sink.messages[-1].flags == ("unmatched_response",)
    assert [(d.kind, d.charge_point_id) for d in sink.dead_letters] == [("tcp_gap", "CP001")]
    assert counts(stats) == (1, 1, 3, 2 if closed else 1, {"tcp_gap": 1}, {})


@pytest.mark.parametrize(("server", "client"), [(("10.0.0.2", 8180), ("10.0.0.1", 51000)),
                                                (("10.0.0.2", 33333), ("10.0.0.1", 80)),
                                                (("fd00::2", 8180), ("fd00::1", 40001))])
def test_any_port_and_ipv6(tmp_path: Path, server: tuple[str, int], client: tuple[str, int]) -> None:
    stats, sink = decode(capture(tmp_path / "port.pcap", lambda w: ocpp_session(
        w, [(True, BOOT), (False, BOOT_OK)], server=server, client=client)))
    assert texts(sink) == EXPECTED[:2]
    assert [(m.src_ip, m.src_port, m.dst_ip, m.dst_port) for m in sink.messages] == [
        (*client, *server), (*server, *client)]
    assert [(e.client_ip, e.client_port, e.server_ip, e.server_port) for e in sink.events] == [(*client, *server)] * 2
    assert counts(stats) == (1, 1, 2, 2, {}, {})


def test_pcap_and_pcapng_give_identical_records(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        ocpp_session(w, [(True, BOOT), (False, BOOT_OK), (True, HB), (False, HB_OK)], deflate=True, fragments=2,
                     t0=1_700_000_123.456789)
        ocpp_session(w, [(True, HB), (False, HB_OK)], client=("127.0.0.1", 40002), path="/ocpp/CP002",
                     t0=1_700_000_200.000001)

    results = []
    for name, ng in (("cap.pcap", False), ("cap.pcapng", True)):
        stats, sink = decode(capture(tmp_path / name, build, pcapng=ng))
        results.append(([{**r.to_dict(), "source": r.source.replace(name, "X")} for r in sink.records],
                        stats.to_dict(), sink.dead_letters))
    assert results[0] == results[1]
    records, stats_dict, dead = results[0]
    assert (len(records), stats_dict["messages"], stats_dict["errors"], dead) == (10, 6, {}, [])
    assert (records[0]["record"], records[0]["ts"], records[0]["source"]) == (
        "connection", 1_700_000_123.456889, "X#6")  # the upgrade response: 6th packet, 5 ticks of 20 µs after t0


@pytest.mark.parametrize(("path", "identity"), [("/ocpp/RDAM%20123", "RDAM 123"), ("/ocpp/CP001", "CP001"),
                                                ("/ocpp/CP%2F7?token=a%20b", "CP/7"), ("/CS/CP001/", "CP001"),
                                                ("//[bad/ocpp/CP009", "CP009"), ("/", "")])
def test_identity_from_path(tmp_path: Path, path: str, identity: str) -> None:
    stats, sink = decode(capture(tmp_path / "id.pcap", lambda w: ocpp_session(w, [(True, HB)], path=path)))
    assert [(e.path, e.charge_point_id) for e in sink.events] == [(path, identity)] * 2
    assert [m.charge_point_id for m in sink.messages] == [identity]
    assert counts(stats) == (1, 1, 1, 2, {}, {})


def test_basic_auth_username_kept_password_nowhere(tmp_path: Path) -> None:
    password = "S3cr3t-Pa55w0rd"
    creds = base64.b64encode(f"CP001:{password}".encode()).decode()

    def build(w: PcapWriter) -> None:
        ocpp_session(w, [(True, HB), (False, HB_OK)], basic_auth=("CP001", password))
        flow = upgraded_flow(w, client=("127.0.0.1", 40001), basic_auth=("CP001", password))
        flow.send(True, client_frame("[2,"))  # invalid JSON: a dead letter with an excerpt
        flow.send(True, client_frame(HB, fin=False))  # never finished: truncated_message
        flow.close()
        refused = upgraded_flow(w, client=("127.0.0.1", 40002), basic_auth=("CP001", password), status=401)
        refused.close()

    stats, sink = decode(capture(tmp_path / "auth.pcap", build))
    assert [(e.kind, e.auth_scheme, e.auth_username, e.status) for e in sink.events] == [
        ("upgrade", "Basic", "CP001", 101), ("closed", "Basic", "CP001", 101),
        ("upgrade", "Basic", "CP001", 101), ("closed", "Basic", "CP001", 101),
        ("upgrade", "Basic", "CP001", 401), ("closed", "Basic", "CP001", 401)]
    assert sink.kinds == ["invalid_json", "truncated_message"]
    dump = sink.dump() + repr(stats.to_dict())
    for secret in (password, creds, password.lower(), base64.b64encode(password.encode()).decode()):
        assert secret not in dump


@pytest.mark.parametrize(("subprotocol", "version"), [("ocpp1.6", "1.6"), ("ocpp2.0.1", "2.0.1"), ("ocpp2.1", "2.1"),
                                                      ("OCPP1.6", "1.6"), ("ocpp9", None), (None, None)])
def test_subprotocol_gives_version(tmp_path: Path, subprotocol: str | None, version: str | None) -> None:
    _, sink = decode(capture(tmp_path / "v.pcap", lambda w: ocpp_session(w, [(True, HB)], subprotocol=subprotocol)))
    assert [(e.subprotocol, e.ocpp_version) for e in sink.events] == [(subprotocol, version)] * 2
    assert [(m.ocpp_version, m.flags) for m in sink.messages] == [(version, ())]


def test_responses_inherit_action_and_unmatched_ones_are_flagged(tmp_path: Path) -> None:
    sent = [(True, '[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available"}]'),
            (False, '[2,"1","RemoteStartTransaction",{"idTag":"TAG1"}]'),  # same id, other direction
            (True, '[3,"1",{"status":"Accepted"}]'),
            (False, '[3,"1",{}]'),
            (False, '[3,"1",{}]'),  # answered already
            (True, '[3,"zz",{}]'),  # never asked
            (True, '[2,"2","Authorize",{"idTag":"TAG1"}]'),
            (False, '[4,"2","InternalError","boom",{}]'),
            (True, '[2,"3","Heartbeat",{}]'),
            (True, '[3,"3",{}]')]  # a CALL is not answered by its own sender
    stats, sink = decode(capture(tmp_path / "r.pcap", lambda w: ocpp_session(w, sent)))
    assert [(m.message_id, m.action, m.flags) for m in sink.messages] == [
        ("1", "StatusNotification", ()), ("1", "RemoteStartTransaction", ()),
        ("1", "RemoteStartTransaction", ()), ("1", "StatusNotification", ()),
        ("1", None, ("unmatched_response",)), ("zz", None, ("unmatched_response",)),
        ("2", "Authorize", ()), ("2", "Authorize", ()),
        ("3", "Heartbeat", ()), ("3", None, ("unmatched_response",))]
    assert sink.messages[7].payload == {"errorCode": "InternalError", "errorDescription": "boom", "errorDetails": {}}
    assert sink.messages[1].payload == {"idTag": REDACTOR.pseudonym("TAG1")}
    assert dict(stats.flags) == {"unmatched_response": 3}


def test_integer_message_id(tmp_path: Path) -> None:
    _, sink = decode(capture(tmp_path / "i.pcap", lambda w: ocpp_session(
        w, [(True, '[2,42,"Heartbeat",{}]'), (False, '[3,42,{"currentTime":"x"}]'), (False, '[3,"42",{}]')])))
    assert [(m.message_id, m.action, m.flags) for m in sink.messages] == [
        ("42", "Heartbeat", ("message_id_not_string",)), ("42", "Heartbeat", ("message_id_not_string",)),
        ("42", None, ("unmatched_response",))]


@pytest.mark.parametrize(("subprotocol", "action", "flags"), [
    ("ocpp1.6", "FooBar", ("unknown_action",)), ("ocpp1.6", "TransactionEvent", ("unknown_action",)),
    ("ocpp2.0.1", "TransactionEvent", ()), ("ocpp2.0.1", "StartTransaction", ("unknown_action",)),
    ("ocpp1.6", "StartTransaction", ()), (None, "FooBar", ())])
def test_unknown_action(tmp_path: Path, subprotocol: str | None, action: str, flags: tuple[str, ...]) -> None:
    stats, sink = decode(capture(tmp_path / "u.pcap", lambda w: ocpp_session(
        w, [(True, f'[2,"1","{action}",{{}}]'), (False, '[3,"1",{}]')], subprotocol=subprotocol)))
    assert [(m.action, m.flags) for m in sink.messages] == [(action, flags), (action, ())]
    assert dict(stats.flags) == dict.fromkeys(flags, 1)


def test_frame_masking_and_binary_flags(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w)
        flow.send(True, server_frame(HB))  # client frame left unmasked
        flow.send(False, client_frame(HB_OK))  # server frame masked
        flow.send(True, client_frame(HB.replace("h1", "h2"), opcode=2))
        flow.close()

    _, sink = decode(capture(tmp_path / "m.pcap", build))
    assert [(m.message_id, m.flags) for m in sink.messages] == [
        ("h1", ("unmasked_client_frame",)), ("h1", ("masked_server_frame",)), ("h2", ("binary_frame",))]


@pytest.mark.parametrize("status", [401, 400])
def test_refused_upgrade(tmp_path: Path, status: int) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w, status=status)
        flow.send(True, client_frame(HB))  # sent anyway: not WebSocket
        flow.close()

    stats, sink = decode(capture(tmp_path / "no.pcap", build))
    assert [(e.kind, e.status, e.charge_point_id, e.subprotocol) for e in sink.events] == [
        ("upgrade", status, "CP001", None), ("closed", status, "CP001", None)]
    assert all(isinstance(r, ConnectionEvent) for r in sink.records)
    assert counts(stats) == (1, 0, 0, 2, {}, {})


def test_non_http_streams_are_ignored_and_counted(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        binary = TcpFlow(w, ("127.0.0.1", 41000))
        binary.handshake()
        binary.send(True, b"\x00\x01\x02binary protocol\r\n\r\n")
        binary.send(False, b"\x05reply")
        binary.close()
        tls = TcpFlow(w, ("127.0.0.1", 41001), ("127.0.0.1", 443))
        tls.handshake()
        tls.send(True, bytes.fromhex("160301002a010000260303") + b"\x00" * 38)
        tls.close()
        smtp = TcpFlow(w, ("127.0.0.1", 41002), ("127.0.0.1", 25))
        smtp.handshake()
        smtp.send(False, b"220 mail ready\r\n")
        smtp.send(True, b"EHLO x\r\n")
        smtp.close()
        mid = TcpFlow(w, ("127.0.0.1", 41003))  # capture started mid-connection: no SYN seen
        mid.send(True, client_frame(HB))
        mid.send(False, server_frame(HB_OK))
        ocpp_session(w, [(True, HB), (False, HB_OK)])

    stats, sink = decode(capture(tmp_path / "other.pcap", build))
    assert texts(sink) == EXPECTED[2:]
    # the OCPP session's upgrade and close, and the TLS stream's handshake metadata (collectors/tls.py)
    assert (sink.dead_letters, sorted(e.kind for e in sink.events)) == ([], ["closed", "tls", "upgrade"])
    assert counts(stats) == (5, 1, 2, 3, {}, {"non_websocket_stream": 2, "tls_stream": 1, "midstream_connection": 1})


def test_port_reuse_gives_two_connections(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        ocpp_session(w, [(True, HB)], t0=1_700_000_000.0)
        ocpp_session(w, [(True, HB.replace("h1", "h2"))], t0=1_700_000_010.0)

    stats, sink = decode(capture(tmp_path / "reuse.pcap", build))
    assert [m.message_id for m in sink.messages] == ["h1", "h2"]
    assert len({m.connection_id for m in sink.messages}) == 2
    assert counts(stats) == (2, 2, 2, 4, {}, {})


@pytest.mark.parametrize(("server", "client"), [(("127.0.0.1", 9000), ("127.0.0.1", 40000)),
                                                (("fd00::2", 9000), ("fd00::1", 40000))], ids=["ipv4", "ipv6"])
def test_records_carry_the_ttl_of_the_packet_completing_the_frame(tmp_path: Path, server: tuple[str, int],
                                                                   client: tuple[str, int]) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w, server=server, client=client)
        frame = client_frame(BOOT)
        flow.ttl = 99
        flow.send(True, frame[:50])  # the frame's first bytes ...
        flow.ttl = 61
        flow.send(True, frame[50:])  # ... and the segment completing it
        flow.ttl = 128
        flow.send(False, server_frame(BOOT_OK))
        flow.close()

    stats, sink = decode(capture(tmp_path / "ttl.pcap", build))
    assert [(m.direction.value, m.message_id, m.ip_ttl) for m in sink.messages] == [
        ("cp->csms", "b1", 61), ("csms->cp", "b1", 128)]
    assert counts(stats) == (1, 1, 2, 2, {}, {})
    record = sink.messages[0]
    assert OcppMessage.from_dict(record.to_dict()) == record
    old = {k: v for k, v in record.to_dict().items() if k != "ip_ttl"}  # written before the field existed
    assert OcppMessage.from_dict(old).ip_ttl is None
