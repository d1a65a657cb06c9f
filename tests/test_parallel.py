"""Parallel and batched analyze give exactly the single-process, record-by-record result."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from chargewatch import embedded, parallel
from chargewatch.config import Config
from chargewatch.embedded import analyze
from chargewatch.errors import ChargewatchError
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


def _failing_share(kind: str):  # type: ignore[no-untyped-def]
    real = parallel._run_share

    def run(paths, config, index, count, share, after_batch):  # type: ignore[no-untyped-def]
        if index == 1 and kind == "raise":
            raise ValueError("worker bug")
        if index == 1:
            os._exit(9)  # killed: no result, no error report
        real(paths, config, index, count, share, after_batch)

    return run


@pytest.mark.parametrize(("kind", "message"), [("raise", "(?s)worker 1 failed:.*ValueError: worker bug"),
                                               ("exit", "worker 1 ended without a result .exit code 9")])
def test_a_failed_worker_fails_the_analysis(monkeypatch: pytest.MonkeyPatch, embedded_config: Config,
                                             kind: str, message: str) -> None:
    """A worker that raises or dies makes analyze raise a clear error, promptly, never a partial result."""
    monkeypatch.setattr(parallel, "_run_share", _failing_share(kind))
    started = time.monotonic()
    with pytest.raises(ChargewatchError, match=message):
        analyze([ROOT / "samples" / "demo.pcap"], embedded_config, workers=2)
    assert time.monotonic() - started < parallel.JOIN_TIMEOUT_S
