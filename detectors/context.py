"""What the runner knows about one charge point, kept up to date for every detector.

Detectors see the context *before* the current record is applied (so "a transaction is
already open on this connector" means: before this message), then the runner applies it.
State is bounded: histories are capped and old entries expire (see ``limits``), so a charge
point costs a few kilobytes however long it runs.

Unknown prior state is explicit: ``seen_boot`` / ``connection.from_upgrade`` say whether we
watched something from its start, so rules never alert on what may predate the capture.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from chargewatch.model import ConnectionEvent, MessageType, OcppMessage, as_object

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CALL = int(MessageType.CALL)
_CALLERROR = int(MessageType.CALLERROR)
_CALLRESULT = int(MessageType.CALLRESULT)

MAX_PENDING_CALLS = 64
MAX_KNOWN_TRANSACTIONS = 256


@dataclass
class Connection:
    """One WebSocket connection of the charge point."""

    connection_id: str
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    opened_ts: float
    from_upgrade: bool
    subprotocol: str | None = None
    offered: tuple[str, ...] = ()
    auth_scheme: str | None = None
    auth_username: str | None = None
    path: str | None = None
    closed_ts: float | None = None
    last_ts: float = 0.0


@dataclass
class Transaction:
    """A transaction as far as we saw it."""

    transaction_id: str
    connector: int | None
    started_ts: float
    id_tag: str | None = None
    meter_start: float | None = None
    closed_ts: float | None = None
    remote: bool = False


@dataclass
class ChargePointContext:
    """Facts about one charge point, derived from its records."""

    charge_point_id: str
    first_ts: float | None = None
    boot_status: str | None = None  # last BootNotification answer: Accepted/Pending/Rejected
    connections: dict[str, Connection] = field(default_factory=dict)
    # CALLs awaiting an answer, by (sender, message id): the CALL message itself.
    pending: OrderedDict[tuple[str, str], OcppMessage] = field(default_factory=OrderedDict)
    open_tx_by_connector: dict[int, str] = field(default_factory=dict)
    transactions: OrderedDict[str, Transaction] = field(default_factory=OrderedDict)

    def request_for(self, msg: OcppMessage) -> OcppMessage | None:
        """The CALL a CALLRESULT/CALLERROR answers, if it was seen and is still pending."""
        caller = "csms" if msg.sender == "cp" else "cp"
        return self.pending.get((caller, msg.message_id))

    def connection(self, connection_id: str) -> Connection | None:
        return self.connections.get(connection_id)

    def active_connections(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.closed_ts is None]

    # --- applying records -------------------------------------------------------------

    def apply(self, record: OcppMessage | ConnectionEvent) -> None:
        """Update the facts with record (called after the detectors ran on it)."""
        if self.first_ts is None:
            self.first_ts = record.ts
        if isinstance(record, ConnectionEvent):
            self._apply_connection(record)
        else:
            self._apply_message(record)

    def _apply_connection(self, event: ConnectionEvent) -> None:
        if event.kind == "upgrade":
            self.connections[event.connection_id] = Connection(
                event.connection_id, event.client_ip, event.client_port, event.server_ip, event.server_port,
                event.ts, True, event.subprotocol, event.subprotocols_offered, event.auth_scheme,
                event.auth_username, event.path, None, event.ts)
        elif event.kind == "closed":
            conn = self.connections.get(event.connection_id)
            if conn is not None:
                conn.closed_ts = event.ts
        self._expire_connections()

    def _apply_message(self, msg: OcppMessage) -> None:
        conn = self.connections.get(msg.connection_id)
        if conn is None:  # joined mid-stream: we never saw this connection open
            client = (msg.src_ip, msg.src_port) if msg.sender == "cp" else (msg.dst_ip, msg.dst_port)
            server = (msg.dst_ip, msg.dst_port) if msg.sender == "cp" else (msg.src_ip, msg.src_port)
            conn = Connection(msg.connection_id, client[0], client[1], server[0], server[1], msg.ts, False)
            self.connections[msg.connection_id] = conn
        conn.last_ts = msg.ts
        if msg.message_type == _CALL:
            self.pending[(msg.sender, msg.message_id)] = msg
            while len(self.pending) > MAX_PENDING_CALLS:
                self.pending.popitem(last=False)
        elif msg.message_type in (_CALLRESULT, _CALLERROR):
            request = self.pending.pop(("csms" if msg.sender == "cp" else "cp", msg.message_id), None)
            if request is not None and msg.message_type == _CALLRESULT:
                self._apply_result(request, msg)

    def _apply_result(self, request: OcppMessage, result: OcppMessage) -> None:
        payload = result.payload if isinstance(result.payload, dict) else {}
        body = request.payload if isinstance(request.payload, dict) else {}
        if request.action == "BootNotification":
            self.boot_status = payload.get("status")
        elif request.action == "StartTransaction" and "transactionId" in payload:
            self._open(str(payload["transactionId"]), _int(body.get("connectorId")), result.ts,
                       body.get("idTag"), _float(body.get("meterStart")))
        elif request.action == "StopTransaction":
            self._close(str(body.get("transactionId")), result.ts)
        elif request.action == "TransactionEvent":
            self._transaction_event(body, result.ts)

    def _transaction_event(self, body: dict[str, Any], ts: float) -> None:
        info = as_object(body.get("transactionInfo"))
        tx_id = str(info.get("transactionId"))
        event = body.get("eventType")
        evse = as_object(body.get("evse"))
        if event == "Started":
            token = as_object(body.get("idToken")).get("idToken")
            self._open(tx_id, _int(evse.get("id")), ts, token, None)
        elif event == "Ended":
            self._close(tx_id, ts)

    def _open(self, tx_id: str, connector: int | None, ts: float, id_tag: str | None, meter: float | None) -> None:
        self.transactions[tx_id] = Transaction(tx_id, connector, ts, id_tag, meter)
        if connector is not None:
            self.open_tx_by_connector[connector] = tx_id
        while len(self.transactions) > MAX_KNOWN_TRANSACTIONS:
            self.transactions.popitem(last=False)

    def _close(self, tx_id: str, ts: float) -> None:
        tx = self.transactions.get(tx_id)
        if tx is None:
            return
        tx.closed_ts = ts
        if tx.connector is not None and self.open_tx_by_connector.get(tx.connector) == tx_id:
            del self.open_tx_by_connector[tx.connector]

    def _expire_connections(self, keep: int = 16) -> None:
        closed = [c for c in self.connections.values() if c.closed_ts is not None]
        for conn in closed[: max(0, len(closed) - keep)]:
            del self.connections[conn.connection_id]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
