"""Parallel analyze gives exactly the single-process result."""

from __future__ import annotations

from pathlib import Path

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
