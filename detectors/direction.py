"""Direction check: an action sent by the party the OCPP version does not allow to send it."""

from __future__ import annotations

from chargewatch.catalog import Catalog
from chargewatch.model import ConnectionEvent, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext

WRONG_DIRECTION = "CW-PROTO-001"


class DirectionDetector:
    """CW-PROTO-001."""

    name: str = "direction"
    rule_ids: tuple[str, ...] = (WRONG_DIRECTION,)

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.message_type not in (MessageType.CALL, MessageType.SEND) or msg.action is None:
            return []
        info = self.catalog.get(msg.ocpp_version, msg.action)
        if info is None or info.allowed_from(msg.direction):
            return []
        return [Finding(WRONG_DIRECTION,
                        f"{msg.sender} sent {msg.action}, which OCPP {msg.ocpp_version} lets only the "
                        f"{'central system' if info.initiator == 'CSMS->CP' else 'charge point'} send",
                        {"sender": msg.sender, "initiator": info.initiator, "sensitivity": info.sensitivity,
                         "payload": msg.payload})]
