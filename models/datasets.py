"""Where session frames come from and go to: captures and logs, the synthetic fleet, files.

A features file is Parquet (``.parquet``) or CSV (``.csv``) with at least the columns of
:data:`models.features.FEATURE_COLUMNS`; the ones written here carry every column of
:data:`models.features.ROW_COLUMNS` (plus ``site_type``, ``anomaly_kind`` and ``label`` for
synthetic data).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from chargewatch.config import Config
from chargewatch.embedded import AnalysisResult, read_all
from chargewatch.errors import ConfigError
from chargewatch.model import Record
from collectors.stats import DeadLetter
from detectors.policy import load_policy
from models.features import FEATURE_COLUMNS, SessionFeatures, SessionRow, paused_gc, rows_frame
from models.synthetic import generate, labelled_sessions


class _FeatureSink:
    """Feeds decoded records to the session features; dead letters are only counted."""

    def __init__(self, features: SessionFeatures) -> None:
        self.features = features
        self.rows: list[SessionRow] = []
        self.dead_letters = 0

    def record(self, record: Record) -> None:
        row = self.features.feed(record)
        if row is not None:
            self.rows.append(row)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1


def capture_frame(paths: list[Path], config: Config,
                  progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, AnalysisResult, int]:
    """Session rows of captures or OCPP logs (decoded as ``chargewatch analyze`` does, detectors
    not run), the decoding result (counters, unreadable files) and the partial sessions."""
    policy_path = Path(config.detector.policy_file).expanduser() if config.detector.policy_file else None
    features = SessionFeatures(load_policy(policy_path))
    sink = _FeatureSink(features)
    result = AnalysisResult()
    with paused_gc():
        read_all(paths, config, sink, result, progress)
        return rows_frame(sink.rows), result, features.partial


def synthetic_frame(sessions: int, seed: int, anomaly_rate: float = 0.03, progress: bool = False) -> pd.DataFrame:
    """The labelled session rows of a synthetic fleet (see :mod:`models.synthetic`)."""
    return labelled_sessions(generate(sessions, seed=seed, anomaly_rate=anomaly_rate, progress=progress))


def write_features(frame: pd.DataFrame, path: Path) -> None:
    """Write a session frame as Parquet, or CSV when the name ends in .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def read_features(path: Path) -> pd.DataFrame:
    """A features file; ConfigError when it cannot be read or lacks feature columns."""
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"{path}: cannot read features file: {exc}") from exc
    missing = [name for name in FEATURE_COLUMNS if name not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: features file lacks column(s) {', '.join(missing)}")
    return frame
