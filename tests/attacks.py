"""The attack suite: every detection family attacked at least once, by real OCPP peers, among benign traffic.

:func:`attack_fleet` runs six benign stations (1.6 and 2.0.1, some compressed) and every
scenario of :mod:`tests.attacks_station` and :mod:`tests.attacks_network` at once; each scenario
connects its own charge point(s), behaves normally until the attack, then notes the injection
(:meth:`tests.livefleet.Fleet.inject`: charge point, message id, time). ``ATTACKS`` says what
each attack must raise: a rule id, or a family wildcard (``CW-<FAMILY>-*``) while no rule of the
family covers it yet, which the acceptance test reports as a pending expectation and fails on.
Raw frames stand in where the ``ocpp`` library refuses to produce the attack; the central
systems answer everything with their own handlers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tests.attack_kit import PENDING_CP, UNKNOWN_TAGS, Attack
from tests.attacks_network import (
    basic_auth_over_ws,
    basic_username_mismatch,
    certificate_over_ws,
    cp_sends_csms_action,
    firmware_over_http,
    fleet_wide,
    lower_security_profile,
    profile_above_rating,
    remote_start_unknown_tag,
    rogue_csms_reset,
    subprotocol_downgrade,
    twin_identity,
    unlock_during_transaction,
    weaken_remote_authorization,
)
from tests.attacks_station import (
    answered_twice,
    backdated_timestamp,
    boot_storm,
    call_before_boot_accepted,
    energy_above_max_power,
    future_timestamp,
    heartbeat_flood,
    message_id_too_long,
    register_backwards,
    replay_different_payload,
    resend_after_result,
    schema_invalid,
    security_event_attack,
    seqno_gap_online,
    start_on_busy_connector,
    stop_below_start,
    stop_closed_transaction,
    transaction_id_reuse,
    unknown_action,
)
from tests.benign import HEARTBEAT_INTERVAL, plain_station
from tests.livefleet import Fleet
from tests.livepeers import CsmsPlan

CATEGORIES = ("replay", "unauthorized_command", "mitm", "abnormal_transaction", "security_event",
              "protocol_anomaly", "fleet")
@dataclass(frozen=True)
class Expectation:
    """What one attack must raise: ``rule`` is a rule id, or ``CW-<FAMILY>-*`` while pending."""

    category: str
    rule: str
    what: str

    @property
    def pending(self) -> bool:
        return self.rule.endswith("-*")


ATTACKS: dict[str, Expectation] = {
    "replay_different_payload": Expectation("replay", "CW-REPLAY-001", "Authorize re-sent, same id, other idTag"),
    "resend_after_result": Expectation("replay", "CW-REPLAY-002", "answered Authorize re-sent unchanged under its id"),
    "answered_twice": Expectation("replay", "CW-REPLAY-003", "Authorize answered Invalid, then a forged Accepted"),
    "backdated_timestamp": Expectation("replay", "CW-REPLAY-004", "TransactionEvent dated a day back, offline=false"),
    "future_timestamp": Expectation("replay", "CW-REPLAY-004", "MeterValues dated a day ahead"),
    "transaction_id_reuse": Expectation("replay", "CW-REPLAY-005", "Started event with a finished transaction's id"),
    "start_on_busy_connector": Expectation("replay", "CW-REPLAY-006", "StartTransaction on a connector charging"),
    "stop_closed_transaction": Expectation("replay", "CW-REPLAY-007", "second StopTransaction of a stopped one"),
    "seqno_gap_online": Expectation("replay", "CW-REPLAY-008", "seqNo 1 -> 4 with offline=false"),
    "cp_sends_csms_action": Expectation("unauthorized_command", "CW-PROTO-001", "charge point sends Reset"),
    "rogue_csms_reset": Expectation("unauthorized_command", "CW-CMD-001", "Reset from a second central system"),
    "weaken_remote_authorization": Expectation("unauthorized_command", "CW-CMD-003",
                                               "ChangeConfiguration AuthorizeRemoteTxRequests=false"),
    "lower_security_profile": Expectation("unauthorized_command", "CW-CMD-003",
                                          "SetVariables SecurityCtrlr.SecurityProfile 2 -> 1"),
    "firmware_over_http": Expectation("unauthorized_command", "CW-CMD-004", "UpdateFirmware from http://"),
    "unlock_during_transaction": Expectation("unauthorized_command", "CW-CMD-005", "UnlockConnector while charging"),
    "remote_start_unknown_tag": Expectation("unauthorized_command", "CW-CMD-006", "RemoteStart for a never-seen tag"),
    "profile_above_rating": Expectation("unauthorized_command", "CW-CMD-007", "43 kW profile on an 11 kW station"),
    "certificate_over_ws": Expectation("unauthorized_command", "CW-CMD-008", "InstallCertificate over plain ws://"),
    "twin_identity": Expectation("mitm", "CW-MITM-001", "one identity live from 127.0.0.2 and 127.0.0.3"),
    "subprotocol_downgrade": Expectation("mitm", "CW-MITM-002", "ocpp2.0.1 session, then ocpp1.6 only"),
    "basic_auth_over_ws": Expectation("mitm", "CW-MITM-003", "Basic credentials over plain ws://"),
    "basic_username_mismatch": Expectation("mitm", "CW-MITM-004", "Basic username is another identity"),
    "energy_above_max_power": Expectation("abnormal_transaction", "CW-TX-001", "20 kWh in ~1 s on 11 kW"),
    "register_backwards": Expectation("abnormal_transaction", "CW-TX-002", "register 1050 Wh then 1020 Wh"),
    "stop_below_start": Expectation("abnormal_transaction", "CW-TX-003", "meterStop 15000 < meterStart 20000"),
    "critical_event_16": Expectation("security_event", "CW-SEC-001", "1.6 MemoryExhaustion"),
    "tamper_event_16": Expectation("security_event", "CW-SEC-002", "1.6 TamperDetectionActivated"),
    "critical_event_201": Expectation("security_event", "CW-SEC-001", "2.0.1 InvalidCsmsCertificate"),
    "unknown_event_type": Expectation("security_event", "CW-SEC-004", "SecurityEventNotification TotallyMadeUp"),
    "schema_invalid": Expectation("protocol_anomaly", "CW-PROTO-002", "StatusNotification connectorId \"1\""),
    "unknown_action": Expectation("protocol_anomaly", "CW-PROTO-003", "CALL FooBar"),
    "call_before_boot_accepted": Expectation("protocol_anomaly", "CW-PROTO-005", "Authorize after a Pending boot"),
    "message_id_too_long": Expectation("protocol_anomaly", "CW-PROTO-006", "Heartbeat with a 60-character id"),
    "boot_storm": Expectation("protocol_anomaly", "CW-PROTO-007", "8 BootNotifications in a second"),
    "heartbeat_flood": Expectation("protocol_anomaly", "CW-PROTO-008", "25 Heartbeats back to back"),
    "fleet_same_command": Expectation("fleet", "CW-FLEET-001", "Reset Hard to 12 stations within a second"),
    "fleet_concurrent_sessions": Expectation("fleet", "CW-FLEET-002", "one idTag charging at 4 stations at once"),
    "fleet_shared_tag": Expectation("fleet", "CW-FLEET-003", "one idTag authorised at 4 stations at once"),
    "fleet_short_sessions": Expectation("fleet", "CW-FLEET-004", "one idTag, 5 zero-energy sessions in a row"),
}

# --- the suite ------------------------------------------------------------------------------------------

SCENARIOS: list[Attack] = [
    replay_different_payload, resend_after_result, answered_twice, backdated_timestamp, future_timestamp,
    transaction_id_reuse, start_on_busy_connector, stop_closed_transaction, seqno_gap_online,
    cp_sends_csms_action, rogue_csms_reset, weaken_remote_authorization, lower_security_profile, firmware_over_http,
    unlock_during_transaction, remote_start_unknown_tag, profile_above_rating, certificate_over_ws,
    twin_identity, subprotocol_downgrade, basic_auth_over_ws, basic_username_mismatch,
    energy_above_max_power, register_backwards, stop_below_start,
    security_event_attack("critical_event_16", "A16-MEMORY", "1.6", "MemoryExhaustion"),
    security_event_attack("tamper_event_16", "A16-TAMPER", "1.6", "TamperDetectionActivated"),
    security_event_attack("critical_event_201", "A201-SECEVT", "2.0.1", "InvalidCsmsCertificate"),
    security_event_attack("unknown_event_type", "A201-SECUNK", "2.0.1", "TotallyMadeUp"),
    schema_invalid, unknown_action, call_before_boot_accepted, message_id_too_long, boot_storm, heartbeat_flood,
    fleet_wide,
]
BACKGROUND = [("N16-01", "1.6", True), ("N16-02", "1.6", False), ("N16-03", "1.6", True),
              ("N201-01", "2.0.1", False), ("N201-02", "2.0.1", True), ("N201-03", "2.0.1", False)]


def attack_plan() -> CsmsPlan:
    """The central system of the attack run: accepts any card but the unknown ones, does not
    enforce ConcurrentTx (so a cloned card charges everywhere), holds one station in Pending."""
    return CsmsPlan(heartbeat_interval=HEARTBEAT_INTERVAL, known_tags=None, blocked_tags=UNKNOWN_TAGS,
                    concurrent_tx=False, pending_first=frozenset({PENDING_CP}))


async def attack_fleet(fleet: Fleet) -> None:
    """Benign background stations and every attack scenario, all at once."""
    background = [plain_station(fleet, cp_id, version, compress=compress, sessions=2, samples=20)
                  for cp_id, version, compress in BACKGROUND]
    await asyncio.gather(*background, *(scenario(fleet) for scenario in SCENARIOS))


__all__ = ["ATTACKS", "CATEGORIES", "Expectation", "attack_fleet", "attack_plan"]
