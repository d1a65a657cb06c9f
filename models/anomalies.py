"""Labelled anomalies for the synthetic fleet: the abnormal transaction patterns of the
detection issue, each a distortion of benign sessions or a burst of new ones.

Distorted benign sessions (the driver, time and place stay plausible):

- ``energy_over_rating``: the meter reports 1.3-3x the connector's rating worth of energy
  (register increments inflated; power samples honest).
- ``meter_backwards_jump``: mid-charge the register falls by more than the session delivered
  so far (half) or jumps 20-80 kWh ahead (half).
- ``sample_gap``: 2-6 h without meter values while the car charges (an AC session, stretched if
  it was shorter).
- ``plug_blocking``: the car stays 20-48 h after charging.
- ``impossible_duration``: the stop is stamped before the start (half) or 3-10 days after it
  (half), while the capture shows an ordinary session.

New sessions, several per incident, all with one token:

- ``zero_energy_burst``: 4-8 sessions of 30-150 s and at most 15 Wh within an hour at the
  charge points of one or two sites (a stolen credential being tested, connectors occupied).
- ``token_spread_odd_hours``: 4-7 ordinary sessions at distinct charge points of at least two
  sites, starting one after another between 00:30 and about 06:00 (a cloned card).
- ``remote_start_abuse``: 3-6 remote starts for one customer's token at distinct charge points
  within a few hours, each stopped remotely after 15-60 minutes (someone with central-system
  access charging on another's account or blocking connectors).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.fleet import ChargePoint, Fleet
from models.synthetic_ocpp import Plan, charge_time_s, energy_curve

KINDS: tuple[str, ...] = (
    "energy_over_rating", "zero_energy_burst", "impossible_duration", "token_spread_odd_hours",
    "meter_backwards_jump", "sample_gap", "plug_blocking", "remote_start_abuse",
)
BURST_SIZE = {"zero_energy_burst": (4, 8), "token_spread_odd_hours": (4, 7), "remote_start_abuse": (3, 6)}
HOUR = 3600.0
PlanFn = Callable[[ChargePoint, float], Plan]


def inject(rng: np.random.Generator, fleet: Fleet, benign: list[Plan], kinds: list[str], sessions: int,
           earliest: float, latest: float, new_plan: PlanFn) -> list[Plan]:
    """benign plus about ``sessions`` anomalous sessions spread evenly over kinds (the distorted
    ones are taken from benign, the bursts are added); bursts start between earliest and latest."""
    plans = list(benign)
    if not kinds or sessions <= 0:
        return plans
    share = sessions / len(kinds)
    latest = max(latest, earliest + 86_400.0)
    for kind in kinds:
        if kind in BURST_SIZE:
            low, high = BURST_SIZE[kind]
            for _ in range(max(round(share / ((low + high) / 2)), 1)):
                size = int(rng.integers(low, high + 1))
                plans += _BURSTS[kind](rng, fleet, float(rng.uniform(earliest, latest)), size, new_plan)
        else:
            for plan in _pick(rng, plans, max(round(share), 1), kind):
                _DISTORT[kind](rng, plan)
                plan.kind = kind
    return plans


def _pick(rng: np.random.Generator, plans: list[Plan], count: int, kind: str) -> list[Plan]:
    """count benign sessions that can carry the distortion (ones that charge; AC for gaps)."""
    eligible = [i for i, p in enumerate(plans)
                if not p.kind and p.need_wh > 1000.0 and (kind != "sample_gap" or p.battery is None)]
    chosen = rng.choice(len(eligible), size=min(count, len(eligible)), replace=False)
    return [plans[eligible[int(i)]] for i in sorted(chosen.tolist())]


# --- distortions of a benign session ------------------------------------------------------

def _over_rating(rng: np.random.Generator, plan: Plan) -> None:
    plan.energy_scale = max(plan.cp.charger.rated_w * rng.uniform(1.3, 3.0) / plan.power_w, 1.5)


def _backwards_jump(rng: np.random.Generator, plan: Plan) -> None:
    at = rng.uniform(0.3, 0.7) * min(charge_time_s(plan), plan.dwell_s)
    if rng.random() < 0.5:
        so_far = float(energy_curve(plan, np.array([at]))[0][0])
        plan.step = (at, -(rng.uniform(0.5, 1.0) * so_far + rng.uniform(500.0, 5000.0)))
    else:
        plan.step = (at, rng.uniform(20e3, 80e3))


def _sample_gap(rng: np.random.Generator, plan: Plan) -> None:
    length = rng.uniform(2.0, 6.0) * HOUR
    plan.dwell_s = max(plan.dwell_s, length + rng.uniform(1.0, 3.0) * HOUR)
    begin = rng.uniform(600.0, plan.dwell_s - length - 600.0)
    plan.gap = (begin, begin + length)


def _plug_blocking(rng: np.random.Generator, plan: Plan) -> None:
    plan.dwell_s = charge_time_s(plan) + rng.uniform(20.0, 48.0) * HOUR


def _impossible_duration(rng: np.random.Generator, plan: Plan) -> None:
    if rng.random() < 0.5:
        plan.stop_clock_s = -(plan.dwell_s + rng.uniform(600.0, 7200.0))
    else:
        plan.stop_clock_s = rng.uniform(3.0, 10.0) * 86_400.0


_DISTORT: dict[str, Callable[[np.random.Generator, Plan], None]] = {
    "energy_over_rating": _over_rating, "meter_backwards_jump": _backwards_jump, "sample_gap": _sample_gap,
    "plug_blocking": _plug_blocking, "impossible_duration": _impossible_duration,
}


# --- bursts of new sessions ---------------------------------------------------------------

def _distinct(rng: np.random.Generator, fleet: Fleet, size: int, min_sites: int) -> list[ChargePoint]:
    """size charge points, all different, from at least min_sites sites (when the fleet has them)."""
    cps = list(fleet.charge_points)
    for _ in range(100):
        chosen = [cps[int(i)] for i in rng.choice(len(cps), size=min(size, len(cps)), replace=False)]
        if len({cp.site for cp in chosen}) >= min(min_sites, len(fleet.sites)):
            return chosen
    return chosen


def _zero_burst(rng: np.random.Generator, fleet: Fleet, at: float, size: int, new_plan: PlanFn) -> list[Plan]:
    sites = [str(s) for s in rng.choice(sorted(fleet.sites), size=int(rng.integers(1, 3)), replace=False)]
    cps = [cp for site in sites for cp in fleet.at_site(site)]
    token = fleet.public_tokens[int(rng.integers(len(fleet.public_tokens)))]
    out = []
    for _ in range(size):
        plan = new_plan(cps[int(rng.integers(len(cps)))], at)
        plan.token, plan.battery, plan.remote_start, plan.stop_reason = token, None, False, "Local"
        plan.power_w, plan.need_wh, plan.dwell_s = 7_000.0, rng.uniform(0.0, 15.0), rng.uniform(30.0, 150.0)
        plan.kind = "zero_energy_burst"
        out.append(plan)
        at += rng.uniform(3.0, 10.0) * 60.0
    return out


def _token_spread(rng: np.random.Generator, fleet: Fleet, at: float, size: int, new_plan: PlanFn) -> list[Plan]:
    night = (at // 86_400.0) * 86_400.0 + rng.uniform(0.5, 3.5) * HOUR
    token = fleet.public_tokens[int(rng.integers(len(fleet.public_tokens)))]
    out = []
    for cp in _distinct(rng, fleet, size, 2):
        plan = new_plan(cp, night)
        plan.token, plan.remote_start, plan.kind = token, False, "token_spread_odd_hours"
        if plan.need_wh < 1000.0:  # a cloned card is used to charge
            plan.need_wh, plan.dwell_s = 10_000.0, max(plan.dwell_s, 3600.0)
        out.append(plan)
        night += rng.uniform(5.0, 25.0) * 60.0
    return out


def _remote_abuse(rng: np.random.Generator, fleet: Fleet, at: float, size: int, new_plan: PlanFn) -> list[Plan]:
    pools = [*fleet.own_tokens.values(), fleet.public_tokens]
    pool = pools[int(rng.integers(len(pools)))]
    token = pool[int(rng.integers(len(pool)))]
    out = []
    for cp in _distinct(rng, fleet, size, 1):
        plan = new_plan(cp, at)
        plan.token, plan.remote_start, plan.stop_reason, plan.kind = token, True, "Remote", "remote_start_abuse"
        plan.dwell_s = rng.uniform(15.0, 60.0) * 60.0
        out.append(plan)
        at += rng.uniform(10.0, 40.0) * 60.0
    return out


_BURSTS: dict[str, Callable[[np.random.Generator, Fleet, float, int, PlanFn], list[Plan]]] = {
    "zero_energy_burst": _zero_burst, "token_spread_odd_hours": _token_spread, "remote_start_abuse": _remote_abuse,
}
