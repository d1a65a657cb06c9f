"""Benign charge point behaviour for the live acceptance suites: sessions, and the legal edge cases.

A :class:`Charger` is one well-behaved station on top of :class:`tests.livefleet.Station`: an
energy meter that integrates its power over real elapsed time (the timeline is compressed, the
physics is not: every payload timestamp is the real clock), driver tags of its own, calls that
are retried under the same message id after a CALLERROR or a timeout (OCPP-J errata: a retry
may reuse the id), a queue that fills while the station is offline and drains, in order, after
it reconnects. :func:`benign_fleet` runs many of them at once, each with one legal twist that a
careless detector mistakes for an attack (see ``TWISTS``); the attack suite reuses the plain
sessions as background traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from tests.livecapture import HarnessError
from tests.livefleet import Fleet, Station
from tests.livepeers import CsmsPlan
from tests.peers import _now

SAMPLE_GAP_S = 0.02  # between meter samples of a transaction
HEARTBEAT_GAP_S = 2.0  # a station heartbeats this often (the central system's interval is HEARTBEAT_INTERVAL)
HEARTBEAT_INTERVAL = 10
RESPONSE_TIMEOUT_S = 1.0  # a station's CALL timeout (30 s in the field)
FIRMWARE_URL = "https://firmware.example-cpo.com/ac22/4.2.1.bin"


def tag_for(cp_id: str, k: int, version: str = "1.6") -> str:
    """A driver's RFID UID, as hex: 4 bytes for the 1.6 stations, 7 bytes (ISO14443) for 2.0.1."""
    digest = hashlib.blake2b(f"{cp_id}|{k}".encode(), digest_size=7).hexdigest().upper()
    return digest[:8] if version == "1.6" else digest


class Meter:
    """An Energy.Active.Import.Register: power flows while a transaction charges, in real time."""

    def __init__(self, wh: int, power_w: float) -> None:
        self.wh, self.power_w = float(wh), power_w
        self._since: float | None = None

    def start(self) -> int:
        self._since = time.monotonic()
        return int(self.wh)

    def read(self) -> float:
        if self._since is not None:
            now = time.monotonic()
            self.wh += self.power_w * (now - self._since) / 3600.0
            self._since = now
        return round(self.wh, 3)

    async def stop(self, whole: bool = True) -> int:
        """Stop the power; ``whole``: charge on to the next whole Wh first (1.6 meterStop is an integer)."""
        target = math.ceil(self.read())
        if whole:
            await asyncio.sleep((target - self.wh) * 3600.0 / self.power_w)
            self.wh = float(target)
        self._since = None
        return target


class Charger:
    """One benign station: connects, calls reliably, heartbeats, meters, queues while offline."""

    def __init__(self, fleet: Fleet, cp_id: str, version: str, *, compress: bool = False,
                 power_w: float = 7400.0, wh: int = 120_000, serial: str = "MTR-0001") -> None:
        self.fleet, self.cp_id, self.version, self.compress = fleet, cp_id, version, compress
        self.meters, self.serial = {1: Meter(wh, power_w), 2: Meter(wh // 2, power_w)}, serial
        self.tags = [tag_for(cp_id, k, version) for k in range(3)]
        self.station: Station | None = None
        self.queue: list[Any] = []  # CALL payloads produced while offline
        self.last_heartbeat = time.monotonic()
        self.seq_no = 0
        self._stack = contextlib.AsyncExitStack()

    async def open(self) -> Station:
        self.station = await self._stack.enter_async_context(
            self.fleet.station(self.cp_id, self.version, compress=self.compress, timeout=RESPONSE_TIMEOUT_S))
        return self.station

    async def close(self) -> None:
        await self._stack.aclose()
        self.station = None

    async def call(self, payload: Any, attempts: int = 4) -> Any:
        """Send now or, while offline, queue; retry a CALLERROR or a timeout under the same id."""
        if self.station is None:
            self.queue.append(payload)
            return None
        message_id = str(uuid.uuid4())
        for attempt in range(attempts):
            try:
                # The central system validates what it receives; validating twice only costs time.
                return await self.station.call(payload, unique_id=message_id, suppress=False,
                                               skip_schema_validation=True)
            except (OCPPError, TimeoutError) as exc:
                if attempt == attempts - 1:
                    raise HarnessError(f"{self.cp_id}: {type(payload).__name__} failed {attempts} times") from exc
                await asyncio.sleep(0.05)
        return None

    async def drain(self) -> None:
        """Deliver what was queued offline, oldest first, before anything new."""
        queued, self.queue = self.queue, []
        for payload in queued:
            await self.call(payload)

    async def tick(self) -> None:
        """Pause between samples; heartbeat when it is time."""
        await asyncio.sleep(SAMPLE_GAP_S)
        if self.station is not None and time.monotonic() - self.last_heartbeat >= HEARTBEAT_GAP_S:
            self.last_heartbeat = time.monotonic()
            await self.call(call16.Heartbeat() if self.version == "1.6" else call201.Heartbeat())

    async def boot(self, reason: str = "PowerUp", firmware: str = "4.1.0") -> None:
        if self.version == "1.6":
            await self.call(call16.BootNotification(
                charge_point_model="AC22", charge_point_vendor="Research", firmware_version=firmware,
                charge_point_serial_number=f"SN-{self.cp_id}", meter_serial_number=self.serial, meter_type="DZG"))
            for connector in (0, 1, 2):
                await self.call(call16.StatusNotification(connector_id=connector, error_code="NoError",
                                                          status="Available", timestamp=_now()))
        else:
            await self.call(call201.BootNotification(
                charging_station={"model": "AC22", "vendorName": "Research", "firmwareVersion": firmware,
                                  "serialNumber": f"SN-{self.cp_id}"}, reason=reason))
            await self.status201("Available")

    async def status16(self, status: str, connector: int = 1) -> None:
        await self.call(call16.StatusNotification(connector_id=connector, error_code="NoError", status=status,
                                                  timestamp=_now()))

    async def status201(self, status: str, evse: int = 1) -> None:
        await self.call(call201.StatusNotification(timestamp=_now(), connector_status=status, evse_id=evse,
                                                   connector_id=1))

    async def security_event(self, kind: str, info: str | None = None) -> None:
        if self.version == "1.6":
            await self.call(call16.SecurityEventNotification(type=kind, timestamp=_now(), tech_info=info))
        else:
            await self.call(call201.SecurityEventNotification(type=kind, timestamp=_now(), tech_info=info))

    # --- 1.6 -------------------------------------------------------------------------------

    @property
    def meter(self) -> Meter:
        return self.meters[1]

    def meter_value16(self, connector: int = 1) -> list[dict[str, Any]]:
        meter = self.meters[connector]
        return [{"timestamp": _now(), "sampledValue": [
            {"value": f"{meter.read():.3f}", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
             "unit": "Wh"},
            {"value": str(int(meter.power_w)), "context": "Sample.Periodic", "measurand": "Power.Active.Import",
             "unit": "W"}]}]

    async def start16(self, tag: str, connector: int = 1, *, authorize: bool = True) -> int:
        if authorize:
            await self.call(call16.Authorize(id_tag=tag))
        await self.status16("Preparing", connector)
        started = await self.call(call16.StartTransaction(connector_id=connector, id_tag=tag,
                                                          meter_start=self.meters[connector].start(), timestamp=_now()))
        await self.status16("Charging", connector)
        return int(started.transaction_id)

    async def samples16(self, tx_id: int, count: int, connector: int = 1,
                        between: Callable[[int], Awaitable[None]] | None = None) -> None:
        for k in range(count):
            await self.call(call16.MeterValues(connector_id=connector, transaction_id=tx_id,
                                               meter_value=self.meter_value16(connector)))
            if between is not None:
                await between(k)
            await self.tick()

    async def stop16(self, tx_id: int, tag: str | None, reason: str = "Local", connector: int = 1) -> None:
        meter_stop = await self.meters[connector].stop()
        await self.call(call16.StopTransaction(meter_stop=meter_stop, timestamp=_now(), transaction_id=tx_id,
                                               reason=reason, id_tag=tag))
        await self.status16("Finishing", connector)
        await self.status16("Available", connector)

    async def session16(self, tag: str, samples: int, connector: int = 1) -> None:
        tx_id = await self.start16(tag, connector)
        await self.samples16(tx_id, samples, connector)
        await self.stop16(tx_id, tag, "EVDisconnected", connector)

    # --- 2.0.1 -----------------------------------------------------------------------------

    def meter_value201(self, context: str, *, energy: bool = True, electrical: bool = False,
                       ts: str | None = None) -> list[dict[str, Any]]:
        sampled: list[dict[str, Any]] = []
        if energy:
            sampled.append({"value": self.meter.read(), "context": context,
                            "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}})
        if electrical:
            sampled += [{"value": self.meter.power_w, "context": context, "measurand": "Power.Active.Import",
                         "unitOfMeasure": {"unit": "W"}},
                        {"value": 230.1, "context": context, "measurand": "Voltage", "phase": "L1-N",
                         "unitOfMeasure": {"unit": "V"}}]
        return [{"timestamp": ts or _now(), "sampledValue": sampled}]

    def event201(self, event_type: str, trigger: str, tx_id: str, *, state: str = "Charging", ts: str | None = None,
                 offline: bool = False, **extra: Any) -> Any:
        info: dict[str, Any] = {"transactionId": tx_id, "chargingState": state, **extra.pop("info", {})}
        self.seq_no += 1
        return call201.TransactionEvent(event_type=event_type, timestamp=ts or _now(), trigger_reason=trigger,
                                        seq_no=self.seq_no - 1, transaction_info=info, offline=offline or None,
                                        **extra)

    async def start201(self, tag: str, *, trigger: str = "Authorized", remote_start_id: int | None = None) -> str:
        tx_id, self.seq_no = str(uuid.uuid4()), 0
        token = {"idToken": tag, "type": "ISO14443"}
        if remote_start_id is None:
            await self.call(call201.Authorize(id_token=token))
        await self.status201("Occupied")
        info = {"remoteStartId": remote_start_id} if remote_start_id is not None else {}
        await self.call(self.event201("Started", trigger, tx_id, state="EVConnected", info=info,
                                      evse={"id": 1, "connectorId": 1}, id_token=token,
                                      meter_value=self.meter_value201("Transaction.Begin")))
        self.meter.start()
        await self.call(self.event201("Updated", "ChargingStateChanged", tx_id))
        return tx_id

    async def samples201(self, tx_id: str, count: int,
                         between: Callable[[int], Awaitable[None]] | None = None) -> None:
        for k in range(count):
            await self.call(self.event201("Updated", "MeterValuePeriodic", tx_id, offline=self.station is None,
                                          meter_value=self.meter_value201("Sample.Periodic")))
            if between is not None:
                await between(k)
            await self.tick()

    async def stop201(self, tx_id: str, reason: str = "EVDisconnected", trigger: str = "EVCommunicationLost") -> None:
        await self.meter.stop(whole=False)
        await self.call(self.event201("Ended", trigger, tx_id, state="Idle", info={"stoppedReason": reason},
                                      meter_value=self.meter_value201("Transaction.End")))
        await self.status201("Available")

    async def session201(self, tag: str, samples: int) -> None:
        tx_id = await self.start201(tag)
        await self.samples201(tx_id, samples)
        await self.stop201(tx_id)

    async def session(self, tag: str, samples: int) -> None:
        if self.version == "1.6":
            await self.session16(tag, samples)
        else:
            await self.session201(tag, samples)


def benign_plan(tags: frozenset[str], **deviations: Any) -> CsmsPlan:
    """The central system of the benign runs: every driver tag known, heartbeat interval compressed."""
    return CsmsPlan(heartbeat_interval=HEARTBEAT_INTERVAL, known_tags=tags, **deviations)


async def plain_station(fleet: Fleet, cp_id: str, version: str, *, compress: bool, sessions: int,
                        samples: int) -> None:
    """Boot, then charge ``sessions`` drivers one after another: the traffic most of a fleet sends."""
    charger = Charger(fleet, cp_id, version, compress=compress)
    await charger.open()
    try:
        await charger.boot()
        for k in range(sessions):
            await charger.session(charger.tags[k % len(charger.tags)], samples)
    finally:
        await charger.close()


__all__ = ["HEARTBEAT_INTERVAL", "Charger", "Meter", "benign_plan", "plain_station", "tag_for"]
