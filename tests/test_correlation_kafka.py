"""The correlation stage on the real Kafka: the per-charge-point stage routes records to the
correlation topic, and one or two `detect --stage correlation` processes produce exactly the
alerts of the embedded run, although they see the charge points' records in another order."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chargewatch.config import Config
from chargewatch.embedded import analyze
from tests.conftest import Services, isolated_config
from tests.kafka_helpers import cli, group_members, read_topic, start, write_config
from tests.pcapgen import PcapWriter, ocpp_session

pytestmark = pytest.mark.services

T0 = 1_795_000_000.0
FLEET_RULES = {"CW-FLEET-001", "CW-FLEET-002", "CW-FLEET-003", "CW-FLEET-004"}


def _call(mid: str, action: str, payload: dict[str, Any], from_cp: bool = True) -> tuple[bool, str]:
    return from_cp, json.dumps([2, mid, action, payload])


def _result(mid: str, payload: dict[str, Any], from_cp: bool = False) -> tuple[bool, str]:
    return from_cp, json.dumps([3, mid, payload])


def _session(i: int, tag: str, reset: bool, meter_stop: int) -> list[tuple[bool, str]]:
    """Boot, Authorize, a 1.6 transaction, and (reset) a Reset from the central system."""
    p = f"c{i:02d}"
    msgs = [_call(f"{p}-boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}),
            _result(f"{p}-boot", {"status": "Accepted", "currentTime": "2026-11-20T10:00:00Z", "interval": 300}),
            _call(f"{p}-auth", "Authorize", {"idTag": tag}),
            _result(f"{p}-auth", {"idTagInfo": {"status": "Accepted"}}),
            _call(f"{p}-start", "StartTransaction",
                  {"connectorId": 1, "idTag": tag, "meterStart": 1000, "timestamp": "2026-11-20T10:00:00Z"}),
            _result(f"{p}-start", {"transactionId": 900 + i, "idTagInfo": {"status": "Accepted"}})]
    if reset:
        msgs += [_call(f"{p}-reset", "Reset", {"type": "Soft"}, from_cp=False),
                 _result(f"{p}-reset", {"status": "Accepted"}, from_cp=True)]
    stop = {"transactionId": 900 + i, "meterStop": meter_stop, "timestamp": "2026-11-20T10:10:00Z"}
    return [*msgs, _call(f"{p}-stop", "StopTransaction", stop), _result(f"{p}-stop", {})]


def write_capture(path: Path) -> None:
    """24 charge points, each its own TCP connection, written one after the other:
    0-11 get a Reset within ~30 s (CW-FLEET-001); 12-15 share CLONE, authorised within ~40 s
    with sessions overlapping for minutes (CW-FLEET-002, -003); 16-21 share SHORT in empty
    sessions of a few seconds (CW-FLEET-004, and -003); 22-23 are ordinary drivers."""
    with PcapWriter(str(path)) as writer:
        for i in range(24):
            if i < 12:
                msgs, t0, interval = _session(i, f"DRIVER{i:02d}", True, 6000), T0 + 2.5 * i, 2.0
            elif i < 16:
                msgs, t0, interval = _session(i, "CLONE", False, 9000), T0 + 100 + 10 * (i - 12), 200.0
            elif i < 22:
                msgs, t0, interval = _session(i, "SHORT", False, 1000), T0 + 200 + 30 * (i - 16), 1.0
            else:
                msgs, t0, interval = _session(i, f"DRIVER{i:02d}", False, 5000), T0 + 300 + 60 * (i - 22), 60.0
            ocpp_session(writer, msgs, client=("10.0.0.2", 41000 + i), server=("10.0.0.1", 9000), t0=t0,
                         interval=interval, path=f"/ocpp/CORR-{i:03d}", seed=i)


def _ok(proc: Any) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def _final(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last version of each alert (storm versions of one alert share a partition, in order)."""
    return {d["event"]["id"]: d for d in docs}


def _variant(config: Config, name: str, **kafka: Any) -> Config:
    return replace(config, kafka=replace(config.kafka, alerts_topic=f"{config.kafka.alerts_topic}.{name}", **kafka))


def test_two_correlation_processes_match_one_and_the_embedded_run(services: Services, tmp_path: Path) -> None:
    capture = tmp_path / "correlation.pcap"
    write_capture(capture)
    config = isolated_config(services)
    embedded = {a.id: a.to_document() for a in analyze([capture], config).alerts}
    expected_corr = {k: d for k, d in embedded.items() if d["rule"]["id"] in FLEET_RULES}
    assert {d["rule"]["id"] for d in expected_corr.values()} == FLEET_RULES

    per_cp = write_config(config, tmp_path, "per_cp")
    one = write_config(_variant(config, "one"), tmp_path, "one")
    two_cfg = _variant(config, "two", correlation_group=f"{config.kafka.correlation_group}-two")
    two = write_config(two_cfg, tmp_path, "two")
    _ok(cli(per_cp, "collect", "pcap", str(capture)))

    # Two correlation processes join their group before anything is routed, so both own partitions.
    procs = [start(two, "detect", "--stage", "correlation", "--idle-exit", "8") for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while group_members(services.kafka, two_cfg.kafka.correlation_group) < 2:
            assert time.monotonic() < deadline, "the two correlation processes never both joined the group"
            time.sleep(0.5)
        routed = cli(per_cp, "detect", "--idle-exit", "3")
        _ok(routed)
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    assert " 0 forwarded" not in routed.stderr, routed.stderr
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert " 0 records" not in err, f"a correlation process got no records: {err}"
    _ok(cli(one, "detect", "--stage", "correlation", "--idle-exit", "3"))

    per_cp_alerts = _final(read_topic(services.kafka, config.kafka.alerts_topic))
    assert per_cp_alerts == {k: d for k, d in embedded.items() if k not in expected_corr}
    single = _final(read_topic(services.kafka, f"{config.kafka.alerts_topic}.one"))
    pair = _final(read_topic(services.kafka, f"{config.kafka.alerts_topic}.two"))
    assert single == expected_corr
    assert pair == expected_corr
    burst = [d for d in single.values() if d["rule"]["id"] == "CW-FLEET-001"]
    assert sum(d["chargewatch"]["occurrences"] for d in burst) == 12
    assert {d["ocpp"]["charge_point_id"] for d in burst} <= {f"CORR-{i:03d}" for i in range(12)}
