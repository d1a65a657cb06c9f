"""Training and evaluation: held-out splits, the alert threshold, metrics, data fingerprints.

The threshold of a model is chosen on benign sessions it was not fitted on: the score that a
target share of them (``fpr``, 1 % by default) exceed. Labels are never used for fitting (the
models are unsupervised); they only pick the benign sessions for the threshold and measure the
result. The standard held-out evaluation trains on some sites and anomaly kinds and tests on
the other sites with the other kinds (:func:`holdout_split`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from models.estimators import MODELS, SessionDetector
from models.features import FEATURE_COLUMNS

#: Anomaly kinds held out of training by the standard evaluation (the others are trained on).
HOLDOUT_KINDS: tuple[str, ...] = ("impossible_duration", "token_spread_odd_hours", "sample_gap", "remote_start_abuse")
HOLDOUT_SITE_SUFFIX = "-2"  # the synthetic fleet's second site of every type is held out


@dataclass(frozen=True)
class Metrics:
    """Detection quality on labelled sessions at one threshold."""

    sessions: int
    anomalies: int
    flagged: int
    roc_auc: float | None  # None when the sessions hold only one class
    precision: float
    recall: float
    false_positive_rate: float
    threshold: float
    recall_by_kind: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "anomalies": self.anomalies, "flagged": self.flagged,
                "roc_auc": self.roc_auc, "precision": self.precision, "recall": self.recall,
                "false_positive_rate": self.false_positive_rate, "threshold": self.threshold,
                "recall_by_kind": dict(self.recall_by_kind)}

    def summary(self) -> str:
        auc = "n/a" if self.roc_auc is None else f"{self.roc_auc:.3f}"
        return (f"ROC-AUC {auc}  precision {self.precision:.3f}  recall {self.recall:.3f}  "
                f"FPR {self.false_positive_rate:.4f}  ({self.flagged} flagged of {self.sessions}, "
                f"{self.anomalies} anomalous)")


@dataclass(frozen=True)
class Trained:
    """A fitted model, its threshold and what it was trained and evaluated on."""

    model: SessionDetector
    threshold: float
    threshold_rule: str
    training: dict[str, Any]
    metrics: dict[str, Any]


def make_model(name: str, random_state: int | None = 0, **params: Any) -> SessionDetector:
    """A model by registry name (``isolation_forest``, ``robust_z``, ``lof``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return cls(random_state=random_state, **params)


def holdout_split(frame: pd.DataFrame, test_sites: set[str] | None = None,
                  test_kinds: tuple[str, ...] = HOLDOUT_KINDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): train has the other sites without the held-out kinds; test has the held-out
    sites, their benign sessions and their anomalies of the held-out kinds only."""
    sites = test_sites if test_sites is not None else {
        str(s) for s in frame["site"].unique() if str(s).endswith(HOLDOUT_SITE_SUFFIX)}
    kinds = frame["anomaly_kind"] if "anomaly_kind" in frame.columns else pd.Series("", index=frame.index)
    at_test = frame["site"].isin(sites)
    held_kind = kinds.isin(test_kinds)
    return frame[~at_test & ~held_kind], frame[at_test & (held_kind | (kinds == ""))]


def validation_split(frame: pd.DataFrame, fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, validation): a seeded random ``fraction`` of the sessions set aside."""
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(frame)) < fraction
    return frame[~chosen], frame[chosen]


def choose_threshold(benign_scores: np.ndarray, fpr: float) -> float:
    """The score exceeded by a share fpr of benign sessions (the (1 - fpr) quantile)."""
    if len(benign_scores) == 0:
        raise ValueError("no benign session to choose a threshold on")
    return float(np.quantile(benign_scores, 1.0 - fpr, method="higher"))


def evaluate(scores: np.ndarray, frame: pd.DataFrame, threshold: float) -> Metrics:
    """Metrics of scores against ``frame["label"]`` (1 = anomalous) at threshold."""
    labels = frame["label"].to_numpy(dtype="int64")
    flagged = scores > threshold
    both = len(set(labels.tolist())) == 2
    kinds = frame["anomaly_kind"].to_numpy() if "anomaly_kind" in frame.columns else np.full(len(frame), "")
    by_kind = {str(kind): float(np.mean(flagged[kinds == kind])) for kind in sorted(set(kinds.tolist()) - {""})}
    benign = labels == 0
    return Metrics(
        sessions=len(labels), anomalies=int(labels.sum()), flagged=int(flagged.sum()),
        roc_auc=float(roc_auc_score(labels, scores)) if both else None,
        precision=float(precision_score(labels, flagged, zero_division=0.0)),
        recall=float(recall_score(labels, flagged, zero_division=0.0)),
        false_positive_rate=float(np.mean(flagged[benign])) if benign.any() else 0.0,
        threshold=threshold, recall_by_kind=by_kind)


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the model inputs of a frame (feature columns and site, row order included)."""
    columns = [c for c in (*FEATURE_COLUMNS, "site") if c in frame.columns]
    hashed = pd.util.hash_pandas_object(frame.loc[:, columns], index=False)
    digest = hashlib.sha256(hashed.to_numpy().tobytes())
    digest.update(",".join(columns).encode())
    return digest.hexdigest()


def train(model: SessionDetector, frame: pd.DataFrame, *, fpr: float = 0.01, validation: float = 0.2,
          seed: int = 0, test: pd.DataFrame | None = None, source: str = "") -> Trained:
    """Fit model on frame less a validation share, set the threshold on the validation share's
    benign sessions (all of it when the frame has no labels), and evaluate on test if given."""
    fit_part, held = validation_split(frame, validation, seed)
    benign = held[held["label"] == 0] if "label" in held.columns else held
    model.fit(fit_part)
    threshold = choose_threshold(model.score(benign), fpr)
    rule = (f"{100 * (1 - fpr):g}th percentile of the scores of {len(benign)} held-out benign sessions "
            f"(target false-positive rate {fpr:g}), validation share {validation:g}, seed {seed}")
    metrics: dict[str, Any] = {}
    if test is not None and "label" in test.columns and len(test):
        metrics["holdout"] = evaluate(model.score(test), test, threshold).as_dict()
    training = {"sessions": len(fit_part), "validation_sessions": len(held), "fingerprint": fingerprint(fit_part),
                "source": source}
    return Trained(model, threshold, rule, training, metrics)
