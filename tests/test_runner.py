"""The runner: storms collapse into one alert per rule, charge point and window; replays of
the same input give identical alerts; warm-up rebuilds state without emitting."""

from __future__ import annotations

from chargewatch.alerts import Alert
from chargewatch.catalog import load_catalog
from chargewatch.model import Direction, OcppMessage
from detectors.policy import Policy
from detectors.registry import default_detectors
from detectors.rules import load_rules
from detectors.runner import DetectorRunner

T0 = 1_795_000_200.0  # a multiple of 300: the start of a collapse window


def _reset(ts: float, mid: str, cp: str = "CP-R") -> OcppMessage:
    return OcppMessage(ts=ts, charge_point_id=cp, direction=Direction.CP_TO_CSMS, src_ip="10.0.0.2", src_port=4000,
                       dst_ip="10.0.0.1", dst_port=9000, ocpp_version="1.6", message_type=2, message_id=mid,
                       action="Reset", payload={"type": "Hard"}, frame_size=40, connection_id="C1")


def _runner() -> DetectorRunner:
    rules = load_rules()
    return DetectorRunner(default_detectors(rules, load_catalog(), Policy()), rules)


def _direction_alerts(runner: DetectorRunner, msg: OcppMessage, emit: bool = True) -> list[Alert]:
    """CW-PROTO-001 alerts only (the unanswered Resets also raise CW-PROTO-004, not the subject here)."""
    return [a for a in runner.process(msg, emit=emit) if a.rule_id == "CW-PROTO-001"]


def _final(runner: DetectorRunner, messages: list[OcppMessage]) -> dict[str, object]:
    out = {}
    for msg in messages:
        for alert in runner.process(msg):
            out[alert.id] = alert
    return out


def test_storm_collapses_per_window_with_count_and_last_seen() -> None:
    window = load_rules()["CW-PROTO-001"].collapse_s
    msgs = [_reset(T0 + i, f"m{i}") for i in range(5)] + [_reset(T0 + window + 1, "late")]
    runner = _runner()
    emitted = [a for m in msgs for a in _direction_alerts(runner, m)]
    assert len(emitted) == 6  # every occurrence re-emits its storm's alert
    final = {a.id: a for a in emitted}
    first, second = final.values()
    assert (first.count, first.ts, first.last_ts, first.message_id) == (5, T0, T0 + 4, "m0")
    assert first.latest is not None and first.latest["message_id"] == "m4"
    assert (second.count, second.message_id) == (1, "late")
    doc = first.to_document()
    assert doc["chargewatch"]["occurrences"] == 5 and doc["event"]["start"] < doc["event"]["end"]


def test_same_input_gives_identical_alerts_and_ids() -> None:
    msgs = [_reset(T0 + i, f"m{i}", cp=f"CP-{i % 2}") for i in range(4)]
    assert _final(_runner(), msgs) == _final(_runner(), msgs)


def test_warm_up_rebuilds_state_without_emitting() -> None:
    runner = _runner()
    assert runner.process(_reset(T0, "m0"), emit=False) == []
    alerts = _direction_alerts(runner, _reset(T0 + 1, "m1"))
    assert len(alerts) == 1 and alerts[0].count == 2  # the storm state was rebuilt during warm-up
