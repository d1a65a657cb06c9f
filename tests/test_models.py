"""The transaction anomaly models: the shared check on every model (pickle, clone, same seed ->
same scores, ROC-AUC >= 0.85 on anomaly kinds and sites held out of training), the rule-based
transaction checks on the same synthetic records, explanations, micro-batches, the registry
and its refusals, the shipped model, and `chargewatch models`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from chargewatch.cli import main
from chargewatch.config import Config, with_overrides
from chargewatch.errors import ModelError
from models.checks import check_model, rule_flags, rule_metrics, throughput
from models.estimators import MODELS
from models.registry import PACKAGED, PromotedModel, Registry, load_promoted, registry_dir
from models.synthetic import SyntheticFleet, generate, labelled_sessions
from models.training import HOLDOUT_KINDS, holdout_split, make_model, train

MIN_AUC = 0.85


@pytest.fixture(scope="module")
def fleet() -> SyntheticFleet:
    return generate(5000, seed=7, anomaly_rate=0.04)


@pytest.fixture(scope="module")
def frame(fleet: SyntheticFleet) -> pd.DataFrame:
    return labelled_sessions(fleet)


@pytest.fixture(scope="module")
def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return holdout_split(frame)


def test_holdout_split_keeps_kinds_and_sites_apart(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    fit, test = split
    assert not set(fit["site"]) & set(test["site"])
    assert not set(fit["anomaly_kind"]) & set(HOLDOUT_KINDS)
    assert set(test["anomaly_kind"]) - {""} == set(HOLDOUT_KINDS)
    assert set(fit["anomaly_kind"]) - {""} and set(test["site_type"]) == set(fit["site_type"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_passes_the_shared_check(name: str, split: tuple[pd.DataFrame, pd.DataFrame],
                                             acceptance_figures: list[str]) -> None:
    fit, test = split
    report = check_model(make_model(name, random_state=3), fit, test, min_auc=MIN_AUC)
    metrics = report.metrics
    assert metrics is not None
    fitted = make_model(name, random_state=3).fit(fit)
    single, batched = throughput(fitted, test, 1, batches=200), throughput(fitted, test, 1000)
    line = (f"model {name:17} held-out kinds+sites: {metrics.summary()}; "
            f"{single:,.0f} sessions/s one at a time, {batched:,.0f}/s in batches of 1000; fit {report.fit_s:.2f}s")
    print(line)
    acceptance_figures.append(line)
    assert report.passed, report.failures
    assert batched > 5 * single  # why the detector scores in micro-batches


def test_rule_based_transaction_checks_on_the_same_records(fleet: SyntheticFleet, frame: pd.DataFrame,
                                                            split: tuple[pd.DataFrame, pd.DataFrame],
                                                            acceptance_figures: list[str]) -> None:
    flags = rule_flags(fleet)
    overall, held_out = rule_metrics(frame, flags), rule_metrics(split[1], flags)
    for label, metrics in (("all sessions", overall), ("held-out kinds+sites", held_out)):
        line = f"rules (abnormal_transaction) {label}: {metrics.summary()}"
        print(line)
        acceptance_figures.append(line)
    recall = overall.recall_by_kind
    print("rules recall by kind:", {k: round(v, 2) for k, v in recall.items()})
    assert overall.precision > 0.9  # the rules are precise ...
    assert recall["energy_over_rating"] > 0.9 and recall["meter_backwards_jump"] > 0.8
    assert recall["plug_blocking"] == 0.0 and recall["sample_gap"] < 0.2  # ... and blind where no rule looks
    assert {rule for rules in flags.values() for rule in rules} >= {"CW-TX-001", "CW-TX-002", "CW-FLEET-002"}


def test_explanations_name_the_features_behind_a_score(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    fit, _ = split
    model = make_model("lof").fit(fit)
    expected = {"energy_over_rating": {"power_ratio", "avg_power_w", "peak_power_w", "energy_wh"},
                "plug_blocking": {"idle_s", "duration_s"},
                "zero_energy_burst": {"energy_wh", "token_sessions_24h", "token_charge_points_24h", "duration_s",
                                      "avg_power_w", "peak_power_w", "power_ratio"}}
    for kind, features in expected.items():
        sessions = fit[fit["anomaly_kind"] == kind]
        explained = model.explain(sessions, top=3)
        hits = [bool({name for name, _ in top} & features) for top in explained]
        assert np.mean(hits) >= 0.7, (kind, explained[:5])
        assert all(value > 0 for top in explained for _, value in top)
    assert "rated_power_w" not in {name for top in model.explain(fit.head(200)) for name, _ in top}


def test_micro_batches_score_like_one_batch(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    fit, test = split
    for name in MODELS:
        whole = make_model(name, batch_size=100_000).fit(fit).score(test)
        pieces = make_model(name, batch_size=7).fit(fit).score(test)
        assert np.allclose(whole, pieces), name


def _trained(fit: pd.DataFrame, test: pd.DataFrame, name: str = "robust_z") -> Any:
    return train(make_model(name), fit, test=test, source="test")


def test_registry_saves_promotes_and_reloads_without_restart(tmp_path: Path,
                                                             split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    fit, test = split
    registry = Registry(tmp_path / "reg")
    with pytest.raises(ModelError, match="no promoted model version"):
        load_promoted(registry.root)
    first = registry.save(_trained(fit, test), "robust_z")
    second = registry.save(_trained(fit, test, "isolation_forest"), "isolation_forest")
    assert (first, second) == ("v0001-robust_z", "v0002-isolation_forest") and registry.versions() == [first, second]
    meta = registry.metadata(first)
    assert meta["features"] and meta["sklearn_version"] and meta["training"]["fingerprint"]
    assert meta["metrics"]["holdout"]["roc_auc"] > MIN_AUC and "held-out benign" in meta["threshold_rule"]
    assert meta["params"]["top_k"] == 2 and meta["model_class"].endswith("RobustZScoreDetector")
    registry.promote(first)
    clock = [0.0]
    watcher = PromotedModel(registry, check_interval_s=5.0, clock=lambda: clock[0])
    loaded = watcher.current
    assert loaded.version == first and not loaded.changed()
    scores = loaded.score(test)
    assert roc_auc_score(test["label"], scores) > MIN_AUC and loaded.explain(test.head(2))
    registry.promote(second)
    assert loaded.changed()
    assert not watcher.refresh()  # not yet: checked at most every 5 s
    clock[0] = 6.0
    assert watcher.refresh() and watcher.current.version == second and not watcher.current.changed()
    assert not list(registry.root.glob(".promoted-*")) and not list(registry.root.glob(".staging-*"))


def _tamper(registry: Registry, version: str, **changes: Any) -> None:
    path = registry.root / version / "metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_registry_refuses_mismatched_features_library_or_bytes(tmp_path: Path,
                                                               split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    registry = Registry(tmp_path)
    good = registry.save(_trained(*split), "robust_z")
    registry.promote(good)
    features = registry.save(_trained(*split), "robust_z")
    _tamper(registry, features, features=["energy_wh", "duration_s"])
    with pytest.raises(ModelError, match="trained on features"):
        registry.load(features)
    library = registry.save(_trained(*split), "robust_z")
    _tamper(registry, library, sklearn_version="0.24.2")
    with pytest.raises(ModelError, match=r"scikit-learn 0\.24\.2.*retrain"):
        registry.promote(library)  # a version that cannot load is never promoted
    swapped = registry.save(_trained(*split), "robust_z")
    shutil.copy(registry.root / library / "model.joblib", registry.root / swapped / "model.joblib")
    (registry.root / swapped / "model.joblib").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="does not match the sha256"):
        registry.load(swapped)
    watcher = PromotedModel(registry, check_interval_s=0.0)
    (registry.root / "promoted").write_text(features + "\n")  # promoted behind our back: refused, old one kept
    assert not watcher.refresh() and watcher.current.version == good
    with pytest.raises(ModelError, match="no model version"):
        registry.load("v9999-robust_z")


def test_the_shipped_model_loads_and_detects(frame: pd.DataFrame) -> None:
    assert registry_dir(Config()) == PACKAGED
    assert registry_dir(with_overrides(Config(), models={"registry_dir": "/srv/models"})) == Path("/srv/models")
    loaded = load_promoted(PACKAGED)
    artifact = PACKAGED / loaded.version / "model.joblib"
    assert artifact.stat().st_size < 1_000_000
    scores = loaded.score(frame)
    assert roc_auc_score(frame["label"], scores) > MIN_AUC
    flagged = scores > loaded.threshold
    assert 0.0 < np.mean(flagged[frame["label"].to_numpy() == 0]) < 0.05


def test_models_cli_trains_lists_evaluates_and_promotes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = str(tmp_path / "reg")
    assert main(["models", "--registry", reg, "train", "--model", "robust_z", "--sessions", "1500", "--seed", "4",
                 "--no-progress", "--promote"]) == 0
    assert main(["models", "--registry", reg, "train", "--model", "isolation_forest", "--sessions", "1500",
                 "--param", "n_estimators=50", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "promoted v0001-robust_z" in out and "held-out: ROC-AUC" in out
    assert out.rstrip().endswith("v0002-isolation_forest")
    assert Registry(Path(reg)).metadata("v0002-isolation_forest")["params"]["n_estimators"] == 50
    assert main(["models", "--registry", reg, "list"]) == 0
    listing = capsys.readouterr().out
    assert "* v0001-robust_z" in listing and "  v0002-isolation_forest" in listing
    assert main(["models", "--registry", reg, "promote", "v0002-isolation_forest"]) == 0
    assert main(["models", "--registry", reg, "evaluate", "--sessions", "1200", "--seed", "8", "--no-progress"]) == 0
    report = capsys.readouterr().out
    assert "isolation_forest@v0002-isolation_forest" in report and "precision" in report and "recall" in report
    assert main(["models", "--registry", reg, "promote", "v0042-lof"]) == 2
    assert main(["models", "--registry", reg, "train", "--model", "svm", "--no-progress"]) == 2


def test_models_train_on_a_features_file(tmp_path: Path, frame: pd.DataFrame,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    reg, labelled, unlabelled = str(tmp_path / "reg"), tmp_path / "s.parquet", tmp_path / "s.csv"
    frame.to_parquet(labelled, index=False)
    frame.drop(columns=["label", "anomaly_kind", "site_type"]).to_csv(unlabelled, index=False)
    assert main(["models", "--registry", reg, "train", "--model", "robust_z", "--features", str(labelled)]) == 0
    assert main(["models", "--registry", reg, "train", "--model", "robust_z", "--features", str(unlabelled)]) == 0
    registry = Registry(Path(reg))
    assert registry.metadata("v0001-robust_z")["metrics"]["holdout"]["roc_auc"] > MIN_AUC
    unlabelled_meta = registry.metadata("v0002-robust_z")
    assert unlabelled_meta["metrics"] == {} and unlabelled_meta["training"]["sessions"] > 0.7 * len(frame)
    assert main(["models", "--registry", reg, "evaluate", "v0002-robust_z", "--features", str(unlabelled)]) == 2
    assert main(["models", "--registry", reg, "evaluate", "v0002-robust_z", "--features", str(labelled)]) == 0
    assert "features file" in capsys.readouterr().out
