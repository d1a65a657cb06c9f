"""The embedded store and the shared document builders: the Store protocol on SQLite (idempotent
archive, assets, triage that pipeline writes never overwrite, every alert filter) and the
record/asset documents both stores index, in the field names of chargewatch.schema."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from chargewatch.alerts import Alert
from chargewatch.errors import StoreError
from chargewatch.model import ConnectionEvent, Direction, OcppMessage, Record, record_from_dict
from chargewatch.schema import ASSET_FIELDS, MESSAGE_FIELDS
from chargewatch.store import AlertQuery, MessageQuery
from chargewatch.store.documents import (
    MAX_ADDRESSES,
    get_field,
    merge_asset,
    observe_assets,
    record_document,
    record_id,
)
from chargewatch.store.sqlite import SqliteAlertStore

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
T0 = 1_795_000_000.0


def _msg(mtype: int, action: str | None, payload: Any, *, cp: str = "CP1", ts: float = T0, mid: str = "m1",
         direction: Direction = Direction.CP_TO_CSMS, version: str = "1.6", src: str = "10.0.0.2") -> OcppMessage:
    src_ip, dst_ip = (src, "10.0.0.1") if direction is Direction.CP_TO_CSMS else ("10.0.0.1", src)
    return OcppMessage(ts, cp, direction, src_ip, 4000, dst_ip, 9000, version, mtype, mid, action, payload, 100,
                       "C1", source=f"x.pcap#{int((ts - T0) * 1000) + 1}")


def _upgrade(cp: str, ts: float, *, auth: str | None = None, tls: dict[str, Any] | None = None,
             client: str = "10.0.0.2", status: int = 101) -> ConnectionEvent:
    return ConnectionEvent(ts, "upgrade", f"C-{cp}-{ts}", cp, client, 4000, "10.0.0.1", 9000, path=f"/ocpp/{cp}",
                           subprotocol="ocpp1.6", ocpp_version="1.6", auth_scheme=auth,
                           auth_username=cp if auth else None, status=status, tls=tls, source=f"y.pcap#{ts}")


def _alert(alert_id: str, cp: str, *, ts: float = T0, rule: str = "CW-PROTO-001", category: str = "protocol_anomaly",
           severity: int = 2, count: int = 1, kind: str = "alert") -> Alert:
    return Alert(id=alert_id, ts=ts, rule_id=rule, rule_name="n", category=category, severity=severity,
                 risk_score=55, techniques=("T0855",), charge_point_id=cp, message_id="m0", action="Reset",
                 ocpp_version="1.6", direction="cp->csms", connection_id="C1", source_ip="10.0.0.2", source_port=4000,
                 destination_ip="10.0.0.1", destination_port=9000, reason="r", evidence={"sender": "cp"},
                 count=count, last_ts=ts + count - 1 if count > 1 else None, kind=kind)


def _dotted(doc: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted names of a nested document's leaves (objects stored whole count as one leaf)."""
    names: set[str] = set()
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in ("ocpp.payload", "chargewatch.connection"):
            names |= _dotted(value, name + ".")
        else:
            names.add(name)
    return names


def _golden(name: str) -> list[Record]:
    lines = (GOLDEN / f"{name}.records.jsonl").read_text().splitlines()
    return [record_from_dict(json.loads(line)) for line in lines]


@pytest.fixture
def store(tmp_path: Path) -> SqliteAlertStore:
    return SqliteAlertStore(tmp_path / "s.db", clock=lambda: T0 + 3600)


# --- documents ---------------------------------------------------------------------------------


def test_message_documents_extract_the_searchable_payload_values() -> None:
    start_answer = _msg(3, "StartTransaction", {"transactionId": 42, "idTagInfo": {"status": "Accepted"}},
                        direction=Direction.CSMS_TO_CP)
    event_201 = _msg(2, "TransactionEvent", {"eventType": "Started", "transactionInfo": {"transactionId": "tx-9"},
                                             "evse": {"id": 2, "connectorId": 1},
                                             "idToken": {"idToken": "pt_abc", "type": "ISO14443"}}, version="2.0.1")
    error = _msg(4, "Reset", {"errorCode": "NotSupported", "errorDescription": "", "errorDetails": {}},
                 direction=Direction.CSMS_TO_CP)
    stop_16 = _msg(2, "StopTransaction", {"transactionId": 42, "idTag": "pt_def", "meterStop": 10})
    docs = [record_document(r) for r in (start_answer, event_201, error, stop_16)]
    assert [get_field(d, "ocpp.transaction_id") for d in docs] == ["42", "tx-9", None, "42"]
    assert [get_field(d, "ocpp.connector_id") for d in docs] == [None, 2, None, None]
    assert [get_field(d, "ocpp.id_token") for d in docs] == [None, "pt_abc", None, "pt_def"]
    assert [get_field(d, "ocpp.status") for d in docs] == ["Accepted", None, None, None]
    assert [get_field(d, "ocpp.error_code") for d in docs] == [None, None, "NotSupported", None]
    assert [get_field(d, "ocpp.message_type_name") for d in docs] == ["CALLRESULT", "CALL", "CALLERROR", "CALL"]
    assert get_field(docs[0], "ocpp.sender") == "csms" and get_field(docs[0], "source.ip") == "10.0.0.1"
    assert docs[1]["@timestamp"] == "2026-11-18T11:06:40.000000Z" and get_field(docs[1], "event.sequence") == T0 * 1e6
    assert get_field(docs[1], "event.id") == record_id(event_201) and len(record_id(event_201)) == 32
    for doc in docs:
        assert _dotted(doc) <= set(MESSAGE_FIELDS), _dotted(doc) - set(MESSAGE_FIELDS)


def test_connection_documents_carry_tls_and_auth() -> None:
    proxy_tls = {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "client_cert_subject": "CN=CP1",
                 "client_cert_sha256": "ab" * 32, "server_name": "csms.example"}
    capture_tls = {"version": "TLSv1.2", "cipher": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "sni": "csms.example",
                   "ja4": "t12d", "ja3": "j3", "ja3s": "j3s", "server_certs": [{"sha256": "cd" * 32}]}
    upgrade = record_document(_upgrade("CP1", T0, auth="Basic", tls=proxy_tls))
    handshake = record_document(ConnectionEvent(T0, "tls", "C9", None, "10.0.0.5", 5000, "10.0.0.1", 443,
                                                tls=capture_tls, source="z.pcap#3"))
    arp = record_document(ConnectionEvent(T0, "arp", "A1", None, "10.0.0.7", 0, "10.0.0.1", 0,
                                          link={"op": "reply", "sender_mac": "aa:bb:cc:dd:ee:ff",
                                                "sender_ip": "10.0.0.7", "target_ip": "10.0.0.1"}))
    assert get_field(upgrade, "event.dataset") == "chargewatch.connection"
    assert get_field(upgrade, "event.action") == "upgrade"
    assert (get_field(upgrade, "ocpp.auth_scheme"), get_field(upgrade, "ocpp.auth_username")) == ("Basic", "CP1")
    assert (get_field(upgrade, "tls.version"), get_field(upgrade, "tls.client.server_name")) == ("TLSv1.3",
                                                                                               "csms.example")
    assert get_field(upgrade, "ocpp.http_status") == 101
    assert get_field(upgrade, "chargewatch.connection")["tls"] == proxy_tls
    assert get_field(handshake, "tls.client.ja4") == "t12d"
    assert get_field(handshake, "tls.server.hash.sha256") == "cd" * 32
    assert get_field(handshake, "ocpp.charge_point_id") is None
    assert (get_field(arp, "source.mac"), get_field(arp, "source.ip")) == ("aa:bb:cc:dd:ee:ff", "10.0.0.7")
    for doc in (upgrade, handshake, arp):
        assert _dotted(doc) <= set(MESSAGE_FIELDS), _dotted(doc) - set(MESSAGE_FIELDS)


def test_assets_from_boot_notifications_and_upgrades() -> None:
    records: list[Record] = [
        _upgrade("CP16", T0, auth="Basic"),
        _msg(2, "BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "Volt",
                                     "chargeBoxSerialNumber": "SN-1", "firmwareVersion": "1.2"}, cp="CP16", ts=T0 + 1),
        _msg(3, "BootNotification", {"status": "Accepted", "interval": 300}, cp="CP16", ts=T0 + 2,
             direction=Direction.CSMS_TO_CP),
        _upgrade("CP2X", T0, tls={"version": "TLSv1.3", "cipher": "X", "client_cert_sha256": "ab" * 32}),
        _msg(2, "BootNotification", {"reason": "PowerUp", "chargingStation": {
            "vendorName": "Volta", "model": "Z2", "serialNumber": "SN-2", "firmwareVersion": "2.0"}},
             cp="CP2X", ts=T0 + 1, version="2.0.1"),
        _upgrade("CPPLAIN", T0), _upgrade("CPTLSBASIC", T0, auth="Basic", tls={"version": "TLSv1.2"}),
        _upgrade("CPREFUSED", T0, auth="Basic", status=401),
    ]
    seen = observe_assets(records)
    docs = {cp: merge_asset(None, obs, "Delft" if cp == "CP16" else None) for cp, obs in seen.items()}
    assert [get_field(docs["CP16"], f) for f in ("device.manufacturer", "device.model.name", "device.serial_number",
                                                  "ocpp.firmware_version", "ocpp.boot_status")] == [
        "ACME", "Volt", "SN-1", "1.2", "Accepted"]
    assert [get_field(docs["CP2X"], f) for f in ("device.manufacturer", "device.model.name", "device.serial_number",
                                                  "ocpp.firmware_version", "ocpp.version")] == [
        "Volta", "Z2", "SN-2", "2.0", "2.0.1"]
    profiles = {cp: get_field(doc, "ocpp.security_profile") for cp, doc in docs.items()}
    assert profiles == {"CP16": 1, "CP2X": 3, "CPPLAIN": 0, "CPTLSBASIC": 2, "CPREFUSED": None}
    assert get_field(docs["CP2X"], "tls.version") == "TLSv1.3"
    assert get_field(docs["CP16"], "chargewatch.site") == "Delft"
    assert get_field(docs["CP16"], "chargewatch.messages") == 2
    assert get_field(docs["CP16"], "chargewatch.connections") == 1
    assert get_field(docs["CP16"], "chargewatch.first_seen") == "2026-11-18T11:06:40.000Z"
    assert get_field(docs["CP16"], "chargewatch.last_seen") == "2026-11-18T11:06:42.000Z"
    for doc in docs.values():
        assert _dotted(doc) <= set(ASSET_FIELDS), _dotted(doc) - set(ASSET_FIELDS)


def test_asset_merge_widens_times_and_bounds_addresses() -> None:
    first = merge_asset(None, observe_assets([_upgrade("CP1", T0 + 10, client="10.0.0.2")])["CP1"])
    hops = [_msg(2, "Heartbeat", {}, ts=T0 + i, src=f"10.1.0.{i}") for i in range(1, MAX_ADDRESSES + 5)]
    later = merge_asset(first, observe_assets(hops)["CP1"])
    assert get_field(later, "chargewatch.first_seen") == "2026-11-18T11:06:41.000Z"
    assert get_field(later, "chargewatch.last_seen") == "2026-11-18T11:07:00.000Z"
    addresses = get_field(later, "related.ip")
    assert len(addresses) == MAX_ADDRESSES and addresses[-1] == f"10.1.0.{MAX_ADDRESSES + 4}"
    assert get_field(later, "chargewatch.messages") == MAX_ADDRESSES + 4
    assert get_field(later, "ocpp.security_profile") == 0  # kept from the first document


# --- the SQLite store --------------------------------------------------------------------------


def test_archive_is_idempotent_and_counts_stay_exact(store: SqliteAlertStore) -> None:
    records = _golden("demo")
    assert store.put_records(records, {"CP16-001": "Delft"}) == len(records)
    before = store.assets()
    assert store.put_records(records) == 0 and store.put_records(records[:10]) == 0
    assert store.assets() == before
    rows = store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert rows == len(records) == 58
    cps = {get_field(a, "ocpp.charge_point_id"): a for a in before}
    assert sorted(cps) == ["CP16-001", "CP16-ATTACK", "CP16-DIR", "RDAM 123"]
    assert get_field(cps["CP16-001"], "chargewatch.messages") == 22
    assert get_field(cps["CP16-001"], "chargewatch.site") == "Delft"
    assert get_field(cps["CP16-001"], "ocpp.security_profile") == 1
    assert get_field(cps["RDAM 123"], "ocpp.version") == "2.0.1"
    attack = store.messages(MessageQuery(charge_point_id="CP16-ATTACK"))
    assert len(attack) == 10 and attack[0]["event"]["action"] == "upgrade" and attack[-1]["event"]["action"] == "closed"
    times = [d["event"]["sequence"] for d in attack]
    assert times == sorted(times)
    connection = get_field(attack[1], "ocpp.connection_id")
    assert all(get_field(d, "ocpp.connection_id") == connection for d in
               store.messages(MessageQuery(connection_id=connection)))
    assert len(store.messages(MessageQuery(charge_point_id="CP16-ATTACK", limit=3))) == 3


def test_triage_survives_alert_updates_and_counts_open_alerts(store: SqliteAlertStore) -> None:
    store.put_records(_golden("demo")[:3])  # CP16-001 exists as an asset
    assert store.put_alerts([_alert("a1", "CP16-001"), _alert("a2", "CP16-001", severity=3)]) == 2
    triaged = store.set_triage("a1", "acknowledged", "looking", "ana")
    assert triaged["triage"] == {"status": "acknowledged", "note": "looking", "updated_by": "ana",
                                 "updated_at": "2026-11-18T12:06:40.000Z"}
    store.put_alerts([_alert("a1", "CP16-001", count=2), _alert("a1", "CP16-001", count=3)])  # a storm, last wins
    doc = store.get_alert("a1")
    assert doc == _alert("a1", "CP16-001", count=3).to_document() | {"triage": triaged["triage"]}
    (asset,) = store.assets("CP16-001")
    assert asset["chargewatch"]["alerts"] == {"total": 2, "open": 2, "max_severity": 3,
                                              "last": "2026-11-18T11:06:40.000Z"}
    store.set_triage("a2", "closed", "false positive", "bo")
    assert store.assets("CP16-001")[0]["chargewatch"]["alerts"]["open"] == 1
    with pytest.raises(StoreError, match="unknown triage status 'done'"):
        store.set_triage("a1", "done", "", "ana")
    with pytest.raises(StoreError, match="no alert with id 'nope'"):
        store.set_triage("nope", "closed", "", "ana")
    assert store.get_alert("nope") is None


def test_alert_filters(store: SqliteAlertStore) -> None:
    store.put_alerts([_alert("low", "CP1", ts=T0, severity=1, rule="CW-MITM-003", category="mitm"),
                      _alert("high", "CP2", ts=T0 + 60, severity=3, rule="CW-REPLAY-001", category="replay"),
                      _alert("event", "CP2", ts=T0 + 120, severity=1, rule="CW-SEC-005", category="security_event",
                             kind="event")])
    store.put_records([_msg(2, "Heartbeat", {}, cp="CP2")], {"CP2": "Utrecht"})  # the site reaches its alerts
    store.set_triage("high", "closed", "", "ana")

    def ids(**filters: Any) -> list[str]:
        return [d["event"]["id"] for d in store.search(AlertQuery(**filters))]

    assert ids() == ["event", "high", "low"]  # newest first
    assert ids(since=T0 + 1) == ["event", "high"] and ids(until=T0 + 60) == ["high", "low"]
    assert ids(charge_point_id="CP1") == ["low"] and ids(category="replay") == ["high"]
    assert ids(min_severity=3) == ["high"] and ids(rule_id="CW-SEC-005") == ["event"]
    assert ids(site="Utrecht") == ["event", "high"] and ids(site="Delft") == []
    assert ids(triage_status="new") == ["event", "low"] and ids(triage_status="closed") == ["high"]
    assert ids(limit=1) == ["event"]
    assert store.get_alert("high")["chargewatch"]["site"] == "Utrecht"  # type: ignore[index]
    store.put_alerts([_alert("late", "CP2", ts=T0 + 200)])  # a new alert of a known charge point gets its site
    assert ids(site="Utrecht")[0] == "late"
    store.put_alerts([_alert("gouda", "CP3", ts=T0 + 300)], sites={"CP3": "Gouda"})  # as the indexer passes them
    store.put_alerts([_alert("gouda", "CP3", ts=T0 + 300, count=2)])  # a writer that knows no site keeps it
    assert ids(site="Gouda") == ["gouda"]


def test_store_file_errors_and_older_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such SQLite store"):
        SqliteAlertStore(tmp_path / "missing.db", create=False)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database, not at all" * 100)
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        SqliteAlertStore(junk)
    old = tmp_path / "old.db"  # the alerts-only layout of earlier versions
    doc = _alert("o1", "CP9", kind="event").to_document()
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE alerts (id TEXT PRIMARY KEY, ts REAL NOT NULL, rule_id TEXT NOT NULL, "
                     "category TEXT NOT NULL, severity INTEGER NOT NULL, charge_point_id TEXT NOT NULL, "
                     "doc TEXT NOT NULL)")
        conn.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)",
                     ("o1", T0, "CW-PROTO-001", "protocol_anomaly", 2, "CP9", json.dumps(doc)))
    migrated = SqliteAlertStore(old, create=False)
    assert migrated.search(AlertQuery()) == [doc]
    assert migrated.db.execute("SELECT kind FROM alerts").fetchone()[0] == "event"
    assert migrated.set_triage("o1", "closed", "old", "ana")["triage"]["status"] == "closed"
    assert "SQLite store ready" in migrated.setup()
    migrated.close()
