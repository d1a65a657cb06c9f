"""Operator policy: parsing, validation errors, and the questions rules ask of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from chargewatch.errors import ConfigError
from detectors.policy import Policy, Site, distance_km, load_policy, parse_policy
from detectors.rules import apply_overrides, load_rules

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "policy.example.toml"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_example_policy_loads_and_answers() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.csms_endpoints[0].matches("10.20.0.10", 443)
    assert not policy.csms_endpoints[0].matches("10.20.0.99", 443)
    assert policy.csms_endpoints[1].matches("10.20.0.11", 443, "anyfingerprint")
    assert policy.max_power_w("AMS-0001") == 22000.0 and policy.max_power_w("XYZ") == 50000.0
    assert policy.security_profile("MUC-HPC-7") == 3 and policy.security_profile("XYZ") == -1
    site = policy.site_of("AMS-0001")
    assert site is not None and site.name == "amsterdam-depot" and policy.site_of("XYZ") is None
    rules = apply_overrides(load_rules(), policy.rules, str(EXAMPLE))
    assert rules["CW-REPLAY-001"].param("history_size") == 10000


def test_maintenance_windows_including_midnight_crossing() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.in_maintenance(_ts("2026-11-24T02:30:00")) is True  # Tuesday 02:30
    assert policy.in_maintenance(_ts("2026-11-24T04:00:00")) is False  # end is exclusive
    assert policy.in_maintenance(_ts("2026-11-22T23:00:00")) is True  # Sunday 23:00
    assert policy.in_maintenance(_ts("2026-11-23T01:30:00")) is True  # Monday 01:30, Sunday's window
    assert policy.in_maintenance(_ts("2026-11-23T02:30:00")) is False
    assert Policy().in_maintenance(_ts("2026-11-24T02:30:00")) is None  # no windows: no expectation


def test_distance_between_sites() -> None:
    ams, muc = Site("a", 52.37, 4.90), Site("m", 48.14, 11.58)
    assert 660 < distance_km(ams, muc) < 680


@pytest.mark.parametrize(("raw", "message"), [
    ({"csms_endpoint": []}, r"p\.toml: unknown field\(s\) csms_endpoint"),
    ({"maintenance_windows": [{"days": ["mon"], "start": "1:00", "end": "02:00"}]},
     r"maintenance_windows\[0\]\.start: want HH:MM"),
    ({"maintenance_windows": [{"days": ["moon"], "start": "01:00", "end": "02:00"}]}, r"unknown day"),
    ({"charge_points": [{"pattern": "A*", "max_power": 1}]}, r"charge_points\[0\]: unknown field\(s\) max_power"),
    ({"rules": {"CW-X": {"enable": True}}}, r"rules\.CW-X: unknown field\(s\) enable"),
])
def test_policy_errors_name_file_and_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(raw, "p.toml")


def test_rule_overrides_are_validated() -> None:
    rules = load_rules()
    with pytest.raises(ConfigError, match=r"rules\.CW-NOPE-001: no such rule"):
        apply_overrides(rules, parse_policy({"rules": {"CW-NOPE-001": {"enabled": False}}}, "p").rules, "p")
    with pytest.raises(ConfigError, match=r"unknown \['size'\]"):
        apply_overrides(rules, parse_policy({"rules": {"CW-REPLAY-001": {"parameters": {"size": 1}}}}, "p").rules,
                        "p")
    off = apply_overrides(rules, parse_policy({"rules": {"CW-PROTO-001": {"enabled": False}}}, "p").rules, "p")
    assert off["CW-PROTO-001"].enabled is False and rules["CW-PROTO-001"].enabled is True
