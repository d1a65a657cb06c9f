"""The two sides of a live OCPP fleet: a scripted but realistic central system, and obliging charge points.

:class:`Central` serves one endpoint with the PyPI ``ocpp`` library's ``@on`` handlers for
1.6 and 2.0.1 and answers the way a production central system does: a fresh transaction id for
every StartTransaction, tag checks (Accepted, Invalid, ConcurrentTx), SecurityError to every CALL
before a BootNotification was accepted. A :class:`CsmsPlan` scripts the few deviations the
acceptance suites need (a Pending boot, a CALLERROR once, a CALL left unanswered once).
:class:`Cp16` and :class:`Cp201` answer what a central system may ask of a charge point.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from ocpp.exceptions import InternalError, SecurityError
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.livecapture import HarnessError
from tests.peers import REPLY_TIMEOUT, SentFrame, _identity, _now, _on, _Recorder


@dataclass(frozen=True)
class CsmsPlan:
    """How the legitimate central system answers; realistic defaults, a few scripted deviations."""

    heartbeat_interval: int = 300
    known_tags: frozenset[str] | None = frozenset()  # None: every card but the blocked ones
    blocked_tags: frozenset[str] = frozenset()
    concurrent_tx: bool = True  # answer ConcurrentTx to a card already charging elsewhere
    pending_first: frozenset[str] = frozenset()  # identities whose first BootNotification gets Pending
    fail_once: frozenset[tuple[str, str]] = frozenset()  # (identity, action): first CALL -> CALLERROR
    drop_once: frozenset[tuple[str, str]] = frozenset()  # (identity, action): first CALL never answered


# --- central system -------------------------------------------------------------------------


class Central:
    """One central system endpoint: handler class per subprotocol and shared bookkeeping."""

    def __init__(self, log: list[SentFrame], plan: CsmsPlan) -> None:
        self.log, self.plan = log, plan
        self.peers: dict[str, Any] = {}
        self.boot: dict[str, str] = {}  # identity -> last BootNotification status given
        self.spent: set[tuple[str, str, str]] = set()  # (kind, identity, action) deviations used
        self.active_tags: dict[str, str] = {}  # idTag -> identity charging with it
        self._next_tx = 5000

    def transaction_id(self) -> int:
        self._next_tx += 1
        return self._next_tx

    def tag_status(self, tag: str | None, cp_id: str, starting: bool) -> str:
        """Accepted for known tags, ConcurrentTx when charging elsewhere, Invalid otherwise."""
        known = self.plan.known_tags
        if tag is None or tag in self.plan.blocked_tags or (known is not None and tag not in known):
            return "Invalid"
        holder = self.active_tags.get(tag)
        if self.plan.concurrent_tx and holder is not None and holder != cp_id:
            return "ConcurrentTx"
        if starting:
            self.active_tags[tag] = cp_id
        return "Accepted"

    def release(self, cp_id: str) -> None:
        for tag in [t for t, holder in self.active_tags.items() if holder == cp_id]:
            del self.active_tags[tag]

    def once(self, kind: str, cp_id: str, action: str) -> bool:
        """True the first time a scripted (cp_id, action) deviation of ``kind`` comes by."""
        scripted = self.plan.fail_once if kind == "fail" else self.plan.drop_once
        if (cp_id, action) not in scripted or (kind, cp_id, action) in self.spent:
            return False
        self.spent.add((kind, cp_id, action))
        return True

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        return None  # this central system, like many in the field, does not check Basic credentials

    async def handle(self, ws: ServerConnection) -> None:
        cp_id = _identity(ws.request.path if ws.request else "")
        cls = {"ocpp1.6": Csms16, "ocpp2.0.1": Csms201}.get(ws.subprotocol or "")
        if cls is None:
            await ws.close(1002, "unsupported subprotocol")
            return
        peer = cls(cp_id, _Recorder(ws, cp_id, "csms", self.log), self)
        self.peers[cp_id] = peer
        try:
            await peer.start()
        except ConnectionClosed:
            pass
        finally:
            if self.peers.get(cp_id) is peer:
                del self.peers[cp_id]

    async def peer(self, cp_id: str) -> Any:
        """The CSMS-side ``ChargePoint`` of a connected identity (waits for its handler to start)."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while cp_id not in self.peers:
            if time.monotonic() > deadline:
                raise HarnessError(f"no CSMS connection for {cp_id!r}")
            await asyncio.sleep(0.005)
        return self.peers[cp_id]


def _call_action(text: str) -> str:
    """Action of a CALL frame, "" for anything else (including frames that are not JSON)."""
    try:
        message = json.loads(text)
    except ValueError:
        return ""
    if isinstance(message, list) and len(message) > 2 and message[0] == 2 and isinstance(message[2], str):
        return message[2]
    return ""


class _CsmsMixin:
    """Gatekeeping shared by both versions: Boot first, scripted CALLERRORs and losses."""

    id: str

    def __init__(self, cp_id: str, connection: _Recorder, central: Central) -> None:
        super().__init__(cp_id, connection)  # type: ignore[call-arg]
        self.central = central

    async def route_message(self, raw_msg: str) -> Any:
        if self.central.plan.drop_once and self.central.once("drop", self.id, _call_action(raw_msg)):
            return None  # lost: the charge point times out and retries with the same id
        return await super().route_message(raw_msg)  # type: ignore[misc]

    async def _handle_call(self, msg: Any) -> Any:
        if msg.action != "BootNotification" and self.central.boot.get(self.id) != "Accepted":
            raise SecurityError(description="BootNotification not accepted yet")
        if self.central.once("fail", self.id, msg.action):
            raise InternalError(description="temporarily unable to process, retry")
        return await super()._handle_call(msg)  # type: ignore[misc]

    def boot_status(self) -> str:
        first = self.id not in self.central.boot
        status = "Pending" if first and self.id in self.central.plan.pending_first else "Accepted"
        self.central.boot[self.id] = status
        return status


class Csms16(_CsmsMixin, ChargePoint16):  # type: ignore[misc]
    @_on(Action16.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        status = self.boot_status()
        return result16.BootNotification(current_time=_now(), interval=self.central.plan.heartbeat_interval,
                                         status=status)

    @_on(Action16.heartbeat)
    def on_heartbeat(self) -> Any:
        return result16.Heartbeat(current_time=_now())

    @_on(Action16.status_notification)
    def on_status(self, **_: Any) -> Any:
        return result16.StatusNotification()

    @_on(Action16.authorize)
    def on_authorize(self, id_tag: str) -> Any:
        return result16.Authorize(id_tag_info={"status": self.central.tag_status(id_tag, self.id, False)})

    @_on(Action16.start_transaction)
    def on_start(self, id_tag: str, **_: Any) -> Any:
        status = self.central.tag_status(id_tag, self.id, True)
        return result16.StartTransaction(transaction_id=self.central.transaction_id(), id_tag_info={"status": status})

    @_on(Action16.meter_values)
    def on_meter_values(self, **_: Any) -> Any:
        return result16.MeterValues()

    @_on(Action16.stop_transaction)
    def on_stop(self, id_tag: str | None = None, **_: Any) -> Any:
        self.central.release(self.id)
        if id_tag is None:
            return result16.StopTransaction()
        return result16.StopTransaction(id_tag_info={"status": self.central.tag_status(id_tag, self.id, False)})

    @_on(Action16.security_event_notification)
    def on_security_event(self, **_: Any) -> Any:
        return result16.SecurityEventNotification()

    @_on(Action16.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> Any:
        return result16.FirmwareStatusNotification()


class Csms201(_CsmsMixin, ChargePoint201):  # type: ignore[misc]
    @_on(Action201.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        status = self.boot_status()
        return result201.BootNotification(current_time=_now(), interval=self.central.plan.heartbeat_interval,
                                          status=status)

    @_on(Action201.heartbeat)
    def on_heartbeat(self) -> Any:
        return result201.Heartbeat(current_time=_now())

    @_on(Action201.status_notification)
    def on_status(self, **_: Any) -> Any:
        return result201.StatusNotification()

    @_on(Action201.authorize)
    def on_authorize(self, id_token: dict[str, str], **_: Any) -> Any:
        status = self.central.tag_status(id_token.get("id_token"), self.id, False)
        return result201.Authorize(id_token_info={"status": status})

    @_on(Action201.transaction_event)
    def on_transaction_event(self, event_type: str, id_token: dict[str, str] | None = None, **_: Any) -> Any:
        if event_type == "Ended":
            self.central.release(self.id)
        if id_token is None:
            return result201.TransactionEvent()
        status = self.central.tag_status(id_token.get("id_token"), self.id, event_type != "Ended")
        return result201.TransactionEvent(id_token_info={"status": status})

    @_on(Action201.meter_values)
    def on_meter_values(self, **_: Any) -> Any:
        return result201.MeterValues()

    @_on(Action201.security_event_notification)
    def on_security_event(self, **_: Any) -> Any:
        return result201.SecurityEventNotification()

    @_on(Action201.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> Any:
        return result201.FirmwareStatusNotification()


# --- charge points ----------------------------------------------------------------------------


class Cp16(ChargePoint16):  # type: ignore[misc]
    """A 1.6 charge point that accepts what a central system may ask of it."""

    @_on(Action16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        known = {"HeartbeatInterval": "300", "MeterValueSampleInterval": "60", "AuthorizeRemoteTxRequests": "true"}
        wanted = key or list(known)
        return result16.GetConfiguration(
            configuration_key=[{"key": k, "readonly": False, "value": known[k]} for k in wanted if k in known],
            unknown_key=[k for k in wanted if k not in known] or None)

    @_on(Action16.change_configuration)
    def on_change_configuration(self, **_: Any) -> Any:
        return result16.ChangeConfiguration(status="Accepted")

    @_on(Action16.remote_start_transaction)
    def on_remote_start(self, **_: Any) -> Any:
        return result16.RemoteStartTransaction(status="Accepted")

    @_on(Action16.remote_stop_transaction)
    def on_remote_stop(self, **_: Any) -> Any:
        return result16.RemoteStopTransaction(status="Accepted")

    @_on(Action16.reset)
    def on_reset(self, **_: Any) -> Any:
        return result16.Reset(status="Accepted")

    @_on(Action16.unlock_connector)
    def on_unlock(self, **_: Any) -> Any:
        return result16.UnlockConnector(status="Unlocked")

    @_on(Action16.update_firmware)
    def on_update_firmware(self, **_: Any) -> Any:
        return result16.UpdateFirmware()

    @_on(Action16.set_charging_profile)
    def on_set_charging_profile(self, **_: Any) -> Any:
        return result16.SetChargingProfile(status="Accepted")

    @_on(Action16.change_availability)
    def on_change_availability(self, **_: Any) -> Any:
        return result16.ChangeAvailability(status="Accepted")

    @_on(Action16.install_certificate)
    def on_install_certificate(self, **_: Any) -> Any:
        return result16.InstallCertificate(status="Accepted")


class Cp201(ChargePoint201):  # type: ignore[misc]
    """A 2.0.1 charging station that accepts what a CSMS may ask of it."""

    variables: ClassVar[dict[tuple[str, str], str]] = {
        ("OCPPCommCtrlr", "HeartbeatInterval"): "10", ("SampledDataCtrlr", "TxUpdatedInterval"): "60",
        ("SecurityCtrlr", "SecurityProfile"): "2", ("AuthCtrlr", "AuthorizeRemoteStart"): "true"}

    @_on(Action201.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for d in get_variable_data:
            value = self.variables.get((d["component"]["name"], d["variable"]["name"]))
            result = {"attributeStatus": "Accepted" if value is not None else "UnknownVariable",
                      "component": d["component"], "variable": d["variable"]}
            results.append(result | ({"attributeValue": value} if value is not None else {}))
        return result201.GetVariables(get_variable_result=results)

    @_on(Action201.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = [{"attributeStatus": "Accepted", "component": d["component"], "variable": d["variable"]}
                   for d in set_variable_data]
        return result201.SetVariables(set_variable_result=results)

    @_on(Action201.request_start_transaction)
    def on_request_start(self, **_: Any) -> Any:
        return result201.RequestStartTransaction(status="Accepted")

    @_on(Action201.request_stop_transaction)
    def on_request_stop(self, **_: Any) -> Any:
        return result201.RequestStopTransaction(status="Accepted")

    @_on(Action201.reset)
    def on_reset(self, **_: Any) -> Any:
        return result201.Reset(status="Accepted")

    @_on(Action201.unlock_connector)
    def on_unlock(self, **_: Any) -> Any:
        return result201.UnlockConnector(status="Unlocked")

    @_on(Action201.update_firmware)
    def on_update_firmware(self, **_: Any) -> Any:
        return result201.UpdateFirmware(status="Accepted")

    @_on(Action201.install_certificate)
    def on_install_certificate(self, **_: Any) -> Any:
        return result201.InstallCertificate(status="Accepted")

    @_on(Action201.set_charging_profile)
    def on_set_charging_profile(self, **_: Any) -> Any:
        return result201.SetChargingProfile(status="Accepted")

    @_on(Action201.change_availability)
    def on_change_availability(self, **_: Any) -> Any:
        return result201.ChangeAvailability(status="Accepted")


__all__ = ["Central", "Cp16", "Cp201", "Csms16", "Csms201", "CsmsPlan"]
