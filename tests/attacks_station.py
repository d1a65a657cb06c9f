"""Attacks a charge point (or a client in its name) makes: replays, forged metering, security events, protocol abuse.

Each scenario connects its own station, behaves until the attack, notes the injection
(:meth:`tests.livefleet.Fleet.inject`) and sends it; :data:`tests.attacks.ATTACKS` says what each must raise.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from tests.attack_kit import (
    NEVER_SEEN_TAG,
    OTHER_TAG,
    PENDING_CP,
    Attack,
    boot,
    event201,
    meter16,
    new_id,
    own_tag,
    shifted,
    start16,
    stop16,
)
from tests.livefleet import Fleet
from tests.peers import _now

# --- replay ---------------------------------------------------------------------------------------


async def replay_different_payload(fleet: Fleet) -> None:
    async with fleet.station("A16-REPLAY", "1.6") as st:
        await boot(st)
        message_id = new_id()
        await st.call(call16.Authorize(id_tag=own_tag(st.cp_id)), unique_id=message_id)
        fleet.inject("replay_different_payload", st.cp_id, message_id)
        await st.send_raw(message_id, "Authorize", {"idTag": "EVIL0001"})


async def resend_after_result(fleet: Fleet) -> None:
    async with fleet.station("A201-RESEND", "2.0.1", compress=True) as st:
        await boot(st)
        message_id = new_id()
        token = {"idToken": own_tag(st.cp_id), "type": "ISO14443"}
        await st.call(call201.Authorize(id_token=token), unique_id=message_id)
        fleet.inject("resend_after_result", st.cp_id, message_id)
        await st.send_raw(message_id, "Authorize", {"idToken": token})


async def answered_twice(fleet: Fleet) -> None:
    async with fleet.station("A16-DOUBLE", "1.6") as st:
        await boot(st)
        message_id = new_id()
        answer = await st.call(call16.Authorize(id_tag=NEVER_SEEN_TAG), unique_id=message_id)
        if answer.id_tag_info["status"] == "Accepted":
            raise AssertionError("the central system accepted an unknown tag")
        csms = await fleet.central.peer(st.cp_id)
        fleet.inject("answered_twice", st.cp_id, message_id)  # someone in the path: "Accepted" after "Invalid"
        await csms._connection.send(json.dumps([3, message_id, {"idTagInfo": {"status": "Accepted"}}]))
        await st.call(call16.Heartbeat())


async def backdated_timestamp(fleet: Fleet) -> None:
    async with fleet.station("A201-CLOCK", "2.0.1") as st:
        await boot(st)
        tx_id = new_id()
        await st.call(event201("Started", "Authorized", tx_id, 0, 100.0, evse={"id": 1, "connectorId": 1},
                               id_token={"idToken": own_tag(st.cp_id), "type": "ISO14443"}))
        await st.call(event201("Updated", "MeterValuePeriodic", tx_id, 1, 101.0))
        message_id = new_id()
        fleet.inject("backdated_timestamp", st.cp_id, message_id)
        await st.call(event201("Updated", "MeterValuePeriodic", tx_id, 2, 101.5, ts=shifted(-1)),
                      unique_id=message_id)
        await st.call(event201("Ended", "EVCommunicationLost", tx_id, 3, 102.0))


async def future_timestamp(fleet: Fleet) -> None:
    async with fleet.station("A16-FUTURE", "1.6", compress=True) as st:
        await boot(st)
        started = await st.call(start16(1, own_tag(st.cp_id), 3000))
        tx_id = started.transaction_id
        await st.call(meter16(tx_id, 3001.0))
        message_id = new_id()
        fleet.inject("future_timestamp", st.cp_id, message_id)
        await st.call(meter16(tx_id, 3002.0, ts=shifted(1)), unique_id=message_id)
        await st.call(stop16(tx_id, 3003))


async def transaction_id_reuse(fleet: Fleet) -> None:
    async with fleet.station("A201-TXREUSE", "2.0.1") as st:
        await boot(st)
        tx_id, token = new_id(), {"idToken": own_tag(st.cp_id), "type": "ISO14443"}
        await st.call(event201("Started", "Authorized", tx_id, 0, 500.0, evse={"id": 1, "connectorId": 1},
                               id_token=token))
        await st.call(event201("Updated", "MeterValuePeriodic", tx_id, 1, 501.0))
        await st.call(event201("Ended", "EVCommunicationLost", tx_id, 2, 502.0))
        message_id = new_id()
        fleet.inject("transaction_id_reuse", st.cp_id, message_id)
        await st.call(event201("Started", "Authorized", tx_id, 0, 502.0, evse={"id": 1, "connectorId": 1},
                               id_token=token), unique_id=message_id)


async def start_on_busy_connector(fleet: Fleet) -> None:
    async with fleet.station("A16-BUSY", "1.6") as st:
        await boot(st)
        first = await st.call(start16(1, own_tag(st.cp_id), 8000))
        await st.call(meter16(first.transaction_id, 8001.0))
        message_id = new_id()
        fleet.inject("start_on_busy_connector", st.cp_id, message_id)
        second = await st.call(start16(1, OTHER_TAG, 8002), unique_id=message_id)
        await st.call(stop16(second.transaction_id, 8003))
        await st.call(stop16(first.transaction_id, 8003))


async def stop_closed_transaction(fleet: Fleet) -> None:
    async with fleet.station("A16-STOPPED", "1.6") as st:
        await boot(st)
        started = await st.call(start16(1, own_tag(st.cp_id), 9000))
        await st.call(meter16(started.transaction_id, 9001.0))
        await st.call(stop16(started.transaction_id, 9002))
        await st.call(call16.Heartbeat())
        message_id = new_id()
        fleet.inject("stop_closed_transaction", st.cp_id, message_id)
        await st.call(stop16(started.transaction_id, 9500), unique_id=message_id)


async def seqno_gap_online(fleet: Fleet) -> None:
    async with fleet.station("A201-SEQGAP", "2.0.1") as st:
        await boot(st)
        tx_id = new_id()
        await st.call(event201("Started", "Authorized", tx_id, 0, 700.0, evse={"id": 1, "connectorId": 1},
                               id_token={"idToken": own_tag(st.cp_id), "type": "ISO14443"}))
        await st.call(event201("Updated", "MeterValuePeriodic", tx_id, 1, 701.0))
        message_id = new_id()
        fleet.inject("seqno_gap_online", st.cp_id, message_id)
        await st.call(event201("Updated", "MeterValuePeriodic", tx_id, 4, 702.0), unique_id=message_id)
        await st.call(event201("Ended", "EVCommunicationLost", tx_id, 5, 703.0))


# --- abnormal transactions ------------------------------------------------------------------------------


async def energy_above_max_power(fleet: Fleet) -> None:
    async with fleet.station("A16-ENERGY", "1.6") as st:
        await boot(st)
        started = await st.call(start16(1, own_tag(st.cp_id), 50000))
        tx_id = started.transaction_id
        for k in range(6):  # 11 kW: about 3 Wh a second
            await asyncio.sleep(0.25)
            await st.call(meter16(tx_id, 50000.0 + 0.8 * (k + 1)))
        message_id = new_id()
        fleet.inject("energy_above_max_power", st.cp_id, message_id)
        await st.call(meter16(tx_id, 70000.0), unique_id=message_id)
        await st.call(stop16(tx_id, 70001))


async def register_backwards(fleet: Fleet) -> None:
    async with fleet.station("A201-BACKWARDS", "2.0.1") as st:
        await boot(st)
        tx_id = new_id()
        await st.call(event201("Started", "Authorized", tx_id, 0, 1000.0, evse={"id": 1, "connectorId": 1},
                               id_token={"idToken": own_tag(st.cp_id), "type": "ISO14443"}))
        await st.call(event201("Updated", "MeterValuePeriodic", tx_id, 1, 1050.0))
        message_id = new_id()
        fleet.inject("register_backwards", st.cp_id, message_id)
        await st.call(event201("Updated", "MeterValuePeriodic", tx_id, 2, 1020.0), unique_id=message_id)
        await st.call(event201("Ended", "EVCommunicationLost", tx_id, 3, 1060.0))


async def stop_below_start(fleet: Fleet) -> None:
    async with fleet.station("A16-STOPLOW", "1.6", compress=True) as st:
        await boot(st)
        started = await st.call(start16(1, own_tag(st.cp_id), 20000))
        await st.call(meter16(started.transaction_id, 20001.0))
        message_id = new_id()
        fleet.inject("stop_below_start", st.cp_id, message_id)
        await st.call(stop16(started.transaction_id, 15000), unique_id=message_id)


# --- security events ---------------------------------------------------------------------------------


def security_event_attack(attack: str, cp_id: str, version: str, kind: str) -> Attack:
    async def run(fleet: Fleet) -> None:
        async with fleet.station(cp_id, version) as st:
            await boot(st)
            module: Any = call16 if version == "1.6" else call201
            message_id = new_id()
            fleet.inject(attack, cp_id, message_id)
            await st.call(module.SecurityEventNotification(type=kind, timestamp=_now(), tech_info=None),
                          unique_id=message_id)

    return run


# --- protocol anomalies -----------------------------------------------------------------------------


async def schema_invalid(fleet: Fleet) -> None:
    async with fleet.station("A16-SCHEMA", "1.6") as st:
        await boot(st)
        message_id = new_id()
        fleet.inject("schema_invalid", st.cp_id, message_id)
        await st.send_raw(message_id, "StatusNotification",
                          {"connectorId": "1", "errorCode": "NoError", "status": "Available"})


async def unknown_action(fleet: Fleet) -> None:
    async with fleet.station("A201-UNKNOWN", "2.0.1") as st:
        await boot(st)
        message_id = new_id()
        fleet.inject("unknown_action", st.cp_id, message_id)
        await st.send_raw(message_id, "FooBar", {"probe": 1})


async def call_before_boot_accepted(fleet: Fleet) -> None:
    async with fleet.station(PENDING_CP, "2.0.1") as st:
        answer = await boot(st)
        if answer.status != "Pending":
            raise AssertionError(f"{PENDING_CP}: expected a Pending boot, got {answer.status}")
        message_id = new_id()
        fleet.inject("call_before_boot_accepted", st.cp_id, message_id)
        token = {"idToken": own_tag(st.cp_id), "type": "ISO14443"}
        await st.call(call201.Authorize(id_token=token), unique_id=message_id)


async def message_id_too_long(fleet: Fleet) -> None:
    async with fleet.station("A16-LONGID", "1.6") as st:
        await boot(st)
        message_id = "x" * 24 + new_id()  # 60 characters
        fleet.inject("message_id_too_long", st.cp_id, message_id)
        await st.send_raw(message_id, "Heartbeat", {})


async def boot_storm(fleet: Fleet) -> None:
    async with fleet.station("A16-BOOTSTORM", "1.6") as st:
        fleet.inject("boot_storm", st.cp_id)
        for _ in range(8):
            await boot(st)


async def heartbeat_flood(fleet: Fleet) -> None:
    async with fleet.station("A16-HBFLOOD", "1.6", compress=True) as st:
        await boot(st)
        fleet.inject("heartbeat_flood", st.cp_id)
        for _ in range(25):
            await st.call(call16.Heartbeat())
