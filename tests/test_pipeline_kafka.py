"""Capture → Kafka → detectors → alerts topic → Elasticsearch, with real services and real
processes: the alerts are right, scale-out changes nothing, crashes lose and duplicate nothing."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chargewatch.config import Config
from chargewatch.embedded import analyze
from tests.conftest import Services, isolated_config
from tests.fleet import write_fleet
from tests.kafka_helpers import cli, group_members, indexed_alerts, read_topic, start, write_config

pytestmark = pytest.mark.services

DEMO = Path(__file__).resolve().parent.parent / "samples" / "demo.pcap"


def _ok(proc: Any) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def _by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["event"]["id"]: d for d in docs}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    path = tmp_path_factory.mktemp("fleet") / "fleet.pcap"
    return path, write_fleet(path, count=24)


def test_demo_capture_end_to_end_into_elasticsearch(service_config: Config, tmp_path: Path) -> None:
    cfg = write_config(service_config, tmp_path)
    _ok(cli(cfg, "setup"))
    _ok(cli(cfg, "collect", "pcap", str(DEMO)))
    _ok(cli(cfg, "detect", "--idle-exit", "3"))
    _ok(cli(cfg, "index", "--idle-exit", "3"))
    docs = indexed_alerts(service_config)
    expected = {a.id: a for a in analyze([DEMO], service_config).alerts}
    assert sorted((d["rule"]["id"], d["ocpp"]["charge_point_id"]) for d in docs) == [
        ("CW-MITM-003", "CP16-001"),  # posture: Basic auth over plain ws://, once per charge point
        ("CW-PROTO-001", "CP16-DIR"), ("CW-REPLAY-001", "CP16-ATTACK"),
        ("CW-SEC-005", "RDAM 123"),  # event: StartupOfTheDevice right after its BootNotification
    ]
    assert {d["event"]["id"] for d in docs} == set(expected)
    for doc in docs:
        alert = expected[doc["event"]["id"]]
        assert doc == alert.to_document()  # same ids and contents as the embedded default
        assert doc["event"]["kind"] == ("event" if doc["rule"]["id"] == "CW-SEC-005" else "alert")
        assert doc["source"]["ip"] == "127.0.0.1" and doc["destination"]["ip"] == "127.0.0.1"
        assert doc["ocpp"]["version"] in ("1.6", "2.0.1")
    replay = next(d for d in docs if d["rule"]["id"] == "CW-REPLAY-001")
    assert replay["ocpp"]["charge_point_id"] == "CP16-ATTACK"
    assert (replay["rule"]["category"], replay["event"]["severity"], replay["event"]["risk_score"]) == ("replay", 3, 73)
    assert replay["ocpp"]["action"] == "Authorize"
    direction = next(d for d in docs if d["rule"]["id"] == "CW-PROTO-001")
    assert (direction["ocpp"]["charge_point_id"], direction["ocpp"]["action"]) == ("CP16-DIR", "Reset")
    assert direction["rule"]["category"] == "protocol_anomaly"
    # The benign sessions raise no alert beyond the posture finding; alerts are searchable by field.
    from chargewatch.store import AlertQuery
    from chargewatch.store.elastic import ElasticAlertStore

    store = ElasticAlertStore(service_config.elasticsearch)
    try:
        hits = store.search(AlertQuery(category="replay", charge_point_id="CP16-ATTACK"))
        assert [h["event"]["id"] for h in hits] == [replay["event"]["id"]]
        assert store.search(AlertQuery(min_severity=4)) == []
    finally:
        store.close()
    # Redelivery of the whole alerts topic to a fresh indexer group adds nothing.
    regroup = replace(service_config.kafka, indexer_group=service_config.kafka.indexer_group + "-2")
    again = replace(service_config, kafka=regroup)
    _ok(cli(write_config(again, tmp_path, "again"), "index", "--idle-exit", "3"))
    assert _by_id(indexed_alerts(service_config)) == _by_id(docs)


def _expected_fleet(cfg: Config, capture: Path) -> dict[str, dict[str, Any]]:
    return {a.id: a.to_document() for a in analyze([capture], cfg).alerts}


def test_fleet_alerts_match_embedded_and_expectations(services: Services, fleet: tuple[Path, dict[str, str | None]],
                                                      tmp_path: Path) -> None:
    capture, expected_rules = fleet
    config = isolated_config(services)
    cfg = write_config(config, tmp_path)
    _ok(cli(cfg, "collect", "pcap", str(capture)))
    _ok(cli(cfg, "detect", "--idle-exit", "3"))
    alerts = _by_id(read_topic(services.kafka, config.kafka.alerts_topic))
    assert alerts == _expected_fleet(config, capture)
    fired = {(d["ocpp"]["charge_point_id"], d["rule"]["id"]) for d in alerts.values() if d["event"]["kind"] == "alert"}
    assert fired == {(cp, rule) for cp, rule in expected_rules.items() if rule is not None}


def test_two_detector_processes_produce_the_same_alerts_as_one(services: Services,
                                                               fleet: tuple[Path, dict[str, str | None]],
                                                               tmp_path: Path) -> None:
    capture, _ = fleet
    config = isolated_config(services)
    one = write_config(config, tmp_path)
    _ok(cli(one, "collect", "pcap", str(capture)))
    _ok(cli(one, "detect", "--idle-exit", "3"))
    single = _by_id(read_topic(services.kafka, config.kafka.alerts_topic))

    # Two processes in a new group, joined before the data arrives so both get partitions.
    two_cfg = replace(config, kafka=replace(config.kafka, messages_topic=config.kafka.messages_topic + ".2",
                                            alerts_topic=config.kafka.alerts_topic + ".2",
                                            detector_group=config.kafka.detector_group + "-2"))
    two = write_config(two_cfg, tmp_path, "two")
    procs = [start(two, "detect", "--idle-exit", "8") for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while group_members(services.kafka, two_cfg.kafka.detector_group) < 2:
            assert time.monotonic() < deadline, "the two detectors never both joined the group"
            time.sleep(0.5)
        _ok(cli(two, "collect", "pcap", str(capture)))
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert " 0 records" not in err, f"a detector got no partitions: {err}"
    assert _by_id(read_topic(services.kafka, two_cfg.kafka.alerts_topic)) == single
