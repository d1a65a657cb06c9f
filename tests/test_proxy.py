"""The mirroring proxy: real ``ocpp`` charge points ⇄ proxy ⇄ real ``ocpp`` central system.

Sessions must complete unchanged (each peer receives exactly the frames the other sent), every
frame must reach Kafka as a redacted record with the right direction, ids and action, and a
Kafka that cannot be reached must cost the relay nothing: records wait in the spool (or, when it
is full, are dropped and counted). A proxy SIGKILLed with undelivered records in its spool, and
a publisher process killed while publishing, still leave every relayed frame in Kafka once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chargewatch.catalog import load_catalog
from chargewatch.config import Config, KafkaConfig, with_overrides
from chargewatch.model import ConnectionEvent
from chargewatch.redaction import Redactor
from chargewatch.spool import SpoolReader, delete_segments_before
from chargewatch.spool_output import SpooledOutput
from chargewatch.status import read_status
from collectors.proxy_mirror import Mirror
from tests.conftest import TEST_KEY, Services, isolated_config
from tests.kafka_helpers import read_topic
from tests.peers import CREDENTIALS, TAG, SentFrame
from tests.proxy_harness import (
    ProxyProcess,
    central_system,
    client_context,
    closed_port,
    make_pki,
    run_scenarios,
    running_proxy,
    server_context,
    spooled,
    tap_peers,
    wait_for,
)

PASSWORD = CREDENTIALS["CP16-001"]


def _offline_config(tmp_path: Path, **proxy: object) -> Config:
    """A config whose Kafka is a loopback port nothing listens on."""
    return with_overrides(Config(), kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"},
                          redaction={"key": TEST_KEY}, collector={"status_dir": str(tmp_path / "status")},
                          proxy={"kafka_block_ms": 500, "drain_timeout_s": 0.5, "status_name": "proxy-test"} | proxy)


def _status(config: Config) -> dict[str, Any]:
    [doc] = read_status(Path(config.collector.status_dir))
    return doc


def _write_status(proxy: Any, config: Config) -> None:
    from chargewatch.status import StatusWriter

    directory = Path(config.collector.status_dir)
    directory.mkdir(parents=True, exist_ok=True)
    StatusWriter(directory, config.proxy.status_name, "proxy", proxy.snapshot).write(False)


def _assert_relayed_unchanged(sent: list[SentFrame], received: list[SentFrame]) -> None:
    """Per charge point and direction, the receiver got exactly the sender's frames, in order."""
    other = {"cp": "csms", "csms": "cp"}
    by_sender: dict[tuple[str, str], list[str]] = {}
    by_receiver: dict[tuple[str, str], list[str]] = {}
    for frame in sent:
        by_sender.setdefault((frame.cp_id, frame.sender), []).append(frame.text)
    for frame in received:
        by_receiver.setdefault((frame.cp_id, other[frame.sender]), []).append(frame.text)
    assert by_sender and by_receiver == by_sender


def _expected_records(sent: list[SentFrame]) -> Counter[tuple[Any, ...]]:
    """(charge point, direction, type, id, action) of every frame, responses inheriting the CALL's action."""
    actions: dict[tuple[str, str], str] = {}
    expected: Counter[tuple[Any, ...]] = Counter()
    for frame in sorted(sent, key=lambda f: f.t):
        message = json.loads(frame.text)
        if message[0] == 2:
            actions[(frame.cp_id, message[1])] = message[2]
        direction = "cp->csms" if frame.sender == "cp" else "csms->cp"
        expected[(frame.cp_id, direction, message[0], message[1], actions[(frame.cp_id, message[1])])] += 1
    return expected


def _check_kafka(config: Config, sent: list[SentFrame], tls: bool) -> list[dict[str, Any]]:
    records = read_topic(config.kafka.bootstrap_servers, config.kafka.messages_topic)
    dead = read_topic(config.kafka.bootstrap_servers, config.kafka.deadletter_topic)
    messages = [r for r in records if r["record"] == "message"]
    got = Counter((r["charge_point_id"], r["direction"], r["message_type"], r["message_id"], r["action"])
                  for r in messages)
    assert got == _expected_records(sent)
    assert dead == []
    events = [r for r in records if r["record"] == "connection"]
    assert Counter(e["kind"] for e in events) == {"upgrade": 2, "closed": 2}
    upgrades = {e["charge_point_id"]: e for e in events if e["kind"] == "upgrade"}
    assert set(upgrades) == {"CP16-001", "RDAM 123"}
    cp16 = upgrades["CP16-001"]
    assert (cp16["auth_scheme"], cp16["auth_username"], cp16["status"]) == ("Basic", "CP16-001", 101)
    assert (cp16["subprotocol"], cp16["ocpp_version"], cp16["path"]) == ("ocpp1.6", "1.6", "/ocpp/CP16-001")
    assert upgrades["RDAM 123"]["path"] == "/ocpp/RDAM%20123"
    assert all((e["tls"] is not None) == tls for e in events)
    for cp_id, upgrade in upgrades.items():  # every record of a session carries its connection's id
        assert {r["connection_id"] for r in messages if r["charge_point_id"] == cp_id} == {upgrade["connection_id"]}
    everything = json.dumps(records + dead)
    token = base64.b64encode(f"CP16-001:{PASSWORD}".encode()).decode()
    assert PASSWORD not in everything and token not in everything
    assert TAG not in everything  # idTags are pseudonymised like in every collector's output
    return events


def _session(config: Config, monkeypatch: pytest.MonkeyPatch, pki: Any = None) -> tuple[list[SentFrame], Any]:
    sent: list[SentFrame] = []
    received: list[SentFrame] = []
    tap_peers(monkeypatch, received, client_context(pki, with_cert=True) if pki else None)

    async def main() -> Any:
        central_ssl = server_context(pki, require_client=True) if pki else None
        async with central_system(sent, central_ssl) as (central, central_port):
            scheme = "wss" if pki else "ws"
            tls: dict[str, str] = {}
            if pki:
                tls = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), "tls_client_ca": str(pki.ca),
                       "upstream_ca": str(pki.ca), "upstream_client_cert": str(pki.proxy_cert),
                       "upstream_client_key": str(pki.proxy_key)}
            async with running_proxy(config, upstream=f"{scheme}://localhost:{central_port}", **tls) as (proxy, port):
                scenarios = ["v16_session", "v201_session"]
                await run_scenarios(f"{scheme}://localhost:{port}/ocpp/", central, sent, scenarios)
            _write_status(proxy, config)
            return proxy

    proxy = asyncio.run(main())
    _assert_relayed_unchanged(sent, received)
    return sent, proxy


@pytest.mark.services
def test_plain_sessions_relayed_unchanged_and_mirrored(services: Services, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = with_overrides(isolated_config(services), collector={"status_dir": str(tmp_path)})
    sent, _ = _session(config, monkeypatch)
    _check_kafka(config, sent, tls=False)
    status = _status(config)
    assert (status["frames"], status["messages"], status["drops"], status["errors"]) == (len(sent), len(sent), 0, 0)
    assert status["details"]["delivered"] == len(sent) + 4  # the messages and 2 upgrade + 2 closed events
    assert (status["details"]["connections_total"], status["details"]["connections_open"]) == (2, 0)
    spool = status["details"]["spool"]
    assert spool["spooled"] == len(sent) + 4 and spool["pending_bytes"] == 0 and spool["corrupt_tail"] == 0
    assert status["details"]["publisher"]["restarts"] == 0 and status["details"]["redelivered_skipped"] == 0


@pytest.mark.services
def test_tls_terminated_and_reoriginated_with_client_certificates(services: Services, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path)
    config = with_overrides(isolated_config(services), collector={"status_dir": str(tmp_path / "status")})
    sent, _ = _session(config, monkeypatch, pki)
    events = _check_kafka(config, sent, tls=True)
    tls = next(e["tls"] for e in events if e["kind"] == "upgrade" and e["charge_point_id"] == "CP16-001")
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"]
    assert tls["client_cert_subject"] == "CN=CP16-001,O=Chargewatch Test"
    assert tls["client_cert_sha256"] == hashlib.sha256(pki.cp_cert_der).hexdigest()
    assert tls["server_name"] == "localhost"
    assert _status(config)["drops"] == 0


@pytest.mark.parametrize("spool_max_bytes", [1 << 30, 8192])
def test_unreachable_kafka_costs_the_relay_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   spool_max_bytes: int) -> None:
    spool = tmp_path / "spool"
    config = _offline_config(tmp_path, spool_dir=str(spool), spool_max_bytes=spool_max_bytes)
    sent: list[SentFrame] = []
    received: list[SentFrame] = []
    tap_peers(monkeypatch, received, None)

    async def main() -> tuple[float, float, Any]:
        async with central_system(sent) as (central, central_port):
            direct = await run_scenarios(f"ws://127.0.0.1:{central_port}/ocpp/", central, [], ["v16_session"])
            sent.clear()  # the central system logs into sent: keep only the proxied run
            received.clear()
            async with running_proxy(config, upstream=f"ws://127.0.0.1:{central_port}") as (proxy, port):
                proxied = await run_scenarios(f"ws://127.0.0.1:{port}/ocpp/", central, sent, ["v16_session"])
            _write_status(proxy, config)
            return direct, proxied, proxy

    direct, proxied, _ = asyncio.run(main())
    _assert_relayed_unchanged(sent, received)
    # A relay that waited for Kafka would take at least kafka_block_ms (0.5 s) per blocked call.
    assert proxied < direct + 1.0, (direct, proxied)
    status = _status(config)
    assert status["frames"] == len(sent) > 4
    details = status["details"]
    assert details["delivered"] == 0 and not details["kafka_connected"]
    # Every record is either in the spool, waiting for Kafka, or counted as dropped: nothing vanished.
    kept, lost = spooled(spool), details["drops_by_kind"]
    assert sum(kept.values()) == details["spool"]["spooled"] and details["spool"]["pending_bytes"] > 0
    assert kept["message"] + lost.get("message", 0) == len(sent) and kept["connection"] + lost.get("connection", 0) == 2
    assert status["drops"] == details["drops"]["spool_full"] == sum(lost.values())
    if spool_max_bytes > 1 << 20:
        assert status["drops"] == 0 and kept == {"message": len(sent), "connection": 2}
    else:  # what did not fit is counted; the spool stays within its bound
        assert lost.get("message", 0) > 0 and details["spool"]["bytes"] <= spool_max_bytes


def test_full_spool_reports_a_mirror_gap_once_there_is_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "spool"
    output = SpooledOutput(KafkaConfig(bootstrap_servers=f"127.0.0.1:{closed_port()}"), directory, max_bytes=4096,
                           fsync_interval_s=1.0, kafka_block_ms=500, drain_timeout_s=0.5)  # publisher never started
    mirror = Mirror(output, Redactor(bytes.fromhex(TEST_KEY)), load_catalog(), source="proxy:t", max_message=1 << 20)
    upgrade = ConnectionEvent(ts=1.0, kind="upgrade", connection_id="C1", charge_point_id="CP1", client_ip="127.0.0.1",
                              client_port=50_000, server_ip="127.0.0.1", server_port=9180, subprotocol="ocpp1.6",
                              ocpp_version="1.6", status=101, source="proxy:t")
    link = mirror.open(upgrade, ("127.0.0.1", 50_000), ("127.0.0.1", 9180))
    for i in range(40):
        mirror.frame(link, True, f'[2,"m{i}","Heartbeat",{{}}]'.encode(), 2.0 + i, False, i + 1)
    counters = mirror.counters()
    lost = counters["drops"]["spool_full"]
    assert 0 < lost < 40 and link.dropped == lost and counters["drops_by_kind"] == {"message": lost}
    # The publisher acknowledged every closed segment and deleted it: there is room again.
    delete_segments_before(directory, output.writer.segment)
    monkeypatch.setattr("chargewatch.spool.REFRESH_S", 0.0)
    mirror.frame(link, True, b'[2,"last","Heartbeat",{}]', 50.0, False, 41)
    output.close()
    reader, entries = SpoolReader(directory), list[dict[str, Any]]()
    while batch := reader.read():
        entries.extend(json.loads(entry.value) for entry in batch)
    gap, last = entries[-2:]
    assert (gap["record"], gap["kind"], gap["connection_id"], gap["charge_point_id"]) == (
        "deadletter", "mirror_gap", "C1", "CP1")
    assert gap["detail"].startswith(f"{lost} frame(s) of this connection were relayed but not mirrored")
    assert (last["record"], last["message_id"]) == ("message", "last") and link.reported == lost


def test_refusals_close_codes_and_binary_frames(tmp_path: Path) -> None:
    config = _offline_config(tmp_path)
    closes: list[tuple[int | None, str | None]] = []

    async def echo(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                if message == "close-me":
                    await ws.close(4001, "bye")
                    return
                await ws.send(message)
        finally:
            closes.append((ws.close_code, ws.close_reason))

    async def refuse(conn: ServerConnection, request: Any) -> Any:
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"CP1:right").decode():
            response = conn.respond(401, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
            return response
        return None

    async def main() -> Any:
        async with serve(echo, "127.0.0.1", 0, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                         process_request=refuse) as server:
            upstream = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/csms"
            async with running_proxy(config, upstream=upstream) as (proxy, port):
                url = f"ws://127.0.0.1:{port}/CP1"
                with pytest.raises(InvalidStatus) as refused:
                    await connect(url, subprotocols=["ocpp1.6"], additional_headers={"Authorization": "Basic eA=="})
                assert refused.value.response.status_code == 401
                assert refused.value.response.headers["WWW-Authenticate"] == 'Basic realm="ocpp"'
                auth = {"Authorization": "Basic " + base64.b64encode(b"CP1:right").decode()}
                async with connect(url, subprotocols=["ocpp2.0.1", "ocpp1.6"], additional_headers=auth) as ws:
                    assert ws.subprotocol == "ocpp1.6"  # what the central system chose
                    for message in (b"\x00\xffbinary\x80", '[2,"1","Heartbeat",{}] é ✓', "x" * 70_000):
                        await ws.send(message)
                        assert await ws.recv() == message  # same type, same bytes
                    await ws.send("close-me")
                    with pytest.raises(ConnectionClosed):
                        await ws.recv()
                    assert (ws.close_code, ws.close_reason) == (4001, "bye")
                async with connect(url, subprotocols=["ocpp1.6"], additional_headers=auth) as ws:
                    await ws.close(4002, "cp leaves")
                async with running_proxy(config, upstream=f"ws://127.0.0.1:{closed_port()}") as (down, down_port):
                    with pytest.raises(InvalidStatus) as unreachable:
                        await connect(f"ws://127.0.0.1:{down_port}/CP1")
                    assert unreachable.value.response.status_code == 502
                    assert down.counters.upstream_failures == 1
                return proxy

    proxy = asyncio.run(main())
    assert (4001, "bye") in closes and (4002, "cp leaves") in closes
    assert (proxy.counters.upstream_refusals, proxy.counters.connections_total) == (1, 2)
    assert proxy.counters.frames == 2 * 3 + 1  # three echoed messages, and close-me
    assert proxy.counters.relay_errors == 0


# --- crashes: the proxy, or its publisher process, SIGKILLed; every relayed frame in Kafka once ------

SESSIONS = ["v16_session", "v201_session"]


@pytest.mark.services
def test_proxy_sigkilled_with_records_only_in_the_spool_publishes_them_once_after_restart(
        services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    online = with_overrides(isolated_config(services), collector={"status_dir": str(tmp_path / "status")},
                            proxy={"spool_dir": str(spool), "kafka_block_ms": 500, "drain_timeout_s": 60.0})
    offline = with_overrides(online, kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"})
    sent: list[SentFrame] = []
    received: list[SentFrame] = []
    tap_peers(monkeypatch, received, None)

    async def main() -> str:
        async with central_system(sent) as (central, central_port):
            upstream = f"ws://127.0.0.1:{central_port}"
            crashed = await asyncio.to_thread(ProxyProcess, offline, tmp_path / "crashed", upstream)
            try:
                await run_scenarios(f"ws://127.0.0.1:{crashed.port}/ocpp/", central, sent, SESSIONS)
                # Kafka is unreachable: once every relayed frame's record is spooled, the spool is all there is.
                expected = {"message": len(sent), "connection": 4}
                await asyncio.to_thread(wait_for, lambda: spooled(spool) == expected, "every record in the spool")
            finally:
                crashed.kill()
            assert crashed.proc.returncode == -signal.SIGKILL
            return upstream

    upstream = asyncio.run(main())
    _assert_relayed_unchanged(sent, received)
    restarted = ProxyProcess(online, tmp_path / "restarted", upstream)
    assert restarted.stop() == 0, "".join(restarted.stderr)  # a clean stop drains the spool first
    _check_kafka(online, sent, tls=False)  # every frame once (by charge point, direction, type, id, action)
    details = _status(online)["details"]
    assert details["delivered"] == len(sent) + 4 and details["redelivered_skipped"] == 0, details
    assert details["spool"]["pending_bytes"] == 0 and details["spool"]["corrupt_tail"] == 0, details["spool"]
    assert details["spool"]["spooled"] == 0 and details["connections_total"] == 0  # the restart relayed nothing


@pytest.mark.services
@pytest.mark.parametrize("kill", ["sent:20", "flushed:1", "sigkill"])
def test_publisher_killed_while_publishing_is_restarted_without_loss_or_duplicates(
        services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: str) -> None:
    """sent:20 dies with records sent but not acknowledged, flushed:1 with records acknowledged but
    not checkpointed, sigkill is killed from outside after its first checkpoint."""
    config = with_overrides(isolated_config(services), collector={"status_dir": str(tmp_path)})
    sent: list[SentFrame] = []
    received: list[SentFrame] = []
    tap_peers(monkeypatch, received, None)

    def pending(proxy: Any) -> int:
        return int(proxy.mirror.counters()["spool"]["pending_bytes"])

    async def main() -> Any:
        async with central_system(sent) as (central, central_port):
            kill_at = None if kill == "sigkill" else kill
            async with running_proxy(config, kill_at, upstream=f"ws://127.0.0.1:{central_port}") as (proxy, port):
                publisher = proxy.mirror.output.publisher
                base = f"ws://127.0.0.1:{port}/ocpp/"
                await run_scenarios(base, central, sent, SESSIONS[:1])
                if kill == "sigkill":
                    await asyncio.to_thread(wait_for, lambda: publisher.counters().get("delivered", 0) > 0,
                                            "the publisher's first checkpoint")
                    os.kill(publisher.pid or 0, signal.SIGKILL)
                await run_scenarios(base, central, sent, SESSIONS[1:])
                # The new publisher process catches up before the proxy stops (a stop would also drain).
                await asyncio.to_thread(wait_for, lambda: publisher.restarts == 1 and not pending(proxy),
                                        "a new publisher process publishing the whole spool")
            _write_status(proxy, config)
            return proxy

    asyncio.run(main())
    _assert_relayed_unchanged(sent, received)
    _check_kafka(config, sent, tls=False)  # no record lost, none twice
    details = _status(config)["details"]
    assert details["publisher"]["restarts"] == 1 and details["spool"]["pending_bytes"] == 0, details
    assert details["delivered"] + details["redelivered_skipped"] == len(sent) + 4, details
    if kill == "flushed:1":  # acknowledged but not checkpointed: found in Kafka, not sent again
        assert details["redelivered_skipped"] > 0, details
