"""Detector stages: who sees which records under which key.

A :class:`Stage` is a name, a router (record → the keys it goes to) and a
:class:`~detectors.runner.DetectorRunner` keyed by those keys:

- ``charge_point``: every per-charge-point detector, keyed by ``[detector] state_key``;
- ``id_tag``: the token correlation rules, keyed by the pseudonymised idTag;
- ``fleet``: fleet-wide command rules, keyed by the command's action (see
  :func:`chargewatch.model.fleet_route`: one key per action, so this stage spreads over at most
  as many processes as there are watched actions).

Embedded, :meth:`Stages.process` runs them all in one process. On Kafka, the per-charge-point
stage publishes every routed record to ``[kafka] correlation_topic`` under the key
``"<stage>:<key>"``, and ``chargewatch detect --stage correlation`` consumes that topic with
:meth:`Stages.correlate`. Routing runs in the per-charge-point stage because the token route is
stateful: it follows a token into the messages of its transaction that do not repeat it
(CALLRESULTs, StopTransaction without idTag, 2.x TransactionEvents after the one carrying the
idToken, and the Started event that came before it), which only a process that sees the charge
point's records in order can do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chargewatch.alerts import Alert
from chargewatch.catalog import Catalog
from chargewatch.errors import DecodeError
from chargewatch.model import (
    KeyFn,
    MessageType,
    OcppMessage,
    Record,
    RoutingFn,
    client_route,
    fleet_route,
    record_id_tag,
)
from detectors.correlation import LATENESS_S, SESSION_HORIZON_S, TOKEN_ACTIONS
from detectors.policy import Policy
from detectors.registry import correlation_detectors, default_detectors
from detectors.rules import Rule
from detectors.runner import DetectorRunner

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CALL = int(MessageType.CALL)

IDLE_S = SESSION_HORIZON_S + 2 * LATENESS_S  # a correlation key silent this long is forgotten
MAX_SEEN = 64  # identities of recent records remembered per correlation key (duplicate filter)
SWEEP_EVERY = 4096  # correlation records between two sweeps for idle keys
MAX_OPEN = 32  # pending answers / transactions / untagged starts followed per charge point


class Router(Protocol):
    """Where records go in a stage: (key, record) pairs; a router may hold per-charge-point state.

    ``message_actions``: the only actions of OCPP messages it may route (None: any message).
    """

    message_actions: frozenset[str] | None

    def route(self, record: Record) -> list[tuple[str, Record]]: ...

    def drop(self, charge_points: Iterable[str]) -> None: ...


class KeyRouter:
    """A stateless router from a routing function."""

    def __init__(self, fn: RoutingFn, message_actions: frozenset[str] | None = None) -> None:
        self.fn = fn
        self.message_actions = message_actions

    def route(self, record: Record) -> list[tuple[str, Record]]:
        return [(key, record) for key in self.fn(record)]

    def drop(self, charge_points: Iterable[str]) -> None:
        return None


class ActionRouter(KeyRouter):
    """The fleet route limited to the actions some fleet rule watches."""

    def __init__(self, actions: frozenset[str]) -> None:
        super().__init__(fleet_route, actions)
        self.actions = actions

    def route(self, record: Record) -> list[tuple[str, Record]]:
        if not isinstance(record, OcppMessage) or record.action not in self.actions:
            return []
        return super().route(record)


@dataclass
class _Followed:
    """What the token router remembers about one charge point."""

    pending: OrderedDict[str, str] = field(default_factory=OrderedDict)  # routed CALL id -> token
    tx_tags: OrderedDict[str, str] = field(default_factory=OrderedDict)  # transaction id -> token
    untagged: OrderedDict[str, OcppMessage] = field(default_factory=OrderedDict)  # 2.x Started, no token yet


class TokenRouter:
    """The ``id_tag`` route, extended to the messages of a token's transactions."""

    message_actions: frozenset[str] | None = frozenset(TOKEN_ACTIONS)

    def __init__(self) -> None:
        self.points: dict[str, _Followed] = {}

    def drop(self, charge_points: Iterable[str]) -> None:
        for cp in charge_points:
            self.points.pop(cp, None)

    def route(self, record: Record) -> list[tuple[str, Record]]:
        if not isinstance(record, OcppMessage) or record.action not in TOKEN_ACTIONS:
            return []
        seen = self.points.get(record.charge_point_id)
        if seen is None:
            seen = self.points[record.charge_point_id] = _Followed()
        if record.message_type != _CALL:
            return self._answer(record, seen)
        if record.sender != "cp":
            return []
        if record.action == "TransactionEvent":
            return self._event(record, seen)
        body: Any = record.payload if isinstance(record.payload, dict) else {}
        tag = record_id_tag(record)
        if record.action == "StopTransaction":
            tag = seen.tx_tags.pop(str(body.get("transactionId")), None) or tag
        if tag is None:
            return []
        if record.action == "StartTransaction":
            _put(seen.pending, record.message_id, tag)
        return [(tag, record)]

    def _answer(self, record: OcppMessage, seen: _Followed) -> list[tuple[str, Record]]:
        tag = seen.pending.pop(record.message_id, None)
        if tag is None:
            return []
        body = record.payload if isinstance(record.payload, dict) else {}
        if record.action == "StartTransaction" and body.get("transactionId") is not None:
            _put(seen.tx_tags, str(body["transactionId"]), tag)
        return [(tag, record)]

    def _event(self, record: OcppMessage, seen: _Followed) -> list[tuple[str, Record]]:
        body: Any = record.payload if isinstance(record.payload, dict) else {}
        info = body.get("transactionInfo")
        if not isinstance(info, dict) or info.get("transactionId") is None:
            return []
        tx = str(info["transactionId"])
        out: list[tuple[str, Record]] = []
        tag = seen.tx_tags.get(tx)
        token = record_id_tag(record)
        if tag is None and token is not None:
            tag = token
            _put(seen.tx_tags, tx, tag)
            started = seen.untagged.pop(tx, None)
            if started is not None:
                out.append((tag, started))
        if tag is None:
            if body.get("eventType") == "Started":
                _put(seen.untagged, tx, record)
            return out
        out.append((tag, record))
        _put(seen.pending, record.message_id, tag)
        if body.get("eventType") == "Ended":
            seen.tx_tags.pop(tx, None)
        return out


def _identity(record: Record) -> int:
    """What makes a forwarded record the same record: sender, type, message id, capture time."""
    if isinstance(record, OcppMessage):
        return hash((record.charge_point_id, record.direction, record.message_type, record.message_id, record.ts))
    return hash((record.connection_id, record.kind, record.ts))


def _put(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    table[key] = value
    while len(table) > MAX_OPEN:
        table.popitem(last=False)


@dataclass
class Stage:
    """One stage: its name, how records reach its keys, and its runner."""

    name: str
    router: Router
    runner: DetectorRunner


class Stages:
    """The per-charge-point stage and the correlation stages fed by it."""

    def __init__(self, local: Stage, correlation: list[Stage]) -> None:
        self.local = local
        self.correlation = correlation
        self.by_name = {s.name: s for s in correlation}
        # The actions of messages some correlation stage may want (None: any): most messages
        # (meter values, status, heartbeats) are routed nowhere, and learn it with one lookup.
        wanted = [s.router.message_actions for s in correlation]
        self._message_actions: frozenset[str] | None = (
            None if any(w is None for w in wanted) else frozenset().union(*(w for w in wanted if w is not None)))
        self._since_sweep = 0
        self._newest = 0.0
        # Per (stage, key): recent record identities. A per-charge-point process that crashes
        # after forwarding but before committing forwards its batch again; copies are dropped.
        self._seen: dict[tuple[str, str], OrderedDict[int, None]] = {}

    def process(self, record: Record, emit: bool = True) -> list[Alert]:
        """Every stage in one process (the embedded default)."""
        alerts = self.local.runner.process(record, emit=emit)
        for name, key, routed in self.route(record):
            alerts += self.correlate(name, key, routed, emit)
        self.sweep_due()
        return alerts

    def route(self, record: Record) -> list[tuple[str, str, Record]]:
        """(stage, key, record) for every correlation stage the record goes to."""
        actions = self._message_actions
        if actions is not None and isinstance(record, OcppMessage) and record.action not in actions:
            return []
        return [(s.name, key, routed) for s in self.correlation for key, routed in s.router.route(record)]

    def correlate(self, name: str, key: str, record: Record, emit: bool = True) -> list[Alert]:
        """Run the correlation stage called name on a record routed to key."""
        stage = self.by_name.get(name)
        if stage is None:
            raise DecodeError(f"no correlation stage {name!r} (known: {', '.join(sorted(self.by_name))})")
        self._since_sweep += 1
        self._newest = max(self._newest, record.ts)
        seen = self._seen.setdefault((name, key), OrderedDict())
        identity = _identity(record)
        if identity in seen:
            return []
        seen[identity] = None
        if len(seen) > MAX_SEEN:
            seen.popitem(last=False)
        return stage.runner.process(record, emit=emit, key=key)

    def sweep_due(self) -> list[tuple[str, str]]:
        """Every SWEEP_EVERY correlation records: forget keys silent for IDLE_S of message time
        (their detectors' windows have long closed); the (stage, key) pairs dropped."""
        if self._since_sweep < SWEEP_EVERY:
            return []
        self._since_sweep = 0
        dropped = [(stage.name, k) for stage in self.correlation
                   for k, st in stage.runner.states.items() if st.newest_ts < self._newest - IDLE_S]
        self.drop_keys(dropped)
        return dropped

    def drop_keys(self, keys: Iterable[tuple[str, str]]) -> None:
        """Forget the state of (correlation stage, key) pairs."""
        for name, key in keys:
            self._seen.pop((name, key), None)
            stage = self.by_name.get(name)
            if stage is not None:
                stage.runner.drop([key])

    def drop_charge_points(self, keys: Iterable[str]) -> None:
        """Forget the per-charge-point state (detectors and routers) of keys."""
        keys = list(keys)
        self.local.runner.drop(keys)
        for stage in self.correlation:
            stage.router.drop(keys)


def build_stages(rules: dict[str, Rule], catalog: Catalog, policy: Policy, key: KeyFn,
                 sessions: bool = False, models: Path | None = None) -> Stages:
    """Every stage with its registered detectors; a correlation stage none of whose rules is
    enabled is left out (the per-charge-point stage then forwards nothing for it). sessions:
    session features are wanted; models: the model registry (both: see
    :func:`detectors.registry.default_detectors`)."""
    local = Stage("charge_point", KeyRouter(lambda r: (key(r),)),
                  DetectorRunner(default_detectors(rules, catalog, policy, sessions, models), rules, key))
    by_kind: dict[str, list[Any]] = {"id_tag": [], "fleet": [], "client_ip": []}
    for det in correlation_detectors(rules, catalog, policy):
        by_kind[getattr(det, "route", "id_tag")].append(det)
    stages = []
    for name, detectors in by_kind.items():
        runner = DetectorRunner(detectors, rules, key, track_context=False, lateness_s=LATENESS_S)
        if not runner.detectors:
            continue
        router: Router = TokenRouter()
        if name == "client_ip":
            router = KeyRouter(client_route, frozenset())  # connection events only
        if name == "fleet":
            router = ActionRouter(frozenset().union(*(getattr(d, "actions", ()) for d in runner.detectors)))
        stages.append(Stage(name, router, runner))
    return Stages(local, stages)

