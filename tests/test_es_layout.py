"""The Elasticsearch layout against the real server: templates generated from chargewatch/schema.py
(committed files, drift check, installed as committed), the message archive and the asset
inventory from a real capture's records, idempotent redelivery, hostile values, and retention."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chargewatch.alerts import Alert
from chargewatch.config import Config, with_overrides
from chargewatch.embedded import analyze
from chargewatch.model import ConnectionEvent, Direction, OcppMessage, Record
from chargewatch.schema import ALERT_FIELDS, ASSET_FIELDS, MESSAGE_FIELDS
from chargewatch.store import AlertQuery, MessageQuery
from chargewatch.store.documents import record_id
from chargewatch.store.elastic import ElasticAlertStore
from chargewatch.store.es_retention import Retention, RetentionSweeper, SweepResult, archive_indices, install_ilm
from chargewatch.store.es_templates import IndexNames, committed_files, drift, index_templates
from tests.conftest import Services, isolated_config

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "dashboards" / "elasticsearch"
DEMO = ROOT / "samples" / "demo.pcap"
DAY = 86_400.0
NOW = 1_795_617_163.0  # the demo capture's day (2026-11-25)


def drop_all(store: ElasticAlertStore) -> None:
    """Delete every index and template of the store's names (explicit names only)."""
    client = store.client.options(ignore_status=404)
    indices = [store.index, store.names.assets, store.names.transactions, *archive_indices(store.client, store.names)]
    client.indices.delete(index=",".join(indices), ignore_unavailable=True)
    for name in index_templates(store.names):
        client.indices.delete_index_template(name=name)


@pytest.fixture
def store(service_config: Config) -> Any:
    es = ElasticAlertStore(service_config.elasticsearch, clock=lambda: NOW)
    try:
        es.setup()
        yield es
    finally:
        drop_all(es)
        es.close()


@pytest.fixture(scope="module")
def demo(embedded_config_module: Config) -> tuple[list[Record], list[Alert]]:
    records: list[Record] = []
    result = analyze([DEMO], embedded_config_module, on_record=records.append)
    return records, result.alerts


@pytest.fixture(scope="module")
def embedded_config_module() -> Config:
    from tests.conftest import TEST_KEY

    return with_overrides(Config(), redaction={"key": TEST_KEY})


# --- templates ------------------------------------------------------------------------------------


def test_committed_templates_match_the_schema() -> None:
    problems = drift(TEMPLATES)
    assert not problems, "\n\n".join(problems)
    assert sorted(p.name for p in TEMPLATES.glob("*.json")) == sorted(committed_files())


def test_drift_names_the_file_and_shows_the_diff(tmp_path: Path) -> None:
    for name, text in committed_files().items():
        (tmp_path / name).write_text(text.replace('"ip"', '"keyword"') if "messages" in name else text)
    (problem,) = drift(tmp_path)
    assert problem.startswith(f"{tmp_path / 'chargewatch-messages.json'}: differs from chargewatch/schema.py")
    lines = problem.splitlines()
    assert any(line.startswith("-") and '"type": "keyword"' in line for line in lines)
    assert any(line.startswith("+") and '"type": "ip"' in line for line in lines)


def _flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Index settings as Elasticsearch returns them: flat ``index.*`` names, string values."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flat_settings(value, f"{name}.")
        else:
            out[name if name.startswith("index.") else f"index.{name}"] = str(value).lower()
    return out


def test_setup_installs_the_committed_templates_and_is_idempotent(store: ElasticAlertStore) -> None:
    names = store.names
    second = store.setup()
    assert "alerts index" in second and "already there" in second
    assert "no ILM on this cluster, so the retention sweep deletes" in second
    assert "retention sweep: deleted 0 archive index(es)" in second
    for file_name, text in committed_files().items():
        committed = json.loads(text.replace("chargewatch-alerts", names.alerts)
                               .replace("chargewatch-messages", names.messages_template)
                               .replace("chargewatch-assets", names.assets)
                               .replace("chargewatch-transactions", names.transactions))
        template_name = file_name.removesuffix(".json").replace("chargewatch-alerts", names.alerts) \
            .replace("chargewatch-messages", names.messages_template).replace("chargewatch-assets", names.assets) \
            .replace("chargewatch-transactions", names.transactions)
        (installed,) = store.client.indices.get_index_template(name=template_name)["index_templates"]
        body = installed["index_template"]
        assert body["index_patterns"] == committed["index_patterns"]
        assert body["priority"] == committed["priority"] and body["_meta"] == committed["_meta"]
        assert body["template"]["mappings"] == committed["template"]["mappings"], template_name
        assert _flat_settings(body["template"]["settings"]) == _flat_settings(committed["template"]["settings"])
    for index in (names.alerts, names.assets):
        mapping = store.client.indices.get_mapping(index=index)[index]["mappings"]
        assert mapping["dynamic"] == "strict"


def test_setup_from_the_command_line_says_what_it_did(service_config: Config, tmp_path: Path) -> None:
    from tests.kafka_helpers import cli, write_config

    cfg = write_config(with_overrides(service_config, elasticsearch={"messages_retention_days": 7}), tmp_path)
    es = ElasticAlertStore(service_config.elasticsearch)
    try:
        first, again = cli(cfg, "setup"), cli(cfg, "setup")
        assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
        assert f"alerts index {es.index} created" in first.stdout
        assert f"alerts index {es.index} already there" in again.stdout
        assert "index template" in again.stdout and "more than 7 days old" in again.stdout
    finally:
        drop_all(es)
        es.close()
    bad = write_config(with_overrides(service_config, elasticsearch={"alerts_retention_days": -1}), tmp_path, "bad")
    proc = cli(bad, "setup")
    assert proc.returncode == 2 and "alerts_retention_days must be 0" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- archive and assets from a real capture ------------------------------------------------------


def _count(store: ElasticAlertStore, index: str) -> int:
    store.refresh()
    return int(store.client.count(index=index, ignore_unavailable=True, allow_no_indices=True)["count"])


def test_archive_and_assets_from_the_demo_capture(store: ElasticAlertStore,
                                                  demo: tuple[list[Record], list[Alert]]) -> None:
    records, _alerts = demo
    sites = {"CP16-001": "rotterdam-north"}
    assert store.put_records(records, sites) == len(records) == 58
    assert _count(store, store.names.messages_pattern) == 58
    assert archive_indices(store.client, store.names) == [f"{store.names.prefix}-messages-2026.11.25"]
    by_cp = {cp: store.messages(MessageQuery(charge_point_id=cp)) for cp in ("CP16-001", "RDAM 123", "CP16-DIR")}
    cp16 = by_cp["CP16-001"]
    assert len(cp16) == sum(1 for r in records if r.charge_point_id == "CP16-001") == 24
    assert [d["@timestamp"] for d in cp16] == sorted(d["@timestamp"] for d in cp16)  # oldest first
    upgrade = cp16[0]
    assert (upgrade["event"]["dataset"], upgrade["event"]["action"]) == ("chargewatch.connection", "upgrade")
    assert (upgrade["ocpp"]["subprotocol"], upgrade["ocpp"]["auth_scheme"], upgrade["ocpp"]["http_status"]) == \
        ("ocpp1.6", "Basic", 101)
    start = next(d for d in cp16 if d["ocpp"].get("action") == "StartTransaction" and d["ocpp"]["message_type"] == 2)
    assert start["ocpp"]["connector_id"] == 1 and start["ocpp"]["id_token"].startswith("pt_")
    answer = next(d for d in cp16 if d["ocpp"].get("action") == "StartTransaction" and d["ocpp"]["message_type"] == 3)
    assert (answer["ocpp"]["transaction_id"], answer["ocpp"]["status"]) == ("1000", "Accepted")
    error = next(d for d in by_cp["CP16-DIR"] if d["ocpp"].get("message_type") == 4)
    assert (error["ocpp"]["action"], error["ocpp"]["error_code"]) == ("Reset", "NotImplemented")
    started = next(d for d in by_cp["RDAM 123"] if d["ocpp"].get("action") == "TransactionEvent")
    assert started["ocpp"]["transaction_id"] and started["ocpp"]["version"] == "2.0.1"
    connection = cp16[0]["ocpp"]["connection_id"]
    assert len(store.messages(MessageQuery(connection_id=connection))) == 24
    window = store.messages(MessageQuery(charge_point_id="CP16-001", since=records[1].ts, until=records[3].ts))
    assert [d["event"]["id"] for d in window] == [record_id(r) for r in records[1:4]]
    assert len(store.messages(MessageQuery(limit=10))) == 10

    assets = {a["ocpp"]["charge_point_id"]: a for a in store.assets()}
    assert sorted(assets) == ["CP16-001", "CP16-ATTACK", "CP16-DIR", "RDAM 123"]
    a16 = assets["CP16-001"]
    assert (a16["device"]["manufacturer"], a16["device"]["model"]["name"], a16["ocpp"]["version"]) == \
        ("Research", "Demo", "1.6")
    assert (a16["ocpp"]["security_profile"], a16["ocpp"]["auth_scheme"], a16["ocpp"]["boot_status"]) == \
        (1, "Basic", "Accepted")
    assert a16["chargewatch"]["site"] == "rotterdam-north" and a16["related"]["ip"] == ["127.0.0.1"]
    assert a16["chargewatch"]["messages"] == 22 and a16["chargewatch"]["connections"] == 1
    assert a16["chargewatch"]["first_seen"] == upgrade["@timestamp"][:23] + "Z"
    assert a16["chargewatch"]["alerts"] == {"open": 0, "total": 0}
    assert assets["RDAM 123"]["ocpp"]["version"] == "2.0.1" and assets["RDAM 123"]["ocpp"]["security_profile"] == 0
    assert store.assets("CP16-DIR")[0]["device"]["id"] == "CP16-DIR"

    # Redelivery of every record (twice, one copy inside the same batch) changes no count.
    before = {cp: (a["chargewatch"]["messages"], a["chargewatch"]["connections"]) for cp, a in assets.items()}
    assert store.put_records(records + records[:5], sites) == 0
    assert _count(store, store.names.messages_pattern) == 58
    after = {a["ocpp"]["charge_point_id"]: (a["chargewatch"]["messages"], a["chargewatch"]["connections"])
             for a in store.assets()}
    assert after == before


def test_open_alerts_are_counted_per_asset(store: ElasticAlertStore,
                                           demo: tuple[list[Record], list[Alert]]) -> None:
    records, alerts = demo
    store.put_records(records)
    store.put_alerts(alerts, sites={"CP16-DIR": "depot"})
    replay = next(a for a in alerts if a.rule_id == "CW-REPLAY-001")
    store.set_triage(replay.id, "closed", "lab traffic", "ana")
    store.refresh()
    counts = {a["ocpp"]["charge_point_id"]: a["chargewatch"]["alerts"] for a in store.assets()}
    assert counts["CP16-ATTACK"] == {"open": 0, "total": 1, "max_severity": 3, "last": "2026-11-25T14:32:43.397Z"}
    assert counts["CP16-DIR"]["open"] == 1 and counts["CP16-DIR"]["max_severity"] == 2
    assert counts["RDAM 123"] == {"open": 0, "total": 0}  # CW-SEC-005 is an event, not an alert
    (dir_alert,) = store.search(AlertQuery(site="depot"))
    assert dir_alert["chargewatch"]["site"] == "depot" and dir_alert["rule"]["id"] == "CW-PROTO-001"


def _msg(ts: float, cp: str, action: str, payload: Any, message_type: int = 2, message_id: str = "m1",
         **extra: Any) -> OcppMessage:
    return OcppMessage(ts=ts, charge_point_id=cp, direction=Direction.CP_TO_CSMS, src_ip="10.1.0.7", src_port=40000,
                       dst_ip="10.1.0.1", dst_port=9000, ocpp_version="2.0.1", message_type=message_type,
                       message_id=message_id, action=action, payload=payload, frame_size=100, connection_id="C1",
                       source="synthetic#1", **extra)


def _upgrade(ts: float, cp: str | None, tls: dict[str, Any] | None, auth: str | None = None,
             kind: str = "upgrade", link: dict[str, Any] | None = None) -> ConnectionEvent:
    return ConnectionEvent(ts=ts, kind=kind, connection_id=f"C-{cp}-{ts}", charge_point_id=cp, client_ip="10.1.0.7",
                           client_port=40000, server_ip="10.1.0.1", server_port=9000,
                           path=f"/ocpp/{cp}" if cp else None,
                           subprotocol="ocpp2.0.1" if cp else None, ocpp_version="2.0.1" if cp else None,
                           auth_scheme=auth, auth_username=cp if auth else None, status=101 if cp else None,
                           tls=tls, link=link, source=f"synthetic#{ts}")


def test_boot_details_profiles_and_tls_reach_the_assets(store: ElasticAlertStore) -> None:
    t = NOW
    boot2 = {"chargingStation": {"vendorName": "ABB", "model": "Terra 54", "serialNumber": "SN-9",
                                 "firmwareVersion": "1.8.2"}, "reason": "PowerUp"}
    boot16 = {"chargePointVendor": "Alfen", "chargePointModel": "Eve", "chargeBoxSerialNumber": "CB-1",
              "firmwareVersion": "4.1"}
    mtls = {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "client_cert_subject": "CN=CP-3",
            "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1"}
    records: list[Record] = [
        _upgrade(t, "CP-3", mtls), _msg(t + 1, "CP-3", "BootNotification", boot2),
        _upgrade(t, "CP-2", {"version": "TLSv1.2", "cipher": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}, auth="Basic"),
        _msg(t + 1, "CP-16", "BootNotification", boot16),
        _upgrade(t, "CP-0", None),
    ]
    store.put_records(records)
    store.refresh()
    assets = {a["ocpp"]["charge_point_id"]: a for a in store.assets()}
    cp3 = assets["CP-3"]
    assert (cp3["device"]["manufacturer"], cp3["device"]["model"]["name"], cp3["device"]["serial_number"],
            cp3["ocpp"]["firmware_version"]) == ("ABB", "Terra 54", "SN-9", "1.8.2")
    assert (cp3["ocpp"]["security_profile"], cp3["tls"]["version"], cp3["tls"]["client"]["ja4"]) == \
        (3, "TLSv1.3", mtls["ja4"])
    assert assets["CP-2"]["ocpp"]["security_profile"] == 2 and assets["CP-2"]["tls"]["cipher"].startswith("TLS_ECDHE")
    assert assets["CP-0"]["ocpp"]["security_profile"] == 0
    assert (assets["CP-16"]["device"]["serial_number"], assets["CP-16"]["ocpp"]["firmware_version"]) == ("CB-1", "4.1")


def test_hostile_values_and_every_record_kind_are_archived(store: ElasticAlertStore) -> None:
    """dynamic: strict refuses nothing the store writes, and values no field can index (a
    40,000-character message id, a connector id beyond a long) are kept in _source, not refused."""
    t = NOW
    records: list[Record] = [
        _msg(t, "CP-H", "Authorize", {"idToken": {"idToken": "pt_0123", "type": "ISO14443"}}, message_id="x" * 40_000),
        _msg(t + 1, "CP-H", "StatusNotification", {"connectorId": 10**30, "evseId": 1}),
        _msg(t + 2, "CP-H", "Heartbeat", ["not", "an", "object"], flags=("payload_not_object",)),
        _msg(t + 3, "CP-H", "Reset", "text", message_type=4, message_id="m2"),
        _msg(t + 4, "CP-H", "X" * 5_000, {}, message_id="m3", flags=("unknown_action",), ip_ttl=63),
        _upgrade(t, None, {"version": "TLSv1.2", "sni": "csms.example", "ja3": "abc", "ja3s": "def",
                           "server_certs": [{"subject": "CN=csms", "sha256": "ab" * 32}]}, kind="tls"),
        _upgrade(t, None, None, kind="arp", link={"op": "reply", "sender_mac": "02:00:00:00:00:01",
                                                  "sender_ip": "10.1.0.1", "target_ip": "10.1.0.7"}),
    ]
    assert store.put_records(records) == len(records)  # put_records raises on any refused document
    store.refresh()
    docs = store.messages(MessageQuery())
    assert len(docs) == len(records)
    assert max(len(d["ocpp"].get("message_id", "")) for d in docs) == 40_000
    tls = next(d for d in docs if d["event"]["action"] == "tls")
    assert (tls["tls"]["client"]["server_name"], tls["tls"]["server"]["hash"]["sha256"]) == ("csms.example", "ab" * 32)
    assert "ocpp" not in tls or "charge_point_id" not in tls["ocpp"]
    arp = next(d for d in docs if d["event"]["action"] == "arp")
    assert arp["source"]["mac"] == "02:00:00:00:00:01"
    hits = store.client.search(index=store.names.messages_pattern, query={"term": {"ocpp.connector_id": 1}})
    assert hits["hits"]["total"]["value"] == 0  # the huge connector id is stored but not indexed
    _assert_fields_in_schema(docs, MESSAGE_FIELDS)
    _assert_fields_in_schema(store.assets(), ASSET_FIELDS)


def _leaves(doc: dict[str, Any], fields: dict[str, dict[str, Any]], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in fields:
            out |= _leaves(value, fields, f"{name}.")
        else:
            out.add(name)
    return out


def _assert_fields_in_schema(docs: list[dict[str, Any]], fields: dict[str, dict[str, Any]]) -> None:
    unknown = sorted({name for doc in docs for name in _leaves(doc, fields)} - set(fields))
    assert not unknown, f"fields written but not in chargewatch/schema.py: {unknown}"


def test_every_alert_field_is_in_the_schema(store: ElasticAlertStore,
                                            demo: tuple[list[Record], list[Alert]]) -> None:
    _records, alerts = demo
    store.put_alerts(alerts, sites={a.charge_point_id: "s1" for a in alerts})
    store.set_triage(alerts[0].id, "acknowledged", "seen", "ana")
    store.refresh()
    docs = store.search(AlertQuery())
    assert len(docs) == len(alerts)
    _assert_fields_in_schema(docs, ALERT_FIELDS)


# --- retention ------------------------------------------------------------------------------------


def _alert(alert_id: str, ts: float, last_ts: float | None = None) -> Alert:
    return Alert(id=alert_id, ts=ts, rule_id="CW-PROTO-001", rule_name="n", category="protocol_anomaly", severity=2,
                 risk_score=55, techniques=("T0855",), charge_point_id="CP-R", message_id="m", action="Reset",
                 ocpp_version="1.6", direction="cp->csms", connection_id="C1", source_ip="10.0.0.2", source_port=1,
                 destination_ip="10.0.0.1", destination_port=2, reason="r", count=2 if last_ts else 1,
                 last_ts=last_ts)


def test_retention_sweep_deletes_old_archive_indices_and_alerts(service_config: Config) -> None:
    cfg = with_overrides(service_config, elasticsearch={"messages_retention_days": 30, "alerts_retention_days": 365})
    store = ElasticAlertStore(cfg.elasticsearch, clock=lambda: NOW)
    try:
        store.setup()
        ages = (0, 29, 31, 90)  # days before NOW
        store.put_records([_msg(NOW - age * DAY, "CP-R", "Heartbeat", {}, message_id=f"h{age}") for age in ages])
        store.put_alerts([_alert("fresh", NOW - 10 * DAY), _alert("old", NOW - 400 * DAY),
                          _alert("old-storm-still-firing", NOW - 400 * DAY, last_ts=NOW - 5 * DAY)])
        store.refresh()
        before = archive_indices(store.client, store.names)
        assert len(before) == 4
        result = store.sweep()
        assert result.alerts == 1
        assert result.indices == [store.names.messages_index(NOW - age * DAY) for age in (90, 31)]
        after = archive_indices(store.client, store.names)
        assert after == sorted(store.names.messages_index(NOW - age * DAY) for age in (0, 29))
        store.refresh()
        assert sorted(d["event"]["id"] for d in store.search(AlertQuery())) == ["fresh", "old-storm-still-firing"]
        assert len(store.messages(MessageQuery(charge_point_id="CP-R"))) == 2
        assert store.sweep().describe() == "retention sweep: deleted 0 archive index(es) (none) and 0 alert(s)"
        # Setup runs the sweep too, and says so.
        store.put_alerts([_alert("old-again", NOW - 500 * DAY)])
        assert "and 1 alert(s)" in store.setup()
    finally:
        drop_all(store)
        store.close()


def test_retention_zero_keeps_everything(service_config: Config) -> None:
    cfg = with_overrides(service_config, elasticsearch={"messages_retention_days": 0, "alerts_retention_days": 0})
    store = ElasticAlertStore(cfg.elasticsearch, clock=lambda: NOW)
    try:
        text = store.setup()
        assert "kept forever (messages_retention_days = 0)" in text
        assert "kept forever (alerts_retention_days = 0)" in text
        store.put_records([_msg(NOW - 3_000 * DAY, "CP-Z", "Heartbeat", {})])
        store.put_alerts([_alert("ancient", NOW - 3_000 * DAY)])
        store.refresh()
        assert store.sweep() == SweepResult()
        assert len(archive_indices(store.client, store.names)) == 1
    finally:
        drop_all(store)
        store.close()


def test_sweeper_runs_periodically_and_survives_a_failure() -> None:
    from chargewatch.errors import StoreError

    calls: list[float] = []
    done = threading.Event()

    def run_sweep() -> SweepResult:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise StoreError("cluster busy")
        if len(calls) >= 3:
            done.set()
        return SweepResult(alerts=1)

    sweeper = RetentionSweeper(run_sweep, 0.05)
    sweeper.start()
    try:
        assert done.wait(10), "the sweeper stopped after its first failure"
    finally:
        sweeper.stop()
    assert sweeper.failures == 1 and sweeper.sweeps >= 2


def test_ilm_path_installs_a_policy_and_names_it() -> None:
    """The ILM path (clusters that have ILM; the dev stack's has not): the requests it sends."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def recording(name: str) -> Any:
        return lambda **kw: calls.append((name, kw))

    existing = [{"index": "chargewatch-messages-2026.11.24"}, {"index": "chargewatch-messages-other"}]
    client = SimpleNamespace(ilm=SimpleNamespace(put_lifecycle=recording("put_lifecycle")),
                             indices=SimpleNamespace(put_settings=recording("put_settings")),
                             cat=SimpleNamespace(indices=lambda **kw: existing))
    names = IndexNames.from_config(Config().elasticsearch)
    retention = Retention(messages_days=30, alerts_days=365, ilm=True)
    assert "attached to 1 existing" in install_ilm(client, names, retention)
    (policy_call, settings_call) = calls
    assert policy_call[1]["name"] == "chargewatch-messages"
    assert policy_call[1]["policy"]["phases"]["delete"] == {"min_age": "30d", "actions": {"delete": {}}}
    assert settings_call[1]["index"] == "chargewatch-messages-2026.11.24"
    assert settings_call[1]["settings"]["index.lifecycle.parse_origination_date"] is True
    text = retention.describe(names, 3600)
    assert "ILM policy chargewatch-messages deletes each daily index 30 days after its day" in text
    assert "the retention sweep deletes alerts whose last occurrence is more than 365 days old" in text


def test_index_names_derive_from_the_alerts_index() -> None:
    default = IndexNames.from_config(Config().elasticsearch)
    assert (default.prefix, default.assets, default.messages_pattern) == \
        ("chargewatch", "chargewatch-assets", "chargewatch-messages-*")
    assert default.messages_index(NOW) == "chargewatch-messages-2026.11.25"
    test_names = IndexNames.from_config(isolated_config(Services("k:1", "http://e:1")).elasticsearch)
    assert test_names.assets == f"{test_names.alerts}-assets"
    assert default.messages_day("chargewatch-messages-2026.13.01") is None


# --- the indexer stage --------------------------------------------------------------------------


def test_indexer_archives_the_messages_topic_and_survives_a_crash(services: Services, tmp_path: Path,
                                                                  demo: tuple[list[Record], list[Alert]]) -> None:
    """collect → Kafka → `chargewatch index` (a real process, SIGKILLed after its first archive
    write and before the commit) → archive, assets and alerts with the policy's sites."""
    from kafka import KafkaProducer

    from tests.kafka_helpers import cli, write_config

    policy = tmp_path / "policy.toml"
    policy.write_text('sites = [{ name = "rotterdam", latitude = 51.92, longitude = 4.48 }]\n'
                      'charge_points = [{ pattern = "CP16-*", site = "rotterdam" }]\n')
    config = with_overrides(isolated_config(services), detector={"policy_file": str(policy)})
    cfg = write_config(config, tmp_path)
    assert cli(cfg, "collect", "pcap", str(DEMO)).returncode == 0
    producer = KafkaProducer(bootstrap_servers=services.kafka)
    producer.send(config.kafka.messages_topic, key=b"CP16-001", value=b"not a record")
    producer.flush()
    producer.close()
    assert cli(cfg, "detect", "--idle-exit", "3").returncode == 0
    killed = cli(cfg, "index", "--what", "messages", "--idle-exit", "3", "--kill-at", "records_archived:1")
    assert killed.returncode == -9, killed.stderr
    done = cli(cfg, "index", "--idle-exit", "3")
    assert done.returncode == 0, done.stderr
    # Nothing was committed before the kill: every record came again, and counted nothing twice.
    assert f"archive: {len(demo[0]) + 1} records" in done.stderr and "1 bad records" in done.stderr, done.stderr
    assert "alerts: 4 records" in done.stderr
    store = ElasticAlertStore(config.elasticsearch)
    try:
        records, alerts = demo
        assert _count(store, store.names.messages_pattern) == len(records)
        assets = {a["ocpp"]["charge_point_id"]: a for a in store.assets()}
        expected = {cp: sum(1 for r in records if r.charge_point_id == cp and isinstance(r, OcppMessage))
                    for cp in assets}
        assert {cp: a["chargewatch"]["messages"] for cp, a in assets.items()} == expected  # nothing counted twice
        assert {cp: a["chargewatch"]["connections"] for cp, a in assets.items()} == dict.fromkeys(assets, 1)
        assert {cp: a["chargewatch"].get("site") for cp, a in assets.items()} == {
            "CP16-001": "rotterdam", "CP16-ATTACK": "rotterdam", "CP16-DIR": "rotterdam", "RDAM 123": None}
        docs = store.search(AlertQuery())
        assert {d["event"]["id"] for d in docs} == {a.id for a in alerts}
        assert {d["ocpp"]["charge_point_id"]: d["chargewatch"].get("site") for d in docs}["CP16-ATTACK"] == "rotterdam"
    finally:
        drop_all(store)
        store.close()
