"""The benign corpus: a fleet of real OCPP 1.6 and 2.0.1 stations behaving well, edge cases included.

Forty stations (half of them compressed) boot and charge drivers one after another while the
central system answers realistically. Some stations carry one legal twist each (``TWISTS``):
retries after a CALLERROR or a timeout under the same message id, reconnects with and without
an open transaction, TransactionEvents queued offline (offline=true, intermediate ones dropped
for memory: the only seqNo gaps), meter data split over events with the same timestamp, a meter
replacement, and the operator's everyday commands (configuration reads and one change, remote
start/stop with the driver's own tag, one soft reset, a firmware update from the operator's
https host, a charging profile within the rating). The mark ``cut`` is taken while two
stations, one of them compressed, are in the middle of a transaction on their first
connection: the capture cut there starts mid-session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from tests.benign import FIRMWARE_URL, Charger, Meter, benign_plan, tag_for
from tests.livefleet import Fleet
from tests.livepeers import CsmsPlan
from tests.peers import _now

STATIONS = 20  # per version
SESSIONS = 4
SAMPLES = 30
ROAMING_TAG = "5EA1F00D"  # one driver who charges at two stations, one after the other

Twist = Callable[[Fleet, Charger, "Timeline"], Awaitable[None]]


class Timeline:
    """Moments the twists wait for each other on."""

    def __init__(self) -> None:
        self.ready = {cp_id: asyncio.Event() for cp_id in CUT_SPANNING}
        self.cut = asyncio.Event()
        self.roamed = asyncio.Event()

    async def take_cut(self, fleet: Fleet) -> None:
        """Mark the cut once every spanning station is mid-transaction, then let them go on."""
        await asyncio.gather(*(event.wait() for event in self.ready.values()))
        fleet.mark("cut")
        self.cut.set()


async def operator(fleet: Fleet, cp_id: str, payload: Any) -> Any:
    """The central system's operator sends one command to a station."""
    peer = await fleet.central.peer(cp_id)
    return await peer.call(payload)


async def _sessions(ch: Charger, count: int, first: int = 0) -> None:
    for k in range(first, first + count):
        await ch.session(ch.tags[k % len(ch.tags)], SAMPLES)


async def _plain(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    await _sessions(ch, SESSIONS)


async def _startup_event(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    await ch.security_event("StartupOfTheDevice")
    await _sessions(ch, SESSIONS)


async def _reconnect_mid_transaction16(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    """The link drops while charging; MeterValues queue offline and drain, in order, on reconnect."""
    await ch.boot()
    tx_id = await ch.start16(ch.tags[0])
    await ch.samples16(tx_id, SAMPLES // 3)
    tl.ready[ch.cp_id].set()
    await tl.cut.wait()
    await ch.close()
    await ch.samples16(tx_id, 6)  # offline: queued with their own timestamps
    await ch.open()
    await ch.drain()
    await ch.samples16(tx_id, SAMPLES // 3)
    await ch.stop16(tx_id, ch.tags[0])
    await _sessions(ch, SESSIONS - 1, first=1)


async def _offline_queue201(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    """Offline TransactionEvents (offline=true) queue; the station drops every other one for memory."""
    await ch.boot()
    tx_id = await ch.start201(ch.tags[0])
    await ch.samples201(tx_id, SAMPLES // 3)
    tl.ready[ch.cp_id].set()
    await tl.cut.wait()
    await ch.close()
    await ch.samples201(tx_id, 8)
    ch.queue = [event for k, event in enumerate(ch.queue) if k % 2 == 0 or k == len(ch.queue) - 1]
    await ch.open()
    await ch.drain()
    await ch.samples201(tx_id, SAMPLES // 3)
    await ch.stop201(tx_id)
    await _sessions(ch, SESSIONS - 1, first=1)


async def _split_meter_data(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    """Every fifth sample is too big for one event: two Updated events with the same timestamp."""

    async def split(k: int) -> None:
        if k % 5 == 4:
            moment = _now()
            await ch.call(ch.event201("Updated", "MeterValuePeriodic", tx_id, ts=moment,
                                      meter_value=ch.meter_value201("Sample.Periodic", ts=moment)))
            await ch.call(ch.event201("Updated", "MeterValuePeriodic", tx_id, ts=moment,
                                      meter_value=ch.meter_value201("Sample.Periodic", energy=False,
                                                                    electrical=True, ts=moment)))

    await ch.boot()
    for k in range(SESSIONS):
        tx_id = await ch.start201(ch.tags[k % 3])
        await ch.samples201(tx_id, SAMPLES, between=split)
        await ch.stop201(tx_id)


async def _meter_replacement(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    """After two sessions the meter is swapped: reboot, new meter serial, register from zero."""
    await ch.boot()
    await _sessions(ch, 2)
    await ch.close()
    ch.meters[1], ch.serial = Meter(0, ch.meter.power_w), "MTR-0002"
    await ch.open()
    await ch.boot()
    await _sessions(ch, SESSIONS - 2, first=2)


async def _configuration(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    await _sessions(ch, 1)
    if ch.version == "1.6":
        await operator(fleet, ch.cp_id, call16.GetConfiguration(key=["HeartbeatInterval", "MeterValueSampleInterval"]))
        await operator(fleet, ch.cp_id, call16.ChangeConfiguration(key="MeterValueSampleInterval", value="30"))
    else:
        wanted = [{"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                  {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"}}]
        await operator(fleet, ch.cp_id, call201.GetVariables(get_variable_data=wanted))
    await _sessions(ch, SESSIONS - 1, first=1)


async def _remote_start_stop(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    """The app starts and stops a session for a driver who charged here before."""
    await ch.boot()
    await _sessions(ch, 2)
    tag = ch.tags[0]
    if ch.version == "1.6":
        await operator(fleet, ch.cp_id, call16.RemoteStartTransaction(id_tag=tag, connector_id=1))
        tx16 = await ch.start16(tag)
        await ch.samples16(tx16, SAMPLES)
        await operator(fleet, ch.cp_id, call16.RemoteStopTransaction(transaction_id=tx16))
        await ch.stop16(tx16, tag, "Remote")
    else:
        await operator(fleet, ch.cp_id, call201.RequestStartTransaction(
            id_token={"idToken": tag, "type": "ISO14443"}, remote_start_id=4711, evse_id=1))
        tx201 = await ch.start201(tag, trigger="RemoteStart", remote_start_id=4711)
        await ch.samples201(tx201, SAMPLES)
        await operator(fleet, ch.cp_id, call201.RequestStopTransaction(transaction_id=tx201))
        await ch.stop201(tx201, "Remote", "RemoteStop")
    await _sessions(ch, SESSIONS - 3, first=2)


async def _soft_reset(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    await _sessions(ch, 2)
    await operator(fleet, ch.cp_id, call16.Reset(type="Soft"))
    await ch.close()
    await ch.open()
    await ch.boot()
    await ch.security_event("ResetOrReboot")
    await _sessions(ch, SESSIONS - 2, first=2)


async def _firmware_update(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    await _sessions(ch, 2)
    await operator(fleet, ch.cp_id, call16.UpdateFirmware(location=FIRMWARE_URL, retrieve_date=_now()))
    for status in ("Downloading", "Downloaded", "Installing"):
        await ch.call(call16.FirmwareStatusNotification(status=status))
    await ch.close()
    await ch.open()
    await ch.boot(firmware="4.2.1")
    await ch.call(call16.FirmwareStatusNotification(status="Installed"))
    await ch.security_event("FirmwareUpdated")
    await _sessions(ch, SESSIONS - 2, first=2)


async def _charging_profile(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    profile = {"chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
               "chargingProfileKind": "Absolute", "chargingSchedule": {
                   "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}]}}
    await operator(fleet, ch.cp_id, call16.SetChargingProfile(connector_id=1, cs_charging_profiles=profile))
    await _sessions(ch, SESSIONS)


async def _two_connectors(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    """Two cars at once, one per connector of the station."""

    async def connector(number: int) -> None:
        for k in range(SESSIONS // 2):
            tag = ch.tags[(2 * k + number) % 3]
            tx_id = await ch.start16(tag, number)
            await ch.samples16(tx_id, SAMPLES, number)
            await ch.stop16(tx_id, tag, "EVDisconnected", number)

    await ch.boot()
    await asyncio.gather(connector(1), connector(2))


async def _reconnect_between_sessions(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    for k in range(SESSIONS):
        await _sessions(ch, 1, first=k)
        await ch.close()
        await ch.open()  # a reconnect is not a reboot: no BootNotification


async def _roaming_first(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    ch.tags[2] = ROAMING_TAG
    await _plain(fleet, ch, tl)
    tl.roamed.set()


async def _roaming_second(fleet: Fleet, ch: Charger, tl: Timeline) -> None:
    await ch.boot()
    await _sessions(ch, SESSIONS - 1)
    await tl.roamed.wait()
    await ch.session(ROAMING_TAG, SAMPLES)


CUT_SPANNING = ("B16-02", "B201-01")
TWISTS: dict[str, Twist] = {
    "B16-00": _plain,  # CALLERROR once for StartTransaction and MeterValues: retried under the same id
    "B16-01": _plain,  # StopTransaction lost once: timeout, retried under the same id
    "B16-02": _reconnect_mid_transaction16,
    "B16-03": _meter_replacement,
    "B16-04": _configuration,
    "B16-05": _remote_start_stop,
    "B16-06": _soft_reset,
    "B16-07": _firmware_update,
    "B16-08": _charging_profile,
    "B16-09": _two_connectors,
    "B16-10": _roaming_first,
    "B201-00": _plain,  # TransactionEvent lost once: timeout, retried under the same id
    "B201-01": _offline_queue201,
    "B201-02": _split_meter_data,
    "B201-03": _configuration,
    "B201-04": _remote_start_stop,
    "B201-05": _plain,  # Authorize answered with a CALLERROR once
    "B201-06": _reconnect_between_sessions,
    "B201-07": _startup_event,
    "B201-10": _roaming_second,
    "B201-12": _startup_event,
}


def station_ids() -> list[tuple[str, str]]:
    """(identity, version) of every station of the corpus."""
    return [(f"B16-{i:02d}", "1.6") for i in range(STATIONS)] + [(f"B201-{i:02d}", "2.0.1") for i in range(STATIONS)]


def corpus_plan() -> CsmsPlan:
    tags = {tag_for(cp_id, k, version) for cp_id, version in station_ids() for k in range(3)} | {ROAMING_TAG}
    return benign_plan(frozenset(tags),
                       fail_once=frozenset({("B16-00", "StartTransaction"), ("B16-00", "MeterValues"),
                                            ("B201-05", "Authorize")}),
                       drop_once=frozenset({("B16-01", "StopTransaction"), ("B201-00", "TransactionEvent")}))


async def benign_fleet(fleet: Fleet) -> None:
    """Run every station of the corpus at once (record with :func:`corpus_plan`)."""
    timeline = Timeline()

    async def run(index: int, cp_id: str, version: str) -> None:
        charger = Charger(fleet, cp_id, version, compress=index % 2 == 0 or cp_id in CUT_SPANNING,
                          power_w=7400.0 if index % 3 else 11000.0)
        await charger.open()
        try:
            await TWISTS.get(cp_id, _plain)(fleet, charger, timeline)
        finally:
            await charger.close()

    await asyncio.gather(timeline.take_cut(fleet),
                         *(run(i, cp_id, version) for i, (cp_id, version) in enumerate(station_ids())))


__all__ = ["CUT_SPANNING", "TWISTS", "benign_fleet", "corpus_plan", "operator", "station_ids"]
