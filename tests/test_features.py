"""Session features: reconstruction of 1.6 and 2.0.1 sessions, unit normalisation, token
windows, streaming = batch, the synthetic fleet behind the models, and `chargewatch features`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from chargewatch.cli import main
from chargewatch.config import Config, to_toml, with_overrides
from chargewatch.model import Direction, OcppMessage
from chargewatch.schema import TRANSACTION_FIELDS
from detectors.metering import TransactionTracker
from detectors.policy import ChargePointPolicy, Policy, Site
from models.features import FEATURE_COLUMNS, ROW_COLUMNS, SCHEMA_FIELDS, SessionFeatures, sessions_frame
from models.synthetic import generate, labelled_sessions
from models.synthetic_ocpp import energy_curve
from tests.conftest import TEST_KEY

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z, a Wednesday
POLICY = Policy(sites=(Site("depot", 52.0, 5.0),),
                charge_points=(ChargePointPolicy("CP16", "depot", -1, 11_000.0),
                               ChargePointPolicy("CP201", "depot", -1, 22_000.0)))


class _Stream:
    """Hand-written records of one charge point, CALL + CALLRESULT pairs."""

    def __init__(self, cp: str, version: str) -> None:
        self.cp, self.version, self.records, self.n = cp, version, [], 0

    def call(self, ts: float, action: str, body: dict[str, Any], answer: dict[str, Any] | None = None,
             from_cp: bool = True) -> None:
        self.n += 1
        mid = f"{self.cp}-{self.n}"
        up, down = Direction.CP_TO_CSMS, Direction.CSMS_TO_CP
        direction = up if from_cp else down
        self.records.append(OcppMessage(ts, self.cp, direction, "10.0.0.2", 4000, "10.0.0.1", 9000, self.version, 2,
                                        mid, action, body, 100, "C1"))
        self.records.append(OcppMessage(ts + 0.1, self.cp, down if from_cp else up, "10.0.0.1", 9000, "10.0.0.2",
                                        4000, self.version, 3, mid, action, answer or {}, 50, "C1"))


def iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def session_16(tag: str = "pt_a", remote: bool = True) -> _Stream:
    """A 1.6 session: remote start, kWh register, per-phase power in W, charging 2 h at ~11 kW then idle."""
    s = _Stream("CP16", "1.6")
    if remote:
        s.call(T0 - 60, "RemoteStartTransaction", {"idTag": tag, "connectorId": 1}, {"status": "Accepted"},
               from_cp=False)
    s.call(T0, "StartTransaction", {"connectorId": 1, "idTag": tag, "meterStart": 1_000_000, "timestamp": iso(T0)},
           {"transactionId": 77, "idTagInfo": {"status": "Accepted"}})
    for k, (kwh, watts) in enumerate([(1005.5, 11_000), (1011.0, 11_000), (1016.5, 11_000), (1022.0, 0),
                                      (1022.0, 0)], start=1):
        at = T0 + k * 1800
        phases = [{"value": f"{watts / 3:.1f}", "measurand": "Power.Active.Import", "phase": p, "unit": "W"}
                  for p in ("L1", "L2", "L3")]
        s.call(at, "MeterValues", {"connectorId": 1, "transactionId": 77, "meterValue": [{"timestamp": iso(at),
               "sampledValue": [{"value": f"{kwh:.3f}", "unit": "kWh", "context": "Sample.Periodic"}, *phases]}]})
    s.call(T0 + 4 * 3600, "StopTransaction", {"transactionId": 77, "meterStop": 1_022_000, "timestamp":
           iso(T0 + 4 * 3600), "reason": "EVDisconnected"}, {})
    return s


def session_201(tag: str = "pt_b") -> _Stream:
    """A 2.0.1 session: register in Wh with multiplier 3 (i.e. kWh), power in W with multiplier 3."""
    s = _Stream("CP201", "2.0.1")
    info = {"transactionId": "tx-1", "remoteStartId": 5}

    def meter(ts: float, kwh: float, kw: float | None, context: str) -> list[dict[str, Any]]:
        values: list[dict[str, Any]] = [{"value": kwh, "context": context, "measurand": "Energy.Active.Import.Register",
                                         "unitOfMeasure": {"unit": "Wh", "multiplier": 3}}]
        if kw is not None:
            values.append({"value": kw, "measurand": "Power.Active.Import",
                           "unitOfMeasure": {"unit": "W", "multiplier": 3}})
        return [{"timestamp": iso(ts), "sampledValue": values}]

    s.call(T0, "TransactionEvent", {"eventType": "Started", "timestamp": iso(T0), "triggerReason": "RemoteStart",
                                    "seqNo": 0, "transactionInfo": info, "evse": {"id": 2, "connectorId": 1},
                                    "idToken": {"idToken": tag, "type": "ISO14443"},
                                    "meterValue": meter(T0, 50.0, None, "Transaction.Begin")},
           {"idTokenInfo": {"status": "Accepted"}})
    s.call(T0 + 600, "TransactionEvent", {"eventType": "Updated", "timestamp": iso(T0 + 600), "seqNo": 1,
                                          "triggerReason": "MeterValuePeriodic", "transactionInfo": info,
                                          "meterValue": meter(T0 + 600, 53.5, 21.5, "Sample.Periodic")})
    s.call(T0 + 1200, "TransactionEvent", {"eventType": "Ended", "timestamp": iso(T0 + 1200), "seqNo": 2,
                                           "triggerReason": "StopAuthorized",
                                           "transactionInfo": info | {"stoppedReason": "Local"},
                                           "meterValue": meter(T0 + 1200, 57.0, None, "Transaction.End")})
    return s


def test_16_session_row_has_normalised_units_and_every_feature() -> None:
    row = SessionFeatures(POLICY).feed_all(session_16().records)[0]
    assert (row.charge_point_id, row.site, row.version, row.transaction_id, row.connector_id, row.id_token) == \
        ("CP16", "depot", "1.6", "77", 1, "pt_a")
    assert row.energy_wh == pytest.approx(22_000.0)  # kWh samples and the Wh meterStart/meterStop agree
    assert row.duration_s == pytest.approx(4 * 3600)
    assert row.avg_power_w == pytest.approx(5_500.0)
    assert row.peak_power_w == pytest.approx(11_000.0, abs=0.5)  # three phases of 3,666.7 W summed; register: 11 kW
    assert row.rated_power_w == 11_000.0 and row.power_ratio == pytest.approx(1.0, abs=1e-4)
    assert row.idle_s == pytest.approx(2 * 3600)  # the register last rose at the 4th sample (T0 + 2 h)
    assert (row.start_hour, row.weekday) == (11, 2)
    assert row.meter_samples == 7 and row.max_sample_gap_s == pytest.approx(5400)  # last sample to the stop
    assert (row.register_drop_wh, row.stop_reason, row.remote_start) == (0.0, "EVDisconnected", 1)
    assert (row.token_sessions_24h, row.token_charge_points_24h) == (1, 1)


def test_201_session_with_multipliers_and_remote_start() -> None:
    row = SessionFeatures(POLICY).feed_all(session_201().records)[0]
    assert (row.version, row.transaction_id, row.connector_id, row.stop_reason) == ("2.0.1", "tx-1", 2, "Local")
    assert row.energy_wh == pytest.approx(7_000.0) and row.duration_s == pytest.approx(1200)
    assert row.peak_power_w == pytest.approx(21_500.0)  # measured 21.5 kW beats the implied 21 kW
    assert row.power_ratio == pytest.approx(21_500 / 22_000)
    assert row.remote_start == 1 and row.idle_s == pytest.approx(0.0)


def test_local_start_is_not_remote_and_unknown_charge_point_gets_the_fleet_default() -> None:
    stream = session_16(remote=False)
    for record in stream.records:
        record.charge_point_id = "ELSEWHERE"
    row = SessionFeatures(POLICY).feed_all(stream.records)[0]
    assert row.remote_start == 0 and row.site == "" and row.rated_power_w == Policy().default_max_power_w


def test_register_falling_and_a_stop_before_the_start_show_in_the_features() -> None:
    stream = _Stream("CP16", "1.6")
    stream.call(T0, "StartTransaction", {"connectorId": 1, "idTag": "pt_x", "meterStart": 5000, "timestamp": iso(T0)},
                {"transactionId": 9, "idTagInfo": {"status": "Accepted"}})
    reading = [{"timestamp": iso(T0 + 900), "sampledValue": [{"value": "8000"}]}]
    stream.call(T0 + 900, "MeterValues", {"connectorId": 1, "transactionId": 9, "meterValue": reading})
    stream.call(T0 + 1800, "StopTransaction", {"transactionId": 9, "meterStop": 4000, "timestamp": iso(T0 - 3600)})
    row = SessionFeatures(POLICY).feed_all(stream.records)[0]
    assert row.energy_wh == -1000.0 and row.duration_s == -3600.0
    assert row.avg_power_w == pytest.approx(-1000 * 3600 / 60)  # duration taken as at least 60 s
    assert row.register_drop_wh == 0.0  # the stop is stamped before the last reading: history, no baseline
    stream2 = _Stream("CP16", "1.6")
    stream2.records = [r for r in stream.records if r.action != "StopTransaction"]
    stream2.call(T0 + 1800, "StopTransaction", {"transactionId": 9, "meterStop": 4000, "timestamp": iso(T0 + 1800)})
    assert SessionFeatures(POLICY).feed_all(stream2.records)[0].register_drop_wh == 4000.0


def test_token_windows_count_sessions_and_charge_points_within_24_hours() -> None:
    first, second, later = session_16("pt_same"), session_201("pt_same"), session_16("pt_same")
    for record in later.records:
        record.ts += 30 * 3600  # the same card, 30 h later: out of the first two's window
        record.message_id += "-later"
    later.records = [r for r in later.records if r.action != "RemoteStartTransaction"]
    later.records[0].payload = dict(later.records[0].payload, timestamp=iso(T0 + 30 * 3600))
    for record in later.records[1:]:
        if isinstance(record.payload, dict) and "transactionId" in record.payload:
            record.payload = dict(record.payload, transactionId=78)
    stream = sorted(first.records + second.records + later.records, key=lambda r: r.ts)
    rows = SessionFeatures(POLICY).feed_all(stream)
    counts = {(r.charge_point_id, r.transaction_id): (r.token_sessions_24h, r.token_charge_points_24h) for r in rows}
    assert counts == {("CP201", "tx-1"): (2, 2), ("CP16", "77"): (2, 2), ("CP16", "78"): (1, 1)}


def test_sessions_whose_start_was_not_seen_are_counted_not_rowed() -> None:
    features = SessionFeatures(POLICY)
    records = [r for r in session_16().records if r.action not in ("StartTransaction", "RemoteStartTransaction")]
    assert features.feed_all(records) == [] and features.partial == 1


def test_rules_trackers_skip_power_samples() -> None:
    tracker = TransactionTracker()
    updates = [tracker.observe(r) for r in session_16().records]
    session = next(u.session for u in updates if u is not None)
    assert session.peak_measured_w is None and session.peak_implied_w == pytest.approx(11_000.0)
    assert session.remote_start and session.max_gap_s == pytest.approx(5400.0)


def test_every_mapped_field_is_in_the_session_document_schema() -> None:
    assert set(SCHEMA_FIELDS) <= set(ROW_COLUMNS)
    assert set(SCHEMA_FIELDS.values()) <= set(TRANSACTION_FIELDS), set(SCHEMA_FIELDS.values()) - set(TRANSACTION_FIELDS)
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)


@pytest.fixture(scope="module")
def small_fleet() -> Any:
    return generate(1500, seed=5, anomaly_rate=0.04)


def test_streaming_and_batch_give_the_same_rows(small_fleet: Any) -> None:
    frame = sessions_frame(small_fleet.records, small_fleet.policy)
    streamed = []
    features = SessionFeatures(small_fleet.policy)
    for record in small_fleet.records:
        row = features.feed(record)
        if row is not None:
            streamed.append(row.features())
    assert np.allclose(frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=float), np.array(streamed), equal_nan=True)
    assert list(frame.columns) == list(ROW_COLUMNS) and str(frame["start"].dt.tz) == "UTC"


def test_synthetic_fleet_is_deterministic_labelled_and_fast() -> None:
    started = time.perf_counter()
    a = generate(2000, seed=9)
    elapsed = time.perf_counter() - started
    b, c = generate(2000, seed=9), generate(2000, seed=10)
    assert [r.to_dict() for r in a.records[:2000:7]] == [r.to_dict() for r in b.records[:2000:7]]
    assert len(a.records) == len(b.records) and a.labels == b.labels
    assert [r.to_dict() for r in a.records[:500]] != [r.to_dict() for r in c.records[:500]]
    assert {v for r in a.records if isinstance(r, OcppMessage) for v in [r.ocpp_version]} == {"1.6", "2.0.1"}
    print(f"synthetic fleet: 2000 sessions, {len(a.records)} records in {elapsed:.2f}s")
    assert elapsed < 15.0


def test_synthetic_energy_survives_every_unit_style_within_rounding(small_fleet: Any) -> None:
    frame = labelled_sessions(small_fleet)
    rows = {(cp, tx): e for cp, tx, e in zip(frame["charge_point_id"], frame["transaction_id"], frame["energy_wh"],
                                             strict=True)}
    styles: set[tuple[str, str, int]] = set()
    for plan in small_fleet.plans:
        if plan.kind:
            continue
        truth = float(energy_curve(plan, np.array([plan.dwell_s]))[0][0])
        assert rows[(plan.cp.id, plan.tx_id)] == pytest.approx(truth, abs=1.0), plan.cp
        styles.add((plan.cp.version, *plan.cp.register_unit))
    assert {("1.6", "Wh", 0), ("1.6", "kWh", 0), ("2.0.1", "Wh", 3), ("2.0.1", "kWh", 0)} <= styles
    assert set(frame["anomaly_kind"]) - {""} == set(small_fleet.labels.values())
    assert frame["label"].sum() == len(small_fleet.labels)


def test_features_cli_exports_capture_and_synthetic_sessions(tmp_path: Path, repo_root: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(to_toml(with_overrides(Config(), redaction={"key": TEST_KEY})))
    out = tmp_path / "demo.parquet"
    assert main(["--config", str(config), "features", "--from", "capture", str(repo_root / "samples" / "demo.pcap"),
                 "--out", str(out), "--no-progress"]) == 0
    demo = pd.read_parquet(out)
    assert sorted(demo["version"]) == ["1.6", "2.0.1"] and (demo["energy_wh"] > 0).all()
    assert all(token.startswith("pt_") for token in demo["id_token"])  # pseudonyms, never the card
    synthetic = tmp_path / "synthetic.csv"
    assert main(["features", "--from", "synthetic", "--sessions", "300", "--seed", "2", "--out", str(synthetic),
                 "--no-progress"]) == 0
    assert {"label", "anomaly_kind", *FEATURE_COLUMNS} <= set(pd.read_csv(synthetic).columns)
    assert main(["features", "--from", "capture", "--out", str(out)]) == 2
    assert "2 sessions written" in capsys.readouterr().out
