"""From session features to what the estimators see: one deterministic design matrix.

Heavy-tailed quantities (energy, durations, power, gaps, counts) are log-scaled (signed, so a
negative energy or duration stays distinguishable); ratios relate a session to its own
connector and to its own sampling rate, so that sites with different hardware share one
scale; the hour becomes a point on a circle (23:00 is next to 00:00). The matrix is a pure
function of :data:`models.features.FEATURE_COLUMNS`, so explanations can perturb the original
features and every model reads the same inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.features import FEATURE_COLUMNS

_INDEX = {name: i for i, name in enumerate(FEATURE_COLUMNS)}

#: Columns of :func:`design_matrix`, in order.
DESIGN_COLUMNS: tuple[str, ...] = (
    "log_energy_kwh", "log_duration_min", "log_avg_power_kw", "log_peak_power_kw", "log_rated_power_kw",
    "power_ratio", "avg_power_ratio", "log_idle_min", "idle_fraction", "hour_sin", "hour_cos", "weekend",
    "log_meter_samples", "log_max_gap_min", "log_gap_ratio", "log_register_drop_kwh", "remote_start",
    "log_token_sessions", "log_token_charge_points",
)
#: The feature each design column comes from (what an explanation names).
DESIGN_SOURCE: tuple[str, ...] = (
    "energy_wh", "duration_s", "avg_power_w", "peak_power_w", "rated_power_w", "power_ratio", "avg_power_w",
    "idle_s", "idle_s", "start_hour", "start_hour", "weekday", "meter_samples", "max_sample_gap_s",
    "max_sample_gap_s", "register_drop_wh", "remote_start", "token_sessions_24h", "token_charge_points_24h",
)


def as_features(X: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The feature columns of X as a float64 array (a DataFrame by name, an array by position)."""
    if isinstance(X, pd.DataFrame):
        missing = [name for name in FEATURE_COLUMNS if name not in X.columns]
        if missing:
            raise ValueError(f"feature column(s) missing: {', '.join(missing)}")
        return np.asarray(X.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype="float64"))
    array = np.asarray(X, dtype="float64")
    if array.ndim != 2 or array.shape[1] != len(FEATURE_COLUMNS):
        raise ValueError(f"expected an array of shape (n, {len(FEATURE_COLUMNS)}) in FEATURE_COLUMNS order, "
                         f"got {array.shape}")
    return array


def design_matrix(features: np.ndarray) -> np.ndarray:
    """The design matrix (:data:`DESIGN_COLUMNS`) of a feature array (NaN where inputs are NaN)."""
    def col(name: str) -> np.ndarray:
        return features[:, _INDEX[name]]

    duration = col("duration_s")
    rated = np.maximum(col("rated_power_w"), 1.0)
    samples = np.maximum(col("meter_samples"), 1.0)
    mean_interval = np.maximum(np.abs(duration), 60.0) / np.maximum(samples - 1.0, 1.0)
    hour = col("start_hour") * (2.0 * np.pi / 24.0)
    columns = (
        _slog(col("energy_wh") / 1000.0), _slog(duration / 60.0), _slog(col("avg_power_w") / 1000.0),
        _slog(col("peak_power_w") / 1000.0), np.log(rated / 1000.0), col("power_ratio"),
        col("avg_power_w") / rated, _slog(col("idle_s") / 60.0),
        np.clip(col("idle_s") / np.maximum(np.abs(duration), 60.0), 0.0, 1.0), np.sin(hour), np.cos(hour),
        (col("weekday") >= 5).astype("float64"), np.log1p(samples), _slog(col("max_sample_gap_s") / 60.0),
        np.log1p(col("max_sample_gap_s") / mean_interval), _slog(col("register_drop_wh") / 1000.0),
        col("remote_start"), np.log1p(col("token_sessions_24h")), np.log1p(col("token_charge_points_24h")),
    )
    return np.column_stack(columns)


def _slog(values: np.ndarray) -> np.ndarray:
    """Signed log1p: order kept, negatives stay negative."""
    return np.asarray(np.sign(values) * np.log1p(np.abs(values)), dtype="float64")
