"""Operator policy: what this fleet considers normal, as configuration rather than code.

Loaded from a TOML file (``[detector] policy_file``). Every field is optional and the
defaults are safe for a fleet nobody has configured: rules that need a policy to judge (an
endpoint allowlist, a maintenance window, a firmware host list) stay quiet until it exists,
while rules that need none (plain-text firmware URLs, replays) work from the start.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chargewatch.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class CsmsEndpoint:
    """A central system allowed to send commands (any field left empty matches anything)."""

    ip: str = ""
    port: int = 0
    cert_sha256: str = ""

    def matches(self, ip: str, port: int, cert_sha256: str | None = None) -> bool:
        return ((not self.ip or self.ip == ip) and (not self.port or self.port == port)
                and (not self.cert_sha256 or (cert_sha256 or "").lower() == self.cert_sha256.lower()))


@dataclass(frozen=True)
class MaintenanceWindow:
    """Weekly window (UTC) in which sensitive commands are expected."""

    days: tuple[str, ...]
    start: str  # HH:MM
    end: str  # HH:MM, may be before start (window crosses midnight)

    def contains(self, ts: float) -> bool:
        moment = datetime.fromtimestamp(ts, UTC)
        minute = moment.hour * 60 + moment.minute
        start, end = _minutes(self.start), _minutes(self.end)
        day = DAYS[moment.weekday()]
        if start <= end:
            return day in self.days and start <= minute < end
        previous = DAYS[(moment.weekday() - 1) % 7]
        return (day in self.days and minute >= start) or (previous in self.days and minute < end)


@dataclass(frozen=True)
class Site:
    """A location charge points belong to."""

    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class ChargePointPolicy:
    """Settings for the charge points whose identity matches pattern (shell-style glob)."""

    pattern: str
    site: str = ""
    security_profile: int = -1  # -1: no expectation
    max_power_w: float = 0.0  # 0: use the fleet default


@dataclass(frozen=True)
class RuleOverride:
    """Operator changes to one rule: on/off and parameter values."""

    enabled: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """The whole operator policy."""

    csms_endpoints: tuple[CsmsEndpoint, ...] = ()
    # SHA-256 fingerprints of central-system certificates a planned rotation may present (CW-MITM-011).
    csms_cert_fingerprints: tuple[str, ...] = ()
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()
    firmware_hosts: tuple[str, ...] = ()
    firmware_schemes: tuple[str, ...] = ("https", "ftps", "sftp")
    expected_security_profile: int = -1
    default_max_power_w: float = 350_000.0
    sites: tuple[Site, ...] = ()
    charge_points: tuple[ChargePointPolicy, ...] = ()
    rules: dict[str, RuleOverride] = field(default_factory=dict)

    def for_charge_point(self, cp_id: str) -> ChargePointPolicy | None:
        """The first charge-point entry whose pattern matches cp_id."""
        for entry in self.charge_points:
            if fnmatch.fnmatchcase(cp_id, entry.pattern):
                return entry
        return None

    def site_of(self, cp_id: str) -> Site | None:
        entry = self.for_charge_point(cp_id)
        if entry is None or not entry.site:
            return None
        return next((s for s in self.sites if s.name == entry.site), None)

    def max_power_w(self, cp_id: str) -> float:
        entry = self.for_charge_point(cp_id)
        return entry.max_power_w if entry and entry.max_power_w > 0 else self.default_max_power_w

    def security_profile(self, cp_id: str) -> int:
        entry = self.for_charge_point(cp_id)
        if entry is not None and entry.security_profile >= 0:
            return entry.security_profile
        return self.expected_security_profile

    def in_maintenance(self, ts: float) -> bool | None:
        """True/False when windows are configured, None when none is (no expectation)."""
        if not self.maintenance_windows:
            return None
        return any(w.contains(ts) for w in self.maintenance_windows)


def distance_km(a: Site, b: Site) -> float:
    """Great-circle distance between two sites."""
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlat, dlon = lat2 - lat1, math.radians(b.longitude - a.longitude)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)


# --- loading ----------------------------------------------------------------------------

_TOP = {"csms_endpoints", "csms_cert_fingerprints", "maintenance_windows", "firmware_hosts", "firmware_schemes",
        "expected_security_profile", "default_max_power_w", "sites", "charge_points", "rules"}


def load_policy(path: Path | None) -> Policy:
    """The policy in path (None: the defaults); errors name the file and the field."""
    if path is None:
        return Policy()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read policy: {exc}") from exc
    return parse_policy(raw, str(path))


def parse_policy(raw: dict[str, Any], where: str) -> Policy:
    """Validate a policy mapping (as read from TOML)."""
    _no_unknown(raw, _TOP, where)
    try:
        return Policy(
            csms_endpoints=tuple(_endpoint(e, f"{where}: csms_endpoints[{i}]")
                                 for i, e in enumerate(raw.get("csms_endpoints", []))),
            csms_cert_fingerprints=tuple(str(f).replace(":", "").strip().lower()
                                         for f in raw.get("csms_cert_fingerprints", [])),
            maintenance_windows=tuple(_window(w, f"{where}: maintenance_windows[{i}]")
                                      for i, w in enumerate(raw.get("maintenance_windows", []))),
            firmware_hosts=tuple(str(h).lower() for h in raw.get("firmware_hosts", [])),
            firmware_schemes=tuple(str(s).lower() for s in raw.get("firmware_schemes", Policy.firmware_schemes)),
            expected_security_profile=int(raw.get("expected_security_profile", -1)),
            default_max_power_w=float(raw.get("default_max_power_w", Policy.default_max_power_w)),
            sites=tuple(_site(s, f"{where}: sites[{i}]") for i, s in enumerate(raw.get("sites", []))),
            charge_points=tuple(_cp(c, f"{where}: charge_points[{i}]")
                                for i, c in enumerate(raw.get("charge_points", []))),
            rules={str(k): _override(v, f"{where}: rules.{k}") for k, v in raw.get("rules", {}).items()},
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _no_unknown(raw: dict[str, Any], known: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _endpoint(raw: dict[str, Any], where: str) -> CsmsEndpoint:
    _no_unknown(raw, {"ip", "port", "cert_sha256"}, where)
    return CsmsEndpoint(str(raw.get("ip", "")), int(raw.get("port", 0)), str(raw.get("cert_sha256", "")))


def _window(raw: dict[str, Any], where: str) -> MaintenanceWindow:
    _no_unknown(raw, {"days", "start", "end"}, where)
    days = tuple(str(d).lower()[:3] for d in raw.get("days", DAYS))
    bad = [d for d in days if d not in DAYS]
    for name in ("start", "end"):
        value = str(raw.get(name, ""))
        if len(value) != 5 or value[2] != ":" or not (value[:2] + value[3:]).isdigit():
            raise ConfigError(f"{where}.{name}: want HH:MM, got {value!r}")
    if bad:
        raise ConfigError(f"{where}.days: unknown day(s) {bad}")
    return MaintenanceWindow(days, str(raw["start"]), str(raw["end"]))


def _site(raw: dict[str, Any], where: str) -> Site:
    _no_unknown(raw, {"name", "latitude", "longitude"}, where)
    return Site(str(raw["name"]), float(raw["latitude"]), float(raw["longitude"]))


def _cp(raw: dict[str, Any], where: str) -> ChargePointPolicy:
    _no_unknown(raw, {"pattern", "site", "security_profile", "max_power_w"}, where)
    return ChargePointPolicy(str(raw["pattern"]), str(raw.get("site", "")), int(raw.get("security_profile", -1)),
                             float(raw.get("max_power_w", 0.0)))


def _override(raw: dict[str, Any], where: str) -> RuleOverride:
    _no_unknown(raw, {"enabled", "parameters"}, where)
    enabled = raw.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled must be true or false")
    return RuleOverride(enabled, dict(raw.get("parameters", {})))
