"""The transaction anomaly models, as scikit-learn estimators.

Conventions (scikit-learn's, plus one of our own): ``__init__`` stores parameters only, learned
state ends in ``_``, the seed is ``random_state``, :func:`sklearn.base.clone` and pickling work,
and :meth:`SessionDetector.score` returns one score per session where HIGHER MEANS MORE
ANOMALOUS (unlike scikit-learn's own ``score_samples`` of outlier detectors, and unlike the
``score(X, y)`` metric of supervised estimators). Input is a DataFrame with
:data:`models.features.FEATURE_COLUMNS` (extra columns ignored; the per-site model also reads
``site``) or an array of those columns in that order. Scoring runs in micro-batches
(``batch_size`` rows): a forest scores a batch of 1,000 rows about as fast as a handful of
single rows.

- :class:`IsolationForestDetector`: the baseline, an isolation forest on the robustly scaled
  design matrix (:mod:`models.design`).
- :class:`RobustZScoreDetector`: per-site robust z-scores (median and MAD of each design
  column), the mean of the ``top_k`` largest absolute ones. Sites with fewer than
  ``min_group_size`` training sessions (new sites) use the statistics of their connector
  rating class, else of the whole fleet.
- :class:`LocalOutlierFactorDetector`: local outlier factor (``novelty=True``) on the scaled
  design matrix.

:meth:`SessionDetector.explain` names the features that make a session stand out: the robust
z-score of each design column against the training sessions (per site for the per-site model:
exactly what it scores), the largest per feature. Perturbing one feature at a time was tried
and dropped: features that move together (a car blocking the plug has both a long duration and
a long idle time) each look harmless when the other stays extreme.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import RobustScaler

from models.design import DESIGN_COLUMNS, DESIGN_SOURCE, as_features, design_matrix
from models.features import FEATURE_COLUMNS

Contributions = list[tuple[str, float]]
MIN_SCALE = 0.05  # smallest scale of a design column in robust z-scores
CONTEXT = frozenset({"rated_power_w"})  # what a session is, not what it did: never named by explain()


class SessionDetector(BaseEstimator, ABC):  # type: ignore[misc]  # sklearn ships no type hints
    """Shared mechanics: validation, imputation, micro-batches, explanations; each model
    provides how it fits and scores the design matrix (``_fit_design``, ``_score_design``)."""

    batch_size: int

    def fit(self, X: pd.DataFrame | np.ndarray, y: Any = None) -> Self:
        """Learn from sessions X (y is ignored: the models are unsupervised)."""
        features = as_features(X)
        if len(features) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 sessions to fit, got {len(features)}")
        self.feature_names_in_ = np.array(FEATURE_COLUMNS, dtype=object)
        self.n_features_in_ = len(FEATURE_COLUMNS)
        design = design_matrix(features)
        self.design_medians_ = _nanmedian(design)
        design = self._impute(design)
        self.design_center_, self.design_scale_ = robust_stats(design, getattr(self, "min_scale", MIN_SCALE))
        self._fit_design(design, X)
        return self

    def score(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Anomaly score of every session (higher = more anomalous), scored batch by batch."""
        features = as_features(X)
        groups = self._groups(X, len(features))
        out = np.empty(len(features), dtype="float64")
        step = max(int(self.batch_size), 1)
        for begin in range(0, len(features), step):
            end = begin + step
            design = self._impute(design_matrix(features[begin:end]))
            out[begin:end] = self._score_design(design, None if groups is None else groups[begin:end])
        return out

    def explain(self, X: pd.DataFrame | np.ndarray, top: int = 3) -> list[Contributions]:
        """For every session, up to ``top`` (feature, robust z-score) pairs, largest first: the
        features that lie furthest from the training sessions (see the module docstring)."""
        features = as_features(X)
        groups = self._groups(X, len(features))
        z = self._zscores(self._impute(design_matrix(features)), groups)
        names = [name for name in FEATURE_COLUMNS if name not in CONTEXT]
        per_feature = np.column_stack([z[:, [i for i, source in enumerate(DESIGN_SOURCE) if source == name]].max(axis=1)
                                       for name in names])
        out = []
        for row in per_feature:
            order = np.argsort(-row, kind="stable")[:top]
            out.append([(names[j], round(float(row[j]), 2)) for j in order])
        return out

    def _zscores(self, design: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        """Absolute robust z-score of every design value against the training sessions."""
        return np.asarray(np.abs(design - self.design_center_) / self.design_scale_, dtype="float64")

    def _impute(self, design: np.ndarray) -> np.ndarray:
        missing = ~np.isfinite(design)
        if missing.any():
            design = np.where(missing, self.design_medians_, design)
        return design

    def _groups(self, X: pd.DataFrame | np.ndarray, n: int) -> np.ndarray | None:
        return None

    @abstractmethod
    def _fit_design(self, design: np.ndarray, X: pd.DataFrame | np.ndarray) -> None:
        """Learn the model's state from the imputed, scaled design matrix."""

    @abstractmethod
    def _score_design(self, design: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        """Anomaly scores of the design rows (higher = more anomalous)."""


class IsolationForestDetector(SessionDetector):
    """Isolation forest on the robustly scaled design matrix (the baseline)."""

    def __init__(self, n_estimators: int = 100, max_samples: int | float | str = 512, max_features: float = 1.0,
                 random_state: int | None = None, batch_size: int = 1000) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.random_state = random_state
        self.batch_size = batch_size

    def _fit_design(self, design: np.ndarray, X: pd.DataFrame | np.ndarray) -> None:
        self.scaler_ = RobustScaler().fit(design)
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                       max_features=self.max_features, random_state=self.random_state)
        self.forest_.fit(self.scaler_.transform(design))

    def _score_design(self, design: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return np.asarray(-self.forest_.score_samples(self.scaler_.transform(design)), dtype="float64")


class LocalOutlierFactorDetector(SessionDetector):
    """Local outlier factor (novelty detection) on the robustly scaled design matrix.

    ``random_state`` is accepted for the shared interface; the method itself is deterministic.
    """

    def __init__(self, n_neighbors: int = 35, random_state: int | None = None, batch_size: int = 1000) -> None:
        self.n_neighbors = n_neighbors
        self.random_state = random_state
        self.batch_size = batch_size

    def _fit_design(self, design: np.ndarray, X: pd.DataFrame | np.ndarray) -> None:
        self.scaler_ = RobustScaler().fit(design)
        self.lof_ = LocalOutlierFactor(n_neighbors=min(self.n_neighbors, len(design) - 1), novelty=True)
        self.lof_.fit(self.scaler_.transform(design))

    def _score_design(self, design: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return np.asarray(-self.lof_.score_samples(self.scaler_.transform(design)), dtype="float64")


class RobustZScoreDetector(SessionDetector):
    """Per-site robust z-scores of the design columns (:func:`robust_stats`), the mean of the
    ``top_k`` largest. ``random_state`` is accepted for the shared interface; the method is
    deterministic."""

    def __init__(self, group_column: str = "site", min_group_size: int = 50, top_k: int = 2,
                 min_scale: float = MIN_SCALE, random_state: int | None = None, batch_size: int = 1000) -> None:
        self.group_column = group_column
        self.min_group_size = min_group_size
        self.top_k = top_k
        self.min_scale = min_scale
        self.random_state = random_state
        self.batch_size = batch_size

    def _fit_design(self, design: np.ndarray, X: pd.DataFrame | np.ndarray) -> None:
        groups = self._groups(X, len(design))
        rated = design[:, DESIGN_COLUMNS.index("log_rated_power_kw")]
        self.classes_ = {round(float(r), 3): robust_stats(design[rated == r], self.min_scale) for r in np.unique(rated)
                         if int(np.sum(rated == r)) >= self.min_group_size}
        self.groups_ = {} if groups is None else {
            str(g): robust_stats(design[groups == g], self.min_scale) for g in np.unique(groups)
            if int(np.sum(groups == g)) >= self.min_group_size}

    def _score_design(self, design: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        z = self._zscores(design, groups)
        k = min(max(int(self.top_k), 1), z.shape[1])
        return np.asarray(np.mean(-np.sort(-z, axis=1)[:, :k], axis=1), dtype="float64")

    def _zscores(self, design: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        """Robust z-scores against the session's site, else its rating class, else the fleet."""
        center, scale = np.empty_like(design), np.empty_like(design)
        rest = np.ones(len(design), dtype=bool)  # rows without statistics of their own site
        if groups is not None:
            for group in np.unique(groups):
                stats = self.groups_.get(str(group))
                if stats is not None:
                    rows = groups == group
                    center[rows], scale[rows] = stats
                    rest &= ~rows
        rated = np.round(design[:, DESIGN_COLUMNS.index("log_rated_power_kw")], 3)
        fleet = (self.design_center_, self.design_scale_)
        for value in np.unique(rated[rest]):
            rows = rest & (rated == value)
            center[rows], scale[rows] = self.classes_.get(float(value), fleet)
        return np.asarray(np.abs(design - center) / scale, dtype="float64")

    def _groups(self, X: pd.DataFrame | np.ndarray, n: int) -> np.ndarray | None:
        if isinstance(X, pd.DataFrame) and self.group_column in X.columns:
            return np.asarray(X[self.group_column].astype(str).to_numpy(), dtype=object)
        return None


def robust_stats(design: np.ndarray, min_scale: float = MIN_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Per-column center (median) and scale: 1.4826 x MAD (the standard deviation for normal
    data), floored at the 5-95 % range / 3.29 and at min_scale, so that a column that rarely
    moves (a binary flag, a drop benign sessions never have) still has a finite, meaningful scale."""
    center = np.median(design, axis=0)
    mad = 1.4826 * np.median(np.abs(design - center), axis=0)
    spread = (np.quantile(design, 0.95, axis=0) - np.quantile(design, 0.05, axis=0)) / 3.29
    return center, np.maximum(np.maximum(mad, spread), min_scale)


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Column medians ignoring NaN and infinities (0 for a column without any finite value)."""
    finite = np.where(np.isfinite(values), values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": handled below
        medians = np.nanmedian(finite, axis=0) if len(finite) else np.zeros(values.shape[1])
    return np.asarray(np.where(np.isfinite(medians), medians, 0.0), dtype="float64")


#: Model names the registry and the CLI know, and their classes.
MODELS: dict[str, type[SessionDetector]] = {
    "isolation_forest": IsolationForestDetector,
    "robust_z": RobustZScoreDetector,
    "lof": LocalOutlierFactorDetector,
}
