"""The one check every model passes, the rule-based baseline, and scoring throughput.

:func:`check_model` fits a model on the training part of a held-out split and verifies that it
pickles (same scores after a round trip), clones (an unfitted copy with the same parameters),
gives the same scores when fitted again with the same seed, and ranks the held-out anomalies
(other kinds, other sites) above the held-out benign sessions: ROC-AUC >= ``min_auc``.

:func:`rule_flags` runs the real detector stages (every enabled rule, per charge point and
correlation, with the fleet's policy) over the same records and names the sessions that the
rules flagged, so model and rule figures come from one data set.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from sklearn.base import clone

from chargewatch.catalog import load_catalog
from chargewatch.model import OcppMessage, record_key
from detectors.rules import load_rules
from detectors.stages import build_stages
from models.estimators import SessionDetector
from models.synthetic import SyntheticFleet
from models.training import Metrics, choose_threshold, evaluate, validation_split

TRANSACTION_CATEGORY = "abnormal_transaction"


@dataclass
class CheckReport:
    """What :func:`check_model` found: the failures (empty = passed) and the figures."""

    model: str
    failures: list[str] = field(default_factory=list)
    metrics: Metrics | None = None
    fit_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures


def check_model(model: SessionDetector, train: pd.DataFrame, test: pd.DataFrame, min_auc: float = 0.85,
                fpr: float = 0.01, seed: int = 0) -> CheckReport:
    """Run the shared check on an unfitted model (see the module docstring)."""
    report = CheckReport(type(model).__name__)
    fit_part, held = validation_split(train, 0.2, seed)
    started = time.perf_counter()
    fitted = clone(model).fit(fit_part)
    report.fit_s = time.perf_counter() - started
    scores = fitted.score(test)
    again = pickle.loads(pickle.dumps(fitted))  # noqa: S301 - our own bytes, just written
    if not np.array_equal(again.score(test), scores):
        report.failures.append("scores differ after a pickle round trip")
    copy = clone(fitted)
    if copy.get_params() != fitted.get_params() or any(k.endswith("_") and not k.startswith("_")
                                                       for k in vars(copy)):
        report.failures.append("clone() did not give an unfitted copy with the same parameters")
    if not np.array_equal(copy.fit(fit_part).score(test), scores):
        report.failures.append("the same seed gave different scores")
    benign = held[held["label"] == 0] if "label" in held.columns else held
    report.metrics = evaluate(scores, test, choose_threshold(fitted.score(benign), fpr))
    auc = report.metrics.roc_auc
    if auc is None or auc < min_auc:
        report.failures.append(f"ROC-AUC {auc} on held-out kinds and sites is below {min_auc}")
    return report


def rule_flags(fleet: SyntheticFleet, categories: Iterable[str] | None = (TRANSACTION_CATEGORY,)
               ) -> dict[tuple[str, str], set[str]]:
    """(charge point, transaction id) -> the rules (of categories; None: any) whose alerts name a
    message of that session, from the real detectors run over the fleet's records."""
    wanted = None if categories is None else set(categories)
    # The rules only: CW-TX-006 is the promoted model itself, not a rule-based check.
    rules = {rule_id: replace(rule, enabled=False) if rule_id == "CW-TX-006" else rule
             for rule_id, rule in load_rules().items()}
    stages = build_stages(rules, load_catalog(), fleet.policy, record_key)
    flags: dict[tuple[str, str], set[str]] = {}
    for record in fleet.records:
        for alert in stages.process(record):
            if wanted is not None and alert.category not in wanted:
                continue
            session = fleet.message_sessions.get(alert.message_id or "")
            evidence_tx = alert.evidence.get("transaction_id") if isinstance(alert.evidence, dict) else None
            if session is None and evidence_tx is not None:
                session = (alert.charge_point_id, str(evidence_tx))
            if session is not None:
                flags.setdefault(session, set()).add(alert.rule_id)
    return flags


def rule_metrics(frame: pd.DataFrame, flags: dict[tuple[str, str], set[str]]) -> Metrics:
    """Precision and recall of the rules' verdicts (flagged or not) on a labelled session frame."""
    keys = zip(frame["charge_point_id"], frame["transaction_id"], strict=True)
    verdict = np.array([1.0 if key in flags else 0.0 for key in keys])
    metrics = evaluate(verdict, frame, 0.5)
    return Metrics(metrics.sessions, metrics.anomalies, metrics.flagged, None, metrics.precision, metrics.recall,
                   metrics.false_positive_rate, 0.5, metrics.recall_by_kind)


def throughput(model: SessionDetector, frame: pd.DataFrame, batch: int, batches: int = 5) -> float:
    """Sessions scored per second when handed ``batch`` rows at a time (frames sliced from frame,
    as a detector would hand them over), over ``batches`` batches (at least 200 rows)."""
    rows = max(batch * batches, 200)
    sample = pd.concat([frame] * (rows // max(len(frame), 1) + 1)).iloc[:rows]
    started = time.perf_counter()
    for begin in range(0, rows, batch):
        model.score(sample.iloc[begin:begin + batch])
    return rows / (time.perf_counter() - started)


def message_count(fleet: SyntheticFleet) -> int:
    """OCPP messages in a fleet's records (connection events left out)."""
    return sum(1 for record in fleet.records if isinstance(record, OcppMessage))
