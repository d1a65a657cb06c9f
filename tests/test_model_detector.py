"""CW-TX-006: the promoted model in the running detectors (micro-batches, hot swap, refusal), off
by default and then importing nothing heavy; the sessions in the stores."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from chargewatch.catalog import load_catalog
from chargewatch.cli import features as features_cli
from chargewatch.config import Config
from chargewatch.errors import ModelError
from chargewatch.model import OcppMessage, record_from_dict, record_key
from chargewatch.schema import TRANSACTION_FIELDS
from chargewatch.store.elastic import ElasticAlertStore
from chargewatch.store.es_archive import session_document, session_row
from chargewatch.store.sqlite import SqliteAlertStore
from detectors.model_scoring import RULE_ID, ModelScoringDetector, Scored, drain_alerts, scoring_detector
from detectors.policy import Policy, RuleOverride
from detectors.rules import Rule, apply_overrides, load_rules
from detectors.stages import build_stages
from models.features import ROW_COLUMNS, SessionRow
from models.registry import PACKAGED, Registry
from models.synthetic import generate
from tests.test_es_layout import drop_all

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "detectors" / "samples" / RULE_ID / "positive.jsonl"
DEMO = ROOT / "samples" / "demo.pcap"
HEAVY = ("sklearn", "pandas", "numpy", "joblib", "scipy", "threadpoolctl")


def enabled_rules() -> dict[str, Rule]:
    """The shipped rules with CW-TX-006 enabled (what a policy's [rules.CW-TX-006] enabled = true does)."""
    rules = load_rules()
    return rules | {RULE_ID: replace(rules[RULE_ID], enabled=True)}


def _policy_config(tmp_path: Path, enabled: bool) -> Path:
    """A config file whose policy enables (or leaves disabled) CW-TX-006."""
    policy = tmp_path / "policy.toml"
    policy.write_text(f"[rules.{RULE_ID}]\nenabled = {'true' if enabled else 'false'}\n")
    config = tmp_path / "chargewatch.toml"
    config.write_text(f'[detector]\npolicy_file = "{policy}"\n')
    return config


def _records(path: Path) -> list[OcppMessage]:
    out = []
    for line in path.read_text().splitlines():
        record = record_from_dict(json.loads(line))
        assert isinstance(record, OcppMessage)
        out.append(record)
    return out


def _feed(detector: ModelScoringDetector, records: list[OcppMessage]) -> list[str]:
    """Feed the messages the runner would hand the detector; transaction ids of the findings."""
    found = []
    for msg in records:
        if detector.actions is None or msg.action in detector.actions:
            found += detector.on_message(msg, None, {})  # type: ignore[arg-type]  # the detector ignores ctx
    return [f.evidence["transaction_id"] for f in found]


def test_sessions_are_scored_in_micro_batches_not_one_by_one() -> None:
    fleet = generate(sessions=300, seed=3, anomaly_rate=0.05)
    detector = ModelScoringDetector(enabled_rules(), fleet.policy)
    detector.max_wait_s = 1e12  # only the batch size and the end of input flush here
    sizes: list[int] = []
    detector.on_scored = lambda scored: sizes.append(len(scored))
    _feed(detector, [r for r in fleet.records if isinstance(r, OcppMessage)])
    detector.flush()
    assert detector.batch_size == 256
    assert sum(sizes) > 256 and sizes[0] == 256  # one full batch, then the rest at the end
    assert detector.batches == len(sizes) == 2


def test_anomalies_outscore_benign_sessions_through_the_detector() -> None:
    fleet = generate(sessions=400, seed=5, anomaly_rate=0.05)
    detector = ModelScoringDetector(enabled_rules(), fleet.policy)
    scored: list[Scored] = []
    detector.on_scored = scored.extend
    _feed(detector, [r for r in fleet.records if isinstance(r, OcppMessage)])
    detector.flush()
    labelled = [fleet.labels.get((s.row.charge_point_id, s.row.transaction_id), "") for s in scored]
    anomalous = [s.score for s, kind in zip(scored, labelled, strict=True) if kind]
    benign = [s.score for s, kind in zip(scored, labelled, strict=True) if not kind]
    assert len(anomalous) >= 10 and len(benign) >= 300
    flagged_benign = sum(score > detector.model.threshold for score in benign) if detector.model else -1
    assert flagged_benign / len(benign) < 0.05
    assert sorted(anomalous)[len(anomalous) // 2] > sorted(benign)[len(benign) // 2] + 0.3


def test_wait_bound_is_message_time_and_end_of_input_drains() -> None:
    rules = enabled_rules()
    records = _records(SAMPLE)
    *session, heartbeat = records
    detector = ModelScoringDetector(rules, Policy())
    assert _feed(detector, session) == []  # finished, waiting for its batch
    assert len(detector.pending) == 1
    alerts = drain_alerts(detector, rules)
    assert [a.evidence["transaction_id"] for a in alerts] == ["10179"]
    assert alerts[0].charge_point_id == "RETAIL-2-CP05" and alerts[0].action == "StopTransaction"
    assert alerts[0].evidence["score"] > alerts[0].evidence["threshold"] >= 2.0
    assert alerts[0].evidence["top_features"][0]["feature"] == "max_sample_gap_s"
    again = ModelScoringDetector(rules, Policy())
    assert _feed(again, [*session, heartbeat]) == ["10179"]  # 400 s later: past max_wait_s


def test_off_by_default_and_in_the_stages_only_when_enabled_or_sessions_are_wanted() -> None:
    rules = load_rules()
    assert rules[RULE_ID].enabled is False
    assert scoring_detector(build_stages(rules, load_catalog(), Policy(), record_key).local.runner.detectors) is None
    features_only = scoring_detector(
        build_stages(rules, load_catalog(), Policy(), record_key, sessions=True).local.runner.detectors)
    assert features_only is not None and not features_only.scoring
    unscored: list[Scored] = []
    features_only.on_scored = unscored.extend
    assert _feed(features_only, _records(SAMPLE)) == []  # no finding: the rule is off
    assert [s.row.transaction_id for s in unscored] == ["10179"]  # handed on at once, without a score
    assert unscored[0].score is None and set(unscored[0].as_dict()) == set(ROW_COLUMNS)
    assert features_only.model is None and features_only.batches == 0


def test_runs_in_the_stages_with_the_sample() -> None:
    rules = enabled_rules()
    stages = build_stages(rules, load_catalog(), Policy(), record_key)
    detector = scoring_detector(stages.local.runner.detectors)
    assert detector is not None
    alerts = [a for r in _records(SAMPLE) for a in stages.process(r) if a.rule_id == RULE_ID]
    assert [a.evidence["model"] for a in alerts] == ["lof@v0001-lof"]


def _registry_copy(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    shutil.copytree(PACKAGED, root)
    return root


def test_newly_promoted_version_is_picked_up_without_restart(tmp_path: Path) -> None:
    root = _registry_copy(tmp_path)
    now = [0.0]
    detector = ModelScoringDetector(enabled_rules(), Policy(), registry=root, clock=lambda: now[0])
    assert detector.model is None  # loaded at the first batch, not at start
    *session, _ = _records(SAMPLE)
    _feed(detector, session)
    assert [f.evidence["model"] for f in detector.flush()] == ["lof@v0001-lof"]
    shutil.copytree(root / "v0001-lof", root / "v0002-lof")
    meta = json.loads((root / "v0002-lof" / "metadata.json").read_text())
    meta["version"] = "v0002-lof"
    (root / "v0002-lof" / "metadata.json").write_text(json.dumps(meta))
    Registry(root).promote("v0002-lof")
    detector.pending = _waiting(session)  # the same session again (its tracker saw it finish already)
    now[0] = 5.0  # before the check interval (10 s): still the old version
    assert [f.evidence["model"] for f in detector.flush()] == ["lof@v0001-lof"]
    detector.pending = _waiting(session)
    now[0] = 11.0
    assert [f.evidence["model"] for f in detector.flush()] == ["lof@v0002-lof"]
    assert detector.model is not None and detector.model.version == "v0002-lof"


def _waiting(session: list[OcppMessage]) -> list[tuple[SessionRow, OcppMessage]]:
    detector = ModelScoringDetector(enabled_rules(), Policy())
    _feed(detector, session)
    return detector.pending


def test_refused_promoted_model_fails_at_start_naming_the_file(tmp_path: Path) -> None:
    root = _registry_copy(tmp_path)
    meta_file = root / "v0001-lof" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["features"] = meta["features"][:-1]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"v0001-lof.*registry.*features"):
        ModelScoringDetector(enabled_rules(), Policy(), registry=root)


# --- sessions in the stores ----------------------------------------------------------------------


def _scored_sessions() -> list[dict[str, Any]]:
    """The sample's session plus a benign synthetic one, scored by the detector."""
    fleet = generate(sessions=40, seed=11, anomaly_rate=0.0)
    detector = ModelScoringDetector(enabled_rules(), Policy())
    scored: list[Scored] = []
    detector.on_scored = scored.extend
    _feed(detector, [*_records(SAMPLE), *(r for r in fleet.records if isinstance(r, OcppMessage))])
    detector.flush()
    return [s.as_dict() for s in scored]


def test_session_documents_follow_the_schema_and_read_back() -> None:
    sessions = _scored_sessions()
    flagged = next(s for s in sessions if s["transaction_id"] == "10179")
    doc = session_document(flagged)
    assert mapping_fields(doc) <= set(TRANSACTION_FIELDS)
    assert doc["chargewatch"]["anomaly"]["is_anomaly"] is True
    assert doc["chargewatch"]["anomaly"]["top_features"][0] == "max_sample_gap_s"
    assert doc["chargewatch"]["session"]["register_drop_wh"] == 0.0 and doc["ocpp"]["remote_start"] is False
    back = session_row(doc)
    assert back["energy_wh"] == flagged["energy_wh"] and back["remote_start"] == 0
    assert abs(back["start"] - flagged["start"]) < 0.001


def mapping_fields(doc: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, value in doc.items():
        dotted = f"{prefix}{name}"
        out |= mapping_fields(value, dotted + ".") if isinstance(value, dict) else {dotted}
    return out


def test_sqlite_sessions_are_idempotent_and_filtered(tmp_path: Path) -> None:
    sessions = _scored_sessions()
    store = SqliteAlertStore(tmp_path / "s.db")
    try:
        assert store.put_sessions(sessions) == len(sessions) > 20
        store.put_sessions(sessions)  # again: replaces, no duplicates
        every = store.transactions(limit=10_000)
        assert len(every) == len(sessions)
        starts = [d["@timestamp"] for d in every]
        assert starts == sorted(starts, reverse=True)
        one = store.transactions(charge_point_id="RETAIL-2-CP05", limit=10)
        assert {d["ocpp"]["charge_point_id"] for d in one} == {"RETAIL-2-CP05"}
        assert "10179" in {d["ocpp"]["transaction_id"] for d in one}
        assert len(one) == sum(s["charge_point_id"] == "RETAIL-2-CP05" for s in sessions)
        first = min(s["start"] for s in sessions)
        assert len(store.transactions(since=first + 1, limit=10_000)) == len(sessions) - 1
    finally:
        store.close()


def _analyze_and_list_heavy_modules(tmp_path: Path, config: Path, *args: str) -> tuple[list[str], list[str]]:
    """Run ``chargewatch analyze`` on the demo in a fresh interpreter: its alert lines and which
    heavy modules (HEAVY) the process had imported by the end."""
    out = tmp_path / "alerts.jsonl"
    code = ("import sys; from chargewatch.cli import main; "
            f"rc = main(['--config', {str(config)!r}, 'analyze', {str(DEMO)!r}, '--format', 'jsonl', "
            f"'--out', {str(out)!r}, '--no-progress', *{list(args)!r}]); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return out.read_text().splitlines(), done.stdout.split()


def test_analyze_imports_nothing_heavy_while_the_rule_is_disabled(tmp_path: Path) -> None:
    lines, heavy = _analyze_and_list_heavy_modules(tmp_path, _policy_config(tmp_path, enabled=False))
    assert heavy == [] and len(lines) == 4 and not any(RULE_ID in line for line in lines)
    # --store wants the sessions: their features, still without pandas or scikit-learn.
    db = tmp_path / "s.db"
    lines, heavy = _analyze_and_list_heavy_modules(tmp_path, _policy_config(tmp_path, enabled=False),
                                                   "--store", str(db))
    assert heavy == [] and not any(RULE_ID in line for line in lines)
    store = SqliteAlertStore(db, create=False)
    try:
        docs = store.transactions(limit=100)
    finally:
        store.close()
    assert {d["ocpp"]["charge_point_id"] for d in docs} == {"RDAM 123", "CP16-001"}
    assert all("anomaly" not in d["chargewatch"] for d in docs)  # features only, no score
    # Enabled: scikit-learn is imported, once there was a session to score.
    lines, heavy = _analyze_and_list_heavy_modules(tmp_path, _policy_config(tmp_path, enabled=True))
    assert {"sklearn", "numpy", "pandas"} <= set(heavy) and sum(RULE_ID in line for line in lines) == 1


def test_enabled_detector_checks_the_model_at_start_and_loads_it_at_the_first_batch() -> None:
    code = ("import sys; from dataclasses import replace; from detectors.rules import load_rules; "
            "from detectors.model_scoring import ModelScoringDetector; from detectors.policy import Policy; "
            f"rules = load_rules(); rules[{RULE_ID!r}] = replace(rules[{RULE_ID!r}], enabled=True); "
            "d = ModelScoringDetector(rules, Policy()); "
            f"print(d.model, ' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None"]


def test_analyze_store_keeps_the_scored_sessions(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "chargewatch.cli", "--config", str(_policy_config(tmp_path, True)),
                           "analyze", str(DEMO), "--store", str(db), "--no-progress", "--format", "jsonl"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    flagged = [json.loads(line) for line in done.stdout.splitlines() if RULE_ID in line]
    assert [a["ocpp"]["charge_point_id"] for a in flagged] == ["RDAM 123"]  # 15.2 kWh in 10 ms
    store = SqliteAlertStore(db, create=False)
    try:
        docs = store.transactions(limit=100)
    finally:
        store.close()
    assert docs, "the demo's sessions are stored"
    scored = {d["ocpp"]["charge_point_id"]: d["chargewatch"]["anomaly"] for d in docs}
    assert scored["RDAM 123"]["is_anomaly"] is True and scored["RDAM 123"]["model"] == "lof@v0001-lof"
    assert flagged[0]["chargewatch"]["evidence"]["score"] == round(scored["RDAM 123"]["score"], 4)


@pytest.mark.services
def test_elasticsearch_sessions_and_features_export(service_config: Config, tmp_path: Path) -> None:
    sessions = _scored_sessions()
    store = ElasticAlertStore(service_config.elasticsearch)
    try:
        assert "transactions index" in store.setup()
        assert store.put_sessions(sessions) == len(sessions)
        store.put_sessions(sessions[:5])  # again: same _id, replaced
        store.refresh()
        every = store.transactions(limit=10_000)
        assert len(every) == len(sessions)
        one = store.transactions(charge_point_id="RETAIL-2-CP05")
        assert one[0]["chargewatch"]["anomaly"]["score"] > 2.0
        out = tmp_path / "f.parquet"
        args = argparse.Namespace(source="elasticsearch", paths=[], out=out, charge_point=None, limit=10_000,
                                  no_progress=True)
        assert features_cli.run(args, service_config) == 0
        frame = pd.read_parquet(out)
        assert list(frame.columns[:len(ROW_COLUMNS)]) == list(ROW_COLUMNS)
        assert len(frame) == len(sessions) and frame["score"].notna().all()
        assert frame["start"].is_monotonic_increasing
    finally:
        drop_all(store)
        store.close()


def test_the_detector_uses_the_deployments_registry_unless_the_rule_names_one(tmp_path: Path) -> None:
    from chargewatch.config import load_config
    from chargewatch.embedded import load_stages

    root = _registry_copy(tmp_path)
    config_file = _policy_config(tmp_path, enabled=True)
    config_file.write_text(config_file.read_text() + f'[models]\nregistry_dir = "{root}"\n')
    detector = scoring_detector(load_stages(load_config(config_file)).local.runner.detectors)
    assert detector is not None and detector.registry == root  # [models] registry_dir, as `models promote`
    named = tmp_path / "named"
    shutil.copytree(root, named)
    override = RuleOverride(True, {"registry_dir": str(named)})
    rules = apply_overrides(load_rules(), {RULE_ID: override}, "test policy")
    assert ModelScoringDetector(rules, Policy(), registry=root).registry == named
