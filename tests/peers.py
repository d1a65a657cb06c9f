"""Real OCPP peers on loopback, captured live into a pcap.

:func:`record` starts a central system and charge points built on the PyPI ``ocpp`` library over
``websockets`` on 127.0.0.1, sniffs their TCP traffic on ``lo`` with scapy while they talk (see
:mod:`tests.livecapture`), and returns every frame each peer handed to ``send()``. The pcap is
what a collector sees; the frames are the ground truth to compare its output against.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote, urlsplit

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v16.enums import ChargePointErrorCode, ChargePointStatus, Reason
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call_result as result21
from ocpp.v21.enums import Action as Action21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from ocpp.v201.enums import BootReasonEnumType, TransactionEventEnumType, TriggerReasonEnumType
from scapy.packet import Packet
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, basic_auth, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.livecapture import HarnessError, LiveCapture, write_capture

SUBPROTOCOLS = ["ocpp2.0.1", "ocpp1.6", "ocpp2.1"]
CREDENTIALS = {"CP16-001": "cp16-001-secret"}  # identities that must send Basic auth
TAG = "TAG1234"
TRANSACTION_ID_16 = 1000
TRANSACTION_ID_201 = "c3f1e8a2-0000-4000-8000-000000000001"
REPLY_TIMEOUT = 5.0

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def _on(action: str) -> Callable[[_Handler], _Handler]:
    """Typed front for ``ocpp.routing.on`` (the library ships no type hints)."""
    return cast(Callable[[_Handler], _Handler], on(action))


@dataclass(frozen=True)
class SentFrame:
    """One WebSocket text frame exactly as a peer passed it to ``send()``."""

    t: float  # time.time() when sent
    cp_id: str  # charge point identity (decoded, as used by the peer)
    sender: str  # "cp" or "csms"
    text: str  # the exact frame text passed to websocket send()


def sent_path(pcap_path: Path) -> Path:
    """Sibling file holding the SentFrames of a capture: ``x.pcap`` -> ``x.sent.jsonl``."""
    return pcap_path.with_name(f"{pcap_path.stem}.sent.jsonl")


def write_sent(frames: Sequence[SentFrame], path: Path) -> None:
    """Write frames as JSON lines with the keys t, cp_id, sender, text."""
    lines = (json.dumps(dataclasses.asdict(frame), ensure_ascii=False) for frame in frames)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def read_sent(path: Path) -> list[SentFrame]:
    """Read frames written by :func:`write_sent`."""
    with path.open(encoding="utf-8") as fh:
        return [SentFrame(**json.loads(line)) for line in fh if line.strip()]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _identity(path: str) -> str:
    """Charge point identity: last URL path segment, percent-decoded."""
    return unquote(urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1])


class _Recorder:
    """WebSocket wrapper that logs every sent frame and can await replies to raw frames.

    Replies to frames sent with :meth:`send_raw` are consumed here, so the ``ocpp`` library
    never sees a response to a call it did not make.
    """

    def __init__(self, ws: ClientConnection | ServerConnection, cp_id: str, sender: str,
                 log: list[SentFrame]) -> None:
        self._ws, self._cp_id, self._sender, self._log = ws, cp_id, sender, log
        self._raw_replies: dict[str, asyncio.Future[str]] = {}

    async def send(self, text: str) -> None:
        self._log.append(SentFrame(time.time(), self._cp_id, self._sender, text))
        await self._ws.send(text)

    async def recv(self) -> str:
        while True:
            text = str(await self._ws.recv())
            waiter = self._raw_replies.pop(_reply_id(text), None)
            if waiter is None:
                return text
            waiter.set_result(text)

    async def send_raw(self, text: str, message_id: str) -> str:
        """Send ``text`` (a CALL with ``message_id``) and return the peer's reply frame."""
        waiter = asyncio.get_running_loop().create_future()
        self._raw_replies[message_id] = waiter
        await self.send(text)
        return await asyncio.wait_for(waiter, REPLY_TIMEOUT)


def _reply_id(text: str) -> str:
    """Message id of a CALLRESULT/CALLERROR frame, or "" for anything else."""
    try:
        message = json.loads(text)
    except ValueError:
        return ""
    if isinstance(message, list) and len(message) > 1 and message[0] in (3, 4):
        return str(message[1])
    return ""


# --- central system handlers --------------------------------------------------------------


class _Csms16(ChargePoint16):  # type: ignore[misc]
    @_on(Action16.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        return result16.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @_on(Action16.heartbeat)
    def on_heartbeat(self) -> Any:
        return result16.Heartbeat(current_time=_now())

    @_on(Action16.status_notification)
    def on_status(self, **_: Any) -> Any:
        return result16.StatusNotification()

    @_on(Action16.authorize)
    def on_authorize(self, id_tag: str) -> Any:
        return result16.Authorize(id_tag_info={"status": _tag_status(id_tag)})

    @_on(Action16.start_transaction)
    def on_start(self, id_tag: str, **_: Any) -> Any:
        return result16.StartTransaction(transaction_id=TRANSACTION_ID_16, id_tag_info={"status": _tag_status(id_tag)})

    @_on(Action16.meter_values)
    def on_meter_values(self, **_: Any) -> Any:
        return result16.MeterValues()

    @_on(Action16.stop_transaction)
    def on_stop(self, **_: Any) -> Any:
        return result16.StopTransaction(id_tag_info={"status": "Accepted"})


def _tag_status(id_tag: str) -> str:
    return "Accepted" if id_tag == TAG else "Invalid"


class _Csms201(ChargePoint201):  # type: ignore[misc]
    @_on(Action201.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        return result201.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @_on(Action201.heartbeat)
    def on_heartbeat(self) -> Any:
        return result201.Heartbeat(current_time=_now())

    @_on(Action201.transaction_event)
    def on_transaction_event(self, id_token: dict[str, str] | None = None, **_: Any) -> Any:
        if id_token is None:
            return result201.TransactionEvent()
        return result201.TransactionEvent(id_token_info={"status": "Accepted"})

    @_on(Action201.security_event_notification)
    def on_security_event(self, **_: Any) -> Any:
        return result201.SecurityEventNotification()


class _Csms21(ChargePoint21):  # type: ignore[misc]
    @_on(Action21.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        return result21.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @_on(Action21.heartbeat)
    def on_heartbeat(self) -> Any:
        return result21.Heartbeat(current_time=_now())


_CSMS_BY_SUBPROTOCOL: dict[str, type[Any]] = {"ocpp1.6": _Csms16, "ocpp2.0.1": _Csms201, "ocpp2.1": _Csms21}


class _Central:
    """Per-run central system: auth check, per-connection handler, registry of CSMS peers."""

    def __init__(self, log: list[SentFrame]) -> None:
        self._log = log
        self._peers: dict[str, Any] = {}
        self._auth = basic_auth(realm="ocpp", check_credentials=self._check_credentials)

    @staticmethod
    def _check_credentials(username: str, password: str) -> bool:
        return CREDENTIALS.get(username) == password

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Require Basic auth (username = identity) for identities listed in CREDENTIALS."""
        cp_id = _identity(request.path)
        if cp_id not in CREDENTIALS:
            return None
        refusal = await self._auth(conn, request)
        if refusal is None and conn.username != cp_id:
            return conn.respond(HTTPStatus.UNAUTHORIZED, "Username does not match identity.\n")
        return refusal

    async def handle(self, ws: ServerConnection) -> None:
        """Serve one charge point connection with the handler class of its subprotocol."""
        cp_id = _identity(ws.request.path if ws.request else "")
        csms_class = _CSMS_BY_SUBPROTOCOL.get(ws.subprotocol or "")
        if csms_class is None:
            await ws.close(1002, "unsupported subprotocol")
            return
        peer = csms_class(cp_id, _Recorder(ws, cp_id, "csms", self._log))
        self._peers[cp_id] = peer
        try:
            await peer.start()
        except ConnectionClosed:
            pass
        finally:
            self._peers.pop(cp_id, None)

    def peer(self, cp_id: str) -> Any:
        """The CSMS-side ``ChargePoint`` of a connected identity, to make CSMS-initiated calls."""
        try:
            return self._peers[cp_id]
        except KeyError:
            raise HarnessError(f"no CSMS connection for {cp_id!r}") from None


# --- charge points and scenarios ----------------------------------------------------------


class _Cp16(ChargePoint16):  # type: ignore[misc]
    @_on(Action16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        known = {"HeartbeatInterval": "300"}
        wanted = key or list(known)
        return result16.GetConfiguration(
            configuration_key=[{"key": k, "readonly": False, "value": known[k]} for k in wanted if k in known],
            unknown_key=[k for k in wanted if k not in known] or None,
        )

    @_on(Action16.remote_start_transaction)
    def on_remote_start(self, **_: Any) -> Any:
        return result16.RemoteStartTransaction(status="Accepted")


class _Cp201(ChargePoint201):  # type: ignore[misc]
    @_on(Action201.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]]) -> Any:
        results = [{"attributeStatus": "Accepted", "component": d["component"], "variable": d["variable"]}
                   for d in set_variable_data]
        return result201.SetVariables(set_variable_result=results)


@dataclass(frozen=True)
class _Context:
    base_url: str
    compression: str | None
    central: _Central
    log: list[SentFrame]


@contextlib.asynccontextmanager
async def _charge_point(ctx: _Context, cp_id: str, cp_class: type[Any], subprotocol: str,
                        password: str | None = None) -> AsyncIterator[tuple[Any, _Recorder]]:
    """Connect one charge point, run its receive loop, and close it cleanly on exit."""
    headers = {}
    if password is not None:
        token = base64.b64encode(f"{cp_id}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    url = ctx.base_url + quote(cp_id, safe="")
    async with connect(url, subprotocols=[subprotocol], additional_headers=headers,  # type: ignore[list-item]
                       compression=ctx.compression, proxy=None, open_timeout=REPLY_TIMEOUT) as ws:
        recorder = _Recorder(ws, cp_id, "cp", ctx.log)
        cp = cp_class(cp_id, recorder)
        loop_task = asyncio.create_task(cp.start())
        try:
            yield cp, recorder
        finally:
            await ws.close()
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(loop_task, REPLY_TIMEOUT)


async def _boot16(cp: Any) -> None:
    await cp.call(call16.BootNotification(charge_point_model="Demo", charge_point_vendor="Research"))


def _meter_value16(wh: int) -> dict[str, Any]:
    return {"timestamp": _now(), "sampledValue": [
        {"value": str(wh), "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "31.2", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
    ]}


async def _v16_session(ctx: _Context) -> None:
    cp_id = "CP16-001"
    async with _charge_point(ctx, cp_id, _Cp16, "ocpp1.6", CREDENTIALS[cp_id]) as (cp, _):
        await _boot16(cp)
        await cp.call(call16.Heartbeat())
        await cp.call(call16.StatusNotification(connector_id=1, error_code=ChargePointErrorCode.no_error,
                                                status=ChargePointStatus.preparing))
        await cp.call(call16.Authorize(id_tag=TAG))
        started = await cp.call(call16.StartTransaction(connector_id=1, id_tag=TAG, meter_start=10000,
                                                        timestamp=_now()))
        for wh in (10250, 10500, 10750):
            await cp.call(call16.MeterValues(connector_id=1, meter_value=[_meter_value16(wh)],
                                             transaction_id=started.transaction_id))
        await cp.call(call16.StopTransaction(meter_stop=10760, timestamp=_now(), transaction_id=started.transaction_id,
                                             reason=Reason.local, id_tag=TAG))
        csms = ctx.central.peer(cp_id)
        await csms.call(call16.GetConfiguration(key=["HeartbeatInterval"]))
        await csms.call(call16.RemoteStartTransaction(id_tag=TAG, connector_id=1))


def _transaction_event(seq_no: int, event_type: str, trigger: str, **extra: Any) -> Any:
    state = {"Started": "EVConnected", "Ended": "Idle"}.get(event_type, "Charging")
    info: dict[str, Any] = {"transactionId": TRANSACTION_ID_201, "chargingState": state}
    if event_type == "Ended":
        info["stoppedReason"] = "Local"
    return call201.TransactionEvent(event_type=TransactionEventEnumType(event_type), timestamp=_now(),
                                    trigger_reason=TriggerReasonEnumType(trigger), seq_no=seq_no,
                                    transaction_info=info, **extra)


def _meter_value201(wh: float, context: str) -> list[dict[str, Any]]:
    sampled = {"value": wh, "context": context, "measurand": "Energy.Active.Import.Register",
               "unitOfMeasure": {"unit": "Wh"}}
    return [{"timestamp": _now(), "sampledValue": [sampled]}]


async def _v201_session(ctx: _Context) -> None:
    cp_id = "RDAM 123"
    async with _charge_point(ctx, cp_id, _Cp201, "ocpp2.0.1") as (cp, _):
        await cp.call(call201.BootNotification(charging_station={"model": "Demo", "vendorName": "Research"},
                                               reason=BootReasonEnumType.power_up))
        await cp.call(_transaction_event(0, "Started", "CablePluggedIn", evse={"id": 1, "connectorId": 1},
                                         meter_value=_meter_value201(0.0, "Transaction.Begin")))
        await cp.call(_transaction_event(1, "Updated", "Authorized",
                                         id_token={"idToken": "AABBCCDD", "type": "ISO14443"}))
        await cp.call(_transaction_event(2, "Updated", "MeterValuePeriodic",
                                         meter_value=_meter_value201(7400.0, "Sample.Periodic")))
        await cp.call(_transaction_event(3, "Ended", "StopAuthorized",
                                         meter_value=_meter_value201(15200.0, "Transaction.End")))
        await cp.call(call201.SecurityEventNotification(type="StartupOfTheDevice", timestamp=_now()))
        csms = ctx.central.peer(cp_id)
        setting = {"attributeValue": "60", "component": {"name": "OCPPCommCtrlr"},
                   "variable": {"name": "HeartbeatInterval"}}
        await csms.call(call201.SetVariables(set_variable_data=[setting]))


async def _v16_replay(ctx: _Context) -> None:
    async with _charge_point(ctx, "CP16-ATTACK", _Cp16, "ocpp1.6") as (cp, recorder):
        await _boot16(cp)
        await cp.call(call16.Heartbeat())
        message_id = str(uuid.uuid4())
        await cp.call(call16.Authorize(id_tag=TAG), unique_id=message_id)
        replay = f'[2,"{message_id}","Authorize",{{"idTag":"EVIL0001"}}]'
        await recorder.send_raw(replay, message_id)


async def _v16_direction(ctx: _Context) -> None:
    async with _charge_point(ctx, "CP16-DIR", _Cp16, "ocpp1.6") as (cp, recorder):
        await _boot16(cp)
        message_id = str(uuid.uuid4())
        reply = await recorder.send_raw(f'[2,"{message_id}","Reset",{{"type":"Hard"}}]', message_id)
        if not reply.startswith("[4,"):
            raise HarnessError(f"expected a CALLERROR for the CP-sent Reset, got {reply}")
        await cp.call(call16.Heartbeat())


SCENARIOS: dict[str, Callable[[_Context], Awaitable[None]]] = {
    "v16_session": _v16_session, "v201_session": _v201_session, "v16_replay": _v16_replay,
    "v16_direction": _v16_direction,
}


# --- entry point --------------------------------------------------------------------------


async def _run(scenarios: Sequence[str], compression: str | None, port: int, log: list[SentFrame]) -> list[Packet]:
    central = _Central(log)
    capture: LiveCapture | None = None
    try:
        # On exit, serve() stops listening and waits for every connection handler to finish.
        async with serve(central.handle, "127.0.0.1", port, subprotocols=SUBPROTOCOLS,  # type: ignore[arg-type]
                         compression=compression, process_request=central.process_request) as server:
            bound = server.sockets[0].getsockname()[1]
            capture = LiveCapture(bound)
            await asyncio.to_thread(capture.start)
            ctx = _Context(f"ws://127.0.0.1:{bound}/ocpp/", compression, central, log)
            for name in scenarios:
                await SCENARIOS[name](ctx)
        return await asyncio.to_thread(capture.stop)  # raises unless every byte was captured
    finally:
        if capture is not None:
            capture.close()


def record(pcap_path: Path, scenarios: Sequence[str], *, compression: bool = True, port: int = 0,
           pcapng: bool = False) -> list[SentFrame]:
    """Run ``scenarios`` between real OCPP peers on 127.0.0.1 and capture them into ``pcap_path``.

    Scenarios run one after another, each on its own WebSocket connection to one central system
    listening on ``port`` (0 = any free port). Both sides use permessage-deflate when
    ``compression`` is true. Needs root (CAP_NET_RAW) and must not be called from a running
    event loop. Returns every frame both sides sent, sorted by time.
    """
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
    log: list[SentFrame] = []
    packets = asyncio.run(_run(scenarios, "deflate" if compression else None, port, log))
    write_capture(pcap_path, packets, pcapng=pcapng)
    return sorted(log, key=lambda frame: frame.t)


__all__ = ["SCENARIOS", "HarnessError", "SentFrame", "read_sent", "record", "sent_path", "write_sent"]
