"""Core package: catalog, redaction, configuration, records, alert ids."""

from __future__ import annotations

import json
from pathlib import Path

import ocpp
import pytest

from chargewatch.alerts import Alert, alert_id
from chargewatch.catalog import build_catalog, load_catalog
from chargewatch.config import Config, load_config, resolve_redaction_key, to_toml
from chargewatch.errors import ConfigError, DecodeError
from chargewatch.model import ConnectionEvent, Direction, OcppMessage, record_from_dict
from chargewatch.redaction import REDACTED, Redactor

DATA = Path(__file__).resolve().parent.parent / "chargewatch" / "data"


def test_committed_catalog_matches_the_ocpp_package_schemas() -> None:
    built = build_catalog(Path(ocpp.__file__).parent, DATA / "ocpp-directions.json")
    assert json.loads((DATA / "ocpp_catalog.json").read_text()) == built, "run python -m chargewatch.catalog"
    assert {v: len(rows) for v, rows in built.items()} == {"1.6": 39, "2.0.1": 64, "2.1": 91}


@pytest.mark.parametrize(("version", "action", "cp_may", "csms_may"), [
    ("1.6", "StartTransaction", True, False), ("1.6", "Reset", False, True), ("1.6", "DataTransfer", True, True),
    ("2.0.1", "TransactionEvent", True, False), ("2.0.1", "SetNetworkProfile", False, True),
    ("2.1", "NotifyPeriodicEventStream", True, False), ("2.1", "GetTariffs", False, True),
])
def test_catalog_directions(version: str, action: str, cp_may: bool, csms_may: bool) -> None:
    info = load_catalog().get(version, action)
    assert info is not None
    assert (info.allowed_from(Direction.CP_TO_CSMS), info.allowed_from(Direction.CSMS_TO_CP)) == (cp_may, csms_may)
    assert load_catalog().get("1.6", "TransactionEvent") is None


def test_pseudonyms_are_keyed_and_case_insensitive() -> None:
    a, b = Redactor(b"key-a"), Redactor(b"key-b")
    assert a.pseudonym("04A2B3C4") == a.pseudonym("04a2b3c4")
    assert a.pseudonym("04A2B3C4") != b.pseudonym("04A2B3C4")
    assert a.pseudonym("X").startswith("pt_") and len(a.pseudonym("X")) == 27


def test_redaction_reaches_every_token_and_secret() -> None:
    r = Redactor(b"k")
    local_list = r.payload("SendLocalList", {"listVersion": 2, "localAuthorizationList": [
        {"idTag": "CARD1", "idTagInfo": {"status": "Accepted", "parentIdTag": "PARENT"}}]})
    entry = local_list["localAuthorizationList"][0]
    assert entry["idTag"] == r.pseudonym("CARD1") and entry["idTagInfo"]["parentIdTag"] == r.pseudonym("PARENT")
    tx = r.payload("TransactionEvent", {"idToken": {"idToken": "AABBCCDD", "type": "ISO14443",
                                                    "additionalInfo": [{"additionalIdToken": "X9", "type": "t"}]},
                                        "groupIdToken": {"idToken": "G1", "type": "Central"}})
    assert tx["idToken"]["idToken"] == r.pseudonym("AABBCCDD") and tx["idToken"]["type"] == "ISO14443"
    assert tx["idToken"]["additionalInfo"][0]["additionalIdToken"] == r.pseudonym("X9")
    assert tx["groupIdToken"]["idToken"] == r.pseudonym("G1")
    key = r.payload("ChangeConfiguration", {"key": "AuthorizationKey", "value": "00112233445566778899aabbccddeeff"})
    assert key == {"key": "AuthorizationKey", "value": REDACTED}
    conf = r.payload("GetConfiguration", {"configurationKey": [{"key": "AuthorizationKey", "readonly": False,
                                                                "value": "secret"}, {"key": "X", "value": "1"}]})
    assert conf["configurationKey"] == [{"key": "AuthorizationKey", "readonly": False, "value": REDACTED},
                                        {"key": "X", "value": "1"}]
    sv = r.payload("SetVariables", {"setVariableData": [
        {"attributeValue": "hunter2hunter2hunter2", "component": {"name": "SecurityCtrlr"},
         "variable": {"name": "BasicAuthPassword"}},
        {"attributeValue": "60", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]})
    assert [d["attributeValue"] for d in sv["setVariableData"]] == [REDACTED, "60"]
    net = r.payload("SetNetworkProfile", {"configurationSlot": 1, "connectionData": {
        "ocppCsmsUrl": "wss://x/ocpp", "securityProfile": 2,
        "vpn": {"server": "v", "user": "u", "password": "p", "key": "k", "type": "IPSec"},
        "apn": {"apn": "a", "apnPassword": "ap", "simPin": 1234, "apnAuthentication": "AUTO"}}})
    data = net["connectionData"]
    assert (data["vpn"]["password"], data["vpn"]["key"], data["vpn"]["user"]) == (REDACTED, REDACTED, "u")
    assert (data["apn"]["apnPassword"], data["apn"]["simPin"], data["ocppCsmsUrl"]) == (REDACTED, REDACTED, "wss://x/ocpp")


def test_redaction_survives_odd_shapes() -> None:
    r = Redactor(b"k")
    odd = {"variable": {"name": "BasicAuthPassword"}, "variableAttribute": 5, "idTag": 7}
    assert r.payload("GetVariables", odd) == odd
    report = {"variable": {"name": "BasicAuthPassword"}, "variableAttribute": [{"value": "s3cret"}, 3]}
    assert r.payload("NotifyReport", report)["variableAttribute"] == [{"value": REDACTED}, 3]


def test_redaction_can_be_turned_off_and_never_mutates_input() -> None:
    payload = {"idTag": "CARD1"}
    assert Redactor(b"k", enabled=False).payload("Authorize", payload) == {"idTag": "CARD1"}
    Redactor(b"k").payload("Authorize", payload)
    assert payload == {"idTag": "CARD1"}


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[kafka]\nbootstrap_server = 'x'\n")
    with pytest.raises(ConfigError, match=r"c\.toml \[kafka\]: unknown key\(s\) bootstrap_server"):
        load_config(path)
    path.write_text("[kafka]\npartitions = 'four'\n")
    with pytest.raises(ConfigError, match="partitions must be int"):
        load_config(path)
    path.write_text("[nope]\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path)
    path.write_text(to_toml(Config()))
    assert load_config(path) == Config()


def test_redaction_key_file_is_created_once_and_private(tmp_path: Path) -> None:
    from chargewatch.config import RedactionConfig

    cfg = RedactionConfig(key_file=str(tmp_path / "k" / "pseudonym.key"))
    first = resolve_redaction_key(cfg)
    assert resolve_redaction_key(cfg) == first and len(first) == 32
    assert (tmp_path / "k" / "pseudonym.key").stat().st_mode & 0o777 == 0o600
    assert resolve_redaction_key(RedactionConfig(key="00ff")) == b"\x00\xff"


def test_records_round_trip_and_bad_records_raise() -> None:
    msg = OcppMessage(ts=1.5, charge_point_id="CP 1", direction=Direction.CSMS_TO_CP, src_ip="10.0.0.1", src_port=9000,
                      dst_ip="10.0.0.2", dst_port=4000, ocpp_version="2.0.1", message_type=2, message_id="m",
                      action="Reset", payload={"type": "Immediate"}, frame_size=40, connection_id="Cx",
                      flags=("unknown_action",))
    event = ConnectionEvent(ts=1.0, kind="upgrade", connection_id="Cx", charge_point_id=None,
                            client_ip="10.0.0.2", client_port=4000, server_ip="10.0.0.1", server_port=9000,
                            subprotocols_offered=("ocpp2.0.1",))
    assert record_from_dict(json.loads(json.dumps(msg.to_dict()))) == msg
    assert record_from_dict(json.loads(json.dumps(event.to_dict()))) == event
    assert event.key == "10.0.0.2"
    with pytest.raises(DecodeError):
        record_from_dict({"record": "message", "ts": 1})
    with pytest.raises(DecodeError):
        record_from_dict({"record": "other"})


def test_alert_ids_are_deterministic_and_documents_round_trip() -> None:
    assert alert_id("R", "CP", "t") == alert_id("R", "CP", "t") != alert_id("R", "CP2", "t")
    alert = Alert(id="x", ts=1795000000.123, rule_id="CW-PROTO-001", rule_name="n", category="protocol_anomaly",
                  severity=2, risk_score=55, techniques=("T0855",), charge_point_id="CP", message_id="m",
                  action="Reset", ocpp_version="1.6", direction="cp->csms", connection_id="C",
                  source_ip="10.0.0.2", source_port=1, destination_ip="10.0.0.1", destination_port=2,
                  reason="r", evidence={"a": [1]}, source_ref="f#1")
    doc = alert.to_document()
    assert doc["@timestamp"] == "2026-11-18T11:06:40.123Z"
    assert Alert.from_document(json.loads(json.dumps(doc))) == alert
