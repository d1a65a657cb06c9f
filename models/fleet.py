"""The synthetic fleet's hardware and places: charger types, site types, charge points, tokens.

Every number here is an assumption, chosen to match the published figures listed in
``models/README.md`` (section "Synthetic data"); :mod:`models.synthetic` turns the fleet into
charging sessions and OCPP records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.policy import ChargePointPolicy, Policy, Site


@dataclass(frozen=True)
class ChargerType:
    """A connector type: its rating and how often its meter reports during a transaction."""

    name: str
    rated_w: float
    dc: bool
    sample_intervals_s: tuple[float, ...]  # MeterValueSampleInterval / TxUpdatedInterval choices


CHARGERS: dict[str, ChargerType] = {
    "ac7": ChargerType("ac7", 7_400.0, False, (900.0, 900.0, 1800.0)),
    "ac11": ChargerType("ac11", 11_000.0, False, (900.0, 900.0, 1800.0)),
    "ac22": ChargerType("ac22", 22_000.0, False, (600.0, 900.0, 1800.0)),
    "dc50": ChargerType("dc50", 50_000.0, True, (60.0, 120.0, 120.0)),
    "dc150": ChargerType("dc150", 150_000.0, True, (60.0, 120.0, 120.0)),
}


@dataclass(frozen=True)
class SiteType:
    """How a kind of place is used: its chargers, how busy it is, when drivers come and stay.

    ``arrivals``: a mixture of normal distributions of the arrival hour (weight, mean, sd).
    ``departure_hour``: overnight sites, where cars leave the next morning around that hour
    (sd one hour); otherwise the stay is log-normal (``dwell_median_h``, ``dwell_sigma``).
    ``tokens``: "own" (the site's regular drivers), "public" (anyone in the fleet's pool) or
    "fleet" (a company's vans, one card each).
    """

    name: str
    chargers: tuple[tuple[str, float], ...]  # (charger type, share of the site's charge points)
    charge_points: int
    daily_sessions: float  # per charge point on a weekday
    weekend_factor: float
    arrivals: tuple[tuple[float, float, float], ...]
    dwell_median_h: float
    dwell_sigma: float
    departure_hour: float | None
    energy_median_kwh: float  # what an AC driver wants (DC: from the battery, see models.synthetic)
    energy_sigma: float
    tokens: str


SITE_TYPES: dict[str, SiteType] = {
    "office": SiteType("office", (("ac11", 0.5), ("ac22", 0.5)), 8, 1.0, 0.15,
                       ((0.85, 8.6, 1.1), (0.15, 13.0, 2.0)), 7.5, 0.35, None, 12.0, 0.6, "own"),
    "residential": SiteType("residential", (("ac7", 0.5), ("ac11", 0.5)), 6, 0.8, 1.0,
                            ((0.8, 18.5, 1.8), (0.2, 12.0, 2.5)), 3.0, 0.6, 7.5, 15.0, 0.6, "own"),
    "retail": SiteType("retail", (("ac22", 0.6), ("dc50", 0.4)), 6, 3.0, 1.2,
                       ((0.5, 12.0, 2.5), (0.5, 17.5, 1.5)), 1.0, 0.5, None, 8.0, 0.6, "public"),
    "highway": SiteType("highway", (("dc150", 0.7), ("dc50", 0.3)), 6, 5.0, 1.3,
                        ((0.95, 13.5, 4.0), (0.05, 2.5, 1.5)), 0.1, 0.6, None, 30.0, 0.4, "public"),
    "depot": SiteType("depot", (("ac22", 1.0),), 8, 0.9, 0.3,
                      ((1.0, 18.0, 1.0),), 3.0, 0.5, 6.5, 25.0, 0.4, "fleet"),
}
VERSION_SHARE = (("1.6", 0.55), ("2.0.1", 0.45))
# Register units: 1.6 unit (Wh/kWh); 2.x (unit, multiplier): kWh, or Wh with multiplier 3.
REGISTER_UNITS_16 = ("Wh", "kWh")
REGISTER_UNITS_2X = (("Wh", 0), ("kWh", 0), ("Wh", 3))
POWER_UNITS = ("W", "kW", "phases")  # "phases": three per-phase W samples, no total


@dataclass(frozen=True)
class ChargePoint:
    """One charge point of the synthetic fleet and how its firmware reports."""

    id: str
    site: str
    site_type: SiteType
    charger: ChargerType
    version: str
    connectors: int
    sample_interval_s: float
    register_unit: tuple[str, int]
    power_unit: str
    ip: str


@dataclass(frozen=True)
class Fleet:
    """Sites, charge points and the drivers' tokens."""

    charge_points: tuple[ChargePoint, ...]
    sites: dict[str, tuple[str, float, float]]  # name -> (site type, latitude, longitude)
    own_tokens: dict[str, tuple[str, ...]]  # site -> its regular drivers
    public_tokens: tuple[str, ...]
    fleet_cards: dict[str, tuple[str, ...]]  # depot site -> its vans' cards

    def policy(self, default_max_power_w: float = 350_000.0) -> Policy:
        """The operator policy of this fleet: sites with coordinates, each charge point's rating."""
        return Policy(default_max_power_w=default_max_power_w,
                      sites=tuple(Site(name, lat, lon) for name, (_, lat, lon) in self.sites.items()),
                      charge_points=tuple(ChargePointPolicy(cp.id, cp.site, -1, cp.charger.rated_w)
                                          for cp in self.charge_points))

    def at_site(self, site: str) -> list[ChargePoint]:
        return [cp for cp in self.charge_points if cp.site == site]


def token(rng: np.random.Generator) -> str:
    """A token as the collector leaves it: a pseudonym (see chargewatch.redaction)."""
    return "pt_" + rng.bytes(12).hex()


def build_fleet(rng: np.random.Generator, sites_per_type: int = 2) -> Fleet:
    """``sites_per_type`` sites of every type, spread over about 200 km, with their drivers."""
    cps: list[ChargePoint] = []
    sites: dict[str, tuple[str, float, float]] = {}
    own: dict[str, tuple[str, ...]] = {}
    cards: dict[str, tuple[str, ...]] = {}
    for type_index, kind in enumerate(SITE_TYPES.values()):
        for number in range(1, sites_per_type + 1):
            name = f"{kind.name}-{number}"
            sites[name] = (kind.name, round(51.5 + rng.uniform(0, 1.5), 4), round(4.0 + rng.uniform(0, 2.5), 4))
            shares = np.array([share for _, share in kind.chargers])
            for i in range(kind.charge_points):
                charger = CHARGERS[kind.chargers[int(rng.choice(len(shares), p=shares / shares.sum()))][0]]
                version = VERSION_SHARE[0][0] if rng.random() < VERSION_SHARE[0][1] else VERSION_SHARE[1][0]
                units = (REGISTER_UNITS_16[int(rng.integers(2))], 0) if version == "1.6" else \
                    REGISTER_UNITS_2X[int(rng.integers(3))]
                cps.append(ChargePoint(
                    id=f"{name.upper()}-CP{i + 1:02d}", site=name, site_type=kind, charger=charger,
                    version=version, connectors=2, sample_interval_s=float(rng.choice(charger.sample_intervals_s)),
                    register_unit=units, power_unit=POWER_UNITS[int(rng.integers(3))],
                    ip=f"10.{type_index + 1}.{number}.{i + 10}"))
            if kind.tokens == "own":
                own[name] = tuple(token(rng) for _ in range(kind.charge_points * 3))
            if kind.tokens == "fleet":  # one card per van, each van parks at its own charge point
                cards[name] = tuple(token(rng) for _ in range(kind.charge_points))
    # Public pool: drivers of other places plus a fifth of the sites' regulars (who also travel).
    travellers = [t for tokens in own.values() for t in tokens if rng.random() < 0.2]
    public = tuple(travellers) + tuple(token(rng) for _ in range(len(cps) * 8))
    return Fleet(tuple(cps), sites, own, public, cards)
