"""A seeded synthetic fleet: realistic charging sessions as OCPP 1.6 and 2.0.1 records, with
labelled anomalies, for training the transaction models and testing them and the rules.

What it assumes (the sources and figures behind each choice are in ``models/README.md``):

- Places: office (commuters arriving around 08:30 and staying a working day), residential
  (arrivals around 18:30, cars leaving the next morning), retail (noon and evening peaks, stays
  of about an hour), highway (DC, daytime with a thin night tail, stays as long as the charge
  plus a few minutes) and depot (a company's vans plugged in around 18:00 until 06:30, each
  with its own card and parking spot). Times are UTC, standing in for the sites' local time.
- Drivers: regulars at office and residential sites, a fleet-wide public pool at retail and
  highway sites; nobody charges at two places at once or reaches another site within 3 hours.
- Chargers: AC 7.4, 11 and 22 kW (the vehicle's on-board charger, 3.7 to 22 kW, limits the
  power) and DC 50 and 150 kW (vehicles accept 50 to 200 kW; constant power up to a knee state
  of charge of 45-65 %, then a linear taper to 25-40 % of the plateau at 100 %).
- Energy: AC sessions take a log-normal amount (median 8-25 kWh by site type) if they stay
  long enough; DC sessions charge from 8-40 % to 70-92 % of a 40-100 kWh battery. 3 % of the
  sessions deliver nothing (a car that does not charge), 15 % are started from an app (remote
  start), 8 % are stopped remotely.
- Meters report every 10-15 minutes on AC and every 30-120 s on DC, in Wh or kWh (2.x: also Wh
  with multiplier 3), power as W, kW or three per-phase values; 1 % of meter values are lost.
- Two connectors per charge point; a driver arriving at a busy charge point waits for the next
  free connector.

Anomalies (:data:`KINDS`), each session labelled with its kind, see :mod:`models.anomalies`.
Deterministic for a seed: one ``numpy`` generator drives everything, in a fixed order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from tqdm import tqdm

from chargewatch.model import Record
from detectors.policy import Policy
from models.anomalies import KINDS, inject
from models.features import paused_gc, sessions_frame
from models.fleet import ChargePoint, Fleet, build_fleet
from models.fleet import token as fleet_token
from models.synthetic_ocpp import Plan, Renderer, charge_time_s

T0 = 1_793_577_600.0  # 2026-11-02T00:00:00Z, a Monday
GAP_S = 120.0  # a connector is free again this long after a car leaves
TRAVEL_S = 3 * 3600.0  # a driver reaches another site at least this long after leaving one
NO_CHARGE, REMOTE_START = 0.03, 0.15
STOP_REASONS = (("EVDisconnected", 0.55), ("Local", 0.37), ("Remote", 0.08))
AC_VEHICLES_W = (3_700.0, 7_400.0, 11_000.0, 11_000.0, 22_000.0)
DC_VEHICLES_W = (50_000.0, 100_000.0, 150_000.0, 200_000.0)


@dataclass(frozen=True)
class SyntheticFleet:
    """Records of a synthetic fleet in capture order, and what they contain."""

    records: list[Record]
    labels: dict[tuple[str, str], str]  # (charge point, transaction id) -> anomaly kind
    policy: Policy
    site_types: dict[str, str]  # site -> site type
    plans: list[Plan]
    message_sessions: dict[str, tuple[str, str]]  # message id -> (charge point, transaction id)


def generate(sessions: int = 10_000, seed: int = 0, anomaly_rate: float = 0.03, sites_per_type: int = 2,
             kinds: Iterable[str] = KINDS, start: float = T0, progress: bool = False) -> SyntheticFleet:
    """About ``sessions`` sessions (exactly, unless anomalies need more), ``anomaly_rate`` of
    them anomalous, spread evenly over ``kinds``."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown anomaly kind(s) {unknown}; known: {', '.join(KINDS)}")
    with paused_gc():
        return _generate(sessions, seed, anomaly_rate, sites_per_type, list(kinds), start, progress)


def _generate(sessions: int, seed: int, anomaly_rate: float, sites_per_type: int, kinds: list[str], start: float,
              progress: bool) -> SyntheticFleet:
    rng = np.random.default_rng(seed)
    fleet = build_fleet(rng, sites_per_type)
    wanted = round(sessions * anomaly_rate)
    drivers = Drivers(rng, fleet)
    benign = _benign(rng, drivers, sessions, start)
    plans = inject(rng, fleet, benign, kinds, wanted, start + 86_400.0, benign[-1].arrival - 86_400.0,
                   lambda cp, at: plan_session(rng, drivers, cp, at))
    _schedule(plans)
    renderer = Renderer(rng)
    records: list[Record] = []
    for cp in fleet.charge_points:
        records += renderer.boot(cp, start - 60.0)
    ordered = sorted(plans, key=lambda p: (p.arrival, p.cp.id, p.connector))
    for plan in tqdm(ordered, desc="synthetic sessions", unit="session", disable=not progress, leave=False):
        records += renderer.session(plan)
    records.sort(key=lambda r: r.ts)
    labels = {(p.cp.id, p.tx_id): p.kind for p in plans if p.kind}
    site_types = {name: kind for name, (kind, _, _) in fleet.sites.items()}
    sessions_of = {mid: (plan.cp.id, plan.tx_id) for mid, plan in renderer.message_plans.items()}
    return SyntheticFleet(records, labels, fleet.policy(), site_types, ordered, sessions_of)


def labelled_sessions(fleet: SyntheticFleet) -> pd.DataFrame:
    """The session rows of a synthetic fleet with ``site_type``, ``anomaly_kind`` ("" = benign)
    and ``label`` (1 = anomalous)."""
    frame = sessions_frame(fleet.records, fleet.policy)
    keys = zip(frame["charge_point_id"], frame["transaction_id"], strict=True)
    frame["site_type"] = frame["site"].map(fleet.site_types).fillna("")
    frame["anomaly_kind"] = [fleet.labels.get(key, "") for key in keys]
    frame["label"] = (frame["anomaly_kind"] != "").astype("int64")
    return frame


class Drivers:
    """Who charges: a token per session such that no driver charges at two places at once or
    reaches another site less than ``TRAVEL_S`` after leaving one. Office and residential sites
    have their regulars (90 % of their sessions), retail and highway sites draw from the fleet's
    public pool, and each depot van has its own card and parking spot (its charge point)."""

    def __init__(self, rng: np.random.Generator, fleet: Fleet) -> None:
        self.rng, self.fleet = rng, fleet
        self.busy: dict[str, tuple[str, float]] = {}  # token -> (site, time its last session ends)
        self.cards = {cp.id: cards[i % len(cards)] for site, cards in fleet.fleet_cards.items()
                      for i, cp in enumerate(fleet.at_site(site))}

    def pick(self, cp: ChargePoint, arrival: float, dwell_s: float) -> str:
        token = self.cards.get(cp.id)
        if token is None:
            pool = self.fleet.public_tokens
            if cp.site_type.tokens == "own" and self.rng.random() < 0.9:
                pool = self.fleet.own_tokens[cp.site]
            for _ in range(20):
                candidate = pool[int(self.rng.integers(len(pool)))]
                site, until = self.busy.get(candidate, (cp.site, -math.inf))
                if arrival >= until + (0.0 if site == cp.site else TRAVEL_S):
                    token = candidate
                    break
            else:
                token = fleet_token(self.rng)  # everyone is busy: a newcomer
        self.busy[token] = (cp.site, arrival + dwell_s)
        return token


def plan_session(rng: np.random.Generator, drivers: Drivers, cp: ChargePoint, arrival: float) -> Plan:
    """A benign session of a driver arriving at cp at arrival (epoch seconds)."""
    site, charger = cp.site_type, cp.charger
    reason = STOP_REASONS[int(rng.choice(len(STOP_REASONS), p=[w for _, w in STOP_REASONS]))][0]
    plan = Plan(cp, arrival, 0.0, "", 0.0, 0.0, remote_start=bool(rng.random() < REMOTE_START), stop_reason=reason)
    if charger.dc:
        cap, soc0, target = rng.uniform(40e3, 100e3), rng.uniform(0.08, 0.4), rng.uniform(0.7, 0.92)
        plan.battery = (cap, soc0, target, rng.uniform(0.45, 0.65), rng.uniform(0.25, 0.4))
        plan.power_w = min(charger.rated_w, float(rng.choice(DC_VEHICLES_W))) * rng.uniform(0.85, 0.98)
        plan.need_wh = cap * (target - soc0)
        plan.dwell_s = charge_time_s(plan) + rng.lognormal(math.log(300.0), 0.8)
    else:
        plan.power_w = min(charger.rated_w, float(rng.choice(AC_VEHICLES_W))) * rng.uniform(0.9, 0.98)
        plan.need_wh = min(rng.lognormal(math.log(site.energy_median_kwh * 1000.0), site.energy_sigma), 80e3)
        hour = datetime.fromtimestamp(arrival, UTC).hour
        if site.departure_hour is not None and hour >= 14:
            leave = math.floor(arrival / 86_400.0 + 1) * 86_400.0 + rng.normal(site.departure_hour, 1.0) * 3600.0
            plan.dwell_s = leave - arrival
        else:
            plan.dwell_s = rng.lognormal(math.log(site.dwell_median_h * 3600.0), site.dwell_sigma)
    if rng.random() < NO_CHARGE:  # plugged in, nothing flows (car full, fault, wrong settings)
        plan.battery, plan.need_wh, plan.dwell_s = None, rng.uniform(0.0, 30.0), rng.uniform(60.0, 900.0)
    plan.dwell_s = max(plan.dwell_s, 120.0)
    plan.token = drivers.pick(cp, arrival, plan.dwell_s)
    return plan


def _benign(rng: np.random.Generator, drivers: Drivers, sessions: int, start: float) -> list[Plan]:
    """The first ``sessions`` benign sessions of the fleet (by arrival), from day-by-day demand."""
    fleet = drivers.fleet
    weekday_start = datetime.fromtimestamp(start, UTC).weekday()
    per_day = sum(cp.site_type.daily_sessions * (5 + 2 * cp.site_type.weekend_factor) / 7
                  for cp in fleet.charge_points)
    days = max(math.ceil(sessions / per_day * 1.1) + 2, 3)
    weekend = ((weekday_start + np.arange(days)) % 7) >= 5
    arrivals: list[tuple[float, int]] = []
    for index, cp in enumerate(fleet.charge_points):
        site = cp.site_type
        counts = rng.poisson(site.daily_sessions * np.where(weekend, site.weekend_factor, 1.0))
        day = np.repeat(np.arange(days), counts)
        weights = np.array([w for w, _, _ in site.arrivals])
        component = rng.choice(len(weights), size=len(day), p=weights / weights.sum())
        means = np.array([m for _, m, _ in site.arrivals])[component]
        sds = np.array([s for _, _, s in site.arrivals])[component]
        hours = np.mod(rng.normal(means, sds), 24.0)
        arrivals += [(start + d * 86_400.0 + h * 3600.0, index) for d, h in zip(day.tolist(), hours.tolist(),
                                                                                 strict=True)]
    arrivals.sort()
    return [plan_session(rng, drivers, fleet.charge_points[index], at) for at, index in arrivals[:sessions]]


def _schedule(plans: list[Plan]) -> None:
    """Give every session a connector: anomalies first (their timing is the point), then the
    benign ones in arrival order, each at the earliest time a connector is free."""
    busy: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for plan in sorted(plans, key=lambda p: (p.kind == "", p.arrival)):
        best: tuple[float, int] | None = None
        for connector in range(1, plan.cp.connectors + 1):
            at = _earliest(busy.setdefault((plan.cp.id, connector), []), plan.arrival, plan.dwell_s)
            if best is None or at < best[0]:
                best = (at, connector)
        assert best is not None  # every charge point has a connector
        plan.arrival, plan.connector = best
        bisect.insort(busy[(plan.cp.id, plan.connector)], (plan.arrival, plan.arrival + plan.dwell_s))


def _earliest(busy: list[tuple[float, float]], at: float, length: float) -> float:
    """The earliest start at or after ``at`` of a stay of ``length`` between the busy intervals."""
    i = bisect.bisect_left(busy, (at, at))
    if i > 0 and busy[i - 1][1] + GAP_S > at:
        at = busy[i - 1][1] + GAP_S
    while i < len(busy) and busy[i][0] < at + length + GAP_S:
        at = max(at, busy[i][1] + GAP_S)
        i += 1
    return at
