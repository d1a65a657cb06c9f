"""Direction check: an action sent by the party the OCPP version does not allow to send it."""

from __future__ import annotations

from chargewatch.catalog import ActionInfo, Catalog
from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext

WRONG_DIRECTION = "CW-PROTO-001"
REQUESTS = frozenset({int(MessageType.CALL), int(MessageType.SEND)})


class DirectionDetector:
    """CW-PROTO-001."""

    name: str = "direction"
    rule_ids: tuple[str, ...] = (WRONG_DIRECTION,)

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # direction -> version -> action -> info, for the actions that direction may not send:
        # one lookup per request instead of a catalog lookup and an allowed_from call.
        self._forbidden: dict[Direction, dict[str, dict[str, ActionInfo]]] = {
            direction: {version: {action: info for action, info in actions.items()
                                  if not info.allowed_from(direction)}
                        for version, actions in catalog.actions.items()}
            for direction in Direction}

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.message_type not in REQUESTS or msg.action is None or msg.ocpp_version is None:
            return []
        forbidden = self._forbidden[msg.direction].get(msg.ocpp_version)
        info = forbidden.get(msg.action) if forbidden is not None else None
        if info is None:
            return []
        return [Finding(WRONG_DIRECTION,
                        f"{msg.sender} sent {msg.action}, which OCPP {msg.ocpp_version} lets only the "
                        f"{'central system' if info.initiator == 'CSMS->CP' else 'charge point'} send",
                        {"sender": msg.sender, "initiator": info.initiator, "sensitivity": info.sensitivity,
                         "payload": msg.payload})]
