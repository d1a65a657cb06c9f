"""Records and their charge points as indexed documents: the one builder per document kind that
both stores (Elasticsearch and the embedded SQLite store) use, so either returns the very same
documents (:mod:`chargewatch.schema` field names, nested the way Elasticsearch keeps ``_source``).

* :func:`record_id` is the stable document id of an archived record: a hash of its identity
  (:func:`chargewatch.resume.identity`), so archiving a record twice writes one document.
* :func:`record_document` turns one record (OCPP message or connection event) into a
  ``MESSAGE_FIELDS`` document, with the few payload values responders search by extracted
  (transaction id, connector, idToken pseudonym, error code, outcome status). Its
  ``@timestamp`` keeps the microseconds (:func:`precise_time`) and ``event.sequence`` is the
  capture time in microseconds, so records of one millisecond keep their order.
* :func:`nest` and :func:`get_field` convert between dotted schema names and nested documents.
* :func:`observe_assets` folds a stream of records into one :class:`AssetObservation` per charge
  point, and :func:`merge_asset` applies an observation to the stored ``ASSET_FIELDS`` document.
  Counts are added, so a store must observe only the records its archive did not hold yet
  (that keeps the counts exact when records are delivered twice).

Records arrive redacted (idTags are ``pt_...`` pseudonyms, secrets ``[REDACTED]``); nothing here
looks a pseudonym up or adds anything personal.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chargewatch.alerts import iso_time
from chargewatch.model import ConnectionEvent, MessageType, OcppMessage, Record, as_object, payload_id_tag
from chargewatch.resume import identity
from detectors.mitm_posture import observed_profile
from detectors.mitm_session import accepted_upgrade

#: Addresses kept per charge point in ``related.ip`` (most recent last); older ones drop out.
MAX_ADDRESSES = 16

MESSAGE_TYPE_NAMES = {t.value: t.name for t in MessageType}


def precise_time(ts: float) -> str:
    """RFC 3339 UTC with microseconds: archived records keep the order and spacing of frames
    captured within one millisecond (Elasticsearch indexes the millisecond, ``_source`` keeps all)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_id(record: Record) -> str:
    """Stable document id of an archived record: 32 hex digits of SHA-256 over its identity."""
    raw = json.dumps(identity(record), separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """A document with dotted schema names (``ocpp.action``) as nested objects; None values are left out."""
    doc: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        *parents, leaf = _path(dotted)
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


@functools.cache
def _path(dotted: str) -> tuple[str, ...]:
    """The parts of a dotted field name (one per field of the schema: cached, it is on the hot path)."""
    return (dotted,) if dotted == "@timestamp" else tuple(dotted.split("."))


def get_field(doc: Mapping[str, Any], dotted: str) -> Any:
    """The value of a dotted schema field in a nested document (None when absent)."""
    if dotted in doc:
        return doc[dotted]
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def record_document(record: Record, doc_id: str | None = None) -> dict[str, Any]:
    """The ``MESSAGE_FIELDS`` document of one record; its ``event.id`` is doc_id, which callers
    that already computed :func:`record_id` pass to save computing it again."""
    doc_id = doc_id or record_id(record)
    if isinstance(record, OcppMessage):
        return nest(_message_fields(record, doc_id))
    return nest(_connection_fields(record, doc_id))


def _message_fields(msg: OcppMessage, doc_id: str) -> dict[str, Any]:
    payload = as_object(msg.payload)
    return {
        "@timestamp": precise_time(msg.ts), "event.kind": "event", "event.id": doc_id,
        "event.module": "chargewatch", "event.dataset": "chargewatch.ocpp", "event.action": msg.action,
        "event.reference": msg.source or None, "event.sequence": round(msg.ts * 1_000_000),
        "ocpp.charge_point_id": msg.charge_point_id or None, "ocpp.message_id": msg.message_id,
        "ocpp.action": msg.action, "ocpp.version": msg.ocpp_version, "ocpp.direction": msg.direction.value,
        "ocpp.sender": msg.sender, "ocpp.message_type": msg.message_type,
        "ocpp.message_type_name": MESSAGE_TYPE_NAMES.get(msg.message_type),
        "ocpp.connection_id": msg.connection_id, "ocpp.frame_size": msg.frame_size,
        "ocpp.flags": list(msg.flags) or None,
        "ocpp.transaction_id": transaction_id(payload), "ocpp.connector_id": connector_id(payload),
        "ocpp.id_token": payload_id_tag(payload),
        "ocpp.error_code": _text(payload.get("errorCode")) if msg.message_type == MessageType.CALLERROR else None,
        "ocpp.status": outcome_status(payload) if msg.message_type == MessageType.CALLRESULT else None,
        "ocpp.payload": msg.payload,
        "source.ip": msg.src_ip, "source.port": msg.src_port,
        "destination.ip": msg.dst_ip, "destination.port": msg.dst_port, "network.ttl": msg.ip_ttl,
    }


def _connection_fields(event: ConnectionEvent, doc_id: str) -> dict[str, Any]:
    tls = event.tls or {}
    link = event.link or {}
    certs = tls.get("server_certs") or []
    first_cert = certs[0] if certs and isinstance(certs[0], dict) else {}
    return {
        "@timestamp": precise_time(event.ts), "event.kind": "event", "event.id": doc_id,
        "event.module": "chargewatch", "event.dataset": "chargewatch.connection", "event.action": event.kind,
        "event.reference": event.source or None, "event.sequence": round(event.ts * 1_000_000),
        "ocpp.charge_point_id": event.charge_point_id or None, "ocpp.version": event.ocpp_version,
        "ocpp.connection_id": event.connection_id, "ocpp.subprotocol": event.subprotocol,
        "ocpp.auth_scheme": event.auth_scheme, "ocpp.auth_username": event.auth_username,
        "ocpp.http_status": event.status,
        "tls.version": tls.get("version"), "tls.cipher": tls.get("cipher"),
        "tls.client.server_name": tls.get("sni") or tls.get("server_name"),
        "tls.client.ja3": tls.get("ja3"), "tls.client.ja4": tls.get("ja4"), "tls.server.ja3s": tls.get("ja3s"),
        "tls.server.hash.sha256": first_cert.get("sha256"),
        "source.ip": link.get("sender_ip") or event.client_ip,
        "source.port": None if link else event.client_port,
        "source.mac": link.get("sender_mac"),
        "destination.ip": link.get("target_ip") or event.server_ip,
        "destination.port": None if link else event.server_port,
        "chargewatch.connection": event.to_dict(),
    }


def transaction_id(payload: dict[str, Any]) -> str | None:
    """Transaction id a payload names: 1.6 ``transactionId`` (Start answer, Stop, MeterValues,
    RemoteStop), 2.x ``transactionId`` or ``transactionInfo.transactionId`` (TransactionEvent)."""
    value = payload.get("transactionId")
    if value is None:
        value = as_object(payload.get("transactionInfo")).get("transactionId")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def connector_id(payload: dict[str, Any]) -> int | None:
    """Connector a payload names: 1.6 ``connectorId``, 2.x ``evse.id`` or ``evseId``."""
    for value in (payload.get("connectorId"), as_object(payload.get("evse")).get("id"), payload.get("evseId")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def outcome_status(payload: dict[str, Any]) -> str | None:
    """The outcome of an answer: ``status``, else ``idTagInfo.status`` (1.6) / ``idTokenInfo.status`` (2.x)."""
    for value in (payload.get("status"), as_object(payload.get("idTagInfo")).get("status"),
                  as_object(payload.get("idTokenInfo")).get("status")):
        if isinstance(value, str):
            return value
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the asset inventory -------------------------------------------------------------------

#: BootNotification request fields: schema field -> (1.6 key, 2.x ``chargingStation`` key).
BOOT_FIELDS = {
    "device.manufacturer": ("chargePointVendor", "vendorName"),
    "device.model.name": ("chargePointModel", "model"),
    "device.serial_number": ("chargePointSerialNumber", "serialNumber"),
    "ocpp.firmware_version": ("firmwareVersion", "firmwareVersion"),
}


@dataclass
class AssetObservation:
    """What a run of records says about one charge point (see :func:`merge_asset`).

    ``facts`` maps an ``ASSET_FIELDS`` name to (capture time, value): the latest value seen.
    """

    charge_point_id: str
    first_seen: float
    last_seen: float
    messages: int = 0
    connections: int = 0
    facts: dict[str, tuple[float, Any]] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)  # distinct, most recent last

    def saw(self, ts: float, address: str | None) -> None:
        self.first_seen = min(self.first_seen, ts)
        self.last_seen = max(self.last_seen, ts)
        if address:
            if address in self.addresses:
                self.addresses.remove(address)
            self.addresses.append(address)
            self.fact(ts, "source.ip", address)

    def fact(self, ts: float, name: str, value: Any) -> None:
        if value is not None and (name not in self.facts or ts >= self.facts[name][0]):
            self.facts[name] = (ts, value)


def observe_assets(records: Iterable[Record]) -> dict[str, AssetObservation]:
    """One observation per charge point named by records (records without one are skipped):
    first/last seen, message and connection counts, addresses, and the latest BootNotification
    details and outcome, OCPP version, security profile (0-3, from accepted upgrades: 0 plain ws
    without auth, 1 Basic over ws, 2 TLS (+Basic), 3 TLS client certificate) and TLS parameters."""
    seen: dict[str, AssetObservation] = {}
    for record in records:
        cp_id = record.charge_point_id
        if not cp_id:
            continue
        obs = seen.get(cp_id)
        if obs is None:
            obs = seen[cp_id] = AssetObservation(cp_id, record.ts, record.ts)
        if isinstance(record, OcppMessage):
            _observe_message(obs, record)
        else:
            _observe_connection(obs, record)
    return seen


def _observe_message(obs: AssetObservation, msg: OcppMessage) -> None:
    obs.messages += 1
    obs.saw(msg.ts, msg.src_ip if msg.sender == "cp" else msg.dst_ip)
    obs.fact(msg.ts, "ocpp.version", msg.ocpp_version)
    if msg.action != "BootNotification" or not isinstance(msg.payload, dict):
        return
    if msg.message_type == MessageType.CALL:
        station = as_object(msg.payload.get("chargingStation"))
        for name, (key16, key2x) in BOOT_FIELDS.items():
            value = station.get(key2x) if station else msg.payload.get(key16)
            if name == "device.serial_number" and value is None and not station:
                value = msg.payload.get("chargeBoxSerialNumber")
            obs.fact(msg.ts, name, _text(value))
    elif msg.message_type == MessageType.CALLRESULT:
        obs.fact(msg.ts, "ocpp.boot_status", _text(msg.payload.get("status")))


def _observe_connection(obs: AssetObservation, event: ConnectionEvent) -> None:
    obs.saw(event.ts, None if event.link else event.client_ip)
    if event.kind != "upgrade":
        return
    obs.connections += 1
    if not accepted_upgrade(event):
        return
    obs.fact(event.ts, "ocpp.version", event.ocpp_version)
    obs.fact(event.ts, "ocpp.security_profile", observed_profile(event))
    obs.fact(event.ts, "ocpp.auth_scheme", event.auth_scheme or "none")
    tls = event.tls or {}
    for name, key in (("tls.version", "version"), ("tls.cipher", "cipher"), ("tls.client.ja4", "ja4")):
        obs.fact(event.ts, name, tls.get(key))


def merge_asset(doc: dict[str, Any] | None, obs: AssetObservation, site: str | None = None) -> dict[str, Any]:
    """The ``ASSET_FIELDS`` document after obs (doc: the stored one, None for a new charge point).

    Counts add up; first/last seen widen; a fact replaces the stored value when it is not older
    than the stored last-seen time (records archived out of order only fill gaps); addresses
    keep the :data:`MAX_ADDRESSES` most recent. The ``chargewatch.alerts.*`` counts are the
    stores' to fill (they depend on alerts and triage, not on records).
    """
    old = doc or {}
    stored_last = get_field(old, "chargewatch.last_seen")
    stored_last_ts = _epoch(stored_last) if stored_last else None
    flat: dict[str, Any] = {name: get_field(old, name) for name in _ASSET_COPIED}
    for name, (ts, value) in obs.facts.items():
        if flat.get(name) is None or stored_last_ts is None or ts >= stored_last_ts:
            flat[name] = value
    addresses = [a for a in (get_field(old, "related.ip") or []) if a not in obs.addresses] + obs.addresses
    first = get_field(old, "chargewatch.first_seen")
    first_ts = min(_epoch(first), obs.first_seen) if first else obs.first_seen
    last_ts = max(stored_last_ts, obs.last_seen) if stored_last_ts is not None else obs.last_seen
    flat |= {
        "@timestamp": iso_time(last_ts), "event.kind": "asset",
        "ocpp.charge_point_id": obs.charge_point_id, "device.id": obs.charge_point_id,
        "related.ip": addresses[-MAX_ADDRESSES:] or None,
        "chargewatch.site": site or flat.get("chargewatch.site"),
        "chargewatch.first_seen": iso_time(first_ts), "chargewatch.last_seen": iso_time(last_ts),
        "chargewatch.connections": int(get_field(old, "chargewatch.connections") or 0) + obs.connections,
        "chargewatch.messages": int(get_field(old, "chargewatch.messages") or 0) + obs.messages,
    }
    return nest(flat)


# Asset fields carried over from the stored document unless an observation replaces them.
_ASSET_COPIED = ("ocpp.version", "ocpp.firmware_version", "ocpp.security_profile", "ocpp.auth_scheme",
                 "ocpp.boot_status", "device.manufacturer", "device.model.name", "device.serial_number",
                 "tls.version", "tls.cipher", "tls.client.ja4", "source.ip", "chargewatch.site",
                 "chargewatch.alerts.open", "chargewatch.alerts.total", "chargewatch.alerts.max_severity",
                 "chargewatch.alerts.last")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
