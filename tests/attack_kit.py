"""Building blocks of the attack scenarios (:mod:`tests.attacks`): the cards, frames and moves they share."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from tests.benign import tag_for
from tests.livefleet import Fleet, Station
from tests.peers import _now

NEVER_SEEN_TAG = "DEADBEEF"
OTHER_TAG = "0BADCAFE"
SHARED_TAG = "C0FFEE01"  # one card cloned onto several stations
SHORT_TAG = "5701E000"  # a stolen card being tried out
FIRMWARE_HTTP = "http://firmware.example-cpo.com/ac22/4.2.1.bin"
PEM = ("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2hhcmdld2F0Y2ggdGVzdCByb290MAoGCCqGSM49BAMC\n"
       "-----END CERTIFICATE-----\n")
Attack = Callable[[Fleet], Awaitable[None]]
PENDING_CP = "A201-PENDING"
UNKNOWN_TAGS = frozenset({NEVER_SEEN_TAG, "EVIL0001"})


def own_tag(cp_id: str) -> str:
    """The driver card of an attack station (each station its own: fleet rules correlate tags)."""
    return tag_for(cp_id, 0)


def new_id() -> str:
    return str(uuid.uuid4())


def shifted(days: float) -> str:
    moment = datetime.now(UTC) + timedelta(days=days)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def boot(st: Station) -> Any:
    if st.version == "1.6":
        return await st.call(call16.BootNotification(charge_point_model="AC22", charge_point_vendor="Research"))
    return await st.call(call201.BootNotification(charging_station={"model": "AC22", "vendorName": "Research"},
                                                  reason="PowerUp"))


async def csms_call(fleet: Fleet, cp_id: str, payload: Any, rogue: bool = False) -> str:
    """A command from the (legitimate or rogue) central system; returns its message id."""
    peer = await (fleet.rogue if rogue else fleet.central).peer(cp_id)
    message_id = new_id()
    await peer.call(payload, unique_id=message_id)
    return message_id


def start16(connector: int, tag: str, wh: int) -> Any:
    return call16.StartTransaction(connector_id=connector, id_tag=tag, meter_start=wh, timestamp=_now())


def meter16(tx_id: int, wh: float, ts: str | None = None) -> Any:
    sample = {"value": f"{wh:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    return call16.MeterValues(connector_id=1, transaction_id=tx_id,
                              meter_value=[{"timestamp": ts or _now(), "sampledValue": [sample]}])


def stop16(tx_id: int, wh: int, reason: str = "Local") -> Any:
    return call16.StopTransaction(meter_stop=wh, timestamp=_now(), transaction_id=tx_id, reason=reason)


def event201(kind: str, trigger: str, tx_id: str, seq: int, wh: float | None = None, ts: str | None = None,
             **extra: Any) -> Any:
    context = {"Started": "Transaction.Begin", "Ended": "Transaction.End"}.get(kind, "Sample.Periodic")
    if wh is not None:
        extra["meter_value"] = [{"timestamp": ts or _now(), "sampledValue": [
            {"value": wh, "context": context, "measurand": "Energy.Active.Import.Register"}]}]
    info = {"transactionId": tx_id, **({"stoppedReason": "Local"} if kind == "Ended" else {})}
    return call201.TransactionEvent(event_type=kind, timestamp=ts or _now(), trigger_reason=trigger, seq_no=seq,
                                    transaction_info=info, **extra)


__all__ = ["FIRMWARE_HTTP", "NEVER_SEEN_TAG", "OTHER_TAG", "PEM", "PENDING_CP", "SHARED_TAG", "SHORT_TAG",
           "UNKNOWN_TAGS", "Attack", "boot", "csms_call", "event201", "meter16", "new_id", "own_tag", "shifted",
           "start16", "stop16"]
