"""Parallel and batched analyze give exactly the single-process, record-by-record result."""

from __future__ import annotations

from pathlib import Path

import pytest

from chargewatch import embedded
from chargewatch.config import Config
from chargewatch.embedded import analyze
from tests.fleet import write_fleet

ROOT = Path(__file__).resolve().parent.parent


def test_two_workers_equal_one(tmp_path: Path, embedded_config: Config) -> None:
    fleet = tmp_path / "fleet.pcap"
    write_fleet(fleet, count=24)
    inputs = [ROOT / "samples" / "demo.pcap", fleet, ROOT / "tests" / "data" / "golden" / "v201_plain.pcapng"]
    one = analyze(inputs, embedded_config)
    two = analyze(inputs, embedded_config, workers=2)
    assert [a.to_document() for a in two.alerts] == [a.to_document() for a in one.alerts]
    assert two.stats.to_dict() == one.stats.to_dict()
    assert sorted(map(repr, two.dead_letters)) == sorted(map(repr, one.dead_letters))
    assert {a.rule_id for a in one.alerts} >= {"CW-REPLAY-001", "CW-REPLAY-002", "CW-PROTO-001"}


def test_batches_change_nothing(tmp_path: Path, embedded_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detectors run on batches of decoded records; any batch size, including batches cut in the
    middle of a file and a file that ends mid-batch, gives the record-by-record result."""
    fleet = tmp_path / "fleet.pcap"
    write_fleet(fleet, count=6)
    inputs = [ROOT / "samples" / "demo.pcap", fleet]
    results = {}
    for size in (1, 7, 1 << 20):
        monkeypatch.setattr(embedded, "BATCH_RECORDS", size)
        for workers in (1, 2):
            result = analyze(inputs, embedded_config, workers=workers)
            results[size, workers] = ([a.to_document() for a in result.alerts], result.stats.to_dict())
    first = results[1, 1]
    assert first[0] and first[1]["messages"] > 7
    assert all(r == first for r in results.values())
