"""``collect pcap --state-file``: a collector killed mid-file and restarted publishes every
record exactly once, and a file already published is not published again."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chargewatch.config import Config
from tests.conftest import Services, isolated_config
from tests.kafka_helpers import cli, read_topic, write_config

DEMO = Path(__file__).resolve().parent.parent / "samples" / "demo.pcap"


def _identity(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (doc.get("record"), doc.get("source"), doc.get("ts"), doc.get("direction"), doc.get("message_id"),
            doc.get("kind"))


def _published(config: Config) -> Counter[tuple[Any, ...]]:
    kafka = config.kafka
    return Counter(_identity(d) for topic in (kafka.messages_topic, kafka.deadletter_topic)
                   for d in read_topic(kafka.bootstrap_servers, topic))


@pytest.mark.parametrize("kill_at", ["record_sent:20", "record_sent:45", "file_done:1"])
def test_killed_and_restarted_collector_publishes_each_record_once(services: Services, tmp_path: Path,
                                                                   kill_at: str) -> None:
    reference = isolated_config(services)
    assert cli(write_config(reference, tmp_path, "reference"), "collect", "pcap", str(DEMO)).returncode == 0
    expected = _published(reference)
    assert len(expected) > 50 and max(expected.values()) == 1

    config = isolated_config(services)
    cfg, ledger = write_config(config, tmp_path), tmp_path / "pcap.state.json"
    killed = cli(cfg, "collect", "pcap", "--state-file", str(ledger), "--kill-at", kill_at, str(DEMO))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = _published(config)
    assert sum(partial.values()) < sum(expected.values()) or kill_at.startswith("file_done")

    resumed = cli(cfg, "collect", "pcap", "--state-file", str(ledger), str(DEMO))
    assert resumed.returncode == 0, resumed.stderr
    assert _published(config) == expected

    again = cli(cfg, "collect", "pcap", "--state-file", str(ledger), str(DEMO))
    assert again.returncode == 0, again.stderr
    assert "1 files already published" in again.stderr
    assert _published(config) == expected
