"""Every rule: its metadata passes the lint, its positive sample fires with the expected
evidence, and its benign near-miss sample stays silent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from chargewatch.alerts import CATEGORIES, Alert
from chargewatch.catalog import load_catalog
from chargewatch.errors import ConfigError
from chargewatch.model import record_from_dict, record_key
from detectors.policy import Policy, load_policy
from detectors.registry import correlation_detectors, default_detectors
from detectors.rules import RISK_BANDS, apply_overrides, load_rule, load_rules
from detectors.stages import build_stages

SAMPLES = Path(__file__).resolve().parent.parent / "detectors" / "samples"
TECHNIQUE = re.compile(r"^T0\d{3}$")  # ATT&CK for ICS technique ids
RULE_ID = re.compile(r"^CW-[A-Z]+-\d{3}$")


def _run(path: Path) -> list[Alert]:
    """Final alerts (latest version of each id) of one sample, with the sample's policy if any."""
    policy_file = path.parent / "policy.toml"
    policy = load_policy(policy_file if policy_file.exists() else None)
    rules = apply_overrides(load_rules(), policy.rules, str(policy_file))
    stages = build_stages(rules, load_catalog(), policy, record_key)  # per charge point, then correlation
    alerts: dict[str, Alert] = {}
    for line in path.read_text().splitlines():
        for alert in stages.process(record_from_dict(json.loads(line))):
            alerts[alert.id] = alert
    return list(alerts.values())


def test_rule_set_lint_lists_every_offender() -> None:
    rules = load_rules()
    catalog, policy = load_catalog(), Policy()
    detectors = default_detectors(rules, catalog, policy) + correlation_detectors(rules, catalog, policy)
    detector_rules = {r for d in detectors for r in d.rule_ids}
    offenders: list[str] = []
    for rule in rules.values():
        low, high = RISK_BANDS[rule.severity]
        checks = {
            "id format CW-<AREA>-NNN": RULE_ID.match(rule.id) is not None,
            "file named after id": Path(rule.path).stem == rule.id,
            f"category in {CATEGORIES}": rule.category in CATEGORIES,
            f"risk_score within {low}-{high} for its severity": low <= rule.risk_score <= high,
            "at least one ATT&CK for ICS technique": bool(rule.techniques)
            and all(TECHNIQUE.match(t) for t in rule.techniques),
            "description, triage and false positives written": len(rule.description) > 40
            and len(rule.triage) > 40 and bool(rule.false_positives),
            "parameters documented": all(len(p.description) > 10 for p in rule.parameters),
            "implemented by a registered detector": rule.id in detector_rules,
            "positive and negative samples": (SAMPLES / rule.id / "positive.jsonl").exists()
            and (SAMPLES / rule.id / "negative.jsonl").exists(),
        }
        offenders += [f"{rule.id}: {name}" for name, ok in checks.items() if not ok]
    orphans = sorted(detector_rules - set(rules))
    offenders += [f"{r}: detector emits a rule with no data file" for r in orphans]
    assert offenders == [], "rule lint failed:\n" + "\n".join(offenders)


@pytest.mark.parametrize("rule_id", sorted(load_rules()))
def test_positive_sample_fires_with_evidence(rule_id: str) -> None:
    expect = json.loads((SAMPLES / rule_id / "expect.json").read_text())
    alerts = [a for a in _run(SAMPLES / rule_id / "positive.jsonl") if a.rule_id == rule_id]
    assert sum(a.count for a in alerts) == expect["count"], "occurrences of the rule"
    first = alerts[0]
    for key, value in expect["evidence"].items():
        assert first.evidence[key] == value, f"evidence {key}"
    rule = load_rules()[rule_id]
    assert (first.category, first.severity, first.risk_score) == (rule.category, rule.severity, rule.risk_score)


@pytest.mark.parametrize("rule_id", sorted(load_rules()))
def test_benign_near_miss_stays_silent(rule_id: str) -> None:
    assert [a.rule_id for a in _run(SAMPLES / rule_id / "negative.jsonl")] == []


def test_rule_file_errors_name_file_and_field(tmp_path: Path) -> None:
    good = (Path(load_rules()["CW-PROTO-001"].path)).read_text()
    with pytest.raises(ConfigError, match=r"x\.yaml: field severity"):
        load_rule(tmp_path / "x.yaml", good.replace("severity: medium", "severity: urgent"))
    with pytest.raises(ConfigError, match=r"x\.yaml: missing field\(s\) \['triage'\]"):
        data = yaml.safe_load(good)
        del data["triage"]
        load_rule(tmp_path / "x.yaml", yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="unknown field"):
        load_rule(tmp_path / "x.yaml", good + "\nextra: 1\n")


def test_readme_rule_table_is_generated_from_the_rule_files() -> None:
    from detectors.ruledoc import render

    readme = (SAMPLES.parent.parent / "README.md").read_text()
    assert render(readme) == readme, "README rule table is stale: run python -m detectors.ruledoc"
