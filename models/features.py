"""Session features: one row per finished charging session, from the OCPP message stream.

Sessions are reconstructed by :class:`detectors.metering.TransactionTracker`, the same code
the transaction rules use (1.6 StartTransaction / MeterValues / StopTransaction, 2.0.1 and 2.1
TransactionEvent Started / Updated / Ended), with registers normalised to Wh (Wh, kWh, 2.x
multipliers) and power samples to W (W, kW, multipliers, phases summed). :class:`SessionFeatures`
is fed records one at a time and returns the row of each session a record finishes: the online
detector uses it as is, and :func:`sessions_frame` runs the very same object over a batch of
records into a pandas DataFrame.

Features (units in the names; times are the charge point's clock, UTC):

- ``energy_wh``: last (or stop) register minus the start register; negative when it fell.
- ``duration_s``: stop time minus start time (negative when the clock says it ended first).
- ``avg_power_w``: energy over duration (the duration taken as at least 60 s).
- ``peak_power_w``: the highest of the measured ``Power.Active.Import`` samples and the power
  implied by two consecutive register readings (so a register that jumps shows as a peak).
- ``rated_power_w``, ``power_ratio``: the connector rating (policy ``max_power_w`` of the charge
  point, else the fleet default) and peak power over it.
- ``idle_s``: time connected after the register last rose at 100 W or more (the whole session
  when it never did): a car left plugged in after charging.
- ``start_hour``, ``weekday``: UTC hour (0-23) and day (Monday = 0) of the start.
- ``meter_samples``, ``max_sample_gap_s``: register readings (start and stop included) and the
  longest time between two of them.
- ``register_drop_wh``: how far the register fell in total between consecutive readings.
- ``remote_start``: 1 when a remote start opened the session (1.6 RemoteStartTransaction for
  its idTag within 10 minutes before, 2.x triggerReason RemoteStart or a remoteStartId).
- ``token_sessions_24h``, ``token_charge_points_24h``: sessions of the same (pseudonymised)
  idTag whose start we saw within the 24 h (capture time) before this one ended, this one
  included, and the distinct charge points among them (1 and 1 for sessions without a token).

Only sessions whose start was seen get a row (the others have no start register or time);
they are counted in :attr:`SessionFeatures.partial`.
"""

from __future__ import annotations

import gc
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chargewatch.model import OcppMessage, Record
from chargewatch.schema import SESSION_ROW_FIELDS
from detectors.metering import MIN_INTERVAL_S, TRACKED, Session, TransactionTracker
from detectors.policy import Policy

if TYPE_CHECKING:  # pandas is imported by the functions that build frames, not by the detectors
    import pandas as pd

#: The numeric model inputs, in the order every model and the registry's metadata use.
FEATURE_COLUMNS: tuple[str, ...] = (
    "energy_wh", "duration_s", "avg_power_w", "peak_power_w", "rated_power_w", "power_ratio", "idle_s",
    "start_hour", "weekday", "meter_samples", "max_sample_gap_s", "register_drop_wh", "remote_start",
    "token_sessions_24h", "token_charge_points_24h",
)
#: Every column of a session row, identifiers first.
ROW_COLUMNS: tuple[str, ...] = (
    "charge_point_id", "site", "version", "transaction_id", "connector_id", "id_token", "start", "end",
    "stop_reason", *FEATURE_COLUMNS,
)
#: Row columns -> the field of the session document (chargewatch.schema.TRANSACTION_FIELDS).
SCHEMA_FIELDS: dict[str, str] = SESSION_ROW_FIELDS
INT_FEATURES = frozenset({"start_hour", "weekday", "meter_samples", "remote_start", "token_sessions_24h",
                          "token_charge_points_24h"})  # integers in a frame (floats for the models)
TOKEN_WINDOW_S = 86_400.0
MAX_TOKEN_SESSIONS = 1024  # sessions remembered per token (the counts saturate there)
_REGISTERED = "features:token"  # Session.fired markers of this module's own trackers
_DONE = "features:row"


@dataclass(frozen=True, slots=True)
class SessionRow:
    """The features of one finished session (see the module docstring for each field)."""

    charge_point_id: str
    site: str
    version: str
    transaction_id: str
    connector_id: int
    id_token: str
    start: float  # epoch seconds, UTC
    end: float
    stop_reason: str
    energy_wh: float
    duration_s: float
    avg_power_w: float
    peak_power_w: float
    rated_power_w: float
    power_ratio: float
    idle_s: float
    start_hour: int
    weekday: int
    meter_samples: int
    max_sample_gap_s: float
    register_drop_wh: float
    remote_start: int
    token_sessions_24h: int
    token_charge_points_24h: int

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain mapping, in :data:`ROW_COLUMNS` order."""
        return {name: getattr(self, name) for name in ROW_COLUMNS}

    def features(self) -> list[float]:
        """The model inputs, in :data:`FEATURE_COLUMNS` order."""
        return [float(getattr(self, name)) for name in FEATURE_COLUMNS]


class SessionFeatures:
    """Streaming session features: :meth:`feed` records in capture order, get finished rows.

    State is bounded: ``max_sessions`` transactions per charge point, ``max_charge_points``
    charge points and ``max_tokens`` tokens (least recently used dropped first).
    """

    def __init__(self, policy: Policy | None = None, *, max_sessions: int = 64,
                 max_charge_points: int = 100_000, max_tokens: int = 200_000,
                 token_window_s: float = TOKEN_WINDOW_S) -> None:
        self.policy = policy if policy is not None else Policy()
        self.max_sessions = max_sessions
        self.max_charge_points = max_charge_points
        self.max_tokens = max_tokens
        self.token_window_s = token_window_s
        self.partial = 0  # finished sessions without a row (their start was not seen)
        self._trackers: OrderedDict[str, TransactionTracker] = OrderedDict()
        self._tokens: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self._cp_info: dict[str, tuple[str, float]] = {}  # charge point -> (site, rated power)

    def feed(self, record: Record) -> SessionRow | None:
        """Apply one record; the row of the session it finished, if it finished one."""
        if not isinstance(record, OcppMessage) or record.action not in TRACKED:
            return None
        tracker = self._tracker(record.charge_point_id)
        update = tracker.observe(record)
        if update is None:
            return None
        session = update.session
        if _REGISTERED not in session.fired and session.seen_start and session.id_tag is not None:
            session.fired.add(_REGISTERED)
            self._register(session)
        if update.event != "ended" or _DONE in session.fired:
            return None
        session.fired.add(_DONE)
        if not session.seen_start:
            self.partial += 1
            return None
        return self._row(session, record.ts)

    def feed_all(self, records: Iterable[Record]) -> list[SessionRow]:
        """Every row the records finish, in order."""
        feed = self.feed
        return [row for row in map(feed, records) if row is not None]

    def _tracker(self, cp: str) -> TransactionTracker:
        tracker = self._trackers.get(cp)
        if tracker is not None:
            self._trackers.move_to_end(cp)  # most recently used last
            return tracker
        tracker = self._trackers[cp] = TransactionTracker(self.max_sessions, power=True)
        while len(self._trackers) > self.max_charge_points:
            dropped, _ = self._trackers.popitem(last=False)
            self._cp_info.pop(dropped, None)
        return tracker

    def _register(self, session: Session) -> None:
        tag = session.id_tag or ""
        uses = self._tokens.pop(tag, None)
        if uses is None:
            uses = deque(maxlen=MAX_TOKEN_SESSIONS)
        self._tokens[tag] = uses  # most recently used last
        uses.append((session.first_ts, session.charge_point_id))
        while len(self._tokens) > self.max_tokens:
            self._tokens.popitem(last=False)

    def _token_counts(self, tag: str | None, now: float) -> tuple[int, int]:
        uses = self._tokens.get(tag) if tag is not None else None
        if not uses:
            return 1, 1
        while uses and uses[0][0] < now - 2 * self.token_window_s:  # long past every window
            uses.popleft()
        recent = [cp for ts, cp in uses if now - self.token_window_s <= ts <= now]
        return max(len(recent), 1), max(len(set(recent)), 1)

    def _site_and_rating(self, cp: str) -> tuple[str, float]:
        info = self._cp_info.get(cp)
        if info is None:
            site = self.policy.site_of(cp)
            entry = self.policy.for_charge_point(cp)
            name = site.name if site is not None else (entry.site if entry is not None else "")
            info = self._cp_info[cp] = (name, self.policy.max_power_w(cp))
        return info

    def _row(self, s: Session, now: float) -> SessionRow:
        start = s.started_at if s.started_at is not None else s.first_ts
        end = s.ended_at if s.ended_at is not None else (s.ended_ts if s.ended_ts is not None else now)
        duration = end - start
        energy = s.energy_wh()
        energy_wh = math.nan if energy is None else energy
        avg_power = energy_wh * 3600.0 / max(duration, MIN_INTERVAL_S)
        peaks = [p for p in (s.peak_measured_w, s.peak_implied_w) if p is not None]
        peak = max(peaks) if peaks else avg_power
        site, rated = self._site_and_rating(s.charge_point_id)
        idle = max(duration, 0.0) if s.last_rise_at is None else max(end - s.last_rise_at, 0.0)
        moment = datetime.fromtimestamp(start, UTC)
        sessions, charge_points = self._token_counts(s.id_tag, now)
        return SessionRow(
            charge_point_id=s.charge_point_id, site=site, version=s.version or "", transaction_id=s.tx_id,
            connector_id=s.connector if s.connector is not None else -1, id_token=s.id_tag or "",
            start=start, end=end, stop_reason=s.stop_reason or "", energy_wh=energy_wh, duration_s=duration,
            avg_power_w=avg_power, peak_power_w=peak, rated_power_w=rated, power_ratio=peak / rated,
            idle_s=idle, start_hour=moment.hour, weekday=moment.weekday(), meter_samples=s.samples,
            max_sample_gap_s=s.max_gap_s, register_drop_wh=s.drop_wh, remote_start=int(s.remote_start),
            token_sessions_24h=sessions, token_charge_points_24h=charge_points)


def rows_frame(rows: Iterable[SessionRow]) -> pd.DataFrame:
    """Session rows as a DataFrame: :data:`ROW_COLUMNS`, ``start``/``end`` as UTC datetimes."""
    import pandas as pd

    frame = pd.DataFrame.from_records([row.as_dict() for row in rows], columns=list(ROW_COLUMNS))
    for name in ("start", "end"):
        frame[name] = pd.to_datetime(frame[name].astype("float64"), unit="s", utc=True)
    for name in FEATURE_COLUMNS:
        frame[name] = frame[name].astype("int64" if name in INT_FEATURES else "float64")
    frame["connector_id"] = frame["connector_id"].astype("int64")
    return frame


def sessions_frame(records: Iterable[Record], policy: Policy | None = None) -> pd.DataFrame:
    """Batch use: every finished session of records, one row each (same code as streaming)."""
    with paused_gc():
        return rows_frame(SessionFeatures(policy).feed_all(records))


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside (restored after): batch work here allocates millions
    of acyclic objects, and the collector walking them all again and again would take longer
    than the work itself (the CLI raises the threshold for the same reason, see
    :func:`chargewatch.cli.tune_gc`)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
