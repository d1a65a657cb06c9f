"""Attacks on the network side: commands from the wrong or a misused central system, men in the middle,
fleet-wide patterns only correlation across charge points shows.

Each scenario connects its own station(s), behaves until the attack, notes the injection
(:meth:`tests.livefleet.Fleet.inject`) and sends it; :data:`tests.attacks.ATTACKS` says what each must raise.
"""

from __future__ import annotations

import asyncio

from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from tests.attack_kit import (
    FIRMWARE_HTTP,
    NEVER_SEEN_TAG,
    PEM,
    SHARED_TAG,
    SHORT_TAG,
    boot,
    csms_call,
    event201,
    meter16,
    new_id,
    own_tag,
    start16,
    stop16,
)
from tests.benign import Charger
from tests.livefleet import ROGUE_HOST, Fleet, Station
from tests.peers import _now

# --- unauthorized commands --------------------------------------------------------------------------


async def cp_sends_csms_action(fleet: Fleet) -> None:
    async with fleet.station("A16-DIRECTION", "1.6") as st:
        await boot(st)
        message_id = new_id()
        fleet.inject("cp_sends_csms_action", st.cp_id, message_id)
        await st.send_raw(message_id, "Reset", {"type": "Hard"})
        await st.call(call16.Heartbeat())


async def rogue_csms_reset(fleet: Fleet) -> None:
    async with fleet.station("A16-ROGUE", "1.6", host=ROGUE_HOST) as st:
        await boot(st)
        message_id = await csms_call(fleet, st.cp_id, call16.Reset(type="Hard"), rogue=True)
        fleet.inject("rogue_csms_reset", st.cp_id, message_id)


async def weaken_remote_authorization(fleet: Fleet) -> None:
    async with fleet.station("A16-WEAKEN", "1.6") as st:
        await boot(st)
        await csms_call(fleet, st.cp_id, call16.GetConfiguration(key=["AuthorizeRemoteTxRequests"]))
        message_id = await csms_call(fleet, st.cp_id, call16.ChangeConfiguration(key="AuthorizeRemoteTxRequests",
                                                                                 value="false"))
        fleet.inject("weaken_remote_authorization", st.cp_id, message_id)


async def lower_security_profile(fleet: Fleet) -> None:
    variable = {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"}}
    async with fleet.station("A201-SECPROF", "2.0.1") as st:
        await boot(st)
        await csms_call(fleet, st.cp_id, call201.GetVariables(get_variable_data=[variable]))
        message_id = await csms_call(fleet, st.cp_id, call201.SetVariables(
            set_variable_data=[variable | {"attributeValue": "1"}]))
        fleet.inject("lower_security_profile", st.cp_id, message_id)


async def firmware_over_http(fleet: Fleet) -> None:
    async with fleet.station("A16-FWHTTP", "1.6") as st:
        await boot(st)
        message_id = await csms_call(fleet, st.cp_id, call16.UpdateFirmware(location=FIRMWARE_HTTP,
                                                                            retrieve_date=_now()))
        fleet.inject("firmware_over_http", st.cp_id, message_id)
        await st.call(call16.FirmwareStatusNotification(status="Downloading"))


async def unlock_during_transaction(fleet: Fleet) -> None:
    async with fleet.station("A16-UNLOCK", "1.6") as st:
        await boot(st)
        started = await st.call(start16(1, own_tag(st.cp_id), 4000))
        await st.call(meter16(started.transaction_id, 4001.0))
        message_id = await csms_call(fleet, st.cp_id, call16.UnlockConnector(connector_id=1))
        fleet.inject("unlock_during_transaction", st.cp_id, message_id)
        await st.call(stop16(started.transaction_id, 4002, "UnlockCommand"))


async def remote_start_unknown_tag(fleet: Fleet) -> None:
    charger = Charger(fleet, "A16-REMOTE", "1.6")
    await charger.open()
    try:
        await charger.boot()
        await charger.session(charger.tags[0], 40)
        await asyncio.sleep(1.0)  # idle: watched for longer than the policy's warm-up (one second)
        message_id = await csms_call(fleet, charger.cp_id, call16.RemoteStartTransaction(id_tag=NEVER_SEEN_TAG,
                                                                                         connector_id=1))
        fleet.inject("remote_start_unknown_tag", charger.cp_id, message_id)
        await charger.call(call16.Authorize(id_tag=NEVER_SEEN_TAG))  # Invalid: the station does not start
    finally:
        await charger.close()


async def profile_above_rating(fleet: Fleet) -> None:
    profile = {"chargingProfileId": 9, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
               "chargingProfileKind": "Absolute", "chargingSchedule": {
                   "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 43000.0}]}}
    async with fleet.station("A16-PROFILE", "1.6") as st:
        await boot(st)
        message_id = await csms_call(fleet, st.cp_id, call16.SetChargingProfile(connector_id=1,
                                                                                cs_charging_profiles=profile))
        fleet.inject("profile_above_rating", st.cp_id, message_id)


async def certificate_over_ws(fleet: Fleet) -> None:
    async with fleet.station("A201-CERT", "2.0.1", compress=True) as st:
        await boot(st)
        message_id = await csms_call(fleet, st.cp_id, call201.InstallCertificate(
            certificate_type="CSMSRootCertificate", certificate=PEM))
        fleet.inject("certificate_over_ws", st.cp_id, message_id)


# --- man in the middle ----------------------------------------------------------------------------------


async def twin_identity(fleet: Fleet) -> None:
    """The station (127.0.0.2) and a clone (127.0.0.3) both live under one identity for a second."""
    cp_id = "A16-TWIN"

    async def main_meter(st: Station, wh: float, count: int) -> None:
        for k in range(count):
            sample = {"value": f"{wh + k:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
            await st.call(call16.MeterValues(connector_id=0, meter_value=[
                {"timestamp": _now(), "sampledValue": [sample | {"context": "Sample.Clock"}]}]))
            await asyncio.sleep(0.05)

    async def clone() -> None:
        await asyncio.sleep(0.3)
        async with fleet.station(cp_id, "1.6", bind="127.0.0.3") as st:
            await boot(st)
            fleet.inject("twin_identity", cp_id)
            await main_meter(st, 60000.0, 25)

    async with fleet.station(cp_id, "1.6", bind="127.0.0.2") as st:
        await boot(st)
        await asyncio.gather(main_meter(st, 20000.0, 40), clone())


async def subprotocol_downgrade(fleet: Fleet) -> None:
    async with fleet.station("A201-DOWNGRADE", "2.0.1", offer=["ocpp2.0.1", "ocpp1.6"]) as st:
        await boot(st)
        await st.call(call201.Heartbeat())
    async with fleet.station("A201-DOWNGRADE", "1.6", offer=["ocpp1.6"]) as st:
        fleet.inject("subprotocol_downgrade", st.cp_id)
        await boot(st)


async def basic_auth_over_ws(fleet: Fleet) -> None:
    async with fleet.station("A16-BASIC", "1.6", basic=("A16-BASIC", "a16-basic-password")) as st:
        fleet.inject("basic_auth_over_ws", st.cp_id)
        await boot(st)


async def basic_username_mismatch(fleet: Fleet) -> None:
    async with fleet.station("A16-MISMATCH", "1.6", basic=("A16-OTHER", "another-stations-password")) as st:
        fleet.inject("basic_username_mismatch", st.cp_id)
        await boot(st)


# --- fleet correlation ---------------------------------------------------------------------------------

FLEET_16 = [f"F16-{i:02d}" for i in range(1, 13)]
FLEET_201 = ["F201-01"]
SHARED_AT = {"F16-01", "F16-02", "F16-03", "F201-01"}  # one cloned card, four stations at once
SHORT_AT = {"F16-04", "F16-05", "F16-06", "F16-07", "F16-08"}  # a stolen card tried five times


async def fleet_wide(fleet: Fleet) -> None:
    """A cloned card charges at four stations at once, a stolen one is tried at five, then Reset Hard to 12."""
    gate = asyncio.Barrier(len(FLEET_16) + len(FLEET_201))
    one_at_a_time = asyncio.Lock()

    async def station(cp_id: str, version: str, index: int) -> None:
        async with fleet.station(cp_id, version, compress=index % 2 == 1) as st:
            await boot(st)
            await gate.wait()
            if cp_id in SHARED_AT:
                await shared_card(st)
            elif cp_id in SHORT_AT:
                async with one_at_a_time:
                    await short_session(st)
            await gate.wait()
            if version == "1.6":
                fleet.inject("fleet_same_command", cp_id, await csms_call(fleet, cp_id, call16.Reset(type="Hard")))

    async def shared_card(st: Station) -> None:
        fleet.inject("fleet_shared_tag", st.cp_id)
        fleet.inject("fleet_concurrent_sessions", st.cp_id)
        token = {"idToken": SHARED_TAG, "type": "ISO14443"}
        if st.version == "1.6":
            await st.call(call16.Authorize(id_tag=SHARED_TAG))
            started = await st.call(start16(1, SHARED_TAG, 1000))
            await st.call(meter16(started.transaction_id, 1001.0))
            await asyncio.sleep(0.6)
            await st.call(stop16(started.transaction_id, 1002))
        else:
            await st.call(call201.Authorize(id_token=token))
            tx_id = new_id()
            await st.call(event201("Started", "Authorized", tx_id, 0, 10.0, evse={"id": 1, "connectorId": 1},
                                   id_token=token))
            await asyncio.sleep(0.6)
            await st.call(event201("Ended", "EVCommunicationLost", tx_id, 1, 11.0))

    async def short_session(st: Station) -> None:
        fleet.inject("fleet_short_sessions", st.cp_id)
        started = await st.call(start16(1, SHORT_TAG, 2000))
        await st.call(stop16(started.transaction_id, 2000))

    await asyncio.gather(*(station(cp_id, "1.6", i) for i, cp_id in enumerate(FLEET_16)),
                         *(station(cp_id, "2.0.1", 0) for cp_id in FLEET_201))
