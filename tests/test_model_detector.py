"""CW-TX-006: the promoted model in the running detectors (micro-batches, hot swap, refusal)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
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
from chargewatch.store.es_archive import SESSION_FIELDS, session_document, session_row
from chargewatch.store.sqlite import SqliteAlertStore
from detectors.model_scoring import RULE_ID, ModelScoringDetector, Scored, drain_alerts, scoring_detector
from detectors.policy import Policy
from detectors.rules import load_rules
from detectors.stages import build_stages
from models.features import ROW_COLUMNS, SCHEMA_FIELDS, SessionRow
from models.registry import PACKAGED, Registry
from models.synthetic import generate
from tests.test_es_layout import drop_all

SAMPLE = Path(__file__).resolve().parent.parent / "detectors" / "samples" / RULE_ID / "positive.jsonl"


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
    detector = ModelScoringDetector(load_rules(), fleet.policy)
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
    detector = ModelScoringDetector(load_rules(), fleet.policy)
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
    rules = load_rules()
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


def test_runs_in_the_stages_with_the_sample() -> None:
    rules = load_rules()
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
    detector = ModelScoringDetector(load_rules(), Policy(), registry=root, clock=lambda: now[0])
    assert detector.model is not None and detector.model.version == "v0001-lof"
    shutil.copytree(root / "v0001-lof", root / "v0002-lof")
    meta = json.loads((root / "v0002-lof" / "metadata.json").read_text())
    meta["version"] = "v0002-lof"
    (root / "v0002-lof" / "metadata.json").write_text(json.dumps(meta))
    Registry(root).promote("v0002-lof")
    *session, _ = _records(SAMPLE)
    _feed(detector, session)
    now[0] = 5.0  # before the check interval (10 s): still the old version
    assert [f.evidence["model"] for f in detector.flush()] == ["lof@v0001-lof"]
    _feed(detector, session)  # the same session again (a new tracker would see it as a retransmission)
    detector.pending = detector.pending or _waiting(session)
    now[0] = 11.0
    assert [f.evidence["model"] for f in detector.flush()] == ["lof@v0002-lof"]
    assert detector.model is not None and detector.model.version == "v0002-lof"


def _waiting(session: list[OcppMessage]) -> list[tuple[SessionRow, OcppMessage]]:
    detector = ModelScoringDetector(load_rules(), Policy())
    _feed(detector, session)
    return detector.pending


def test_refused_promoted_model_fails_at_start_naming_the_file(tmp_path: Path) -> None:
    root = _registry_copy(tmp_path)
    meta_file = root / "v0001-lof" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["features"] = meta["features"][:-1]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"v0001-lof.*registry.*features"):
        ModelScoringDetector(load_rules(), Policy(), registry=root)


# --- sessions in the stores ----------------------------------------------------------------------


def _scored_sessions() -> list[dict[str, Any]]:
    """The sample's session plus a benign synthetic one, scored by the detector."""
    fleet = generate(sessions=40, seed=11, anomaly_rate=0.0)
    detector = ModelScoringDetector(load_rules(), Policy())
    scored: list[Scored] = []
    detector.on_scored = scored.extend
    _feed(detector, [*_records(SAMPLE), *(r for r in fleet.records if isinstance(r, OcppMessage))])
    detector.flush()
    return [s.as_dict() for s in scored]


def test_session_documents_follow_the_schema_and_read_back() -> None:
    assert SESSION_FIELDS == SCHEMA_FIELDS
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


def test_analyze_store_keeps_the_scored_sessions(tmp_path: Path) -> None:
    demo = SAMPLE.parents[3] / "samples" / "demo.pcap"
    db = tmp_path / "a.db"
    env = os.environ | {"PYTHONPATH": str(SAMPLE.parents[3])}
    done = subprocess.run([sys.executable, "-m", "chargewatch.cli", "analyze", str(demo), "--store", str(db),
                           "--no-progress", "--format", "jsonl"], capture_output=True, text=True, env=env, check=False)
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
