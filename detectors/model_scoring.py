"""CW-TX-006: finished charging sessions scored by the promoted transaction anomaly model.

Every tracked message goes to one :class:`models.features.SessionFeatures` (the very code that
computes the batch features of ``chargewatch features``, so training and detection see the same
numbers). Finished sessions wait in a queue and are scored in micro-batches, never one at a
time (a model scores a batch of 1,000 about as fast as a single row): the queue is scored when
it holds ``batch_size`` sessions, when its oldest session ended more than ``max_wait_s`` of
message time before the newest record, and at the end of the input (:func:`drain_alerts`).
Sessions scoring above the alert threshold become findings, about the message that ended them,
handed to the runner with the next message of the session's charge point (a Heartbeat, status or
meter values, usually within minutes; at the end of the input for the rest): so the alert is
keyed by its own charge point and its id does not depend on which record completed the batch
(the same alerts whatever the batching).

The alert threshold is the model's own (chosen at training for a 1 % false-positive rate on
synthetic benign sessions), raised to the rule's ``min_score``: one alert per hundred benign
sessions would be about one per few thousand messages on a real fleet, above the budget of one
false alert per 10,000 messages, and hand-written or real-peer sessions (few meter samples, no
policy rating) sit a little outside the synthetic training distribution.

State: unlike the other per-charge-point detectors, the session features and the queue belong
to the detector object, shared by every charge point of the stage (a micro-batch spans charge
points). It is bounded (``SessionFeatures`` limits, the queue by ``batch_size``) and rebuilt by
replay like the rest. The token features (``token_sessions_24h``, ``token_charge_points_24h``)
count the sessions of the idTag this stage has seen: the whole fleet in the embedded default
(one process), but only the charge points of its own partitions when the stage is split over
processes or Kafka consumers, where the counts are then lower than in training (a token spread
over charge points of other partitions is not seen here; CW-FLEET-002/003/004 in the id_tag
correlation stage watch tokens across the whole fleet).

The rule is off by default (``enabled: false``): the shipped model is trained on the synthetic
fleet, not on the operator's sessions. Disabled, the detector only runs when something wants the
sessions (``analyze --store``, ``[kafka] sessions_topic``): it then hands every finished
session's features on unscored, and otherwise it is not in the runner at all. Either way nothing
imports scikit-learn, numpy or pandas until an enabled detector scores its first batch.

The promoted version is re-checked every ``check_interval_s`` seconds of wall time (promotion is
an operator action in real time, not message time) and swapped in without a restart
(:class:`models.registry.PromotedModel`). A promoted version this installation refuses (feature
list, scikit-learn release, checksum) fails the construction with a ModelError naming the file:
that check reads the metadata only, and the model itself is loaded at the first batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargewatch.alerts import Alert
from chargewatch.model import ConnectionEvent, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.metering import TRACKED
from detectors.policy import Policy
from detectors.rules import Rule
from detectors.runner import DetectorRunner, build_alert
from models.features import SessionFeatures, SessionRow, rows_frame
from models.registry import PACKAGED, check_promoted

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

    from models.registry import LoadedModel, PromotedModel

RULE_ID = "CW-TX-006"
#: Session features an alert shows besides the top contributors (the ones an analyst reads first).
KEY_FEATURES = ("energy_wh", "duration_s", "peak_power_w", "power_ratio", "idle_s", "start_hour",
                "meter_samples", "max_sample_gap_s", "remote_start", "token_sessions_24h",
                "token_charge_points_24h")
INT64 = 1 << 63
_INT_FIELDS = ("connector_id", "start_hour", "weekday", "meter_samples", "remote_start", "token_sessions_24h",
               "token_charge_points_24h")
#: Frequent messages that only move the clock (so the wait bound holds on a quiet fleet).
CLOCK_ACTIONS = frozenset({"Heartbeat", "StatusNotification"})


@dataclass(frozen=True, slots=True)
class Scored:
    """One finished session: its row, the message that ended it and, when the rule is enabled,
    its score and model (None otherwise: the features alone)."""

    row: SessionRow
    about: OcppMessage
    score: float | None = None
    threshold: float | None = None  # the alert threshold: the model's, raised to min_score
    model: str | None = None
    top: tuple[tuple[str, float], ...] = ()  # explain(): the features furthest from normal (alerts only)

    @property
    def anomalous(self) -> bool:
        return self.score is not None and self.threshold is not None and self.score > self.threshold

    def as_dict(self) -> dict[str, Any]:
        """The session row with its scoring if scored (what the stores' ``put_sessions`` take and
        the sessions topic carries)."""
        if self.score is None:
            return self.row.as_dict()
        return self.row.as_dict() | {"score": self.score, "threshold": self.threshold, "model": self.model,
                                     "top_features": [name for name, _ in self.top]}


class ModelScoringDetector:
    """CW-TX-006 (see the module docstring)."""

    name: str = "model_scoring"
    rule_ids: tuple[str, ...] = (RULE_ID,)
    actions: frozenset[str] | None = TRACKED | CLOCK_ACTIONS

    def __init__(self, rules: dict[str, Rule], policy: Policy, registry: Path | None = None,
                 clock: Callable[[], float] | None = None, sessions: bool = False) -> None:
        rule = rules[RULE_ID]
        # The runner keeps a detector whose rules are all disabled only when it says so: here,
        # when the sessions are wanted (a store or a topic) even if nothing scores them.
        self.always_run = sessions
        self.batch_size = max(1, int(rule.param("batch_size")))
        self.max_wait_s = float(rule.param("max_wait_s"))
        self.top = int(rule.param("top_features"))
        self.min_score = float(rule.param("min_score"))
        # The rule's registry_dir, else the deployment's ([models] registry_dir, passed as
        # registry), else the registry shipped in the package.
        configured = str(rule.param("registry_dir"))
        self.registry = Path(configured).expanduser() if configured else (registry or PACKAGED)
        self.features = SessionFeatures(policy)
        self.pending: list[tuple[SessionRow, OcppMessage]] = []
        # Findings of scored sessions by charge point, handed out with that charge point's next
        # message (so the alert is keyed, collapsed and numbered as every other alert of it).
        self.parked: dict[str, list[Finding]] = {}
        self.batches = 0  # micro-batches scored (for the benchmark and tests)
        self.unscorable = 0  # finished sessions left out: an integer field beyond 64 bits
        # Called with every scored batch (e.g. to index sessions with their scores).
        self.on_scored: Callable[[list[Scored]], None] | None = None
        self.scoring = rule.enabled
        self.check_interval_s = float(rule.param("check_interval_s"))
        self.clock = clock
        self.promoted: PromotedModel | None = None  # loaded at the first batch (promoted_model)
        if self.scoring:  # ModelError here: a refused promoted model stops the start, naming the file
            check_promoted(self.registry)

    @property
    def model(self) -> LoadedModel | None:
        """The model scoring now (None before the first batch or when the rule is disabled)."""
        return None if self.promoted is None else self.promoted.current

    def promoted_model(self) -> PromotedModel:
        """The promoted model, loaded on first use: scikit-learn and the model are imported and
        unpickled only once there is something to score."""
        if self.promoted is None:
            from models.registry import PromotedModel

            kwargs: dict[str, Any] = {} if self.clock is None else {"clock": self.clock}
            self.promoted = PromotedModel(self.registry, self.check_interval_s, **kwargs)
        return self.promoted

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        row = self.features.feed(msg)
        if row is not None:
            if not self.scoring:  # features only (a store or topic wants the sessions)
                if self.on_scored is not None:
                    self.on_scored([Scored(row, msg)])
                return []
            if _fits(row):
                self.pending.append((row, msg))
            else:  # a hostile connector id or count beyond 64 bits: no frame can hold it
                self.unscorable += 1
        pending = self.pending
        if pending and (len(pending) >= self.batch_size or msg.ts - pending[0][1].ts > self.max_wait_s):
            self._park(self.score_pending())
        if self.parked and msg.charge_point_id in self.parked:
            return self.parked.pop(msg.charge_point_id)
        return []

    def _park(self, scored: list[Scored]) -> None:
        for s in scored:
            if s.anomalous:
                self.parked.setdefault(s.row.charge_point_id, []).append(_finding(s))

    def flush(self) -> list[Finding]:
        """End of input: score every waiting session; every finding not handed out yet."""
        self._park(self.score_pending())
        found = [f for findings in self.parked.values() for f in findings]
        self.parked.clear()
        return found

    def score_pending(self) -> list[Scored]:
        """Score and empty the queue (picking up a newly promoted model first)."""
        if not self.pending or not self.scoring:
            self.pending = []
            return []
        pending, self.pending = self.pending, []
        promoted = self.promoted_model()
        promoted.refresh()
        model = promoted.current
        frame = rows_frame(row for row, _ in pending)
        with _threadpools().limit(limits=1):  # see _threadpools
            scores = [float(x) for x in model.score(frame)]
            threshold = max(model.threshold, self.min_score)
            flagged = [i for i, score in enumerate(scores) if score > threshold]
            top: dict[int, list[tuple[str, float]]] = {}
            if flagged:  # explanations only for the few alerts (one batch call as well)
                top = dict(zip(flagged, model.explain(frame.iloc[flagged], self.top), strict=True))
        self.batches += 1
        scored = [Scored(row, about, score, threshold, model.name, tuple(top.get(i, ())))
                  for i, ((row, about), score) in enumerate(zip(pending, scores, strict=True))]
        if self.on_scored is not None:
            self.on_scored(scored)
        return scored


def _fits(row: SessionRow) -> bool:
    """Whether every integer of a row fits the 64-bit columns of a session frame."""
    return all(-INT64 <= value < INT64 for value in (getattr(row, f) for f in _INT_FIELDS))


@cache
def _threadpools() -> ThreadpoolController:
    """The native thread pools, found once a model is loaded. Scoring runs single-threaded: a
    detector stage owns one core (parallel analyze forks one per core), and an OpenMP pool
    started in a process (scikit-learn's neighbour search) deadlocks the processes forked from
    it afterwards (GNU libgomp is not fork-safe)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _finding(s: Scored) -> Finding:
    row, top = s.row, s.top
    if s.score is None or s.threshold is None:
        raise ValueError(f"session {row.transaction_id} was not scored")
    evidence: dict[str, Any] = {
        "score": round(s.score, 4), "threshold": round(s.threshold, 4), "model": s.model,
        "top_features": [{"feature": name, "z": z} for name, z in top],
        "transaction_id": row.transaction_id, "connector_id": row.connector_id,
        "session": {name: _plain(getattr(row, name)) for name in KEY_FEATURES},
    }
    names = ", ".join(name for name, _ in top) or "no single feature"
    reason = (f"session {row.transaction_id} on connector {row.connector_id} scored {s.score:.2f} "
              f"(threshold {s.threshold:.2f}, {s.model}); furthest from normal: {names}")
    return Finding(RULE_ID, reason, evidence, about=s.about)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 2) if math.isfinite(value) else None
    return value


def scoring_detector(detectors: list[Any]) -> ModelScoringDetector | None:
    """The CW-TX-006 detector among a runner's detectors (None when it is disabled and no
    sessions are wanted)."""
    return next((d for d in detectors if isinstance(d, ModelScoringDetector)), None)


def end_of_input(runner: DetectorRunner) -> list[Alert]:
    """The alerts of the sessions a per-charge-point runner still holds when the input ends."""
    detector = scoring_detector(runner.detectors)
    return [] if detector is None else drain_alerts(detector, runner.rules)


def drain_alerts(detector: ModelScoringDetector, rules: dict[str, Rule]) -> list[Alert]:
    """End of input: score the sessions still waiting; their alerts (uncollapsed, keyed by the
    session's charge point)."""
    rule = rules[RULE_ID]
    alerts = []
    for finding in detector.flush():
        about = finding.about
        if about is not None:
            alerts.append(build_alert(rule, about.charge_point_id or "", about, finding))
    return alerts
