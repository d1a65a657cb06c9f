"""The responder commands as a responder runs them, on the embedded store after a real pipeline run.

``chargewatch analyze --store`` runs over the shipped capture recorded from real ``ocpp`` peers
(samples/demo.pcap: a replayed Authorize, a charge point sending Reset, Basic auth over ws://)
with a policy that puts the charge points on sites; then ``alerts``, ``timeline``, ``export`` and
``triage`` run as subprocesses against that store and must return the alerts analyze reported,
pair each CALL with its answer, mark the trigger, write a checkable evidence bundle whose pcap
holds the alert's packets (read back with scapy and with the collector itself) without any clear
idTag or password, and keep triage across a re-run of the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chargewatch.catalog import load_catalog
from chargewatch.config import Config, to_toml, with_overrides
from chargewatch.model import OcppMessage, Record
from chargewatch.redaction import Redactor
from collectors.pcap import read_capture
from collectors.stats import DeadLetter
from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "demo.pcap"
V201 = ROOT / "tests" / "data" / "golden" / "v201_plain.pcapng"
# What the demo's peers sent in clear: the idTags and the Basic-auth password (tests/peers.py).
SECRETS = ("TAG1234", "EVIL0001", "cp16-001-secret", "Q1AxNi0wMDE6Y3AxNi0wMDEtc2VjcmV0", "AABBCCDD")
POLICY = """
[[sites]]
name = "Delft"
latitude = 52.01
longitude = 4.36

[[sites]]
name = "Rotterdam"
latitude = 51.92
longitude = 4.48

[[charge_points]]
pattern = "CP16-*"
site = "Delft"

[[charge_points]]
pattern = "RDAM*"
site = "Rotterdam"
"""


@dataclass(frozen=True)
class Run:
    """The store of one pipeline run and what analyze reported."""

    config: Path
    store: Path
    alerts: dict[str, dict[str, Any]]  # rule id -> alert document (one per rule in the demo)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chargewatch.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT, env=env)


def analyze_into(tmp: Path, capture: Path) -> Run:
    policy = tmp / "policy.toml"
    policy.write_text(POLICY)
    config = tmp / "c.toml"
    config.write_text(to_toml(with_overrides(Config(), redaction={"key": TEST_KEY},
                                             detector={"policy_file": str(policy)})))
    store, out = tmp / "alerts.db", tmp / "alerts.jsonl"
    proc = cli("--config", str(config), "analyze", str(capture), "--store", str(store), "--format", "jsonl",
               "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    return Run(config, store, {d["rule"]["id"]: d for d in docs})


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return analyze_into(tmp_path_factory.mktemp("responder"), DEMO)


def responder(run: Run, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli("--config", str(run.config), *args, "--store", str(run.store), env=env)


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class Collected:
    """A collector sink: what a capture decodes to without redaction (what Wireshark would show)."""

    def __init__(self, capture: Path) -> None:
        self.records: list[Record] = []
        self.letters: list[DeadLetter] = []
        read_capture(capture, self, Redactor(b"k", enabled=False), load_catalog(), 1 << 20)

    def record(self, record: Record) -> None:
        self.records.append(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


def test_alerts_lists_what_the_pipeline_found_with_every_filter(demo: Run) -> None:
    assert sorted(demo.alerts) == ["CW-MITM-003", "CW-PROTO-001", "CW-REPLAY-001", "CW-SEC-005"]
    docs = as_json(responder(demo, "alerts", "--format", "json"))
    assert [d["event"]["id"] for d in docs] == [demo.alerts[r]["event"]["id"] for r in
                                                ("CW-PROTO-001", "CW-REPLAY-001", "CW-SEC-005", "CW-MITM-003")]
    assert {d["chargewatch"]["site"] for d in docs} == {"Delft", "Rotterdam"}

    def rules(*filters: str) -> list[str]:
        return [d["rule"]["id"] for d in as_json(responder(demo, "alerts", "--format", "json", *filters))]

    assert rules("--severity", "high") == ["CW-REPLAY-001"]
    assert rules("--severity", "medium") == ["CW-PROTO-001", "CW-REPLAY-001"]
    assert rules("--cp", "CP16-DIR") == ["CW-PROTO-001"] and rules("--category", "mitm") == ["CW-MITM-003"]
    assert rules("--rule", "CW-SEC-005") == ["CW-SEC-005"] and rules("--site", "Rotterdam") == ["CW-SEC-005"]
    assert rules("--since", "2026-11-25T14:32:43.390Z", "--until", "2026-11-25T14:32:43.400Z") == ["CW-REPLAY-001"]
    assert rules("--since", "1h", "--until", "2000-01-01") == [] and rules("--limit", "1") == ["CW-PROTO-001"]
    table = responder(demo, "alerts", "--cp", "CP16-ATTACK")
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("time (UTC)")
    replay = demo.alerts["CW-REPLAY-001"]["event"]["id"]
    assert replay in table.stdout and "high" in table.stdout and "Delft" in table.stdout


def test_timeline_pairs_calls_with_answers_and_marks_the_trigger(demo: Run) -> None:
    alert = demo.alerts["CW-REPLAY-001"]
    out = as_json(responder(demo, "timeline", "CP16-ATTACK", "--format", "json"))
    entries = out["entries"]
    records = [e for e in entries if e["kind"] == "record"]
    assert [e["document"]["event"]["action"] for e in records] == [
        "upgrade", "BootNotification", "Heartbeat", "Authorize", "Authorize", "closed"]
    calls = [e for e in records if e["document"]["ocpp"].get("message_type") == 2]
    for call in calls:  # every CALL with its answer: same message id, from the other side, after it
        answer = call["answer"]["document"]
        assert answer["ocpp"]["message_id"] == call["document"]["ocpp"]["message_id"]
        assert answer["ocpp"]["sender"] == "csms" and answer["ocpp"]["message_type"] == 3
        assert 0 < call["answer"]["latency_ms"] < 100
    first, replayed = calls[2], calls[3]  # the replay reuses the first Authorize's id: each keeps its own answer
    assert first["answer"]["document"]["ocpp"]["status"] == "Accepted"
    assert replayed["answer"]["document"]["ocpp"]["status"] == "Invalid"
    assert replayed["triggered_alerts"] == [alert["event"]["id"]] and first["triggered_alerts"] == []
    assert replayed["document"]["event"]["reference"] == alert["event"]["reference"]
    position = entries.index(replayed)
    assert entries[position + 1]["kind"] == "alert" and entries[position + 1]["document"]["event"]["id"] == alert[
        "event"]["id"]
    assert "EVIL0001" not in json.dumps(out) and replayed["document"]["ocpp"]["id_token"].startswith("pt_")
    table = responder(demo, "timeline", "CP16-ATTACK")
    lines = table.stdout.splitlines()
    trigger = next(i for i, line in enumerate(lines) if "TRIGGER " + alert["event"]["id"][:8] in line)
    assert "CALL" in lines[trigger] and "Authorize" in lines[trigger]
    assert "-> CALLRESULT" in lines[trigger + 1] and "status Invalid" in lines[trigger + 1]
    assert lines[trigger + 2].split()[1:3] == ["ALERT", "high"]


def test_timeline_around_an_alert_and_its_errors(demo: Run) -> None:
    alert = demo.alerts["CW-PROTO-001"]
    out = as_json(responder(demo, "timeline", "--around", alert["event"]["id"], "--window", "2ms", "--format", "json"))
    assert out["charge_point_id"] == "CP16-DIR" and out["around"] == alert["event"]["id"]
    reset = next(e for e in out["entries"] if e["kind"] == "record" and e["document"]["ocpp"].get("action") == "Reset")
    assert reset["triggered_alerts"] == [alert["event"]["id"]]
    assert reset["answer"]["document"]["ocpp"]["error_code"] is not None  # the central system refused it
    assert all(abs(_ms(e["time"]) - _ms(alert["@timestamp"])) <= 3 for e in out["entries"])
    wrong_cp = responder(demo, "timeline", "CP16-001", "--around", alert["event"]["id"])
    assert wrong_cp.returncode == 2 and "is about 'CP16-DIR', not 'CP16-001'" in wrong_cp.stderr
    unknown = responder(demo, "timeline", "--around", "feedbeef")
    assert unknown.returncode == 2 and "no alert with id 'feedbeef'" in unknown.stderr
    bad = responder(demo, "timeline", "CP16-DIR", "--window", "10 minutes")
    assert bad.returncode == 2 and "bad duration '10 minutes'" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("alerts", "--store", str(demo.store.parent / "nope.db"))
    assert missing.returncode == 2 and "no such SQLite store" in missing.stderr


def _ms(text: str) -> float:
    from chargewatch.responder.timeline import epoch

    return epoch(text) * 1000.0


def test_export_bundle_with_the_alerts_packets(demo: Run, tmp_path: Path) -> None:
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    alert = demo.alerts["CW-REPLAY-001"]
    out = tmp_path / "bundle"
    proc = responder(demo, "export", alert["event"]["id"], "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["name"] for f in manifest["files"]} == {"alert.json", "messages.jsonl", "evidence.pcap", "README.txt"}
    for entry in manifest["files"]:
        data = (out / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        assert entry["sha256"] in (out / "README.txt").read_text() or entry["name"] == "README.txt"
    assert json.loads((out / "alert.json").read_text())["event"]["id"] == alert["event"]["id"]
    messages = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    assert len(messages) == manifest["records"] == 10
    assert {m["ocpp"]["charge_point_id"] for m in messages} == {"CP16-ATTACK"}
    assert alert["event"]["reference"] in {m["event"].get("reference") for m in messages}
    pcap = manifest["pcap"]
    assert pcap["status"] == "written" and pcap["capture"] == str(DEMO) and pcap["packets"] == 20
    packets = rdpcap(str(out / "evidence.pcap"))
    ports = {alert["source"]["port"], alert["destination"]["port"]}
    assert len(packets) == 20 and all(p.haslayer(TCP) and {p[TCP].sport, p[TCP].dport} == ports for p in packets)
    # The collector reads the bundle's pcap back as the same connection, every message of it ...
    decoded = Collected(out / "evidence.pcap")
    assert not decoded.letters
    assert [(r.message_type, r.message_id) for r in decoded.records if isinstance(r, OcppMessage)] == [
        (m["ocpp"]["message_type"], m["ocpp"]["message_id"]) for m in messages if "message_type" in m["ocpp"]]
    # ... with the idTags of the compressed Authorize frames overwritten (re-compressed to the same size).
    tags = [r.payload["idTag"] for r in decoded.records if isinstance(r, OcppMessage) and r.action == "Authorize"
            and r.message_type == 2]
    assert tags == ["*******", "********"] and pcap["redaction"]["values_masked"] == 2
    assert pcap["redaction"]["messages_blanked"] == 0
    _assert_no_secrets(out, decoded)


def test_export_redacts_in_place_and_says_when_the_capture_is_gone(tmp_path: Path) -> None:
    capture = tmp_path / "v201.pcapng"
    shutil.copyfile(V201, capture)
    run = analyze_into(tmp_path, capture)
    event = run.alerts["CW-SEC-005"]  # an event (StartupOfTheDevice after boot) from a pcapng capture
    out = tmp_path / "bundle"
    manifest = _export(run, event["event"]["id"], out)
    assert manifest["pcap"]["status"] == "written" and manifest["pcap"]["redaction"]["values_masked"] == 1
    decoded = Collected(out / "evidence.pcap")
    assert not decoded.letters  # nothing blanked: the uncompressed message was edited in place
    tokens = [r.payload["idToken"]["idToken"] for r in decoded.records
              if isinstance(r, OcppMessage) and isinstance(r.payload, dict) and "idToken" in r.payload]
    assert tokens == ["********"]
    archived = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    assert len([r for r in decoded.records if isinstance(r, OcppMessage)]) == len(
        [m for m in archived if m["event"]["dataset"] == "chargewatch.ocpp"])
    _assert_no_secrets(out, decoded)
    shutil.copyfile(DEMO, capture)  # another capture under the same name: not exported as evidence
    assert _export(run, event["event"]["id"], out)["pcap"]["status"] == "mismatch"
    assert not (out / "evidence.pcap").exists()
    capture.unlink()
    gone = _export(run, event["event"]["id"], out)
    assert gone["pcap"]["status"] == "unavailable" and "v201.pcapng not found" in gone["pcap"]["detail"]
    shutil.copyfile(V201, tmp_path / "elsewhere.pcapng")
    found = _export(run, event["event"]["id"], out, "--capture-dir", str(tmp_path / "elsewhere.pcapng"))
    assert found["pcap"]["status"] == "written"


def test_export_masks_the_basic_auth_credentials(demo: Run, tmp_path: Path) -> None:
    posture = demo.alerts["CW-MITM-003"]  # triggered by the upgrade itself
    manifest = _export(demo, posture["event"]["id"], tmp_path)
    assert manifest["pcap"]["redaction"]["authorization_headers"] == 1
    raw = (tmp_path / "evidence.pcap").read_bytes()
    assert b"Authorization: Basic " + b"*" * 32 + b"\r\n" in raw
    _assert_no_secrets(tmp_path, Collected(tmp_path / "evidence.pcap"))
    unknown = responder(demo, "export", "0" * 32, "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "no alert with id" in unknown.stderr


def _export(run: Run, alert_id: str, out: Path, *extra: str) -> dict[str, Any]:
    proc = responder(run, "export", alert_id, "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def _assert_no_secrets(bundle: Path, decoded: Collected) -> None:
    """No clear idTag or password in any file of the bundle, nor in what its pcap decodes to."""
    texts = [p.read_bytes().lower() for p in bundle.iterdir() if p.is_file()]
    texts.append(json.dumps([r.to_dict() for r in decoded.records]).lower().encode())
    leaks = [s for s in SECRETS for t in texts if s.lower().encode() in t]
    assert not leaks, leaks


def test_triage_from_the_cli_survives_the_pipeline(demo: Run) -> None:
    alert_id = demo.alerts["CW-PROTO-001"]["event"]["id"]
    env = {**os.environ, "USER": "responder1"}
    proc = responder(demo, "triage", alert_id, "--status", "acknowledged", "--note", "calling the site", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "-> acknowledged by responder1" in proc.stdout
    again = cli("--config", str(demo.config), "analyze", str(DEMO), "--store", str(demo.store), "--no-progress")
    assert again.returncode == 0, again.stderr  # the pipeline puts the same alerts again
    (doc,) = as_json(responder(demo, "alerts", "--status", "acknowledged", "--format", "json"))
    assert doc["event"]["id"] == alert_id
    assert (doc["triage"]["status"], doc["triage"]["note"], doc["triage"]["updated_by"]) == (
        "acknowledged", "calling the site", "responder1")
    closed = responder(demo, "triage", alert_id, "--status", "closed", "--user", "ana")
    assert closed.returncode == 0 and "-> closed by ana" in closed.stdout
    assert [d["event"]["id"] for d in as_json(responder(demo, "alerts", "--status", "closed", "--format", "json"))] == [
        alert_id]
    assert alert_id not in responder(demo, "alerts", "--status", "new").stdout
    unknown = responder(demo, "triage", "f" * 32, "--status", "closed")
    assert unknown.returncode == 2 and "no alert with id" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = responder(demo, "triage", alert_id, "--status", "done")
    assert bad.returncode == 2 and "invalid choice: 'done'" in bad.stderr
    responder(demo, "triage", alert_id, "--status", "new", "--user", "ana")  # leave the module's store as found


# --- in-place redaction of captured streams (chargewatch.responder.stream_redact) ----------------


def _ws(payload: bytes, *, opcode: int = 1, fin: bool = True, mask: bytes | None = b"\x11\x22\x33\x44",
        rsv1: bool = False) -> bytes:
    from chargewatch.responder.stream_redact import _unmask

    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    size = bytes([len(payload)]) if len(payload) < 126 else b"\x7e" + len(payload).to_bytes(2, "big")
    if mask is None:
        return head + size + payload
    return head + bytes([size[0] | 0x80]) + size[1:] + mask + _unmask(payload, mask)


UPGRADE = (b"GET /ocpp/CP1 HTTP/1.1\r\nHost: csms\r\nAuthorization: Basic Q1AxOnNlY3JldA==\r\n"
           b"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n")
ACCEPTED = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"


def _segments(client: bytes, server: bytes, cut: int = 0, *, syn: bool = True) -> list[Any]:
    """The connection as segments (the client's bytes split at cut, to cross a TCP boundary)."""
    from chargewatch.responder.stream_redact import ACK, SYN, Segment

    out = [Segment(True, 999, SYN, b""), Segment(False, 4999, SYN | ACK, b"")] if syn else []
    pieces = [client[:cut], client[cut:]] if cut else [client]
    seq = 1000
    for piece in pieces:
        out.append(Segment(True, seq, ACK, piece))
        seq += len(piece)
    return [*out, Segment(False, 5000, ACK, server)]


def _client_text(segments: list[Any], payloads: list[bytes | None]) -> bytes:
    return b"".join((new if new is not None else s.payload) for s, new in zip(segments, payloads, strict=True)
                    if s.from_client)


def test_stream_redaction_keeps_lengths_and_masks_values() -> None:
    from chargewatch.responder.stream_redact import _unmask, redact_segments

    message = b'[2,"m1","Authorize",{"idTag":"SECRETTAG"}]'
    # One message in two fragments (text + continuation), across two TCP segments.
    client = UPGRADE + _ws(message[:25], fin=False) + _ws(message[25:], opcode=0)
    segments = _segments(client, ACCEPTED + _ws(b'[3,"m1",{"idTagInfo":{"status":"Accepted"}}]', mask=None),
                         cut=len(UPGRADE) + 12)
    payloads, report = redact_segments(segments)
    text = _client_text(segments, payloads)
    assert len(text) == len(client) and b"Authorization: Basic " + b"*" * 16 + b"\r\n" in text
    assert (report.authorization_headers, report.values_masked, report.messages_blanked) == (1, 1, 0)
    frames = text[len(UPGRADE):]
    first, second = frames[6:6 + 25], frames[31 + 6:]
    assert _unmask(first, b"\x11\x22\x33\x44") + _unmask(second, b"\x11\x22\x33\x44") == (
        b'[2,"m1","Authorize",{"idTag":"*********"}]')
    assert all(new is None for s, new in zip(segments, payloads, strict=True) if not s.from_client)


def test_stream_redaction_blanks_what_it_cannot_judge() -> None:
    from chargewatch.responder.stream_redact import ACK, Segment, redact_segments

    numeric = _ws(b'[2,"m2","SetNetworkProfile",{"connectionData":{"apn":{"apnPassword":1234}}}]')
    broken = _ws(b"idTag=SECRETTAG")  # not JSON, but names a sensitive key
    plain = _ws(b'[2,"m3","Heartbeat",{}]')
    payloads, report = redact_segments(_segments(UPGRADE + numeric + broken + plain, ACCEPTED))
    text = _client_text(_segments(UPGRADE + numeric + broken + plain, ACCEPTED), payloads)
    assert report.messages_blanked == 2 and text.endswith(plain) and b"SECRETTAG" not in text
    # A gap in the capture: what follows it in that direction cannot be framed, so it is blanked.
    whole = _segments(UPGRADE + plain + plain + broken, ACCEPTED, cut=len(UPGRADE) + len(plain))
    after = whole[3]
    holed = [*whole[:3], Segment(True, after.seq + len(plain) + 2, ACK, after.payload[len(plain) + 2:]), whole[4]]
    payloads, gap = redact_segments(holed)
    assert payloads[2] is not None and payloads[2].endswith(plain)  # the credentials masked, the frame kept
    assert payloads[3] == b" " * (len(broken) - 2)
    assert gap.bytes_blanked_unparsed == len(plain) + len(broken)  # the missing bytes count too
    _, no_start = redact_segments([s for s in whole if s is not whole[2]])
    assert no_start.notes == ["client side without a complete HTTP upgrade: payload blanked"]
    # Caught mid-stream (no SYN, no upgrade): blanked; TLS: left as it is.
    _, midstream = redact_segments(_segments(plain + plain, b"", syn=False))
    assert midstream.bytes_blanked_unparsed == 2 * len(plain) and "mid-stream" in midstream.notes[0]
    tls, _ = redact_segments(_segments(b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x03\x00\x02hi"))
    assert tls == [None] * len(tls)


def test_recompressed_messages_inflate_and_keep_the_window() -> None:
    import zlib

    from chargewatch.responder.stream_redact import recompress

    sender = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = b'[2,"m1","Authorize",{"idTag":"SECRETTAG"}]'
    redacted = first.replace(b"SECRETTAG", b"*********")
    then = b'[2,"m2","Authorize",{"idTag":"SECRETTAG"}][2,"m1","Authorize",{"idTag":"OTHER"}]'
    packed = [sender.compress(m) + sender.flush(zlib.Z_SYNC_FLUSH) for m in (first, then)]
    replacement = recompress(redacted, b"", len(packed[0]) - 4)
    assert replacement is not None and len(replacement) == len(packed[0]) - 4
    receiver = zlib.decompressobj(-15)
    assert receiver.decompress(replacement + b"\x00\x00\xff\xff") == redacted
    # The sender's next message copies from the first one: the receiver reads the redacted copy.
    assert receiver.decompress(packed[1]).count(b"*********") == 1
