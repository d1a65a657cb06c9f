"""CW-CMD-007: charging profiles that exceed the connector's rating or make limits oscillate.

A SetChargingProfile whose limit is above what the station is rated for (``policy.max_power_w``)
asks the hardware to overload itself or its grid connection; a limit that swings up and down
many times within minutes is the signature of an attacker manipulating load (grid stability
attacks on fleets of chargers). Limits in W are compared as they are; limits in A are
converted with ``nominal_voltage_v`` x numberPhases (3 when the period omits it, as the spec
defaults), per phase as OCPP defines ampere limits.
"""

from __future__ import annotations

from typing import Any

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.policy import Policy
from detectors.rules import Rule

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CALL = int(MessageType.CALL)
_CSMS_TO_CP = Direction.CSMS_TO_CP

PROFILE_ABUSE = "CW-CMD-007"
MAX_TARGETS = 16
DEFAULT_PHASES = 3


class ChargingProfileDetector:
    """CW-CMD-007."""

    name: str = "charging_profiles"
    rule_ids: tuple[str, ...] = (PROFILE_ABUSE,)
    actions: frozenset[str] | None = frozenset({"SetChargingProfile"})

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        rule = rules[PROFILE_ABUSE]
        self.policy = policy
        self.voltage = float(rule.param("nominal_voltage_v"))
        self.window = float(rule.param("oscillation_window_s"))
        self.reversals = int(rule.param("oscillation_reversals"))
        self.min_swing = float(rule.param("oscillation_min_swing"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if (msg.action != "SetChargingProfile" or msg.message_type != _CALL
                or msg.direction is not _CSMS_TO_CP or not isinstance(msg.payload, dict)):
            return []
        target, profile, schedules = _profile(msg.ocpp_version, msg.payload)
        periods = [p for s in schedules for p in self._periods(s)]
        if not periods:
            return []
        found = self._rating(msg, target, periods)
        if self.reversals > 0:
            found += self._oscillation(msg, state, target, str(profile.get("chargingProfilePurpose")),
                                       periods[0][0])
        return found

    def _periods(self, schedule: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
        """(watts, period) of each period of a schedule with a numeric limit."""
        unit = schedule.get("chargingRateUnit")
        out = []
        for period in schedule.get("chargingSchedulePeriod") or ():
            if not isinstance(period, dict):
                continue
            limit = period.get("limit")
            if not isinstance(limit, int | float) or isinstance(limit, bool):
                continue
            if unit == "W":
                out.append((float(limit), period))
            elif unit == "A":
                phases = period.get("numberPhases")
                phases = phases if isinstance(phases, int) and phases > 0 else DEFAULT_PHASES
                out.append((float(limit) * self.voltage * phases, period))
        return out

    def _rating(self, msg: OcppMessage, target: Any, periods: list[tuple[float, dict[str, Any]]]) -> list[Finding]:
        rating = self.policy.max_power_w(msg.charge_point_id)
        watts, period = max(periods, key=lambda p: p[0])
        if watts <= rating:
            return []
        return [Finding(PROFILE_ABUSE,
                        f"SetChargingProfile allows {watts / 1000:.1f} kW on {target}, above the "
                        f"{rating / 1000:.1f} kW rating",
                        {"check": "rating", "target": target, "limit_w": round(watts, 1), "rating_w": rating,
                         "period": period, "nominal_voltage_v": self.voltage, "payload": msg.payload})]

    def _oscillation(self, msg: OcppMessage, state: State, target: str, purpose: str,
                     watts: float) -> list[Finding]:
        """Count direction reversals of the limit (each a swing of at least min_swing) within the window."""
        key = f"{target}|{purpose}"
        targets: dict[str, list[Any]] = state.setdefault("targets", {})
        track = targets.pop(key, None) or [None, 0, []]  # [last watts, last direction, [(ts, watts)...]]
        targets[key] = track
        while len(targets) > MAX_TARGETS:
            del targets[next(iter(targets))]
        last, direction, reversals = track
        track[0] = watts
        if last is None or max(last, watts) <= 0 or abs(watts - last) / max(last, watts) < self.min_swing:
            return []
        new_direction = 1 if watts > last else -1
        track[1] = new_direction
        if direction in (0, new_direction):
            return []
        reversals.append((msg.ts, round(watts, 1)))
        while reversals and reversals[0][0] < msg.ts - self.window:
            reversals.pop(0)
        if len(reversals) < self.reversals:
            return []
        history = list(reversals)
        reversals.clear()
        return [Finding(PROFILE_ABUSE,
                        f"{purpose} limit on {target} reversed direction {len(history)} times within "
                        f"{self.window:.0f}s (now {watts / 1000:.1f} kW)",
                        {"check": "oscillation", "target": target, "purpose": purpose, "reversals": history,
                         "window_s": self.window, "min_swing": self.min_swing, "limit_w": round(watts, 1)})]


def _profile(version: str | None, body: dict[str, Any]) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """(target, profile, schedules): 1.6 connectorId + one schedule; 2.x evseId + a list of schedules."""
    if version == "1.6":
        profile = body.get("csChargingProfiles")
        profile = profile if isinstance(profile, dict) else {}
        schedule = profile.get("chargingSchedule")
        return f"connector {body.get('connectorId')}", profile, [schedule] if isinstance(schedule, dict) else []
    profile = body.get("chargingProfile")
    profile = profile if isinstance(profile, dict) else {}
    schedules = profile.get("chargingSchedule")
    return (f"EVSE {body.get('evseId')}", profile,
            [s for s in schedules if isinstance(s, dict)] if isinstance(schedules, list) else [])
