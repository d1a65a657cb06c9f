"""Sessions and the anomaly model on the Kafka pipeline, with real Kafka, Elasticsearch and
processes: ``detect`` publishes one session document per finished session, ``index`` writes them
into ``<prefix>-transactions`` idempotently, and a model a notebook run retrains and promotes is
used by a ``detect`` process that was running all along (issue 6's acceptance)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chargewatch.config import Config, with_overrides
from chargewatch.embedded import analyze
from chargewatch.kafkaio import DurableProducer, KafkaRecordSink, ensure_topics, make_producer
from chargewatch.model import MessageType, OcppMessage, Record
from chargewatch.store.elastic import ElasticAlertStore
from detectors.model_scoring import RULE_ID
from detectors.policy import Policy
from models.features import SessionFeatures
from models.registry import PACKAGED, Registry
from models.synthetic import T0, generate
from tests.conftest import Services, isolated_config
from tests.kafka_helpers import cli, read_topic, start, write_config
from tests.test_es_layout import drop_all
from tests.test_notebooks import NEW, NOTEBOOK_DIR, SHIPPED, _execute, _outputs

pytestmark = pytest.mark.services

DEMO = Path(__file__).resolve().parent.parent / "samples" / "demo.pcap"
DAY_S = 86_400.0


def _ok(proc: Any) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return str(proc.stderr)


def _policy_toml(policy: Policy, rule: dict[str, Any] | None) -> str:
    """A policy file with policy's sites and charge points, and CW-TX-006 settings (None: the defaults)."""
    lines = [f"default_max_power_w = {policy.default_max_power_w}"]
    for site in policy.sites:
        lines += ["[[sites]]", f"name = {json.dumps(site.name)}", f"latitude = {site.latitude}",
                  f"longitude = {site.longitude}"]
    for cp in policy.charge_points:
        lines += ["[[charge_points]]", f"pattern = {json.dumps(cp.pattern)}", f"site = {json.dumps(cp.site)}",
                  f"security_profile = {cp.security_profile}", f"max_power_w = {cp.max_power_w}"]
    if rule is not None:
        lines += [f"[rules.{RULE_ID}]", "enabled = true", f"[rules.{RULE_ID}.parameters]"]
        lines += [f"{name} = {json.dumps(value)}" for name, value in rule.items()]
    return "\n".join(lines) + "\n"


def _config(services: Services, tmp_path: Path, policy: Policy, rule: dict[str, Any] | None) -> Config:
    path = tmp_path / "policy.toml"
    path.write_text(_policy_toml(policy, rule))
    return with_overrides(isolated_config(services), detector={"policy_file": str(path)})


def _transactions(config: Config) -> list[dict[str, Any]]:
    store = ElasticAlertStore(config.elasticsearch)
    try:
        store.refresh()
        return store.transactions(limit=10_000)
    finally:
        store.close()


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["ocpp"]["charge_point_id"], doc["ocpp"]["transaction_id"]


def test_detect_publishes_sessions_and_index_writes_them_once(services: Services, tmp_path: Path) -> None:
    config = _config(services, tmp_path, Policy(), rule=None)  # CW-TX-006 off: features only
    cfg = write_config(config, tmp_path)
    store = ElasticAlertStore(config.elasticsearch)
    try:
        _ok(cli(cfg, "setup"))
        _ok(cli(cfg, "collect", "pcap", str(DEMO)))
        assert " 2 sessions" in _ok(cli(cfg, "detect", "--idle-exit", "3"))
        published = read_topic(services.kafka, config.kafka.sessions_topic)
        assert sorted(_key(d) for d in published) == [
            ("CP16-001", "1000"), ("RDAM 123", "c3f1e8a2-0000-4000-8000-000000000001")]
        assert all("anomaly" not in d["chargewatch"] for d in published)  # the rule is off: no score
        # The alerts are the embedded default's, CW-TX-006 among none of them.
        alerts = read_topic(services.kafka, config.kafka.alerts_topic)
        assert {d["event"]["id"] for d in alerts} == {a.id for a in analyze([DEMO], config).alerts}
        assert RULE_ID not in {d["rule"]["id"] for d in alerts}
        done = _ok(cli(cfg, "index", "--what", "sessions", "--idle-exit", "3"))
        assert "sessions: 2 records in 1 batches, 2 written, 0 bad records" in done, done
        indexed = {_key(d): d for d in _transactions(config)}
        assert indexed == {_key(d): d for d in published}  # the published documents, as they were
        # Published again (a detector replaying its partitions) and indexed by everything
        # (--what all, a fresh group): the same two documents, nothing duplicated.
        again = replace(config, kafka=replace(config.kafka, detector_group=config.kafka.detector_group + "-2",
                                              indexer_group=config.kafka.indexer_group + "-2"))
        again_cfg = write_config(again, tmp_path, "again")
        _ok(cli(again_cfg, "detect", "--idle-exit", "3"))
        assert len(read_topic(services.kafka, config.kafka.sessions_topic)) == 4
        assert "sessions: 4 records" in _ok(cli(again_cfg, "index", "--idle-exit", "3"))
        assert {_key(d): d for d in _transactions(config)} == indexed
    finally:
        drop_all(store)
        store.close()


def test_enabled_rule_scores_at_the_idle_exit_and_the_index_carries_the_score(services: Services,
                                                                              tmp_path: Path) -> None:
    config = _config(services, tmp_path, Policy(), rule={})
    cfg = write_config(config, tmp_path)
    store = ElasticAlertStore(config.elasticsearch)
    try:
        _ok(cli(cfg, "collect", "pcap", str(DEMO)))
        _ok(cli(cfg, "detect", "--idle-exit", "3"))
        # The demo's sessions wait for their micro-batch until the stage stops idle, then are
        # scored: the 15.2 kWh-in-10-ms session alerts, as in the embedded analysis.
        alerts = read_topic(services.kafka, config.kafka.alerts_topic)
        expected = {a.id: a.to_document() for a in analyze([DEMO], config).alerts}
        assert {d["event"]["id"]: d for d in alerts} == expected
        (model_alert,) = [d for d in alerts if d["rule"]["id"] == RULE_ID]
        evidence = model_alert["chargewatch"]["evidence"]
        assert model_alert["ocpp"]["charge_point_id"] == "RDAM 123"
        assert evidence["model"] == f"lof@{SHIPPED}" and evidence["score"] > evidence["threshold"]
        assert evidence["top_features"] and {"feature", "z"} <= set(evidence["top_features"][0])
        _ok(cli(cfg, "index", "--idle-exit", "3"))
        scored = {d["ocpp"]["charge_point_id"]: d["chargewatch"]["anomaly"] for d in _transactions(config)}
        assert set(scored) == {"CP16-001", "RDAM 123"}
        assert scored["RDAM 123"]["is_anomaly"] is True and scored["CP16-001"]["is_anomaly"] is False
        assert {a["model"] for a in scored.values()} == {f"lof@{SHIPPED}"}
        assert round(scored["RDAM 123"]["score"], 4) == evidence["score"]
    finally:
        drop_all(store)
        store.close()


# --- acceptance: a notebook run retrains and promotes, the running detector uses it ---------------


def _publish(config: Config, records: Iterable[Record]) -> None:
    producer = DurableProducer(make_producer(config.kafka))
    try:
        sink = KafkaRecordSink(config.kafka, producer)
        for record in records:
            sink.record(record)
        sink.flush()
    finally:
        producer.close()


def _with_ticks(records: list[Record]) -> list[Record]:
    """records, then a Heartbeat of every charge point well past CW-TX-006's max_wait_s: each
    partition's last record, so whatever order the detector reads the partitions in, the last
    tick it sees scores every session still waiting for its micro-batch."""
    messages = [r for r in records if isinstance(r, OcppMessage)]
    late = max(r.ts for r in messages) + 3_600.0
    last = {r.charge_point_id: r for r in messages if r.sender == "cp" and r.message_type == MessageType.CALL}
    ticks = [replace(msg, action="Heartbeat", payload={}, message_id=f"tick-{late:.0f}", ts=late)
             for msg in last.values()]
    return [*records, *ticks]


def _wait_for_sessions(config: Config, count: int, proc: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 180
    while True:
        docs = read_topic(config.kafka.bootstrap_servers, config.kafka.sessions_topic)
        if len(docs) >= count:
            return docs
        if proc.poll() is not None:
            raise AssertionError(f"detect exited {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{len(docs)} of {count} sessions published"
        time.sleep(1.0)


def test_notebook_run_promotes_a_model_the_running_detector_uses(services: Services, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(PACKAGED, registry)
    before = generate(sessions=300, seed=41, anomaly_rate=0.06, start=T0)
    after = generate(sessions=300, seed=42, anomaly_rate=0.06, start=T0 + 60 * DAY_S)
    # Another seed (other transaction ids), two months later; its charge points are named as the
    # first fleet's, whose policy (sites, ratings) the detector gets.
    rule = {"registry_dir": str(registry), "check_interval_s": 1, "batch_size": 64}
    config = _config(services, tmp_path, before.policy, rule)
    cfg = write_config(config, tmp_path)
    ensure_topics(config.kafka, [config.kafka.messages_topic])
    counts = [len(SessionFeatures(before.policy).feed_all(fleet.records)) for fleet in (before, after)]
    detect = start(cfg, "detect")  # runs until the end of the test: no restart
    try:
        _publish(config, _with_ticks(before.records))
        first = _wait_for_sessions(config, counts[0], detect)
        assert {d["chargewatch"]["anomaly"]["model"] for d in first} == {f"lof@{SHIPPED}"}
        with pytest.MonkeyPatch.context() as patch:  # the notebooks' parameters (see their first cell)
            for name, value in {"CHARGEWATCH_NOTEBOOK_REGISTRY": str(registry), "CHARGEWATCH_NOTEBOOK_SESSIONS": "2000",
                                "CHARGEWATCH_NOTEBOOK_SEED": "3", "CHARGEWATCH_NOTEBOOK_SCORE_SESSIONS": "200",
                                "MPLBACKEND": "module://matplotlib_inline.backend_inline"}.items():
                patch.setenv(name, value)
            for name in ("02-retrain-and-evaluate", "03-promote"):
                notebook, _ = _execute(NOTEBOOK_DIR / f"{name}.ipynb")
                assert not _outputs(notebook, "error"), name
        assert Registry(registry).promoted() == NEW
        time.sleep(1.5)  # past check_interval_s of wall time
        _publish(config, _with_ticks(after.records))
        every = _wait_for_sessions(config, counts[0] + counts[1], detect)
        assert detect.poll() is None, "detect stopped"
        alerts = read_topic(services.kafka, config.kafka.alerts_topic)
    finally:
        detect.terminate()
        detect.wait(timeout=30)
    later = [d for d in every if d["@timestamp"] >= "2027-01"]  # the second fleet's sessions
    assert len(later) == counts[1]
    assert {d["chargewatch"]["anomaly"]["model"] for d in later} == {f"lof@{NEW}"}
    model_alerts = [d for d in alerts if d["rule"]["id"] == RULE_ID]
    by_version = {v: [a for a in model_alerts if a["chargewatch"]["evidence"]["model"] == f"lof@{v}"]
                  for v in (SHIPPED, NEW)}
    assert by_version[SHIPPED] and by_version[NEW], sorted({a["chargewatch"]["evidence"]["model"] for a in alerts
                                                            if a["rule"]["id"] == RULE_ID})
    for alert in by_version[NEW]:
        evidence = alert["chargewatch"]["evidence"]
        assert evidence["score"] > evidence["threshold"] >= 2.0
        assert len(evidence["top_features"]) == 3 and evidence["transaction_id"]
        assert alert["@timestamp"] >= "2027-01"
