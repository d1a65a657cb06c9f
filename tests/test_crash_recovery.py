"""SIGKILL a real detector or indexer process at the points where work could be lost or
duplicated; after a restart Elasticsearch holds exactly the alerts of an uninterrupted run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chargewatch.config import Config
from chargewatch.embedded import analyze
from tests.conftest import Services, isolated_config
from tests.fleet import write_fleet
from tests.kafka_helpers import cli, indexed_alerts, read_topic, write_config

pytestmark = pytest.mark.services

DEMO = Path(__file__).resolve().parent.parent / "samples" / "demo.pcap"
KILLED = -9


def _ok(proc: Any) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def _killed(proc: Any) -> None:
    assert proc.returncode == KILLED, f"expected SIGKILL, got {proc.returncode}\n{proc.stderr}"


def _expected(config: Config, capture: Path) -> dict[str, dict[str, Any]]:
    return {a.id: a.to_document() for a in analyze([capture], config).alerts}


def _assert_exactly(config: Config, expected: dict[str, dict[str, Any]]) -> None:
    docs = indexed_alerts(config)
    assert len(docs) == len(expected), "alerts lost or duplicated in Elasticsearch"
    assert {d["event"]["id"]: d for d in docs} == expected


@pytest.fixture(scope="module")
def fleet_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "fleet.pcap"
    write_fleet(path, count=24)
    return path


@pytest.mark.parametrize("kill_at", ["alert_sent:1", "alerts_flushed:1", "alerts_flushed:3", "before_flush:2",
                                     "after_commit:4"])
def test_detector_killed_then_restarted_loses_and_duplicates_nothing(services: Services, fleet_capture: Path,
                                                                     tmp_path: Path, kill_at: str) -> None:
    config = isolated_config(services)
    config = replace(config, detector=replace(config.detector, batch_size=5))
    cfg = write_config(config, tmp_path)
    _ok(cli(cfg, "collect", "pcap", str(fleet_capture)))
    _killed(cli(cfg, "detect", "--idle-exit", "3", "--kill-at", kill_at))
    _ok(cli(cfg, "detect", "--idle-exit", "3"))
    _ok(cli(cfg, "index", "--idle-exit", "3"))
    _assert_exactly(config, _expected(config, fleet_capture))


def test_detector_killed_between_original_and_replay_still_alerts(services: Services, tmp_path: Path) -> None:
    """State survives the crash: the replay after the restart is judged against the original."""
    config = isolated_config(services, partitions=1)
    config = replace(config, detector=replace(config.detector, batch_size=1))
    cfg = write_config(config, tmp_path)
    _ok(cli(cfg, "collect", "pcap", str(DEMO)))
    records = read_topic(services.kafka, config.kafka.messages_topic)
    replay = next(a for a in analyze([DEMO], config).alerts if a.rule_id == "CW-REPLAY-001")
    original = next(i for i, r in enumerate(records)
                    if r.get("message_id") == replay.message_id and r.get("message_type") == 2)
    assert original < next(i for i, r in enumerate(records) if r.get("ts") == replay.ts)
    # batch size 1: commit number original+1 is the original's; die right after it.
    _killed(cli(cfg, "detect", "--idle-exit", "3", "--kill-at", f"after_commit:{original + 1}"))
    before = read_topic(services.kafka, config.kafka.alerts_topic)
    assert "CW-REPLAY-001" not in {d["rule"]["id"] for d in before}, "killed too late: the replay was seen"
    _ok(cli(cfg, "detect", "--idle-exit", "3"))
    _ok(cli(cfg, "index", "--idle-exit", "3"))
    _assert_exactly(config, _expected(config, DEMO))


def test_indexer_killed_after_indexing_before_commit_duplicates_nothing(services: Services, fleet_capture: Path,
                                                                        tmp_path: Path) -> None:
    config = isolated_config(services)
    cfg = write_config(config, tmp_path)
    _ok(cli(cfg, "collect", "pcap", str(fleet_capture)))
    _ok(cli(cfg, "detect", "--idle-exit", "3"))
    _killed(cli(cfg, "index", "--idle-exit", "3", "--kill-at", "alerts_indexed:1"))
    _ok(cli(cfg, "index", "--idle-exit", "3"))
    _assert_exactly(config, _expected(config, fleet_capture))
