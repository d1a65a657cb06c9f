"""The model registry: one folder per version, and a pointer to the promoted one.

Layout (``[models] registry_dir``; empty: this package's ``models/registry``)::

    registry/
      promoted                      the promoted version's name (replaced atomically)
      v0001-robust_z/
        model.joblib                the fitted estimator (joblib, compressed)
        metadata.json               features and order, library versions, training data
                                    fingerprint and size, metrics, threshold and how it was
                                    chosen, created time, model class and parameters,
                                    sha256 of model.joblib

A version is created under a temporary name and renamed into place when complete, so readers
never see half a version. :func:`load_promoted` refuses an artifact whose feature list differs
from :data:`models.features.FEATURE_COLUMNS`, whose scikit-learn release (major.minor) differs
from the installed one, or whose bytes do not match the recorded sha256. Loading unpickles: the
registry directory must be writable only by those trusted to ship models.
:meth:`LoadedModel.changed` costs one ``stat`` of the pointer, so a running detector can ask
often and reload only when another version was promoted (:class:`PromotedModel` does both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargewatch.config import Config
from chargewatch.errors import ModelError
from models.features import FEATURE_COLUMNS

if TYPE_CHECKING:  # scikit-learn, joblib, numpy and pandas are imported when a model is loaded or saved
    import numpy as np
    import pandas as pd

    from models.estimators import Contributions, SessionDetector
    from models.training import Trained

ARTIFACT, METADATA, POINTER = "model.joblib", "metadata.json", "promoted"
VERSION = re.compile(r"^v(\d{4,})-[a-z0-9_]+$")
PACKAGED = Path(__file__).resolve().parent / "registry"
log = logging.getLogger(__name__)


def registry_dir(config: Config) -> Path:
    """The configured registry directory (the packaged one when ``registry_dir`` is empty)."""
    return Path(config.models.registry_dir).expanduser() if config.models.registry_dir else PACKAGED


def release(version: str) -> str:
    """major.minor of a version string ("1.9.1" -> "1.9"): pickles are compatible within one."""
    return ".".join(version.split(".")[:2])


@dataclass
class LoadedModel:
    """A registry version ready to score: the estimator, its threshold and metadata."""

    version: str
    model: SessionDetector
    metadata: dict[str, Any]
    registry: Path
    pointer_state: tuple[int, int, int] | None  # the pointer's (inode, size, mtime) when loaded

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def name(self) -> str:
        """Model name and version, as alerts and session documents carry it."""
        return f"{self.metadata['model']}@{self.version}"

    def score(self, sessions: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Scores of sessions (a frame of rows or a FEATURE_COLUMNS array), higher = more anomalous."""
        return self.model.score(sessions)

    def explain(self, sessions: pd.DataFrame | np.ndarray, top: int = 3) -> list[Contributions]:
        """The features that contributed most to each session's score."""
        return self.model.explain(sessions, top)

    def changed(self) -> bool:
        """Whether another version was promoted since this one was loaded (one stat, usually)."""
        registry = Registry(self.registry)
        if registry.pointer_state() == self.pointer_state:
            return False
        return registry.promoted() != self.version


class Registry:
    """The versions in one registry directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if VERSION.match(p.name) and (p / METADATA).is_file()]
        return sorted(found, key=lambda name: int(name[1:].split("-")[0]))

    def metadata(self, version: str) -> dict[str, Any]:
        path = self.root / version / METADATA
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: no readable metadata for model version {version!r}: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError(f"{path}: metadata is not a JSON object")
        return data

    def promoted(self) -> str | None:
        """The promoted version's name, None when nothing was promoted."""
        try:
            name = (self.root / POINTER).read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ModelError(f"{self.root / POINTER}: unreadable: {exc}") from exc
        return name or None

    def pointer_state(self) -> tuple[int, int, int] | None:
        try:
            st = (self.root / POINTER).stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def save(self, trained: Trained, name: str) -> str:
        """Store a trained model as the next version; its name (e.g. ``v0003-robust_z``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        import joblib

        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from detectors run as another user
        try:
            artifact = staging / ARTIFACT
            joblib.dump(trained.model, artifact, compress=3)
            return self._claim(staging, name, _metadata(trained, name, _sha256(artifact)))
        finally:
            if staging.exists():
                for leftover in staging.iterdir():
                    leftover.unlink()
                staging.rmdir()

    def _claim(self, staging: Path, name: str, metadata: dict[str, Any]) -> str:
        """Rename staging to the next free version number (another trainer may race us)."""
        for _ in range(1000):
            numbers = [int(p.name[1:].split("-")[0]) for p in self.root.iterdir() if VERSION.match(p.name)]
            version = f"v{max(numbers, default=0) + 1:04d}-{name}"
            (staging / METADATA).write_text(json.dumps(metadata | {"version": version}, indent=2,
                                                       sort_keys=True) + "\n")
            try:
                os.rename(staging, self.root / version)  # fails if another trainer took the number
            except OSError:
                continue
            return version
        raise ModelError(f"{self.root}: could not claim a version number")

    def promote(self, version: str) -> None:
        """Make version the promoted one (the pointer file is replaced atomically)."""
        self.load(version, pointer_state=None)  # refuse to promote what could not be loaded
        fd, tmp = tempfile.mkstemp(prefix=".promoted-", dir=self.root)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(version + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / POINTER)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def check(self, version: str) -> dict[str, Any]:
        """A version's metadata once it is checked against this installation (feature list,
        scikit-learn release, artifact sha256) without importing scikit-learn or unpickling
        anything; ModelError says what does not match."""
        if not VERSION.match(version) or not (self.root / version).is_dir():
            known = ", ".join(self.versions()) or "none"
            raise ModelError(f"{self.root}: no model version {version!r} (versions: {known})")
        metadata = self.metadata(version)
        where = f"model {version} in {self.root}"
        features = metadata.get("features")
        if features != list(FEATURE_COLUMNS):
            raise ModelError(f"{where} was trained on features {features}, but this Chargewatch computes "
                             f"{list(FEATURE_COLUMNS)}: retrain it (chargewatch models train)")
        trained_with, installed = str(metadata.get("sklearn_version")), sklearn_version()
        if release(trained_with) != release(installed):
            raise ModelError(f"{where} was saved with scikit-learn {trained_with}, this installation has "
                             f"{installed}: retrain it, or install scikit-learn {release(trained_with)}.x")
        if _sha256(self.root / version / ARTIFACT) != metadata.get("artifact_sha256"):
            raise ModelError(f"{where}: {ARTIFACT} does not match the sha256 in {METADATA} (corrupt or replaced)")
        return metadata

    def load(self, version: str, pointer_state: tuple[int, int, int] | None = None) -> LoadedModel:
        """A version, checked against this installation (see :meth:`check`) and unpickled."""
        import joblib

        from models.estimators import SessionDetector

        metadata = self.check(version)
        model = joblib.load(self.root / version / ARTIFACT)
        if not isinstance(model, SessionDetector):
            raise ModelError(f"model {version} in {self.root}: {ARTIFACT} holds a {type(model).__name__}, "
                             "not a session model")
        return LoadedModel(version, model, metadata, self.root, pointer_state)


def sklearn_version() -> str:
    """The installed scikit-learn's version, read from its package metadata (no import)."""
    from importlib.metadata import PackageNotFoundError  # only when a model is checked: ~9 ms to import
    from importlib.metadata import version as installed_version

    try:
        return installed_version("scikit-learn")
    except PackageNotFoundError as exc:
        raise ModelError("scikit-learn is not installed; the anomaly models need it") from exc


def check_promoted(registry: Registry | Path) -> str:
    """The promoted version of a registry, checked as :meth:`Registry.check` does (cheap: what a
    detector runs at start, before it loads the model at its first score)."""
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    version = reg.promoted()
    if version is None:
        raise ModelError(f"{reg.root}: no promoted model version; train one and promote it "
                         "(chargewatch models train --promote)")
    reg.check(version)
    return version


def load_promoted(registry: Registry | Path) -> LoadedModel:
    """The promoted version of a registry (a Registry or its directory), checked (see load)."""
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    state = reg.pointer_state()
    version = reg.promoted()
    if version is None:
        raise ModelError(f"{reg.root}: no promoted model version; train one and promote it "
                         "(chargewatch models train --promote)")
    return reg.load(version, state)


class PromotedModel:
    """The promoted model of a registry for a long-running scorer: :meth:`refresh` swaps in a
    newly promoted version without a restart, checking the pointer at most every
    ``check_interval_s``. A new version that fails to load is logged once and the current one
    kept (never a scorer without a model because of a bad promotion)."""

    def __init__(self, registry: Registry | Path, check_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.check_interval_s = check_interval_s
        self.clock = clock
        self.current = load_promoted(self.registry)
        self._checked = clock()
        self._refused: str | None = None

    def refresh(self) -> bool:
        """Reload if another version was promoted; True when the model changed."""
        now = self.clock()
        if now - self._checked < self.check_interval_s:
            return False
        self._checked = now
        if not self.current.changed():
            return False
        state, version = self.registry.pointer_state(), self.registry.promoted()
        if version is None or version == self._refused:
            return False
        try:
            self.current = self.registry.load(version, state)
        except ModelError as exc:
            self._refused = version
            log.error("keeping model %s: newly promoted %s refused: %s", self.current.version, version, exc)
            return False
        return True


def _metadata(trained: Trained, name: str, artifact_sha256: str) -> dict[str, Any]:
    import numpy as np
    import sklearn

    model = trained.model
    params = {k: v for k, v in model.get_params().items() if isinstance(v, str | int | float | bool | type(None))}
    return {
        "model": name, "model_class": f"{type(model).__module__}.{type(model).__qualname__}", "params": params,
        "features": list(FEATURE_COLUMNS), "sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
        "threshold": trained.threshold, "threshold_rule": trained.threshold_rule, "training": trained.training,
        "metrics": trained.metrics, "artifact_sha256": artifact_sha256,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"{path}: unreadable model artifact: {exc}") from exc
