"""Acceptance: one live capture of real OCPP peers, every detection family attacked, every attack found.

A session fixture records :func:`tests.attacks.attack_fleet` (real ``ocpp`` library central
systems and 1.6/2.0.1 charge points on loopback, some compressed, benign stations alongside)
into a pcap under the session's tmp dir, writes the manifest of injected attacks next to it
(``attacks.manifest.json``: attack, category, expected rule, charge points, message ids, times),
and runs the embedded pipeline over it with ``tests/data/scenario_policy.toml``. The test then
checks every injection against the alerts (rule id and charge point, or the message id for
fleet-wide alerts) and reports recall per category in the assertion message and in the
terminal summary. An expectation naming a rule that is not in the rule set, or still pending
(``CW-<FAMILY>-*``), fails with a clear message. Live capture needs root: without it this FAILS.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from chargewatch.alerts import Alert
from detectors.policy import load_policy
from detectors.rules import Rule, apply_overrides, load_rules
from tests.attacks import ATTACKS, CATEGORIES, Expectation
from tests.conftest import AttackCapture
from tests.livefleet import POLICY, Injection

pytestmark = pytest.mark.root


def test_attack_capture_decodes_completely(attack_capture: AttackCapture) -> None:
    result, frames = attack_capture.result, attack_capture.run.frames
    assert not result.unreadable, result.unreadable
    assert not result.dead_letters, [d.to_dict() for d in result.dead_letters]
    assert result.stats.error_total == 0, result.stats.errors
    assert result.stats.messages == len(frames), f"decoded {result.stats.messages} messages, peers sent {len(frames)}"
    versions = {e.ocpp_version for e in attack_capture.upgrades}
    compressed = [e.charge_point_id for e in attack_capture.upgrades if "permessage-deflate" in (e.extensions or "")]
    assert versions == {"1.6", "2.0.1"} and compressed, (versions, compressed)


def test_every_injected_attack_is_found(attack_capture: AttackCapture, acceptance_figures: list[str]) -> None:
    rules = apply_overrides(load_rules(), load_policy(POLICY).rules, str(POLICY))
    injections: dict[str, list[Injection]] = defaultdict(list)
    for injection in attack_capture.run.injections:
        injections[injection.attack].append(injection)
    problems: dict[str, str] = {}
    for attack, expectation in ATTACKS.items():
        problem = _judge(expectation, injections.get(attack, []), attack_capture.result.alerts, rules)
        if problem:
            problems[attack] = problem
    table = _recall_table(problems)
    expected = {(ATTACKS[i.attack].rule, i.charge_point) for i in attack_capture.run.injections}
    other = sorted(f"{a.rule_id}@{a.charge_point_id}" for a in attack_capture.result.alerts
                   if (a.rule_id, a.charge_point_id) not in expected)
    acceptance_figures += [f"attack suite ({len(ATTACKS)} attacks, {len(attack_capture.run.frames)} messages, "
                           f"recorded in {attack_capture.run.seconds:.1f}s; manifest {attack_capture.manifest}):",
                           *table, *(f"  FAILED {name}: {why}" for name, why in problems.items()),
                           f"  side effects (alerts no injection expected): {', '.join(other) or 'none'}"]
    assert not problems, "\n".join(["injected attacks not found:", *(f"- {n}: {w}" for n, w in problems.items()),
                                    "recall per category:", *table])


def _judge(expectation: Expectation, done: list[Injection], alerts: list[Alert], rules: dict[str, Rule]) -> str:
    """Why the expectation fails ("" when its attack was found)."""
    if not done:
        return "the scenario never injected this attack (see tests/attacks.py)"
    cps = {i.charge_point for i in done}
    ids = {i.message_id for i in done if i.message_id}
    there = sorted({a.rule_id for a in alerts if a.charge_point_id in cps})
    family = expectation.rule.rsplit("-", 1)[0]
    if expectation.pending:
        present = sorted(r for r in rules if r.startswith(family + "-"))
        return (f"PENDING: no {family} rule chosen for '{expectation.what}' (rules of the family now: {present}; "
                f"alerts at {sorted(cps)}: {there})")
    rule = rules.get(expectation.rule)
    if rule is None:
        return f"expected rule {expectation.rule} does not exist in detectors/rules ({len(rules)} rules loaded)"
    if not rule.enabled:
        return f"expected rule {expectation.rule} is disabled (by default or by {POLICY.name})"
    for alert in alerts:
        latest = (alert.latest or {}).get("message_id")
        if alert.rule_id == rule.id and (alert.charge_point_id in cps or alert.message_id in ids or latest in ids):
            return ""
    return f"{rule.id} not raised for '{expectation.what}' at {sorted(cps)}; alerts there: {there}"


def _recall_table(problems: dict[str, str]) -> list[str]:
    lines = []
    for category in CATEGORIES:
        names = [n for n, e in ATTACKS.items() if e.category == category]
        found = sum(n not in problems for n in names)
        lines.append(f"  recall {category:<22} {found:>2}/{len(names):<2} ({100.0 * found / len(names):5.1f}%)")
    found = len(ATTACKS) - len(problems)
    lines.append(f"  recall {'all':<22} {found:>2}/{len(ATTACKS):<2} ({100.0 * found / len(ATTACKS):5.1f}%)")
    return lines


def test_manifest_covers_every_family(attack_capture: AttackCapture) -> None:
    entries = json.loads(attack_capture.manifest.read_text(encoding="utf-8"))
    assert {e["category"] for e in entries} == set(CATEGORIES)
    missing = [e["attack"] for e in entries if not e["charge_points"]]
    assert not missing, f"attacks in the manifest that the scenario never injected: {missing}"
    families = {e["rule"].split("-")[1] for e in entries}
    assert families >= {"REPLAY", "CMD", "MITM", "PROTO", "SEC", "TX", "FLEET"}, families
