"""Hostile payloads never crash the detector stage: every rule sample, with payload fields
swapped for values of the wrong JSON type, runs through every stage without an exception and
without a detector failure (the runner's safety net counts those; here it must stay at zero)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from chargewatch.catalog import load_catalog
from chargewatch.model import record_from_dict, record_key
from detectors.policy import Policy
from detectors.rules import load_rules
from detectors.stages import build_stages

SAMPLES = Path(__file__).resolve().parent.parent / "detectors" / "samples"
WEIRD: list[Any] = ["x", 7, -1, 1.5, None, True, [], {}, ["a"], {"a": 1}, "2024-13-45T99:00:00Z", 10**30]
STREAMS = 1500  # seeded: the same mutations every run
STREAM_LENGTH = 30


def _mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """value with one field, somewhere inside, replaced by a value of another JSON type."""
    if isinstance(value, dict) and value:
        value = dict(value)
        key = rng.choice(list(value))
        value[key] = rng.choice(WEIRD) if rng.random() < 0.5 or depth > 4 else _mutate(value[key], rng, depth + 1)
        return value
    if isinstance(value, list) and value:
        value = list(value)
        i = rng.randrange(len(value))
        value[i] = _mutate(value[i], rng, depth + 1) if rng.random() < 0.5 else rng.choice(WEIRD)
        return value
    return rng.choice(WEIRD)


def test_mutated_payloads_never_crash_a_detector() -> None:
    rng = random.Random(20261125)
    records = [json.loads(line) for path in sorted(SAMPLES.glob("*/*.jsonl")) for line in path.read_text().splitlines()]
    rules, catalog = load_rules(), load_catalog()
    failures: dict[str, int] = {}
    mutated = 0
    for _ in range(STREAMS):
        stages = build_stages(rules, catalog, Policy(), record_key)
        start = rng.randrange(len(records))
        for original in records[start:start + STREAM_LENGTH]:
            data = original
            if data.get("record") == "message" and rng.random() < 0.5:
                data = dict(original, payload=_mutate(original["payload"], rng))
                mutated += 1
            stages.process(record_from_dict(data))
        for stage in [stages.local, *stages.correlation]:
            for name, count in stage.runner.failures.items():
                failures[name] = failures.get(name, 0) + count
    assert mutated > 10_000
    assert failures == {}, f"detectors raised on mutated payloads: {failures} (run with -s for the tracebacks)"
