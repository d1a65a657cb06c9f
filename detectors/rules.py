"""Rule metadata: one YAML data file per rule under ``detectors/rules/``, loaded into frozen
typed objects and validated at load time with errors that name the file and the field."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from chargewatch.alerts import CATEGORIES
from chargewatch.errors import ConfigError

# libyaml's loader when PyYAML was built with it (the wheels are): the same documents, ten times
# faster, which matters because every command that runs detectors loads all rule files at start.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SEVERITIES = {"low": 1, "medium": 2, "high": 3, "critical": 4}
# Risk-score band of each severity (Elastic's convention: 21 / 47 / 73 / 99 as centres).
RISK_BANDS = {1: (1, 39), 2: (40, 69), 3: (70, 89), 4: (90, 100)}
OCPP_VERSIONS = ("1.6", "2.0.1", "2.1")
REQUIRED = ("id", "name", "category", "severity", "risk_score", "techniques", "description",
            "false_positives", "triage", "versions", "enabled", "parameters")
# collapse_s: storm window (findings of the rule per key within it make one alert);
# kind: "alert" for things to act on, "event" for facts worth recording (ECS event.kind).
OPTIONAL: dict[str, Any] = {"collapse_s": 300, "kind": "alert"}
KINDS = ("alert", "event")


@dataclass(frozen=True)
class Parameter:
    """A tunable parameter of a rule."""

    name: str
    default: Any
    description: str


@dataclass(frozen=True)
class Rule:
    """The metadata of one detection rule."""

    id: str
    name: str
    category: str
    severity: int
    risk_score: int
    techniques: tuple[str, ...]
    description: str
    false_positives: tuple[str, ...]
    triage: str
    versions: tuple[str, ...]
    enabled: bool
    parameters: tuple[Parameter, ...]
    path: str
    collapse_s: int = 300
    kind: str = "alert"

    def param(self, name: str) -> Any:
        """Default value of a parameter (operator overrides come with the policy config)."""
        for p in self.parameters:
            if p.name == name:
                return p.default
        raise ConfigError(f"{self.path}: rule {self.id} has no parameter {name!r}")


def load_rule(path: Path, text: str) -> Rule:
    """Parse and validate one rule file."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a rule file must be a mapping")
    missing = [k for k in REQUIRED if k not in data]
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise ConfigError(f"{path}: missing field(s) {missing}, unknown field(s) {unknown}")
    severity = SEVERITIES.get(str(data["severity"]))
    if severity is None:
        raise ConfigError(f"{path}: field severity must be one of {list(SEVERITIES)}")
    if data["category"] not in CATEGORIES:
        raise ConfigError(f"{path}: field category must be one of {list(CATEGORIES)}")
    if not isinstance(data["risk_score"], int) or not 0 <= data["risk_score"] <= 100:
        raise ConfigError(f"{path}: field risk_score must be an integer 0-100")
    bad_versions = [v for v in data["versions"] if v not in OCPP_VERSIONS]
    if bad_versions:
        raise ConfigError(f"{path}: field versions has unknown OCPP version(s) {bad_versions}")
    return Rule(
        id=str(data["id"]), name=str(data["name"]), category=data["category"], severity=severity,
        risk_score=data["risk_score"], techniques=tuple(data["techniques"]),
        description=str(data["description"]).strip(), false_positives=tuple(data["false_positives"]),
        triage=str(data["triage"]).strip(), versions=tuple(data["versions"]), enabled=bool(data["enabled"]),
        parameters=_parameters(path, data["parameters"]), path=str(path),
        collapse_s=_collapse(path, data.get("collapse_s", OPTIONAL["collapse_s"])),
        kind=_kind(path, data.get("kind", OPTIONAL["kind"]), severity),
    )


def _kind(path: Path, value: Any, severity: int) -> str:
    if value not in KINDS:
        raise ConfigError(f"{path}: field kind must be one of {list(KINDS)}")
    if value == "event" and severity != SEVERITIES["low"]:
        raise ConfigError(f"{path}: field kind 'event' needs severity low (events inform, alerts demand action)")
    return str(value)


def _collapse(path: Path, value: Any) -> int:
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"{path}: field collapse_s must be a non-negative integer (seconds; 0 = never collapse)")
    return value


def _parameters(path: Path, raw: Any) -> tuple[Parameter, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: field parameters must be a mapping of name -> {{default, description}}")
    out = []
    for name, spec in raw.items():
        if not isinstance(spec, dict) or set(spec) != {"default", "description"}:
            raise ConfigError(f"{path}: parameter {name!r} needs exactly 'default' and 'description'")
        out.append(Parameter(str(name), spec["default"], str(spec["description"])))
    return tuple(out)


@cache
def load_rules() -> dict[str, Rule]:
    """Every shipped rule, by id (loaded once, on first use)."""
    folder = resources.files("detectors").joinpath("rules")
    rules: dict[str, Rule] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            rule = load_rule(Path(str(entry)), entry.read_text())
            if rule.id in rules:
                raise ConfigError(f"{entry}: duplicate rule id {rule.id} (also in {rules[rule.id].path})")
            rules[rule.id] = rule
    return rules


def apply_overrides(rules: dict[str, Rule], overrides: dict[str, Any], where: str) -> dict[str, Rule]:
    """Rules with the operator's on/off switches and parameter values applied.

    overrides maps rule id -> an object with ``enabled`` (bool or None) and ``parameters``.
    """
    out = dict(rules)
    for rule_id, override in overrides.items():
        rule = rules.get(rule_id)
        if rule is None:
            raise ConfigError(f"{where}: rules.{rule_id}: no such rule (known: {', '.join(sorted(rules))})")
        known = {p.name for p in rule.parameters}
        unknown = sorted(set(override.parameters) - known)
        if unknown:
            raise ConfigError(f"{where}: rules.{rule_id}.parameters: unknown {unknown}; known: {sorted(known)}")
        params = tuple(replace(p, default=override.parameters.get(p.name, p.default)) for p in rule.parameters)
        enabled = rule.enabled if override.enabled is None else override.enabled
        out[rule_id] = replace(rule, enabled=enabled, parameters=params)
    return out
