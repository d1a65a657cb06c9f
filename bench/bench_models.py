"""Benchmark: scoring throughput of the transaction anomaly models inside the CW-TX-006 detector.

Generates the seeded synthetic fleet (``models.synthetic``), reconstructs its sessions with the
detector's own :class:`models.features.SessionFeatures`, fits every registry model kind on them
(IsolationForest, per-site robust z-scores, LocalOutlierFactor) and times the detector's scoring
step (:meth:`detectors.model_scoring.ModelScoringDetector.score_pending`: session frame, score,
threshold, explanations of the flagged) over the same sessions, in micro-batches of the rule's
``batch_size`` and one session at a time. Prints sessions/s per model and the speed-up; never
asserts speed (exit 0 unless something failed).

Run: ``python bench/bench_models.py [--sessions N | --smoke] [--json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chargewatch.model import OcppMessage
from detectors.model_scoring import RULE_ID, ModelScoringDetector
from detectors.rules import Rule, load_rules
from models.estimators import MODELS
from models.features import SessionRow, rows_frame
from models.synthetic import generate
from models.training import make_model

Pending = list[tuple[SessionRow, OcppMessage]]


def enabled_rules() -> dict[str, Rule]:
    """The shipped rules with CW-TX-006 enabled (it is off by default)."""
    rules = load_rules()
    return rules | {RULE_ID: replace(rules[RULE_ID], enabled=True)}


def finished_sessions(sessions: int, seed: int) -> tuple[ModelScoringDetector, Pending]:
    """A detector on the shipped promoted model, and the finished sessions of a synthetic fleet
    as its queue holds them (fed through the detector itself; nothing scored yet)."""
    fleet = generate(sessions=sessions, seed=seed)
    detector = ModelScoringDetector(enabled_rules(), fleet.policy)
    detector.batch_size, detector.max_wait_s = 1 << 30, float("inf")
    wanted = detector.actions
    for record in fleet.records:
        if isinstance(record, OcppMessage) and (wanted is None or record.action in wanted):
            detector.on_message(record, None, {})  # type: ignore[arg-type]  # ctx is not used
    return detector, detector.pending


def use_model(detector: ModelScoringDetector, name: str, pending: Pending) -> None:
    """Fit model kind name on the sessions and make it the detector's current model (threshold:
    the 99th percentile of its training scores, as a 1 % false-positive target)."""
    frame = rows_frame(row for row, _ in pending)
    model = make_model(name).fit(frame)
    threshold = float(np.percentile(model.score(frame), 99))
    promoted = detector.promoted_model()  # the shipped promoted model, loaded as at a first batch
    current = promoted.current
    metadata = current.metadata | {"model": name, "threshold": threshold}
    promoted.current = dataclasses.replace(current, model=model, version=f"bench-{name}", metadata=metadata)
    detector.min_score = 0.0
    promoted.check_interval_s = float("inf")  # the fitted model stays: no registry checks


def rate(detector: ModelScoringDetector, pending: Pending, batch: int, limit: int) -> tuple[float, int]:
    """Sessions/s of the detector's scoring step in batches of batch (at most limit sessions)."""
    sessions = pending[:limit]
    flagged = 0
    started = time.perf_counter()
    for start in range(0, len(sessions), batch):
        detector.pending = sessions[start:start + batch]
        flagged += sum(s.anomalous for s in detector.score_pending())
    return len(sessions) / (time.perf_counter() - started), flagged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5_000, help="synthetic sessions (default 5,000)")
    parser.add_argument("--single", type=int, default=300, help="sessions scored one at a time (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="small run for CI")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    if args.smoke:
        args.sessions, args.single = 600, 40
    detector, pending = finished_sessions(args.sessions, args.seed)
    batch = int(load_rules()[RULE_ID].param("batch_size"))
    per_model: dict[str, dict[str, float]] = {}
    figures: dict[str, object] = {"sessions": len(pending), "batch_size": batch, "models": per_model}
    for name in MODELS:
        use_model(detector, name, pending)
        batched, flagged = rate(detector, pending, batch, len(pending))
        single, _ = rate(detector, pending, 1, args.single)
        per_model[name] = {"batched_per_s": round(batched), "single_per_s": round(single),
                                   "speedup": round(batched / single, 1), "flagged": flagged}
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(f"CW-TX-006 scoring step, {len(pending)} synthetic sessions (seed {args.seed}); micro-batches of {batch} "
          f"vs one at a time ({min(args.single, len(pending))} sessions)")
    print(f"{'model':<18} {'batched sessions/s':>19} {'single sessions/s':>18} {'speed-up':>9} {'flagged':>8}")
    for name, f in per_model.items():
        print(f"{name:<18} {f['batched_per_s']:>19,} {f['single_per_s']:>18,} {f['speedup']:>8}x {f['flagged']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
