"""The message model every stage shares: one record per OCPP-J message, one per connection event.

Records travel through Kafka as JSON objects tagged with ``record`` ("message" or
"connection"); :func:`record_from_dict` is the single decoder for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from chargewatch.errors import ConfigError, DecodeError


class Direction(StrEnum):
    """Who sent a message: the charge point (WebSocket client) or the central system."""

    CP_TO_CSMS = "cp->csms"
    CSMS_TO_CP = "csms->cp"

    @property
    def sender(self) -> str:
        return "cp" if self is Direction.CP_TO_CSMS else "csms"


_CP_TO_CSMS = Direction.CP_TO_CSMS  # a module global: faster than the enum attribute on the hot path


class MessageType(IntEnum):
    """OCPP-J message type ids (5 and 6 exist only in OCPP 2.1)."""

    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4
    CALLRESULTERROR = 5
    SEND = 6


SUBPROTOCOL_VERSIONS: dict[str, str] = {
    "ocpp1.2": "1.2",
    "ocpp1.5": "1.5",
    "ocpp1.6": "1.6",
    "ocpp2.0": "2.0",
    "ocpp2.0.1": "2.0.1",
    "ocpp2.1": "2.1",
}


def version_from_subprotocol(subprotocol: str | None) -> str | None:
    """OCPP version for a negotiated WebSocket subprotocol, None when unknown or absent."""
    if subprotocol is None:
        return None
    return SUBPROTOCOL_VERSIONS.get(subprotocol.strip().lower())


def connection_id(client: tuple[str, int], server: tuple[str, int], start_ts: float) -> str:
    """Stable id of one TCP/WebSocket connection: its 5-tuple and start time, hashed."""
    raw = f"tcp|{client[0]}|{client[1]}|{server[0]}|{server[1]}|{start_ts:.6f}"
    return "C" + hashlib.blake2b(raw.encode(), digest_size=9).hexdigest()


@dataclass(slots=True)
class OcppMessage:
    """One OCPP-J message as seen on the wire (after redaction).

    Treated as immutable; not declared frozen only because frozen dataclasses are eight
    times slower to build, and one is built per message on the hot path.
    """

    ts: float
    charge_point_id: str
    direction: Direction
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    ocpp_version: str | None
    message_type: int
    message_id: str
    action: str | None
    payload: Any
    frame_size: int
    connection_id: str
    source: str = ""
    # Facts about the frame a detector may need, e.g. "message_id_not_string".
    flags: tuple[str, ...] = field(default=())
    # IPv4 TTL / IPv6 hop limit of the packet that completed the frame; None for sources without
    # IP headers (and in records written before the field existed).
    ip_ttl: int | None = None

    @property
    def sender(self) -> str:
        """"cp" or "csms" (read by most detectors for every record: one comparison, no enum call)."""
        return "cp" if self.direction is _CP_TO_CSMS else "csms"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["direction"] = self.direction.value
        data["flags"] = list(self.flags)
        data["record"] = "message"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OcppMessage:
        values = {k: v for k, v in data.items() if k != "record"}
        values["direction"] = Direction(values["direction"])
        values["flags"] = tuple(values.get("flags", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A connection opened/upgraded/closed; keyed by identity when known, else client address."""

    ts: float
    kind: str  # "upgrade", "closed"
    connection_id: str
    charge_point_id: str | None
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    path: str | None = None
    subprotocols_offered: tuple[str, ...] = ()
    subprotocol: str | None = None
    ocpp_version: str | None = None
    auth_scheme: str | None = None
    auth_username: str | None = None
    status: int | None = None
    extensions: str | None = None
    tls: dict[str, Any] | None = None
    link: dict[str, Any] | None = None
    source: str = ""

    @property
    def key(self) -> str:
        return self.charge_point_id or self.client_ip

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["subprotocols_offered"] = list(self.subprotocols_offered)
        data["record"] = "connection"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectionEvent:
        values = {k: v for k, v in data.items() if k != "record"}
        values["subprotocols_offered"] = tuple(values.get("subprotocols_offered", ()))
        return cls(**values)


Record = OcppMessage | ConnectionEvent


def as_object(value: Any) -> dict[str, Any]:
    """value when it is a JSON object, else an empty one: payload fields of the wrong type
    (hostile or broken senders) read as absent instead of raising."""
    return value if isinstance(value, dict) else {}


def record_key(record: Record) -> str:
    """The partitioning key of a record: charge point identity, else the client address."""
    if isinstance(record, OcppMessage):
        return record.charge_point_id
    return record.key


KeyFn = Callable[[Record], str]
# A routing function: the keys a record goes to in a correlation stage, () when it goes nowhere
# (a record may name several keys, or none, unlike a stage's partitioning key).
RoutingFn = Callable[[Record], tuple[str, ...]]

# The keys a stage may declare, by name. Re-keying a stage is naming another entry in its
# configuration (``[kafka] messages_key``, ``[detector] state_key``); correlation stages route
# with RECORD_ROUTES below.
RECORD_KEYS: dict[str, KeyFn] = {"charge_point": record_key}


def key_function(name: str) -> KeyFn:
    """The key function called name; ConfigError naming the known ones otherwise."""
    try:
        return RECORD_KEYS[name]
    except KeyError:
        raise ConfigError(f"unknown record key {name!r}; known: {', '.join(sorted(RECORD_KEYS))}") from None


def record_id_tag(record: Record) -> str | None:
    """The (pseudonymised) idTag/idToken a CALL names: Authorize, Start/StopTransaction,
    TransactionEvent, RemoteStart/RequestStartTransaction; None for anything else."""
    if not isinstance(record, OcppMessage) or record.message_type != MessageType.CALL:
        return None
    return payload_id_tag(record.payload)


def payload_id_tag(payload: Any) -> str | None:
    """The idTag (1.6) or idToken.idToken (2.x) of a payload or list entry; None when absent or empty."""
    if not isinstance(payload, dict):
        return None
    tag = payload.get("idTag")
    if tag is None:
        token = payload.get("idToken")
        tag = token.get("idToken") if isinstance(token, dict) else None
    return tag if isinstance(tag, str) and tag else None


def id_tag_route(record: Record) -> tuple[str, ...]:
    """Correlation key "id_tag": the token a record names (records naming none are not routed)."""
    tag = record_id_tag(record)
    return (tag,) if tag is not None else ()


def fleet_route(record: Record) -> tuple[str, ...]:
    """Correlation key "fleet": every central-system command, sharded by its action.

    One key per action keeps fleet-wide rules exact (all Resets meet in one process) while the
    stage still spreads over as many processes as there are distinct actions, no further.
    """
    if (isinstance(record, OcppMessage) and record.message_type == MessageType.CALL
            and record.direction is Direction.CSMS_TO_CP and record.action):
        return (record.action,)
    return ()


def client_route(record: Record) -> tuple[str, ...]:
    """Correlation key "client_ip": TLS handshakes (no identity) and upgrades meet by client address."""
    if isinstance(record, ConnectionEvent) and record.kind in ("tls", "upgrade"):
        return (record.client_ip,)
    return ()


RECORD_ROUTES: dict[str, RoutingFn] = {"charge_point": lambda r: (record_key(r),), "id_tag": id_tag_route,
                                       "fleet": fleet_route, "client_ip": client_route}


def routing_function(name: str) -> RoutingFn:
    """The routing function called name; ConfigError naming the known ones otherwise."""
    try:
        return RECORD_ROUTES[name]
    except KeyError:
        raise ConfigError(f"unknown record route {name!r}; known: {', '.join(sorted(RECORD_ROUTES))}") from None


def record_from_dict(data: dict[str, Any]) -> Record:
    """Decode a record written by :meth:`OcppMessage.to_dict` or :meth:`ConnectionEvent.to_dict`."""
    kind = data.get("record")
    try:
        if kind == "message":
            return OcppMessage.from_dict(data)
        if kind == "connection":
            return ConnectionEvent.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise DecodeError(f"malformed {kind} record: {exc}") from exc
    raise DecodeError(f"unknown record kind {kind!r}")
