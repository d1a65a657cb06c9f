"""Security events: every SecurityEventNotification a charge point sends becomes an alert.

The type is a free string (≤50) in every schema version, so the detector classifies it against
the event lists of the 1.6 Security Whitepaper §8 and the 2.0.1/2.1 Appendix ``security_events``:

* CW-SEC-002 (critical): events that mean the device or its evidence was tampered with —
  physical tamper, security log cleared, firmware with an invalid signature or signing
  certificate — whatever the version's "critical" column says (1.6 calls the two firmware
  events non-critical, but they report the same attempt to run unsigned code).
* CW-SEC-001 (high): the other types the version marks critical (pushed with guaranteed
  delivery, A04.FR.02): reboots, firmware updates, clock changes, invalid certificates/TLS, …
  — unless something we saw explains them: StartupOfTheDevice/ResetOrReboot after a
  BootNotification or a Reset command, FirmwareUpdated after an UpdateFirmware command,
  SettingSystemTime right after a boot (clock set from the answer). Those, and the
  ones whose explanation may predate the capture, become CW-SEC-005 *events* (recorded, not
  alerts): a reboot nobody asked for is worth an alert, the reboot after a Reset is not.
* CW-SEC-003 (low): the known non-critical types, kept as alerts so they are searchable.
* CW-SEC-004: type strings no version defines (vendor events, typos, or a non-genuine peer).

A name of another version (e.g. ``InvalidCentralSystemCertificate`` on a 2.0.1 connection) is
recognised as the same event. A critical event is queued and re-sent until delivered, so the
same (type, timestamp) is reported once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CALL = int(MessageType.CALL)
_CP_TO_CSMS = Direction.CP_TO_CSMS

CRITICAL_EVENT = "CW-SEC-001"
INTEGRITY_EVENT = "CW-SEC-002"
ROUTINE_EVENT = "CW-SEC-003"
UNKNOWN_EVENT = "CW-SEC-004"
EXPECTED_EVENT = "CW-SEC-005"
# Critical event -> the CALLs (action, sender) that explain it when seen shortly before.
EXPLAINED_BY: dict[str, tuple[tuple[str, str], ...]] = {
    "StartupOfTheDevice": (("BootNotification", "cp"), ("Reset", "csms")),
    "ResetOrReboot": (("Reset", "csms"), ("BootNotification", "cp")),
    "FirmwareUpdated": (("UpdateFirmware", "csms"), ("SignedUpdateFirmware", "csms"), ("PublishFirmware", "csms")),
    "SettingSystemTime": (("BootNotification", "cp"),),
}
EXPLAINERS = frozenset(pair for pairs in EXPLAINED_BY.values() for pair in pairs)
SEEN_EVENTS = 32  # (type, timestamp) pairs remembered per charge point to drop re-deliveries
MAX_TECH_INFO = 255  # techInfo is string[255]; longer values are cut in the evidence


@dataclass(frozen=True, slots=True)
class EventType:
    """One row of the security event tables (None: the version does not define the event)."""

    name: str  # the 2.0.1/2.1 name
    name_16: str | None
    critical_16: bool | None
    critical_2x: bool
    only_21: bool = False

    def critical(self, version: str | None) -> bool:
        """Whether version marks the event critical (2.x rules when 1.6 lacks the event)."""
        if version == "1.6" and self.critical_16 is not None:
            return self.critical_16
        return self.critical_2x

    def defined_in(self) -> list[str]:
        versions = ["1.6"] if self.name_16 is not None else []
        return versions + (["2.1"] if self.only_21 else ["2.0.1", "2.1"])


EVENT_TYPES = (
    EventType("FirmwareUpdated", "FirmwareUpdated", True, True),
    EventType("FailedToAuthenticateAtCsms", "FailedToAuthenticationAtCentralSystem", False, False),
    EventType("CsmsFailedToAuthenticate", "CentralSystemFailedToAuthentication", False, False),
    EventType("SettingSystemTime", "SettingSystemTime", True, True),
    EventType("StartupOfTheDevice", "StartupOfTheDevice", True, True),
    EventType("ResetOrReboot", "ResetOrReboot", True, True),
    EventType("SecurityLogWasCleared", "SecurityLogWasCleared", True, True),
    EventType("ReconfigurationOfSecurityParameters", "ReconfigurationOfSecurityParameters", False, False),
    EventType("MemoryExhaustion", "MemoryExhaustion", True, True),
    EventType("InvalidMessages", "InvalidMessages", False, False),
    EventType("AttemptedReplayAttacks", "AttemptedReplayAttacks", False, False),
    EventType("TamperDetectionActivated", "TamperDetectionActivated", True, True),
    EventType("InvalidFirmwareSignature", "InvalidFirmwareSignature", False, True),
    EventType("InvalidFirmwareSigningCertificate", "InvalidFirmwareSigningCertificate", False, True),
    EventType("InvalidCsmsCertificate", "InvalidCentralSystemCertificate", False, True),
    EventType("InvalidChargingStationCertificate", "InvalidChargePointCertificate", False, True),
    EventType("InvalidTLSVersion", "InvalidTLSVersion", False, True),
    EventType("InvalidTLSCipherSuite", "InvalidTLSCipherSuite", False, True),
    EventType("MaintenanceLoginAccepted", None, None, True),
    EventType("MaintenanceLoginFailed", None, None, True),
    EventType("DiscardedRenewedClientCertificate", None, None, True, only_21=True),
)
# Escalated to critical severity in every version: the device or its evidence was tampered with.
INTEGRITY = frozenset({"TamperDetectionActivated", "SecurityLogWasCleared", "InvalidFirmwareSignature",
                       "InvalidFirmwareSigningCertificate"})


def event_index() -> dict[str, EventType]:
    """Every known spelling (1.6 and 2.x names, case-folded) -> its event row."""
    index: dict[str, EventType] = {}
    for row in EVENT_TYPES:
        index[row.name.casefold()] = row
        if row.name_16 is not None:
            index[row.name_16.casefold()] = row
    return index


class SecurityEventDetector:
    """CW-SEC-001 … CW-SEC-004."""

    name: str = "security_events"
    rule_ids: tuple[str, ...] = (CRITICAL_EVENT, INTEGRITY_EVENT, ROUTINE_EVENT, UNKNOWN_EVENT, EXPECTED_EVENT)
    actions: frozenset[str] | None = frozenset({"SecurityEventNotification"} | {a for a, _ in EXPLAINERS})

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.index = event_index()
        self.window_s = float(rules[EXPECTED_EVENT].param("explain_window_s"))
        self.firmware_window_s = float(rules[EXPECTED_EVENT].param("firmware_window_s"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.message_type == _CALL and (msg.action, msg.sender) in EXPLAINERS:
            state.setdefault("explainers", {})[f"{msg.action}|{msg.sender}"] = msg.ts
            return []
        if (msg.action != "SecurityEventNotification" or msg.message_type != _CALL
                or msg.direction is not _CP_TO_CSMS or not isinstance(msg.payload, dict)):
            return []
        kind = msg.payload.get("type")
        if not isinstance(kind, str) or _already_reported(state, kind, msg):
            return []  # a non-string type is a schema violation (CW-PROTO-002)
        evidence = _evidence(msg.payload, kind)
        row = self.index.get(kind.casefold())
        if row is None:
            return [Finding(UNKNOWN_EVENT, f"charge point reported security event {kind!r}, a type no OCPP "
                                           "version defines", evidence)]
        critical = row.critical(msg.ocpp_version)
        evidence.update({"canonical_type": row.name, "spec_critical": critical, "defined_in": row.defined_in()})
        rule_id = INTEGRITY_EVENT if row.name in INTEGRITY else CRITICAL_EVENT if critical else ROUTINE_EVENT
        label = "critical" if critical else "non-critical"
        if rule_id == CRITICAL_EVENT and row.name in EXPLAINED_BY:
            explanation = self._explanation(row.name, msg, ctx, state)
            if explanation is not None:
                evidence["explanation"] = explanation
                return [Finding(EXPECTED_EVENT, f"charge point reported security event {kind}, expected: "
                                                f"{explanation}", evidence)]
        return [Finding(rule_id, f"charge point reported security event {kind} ({label} in OCPP "
                                 f"{msg.ocpp_version or 'unknown version'})", evidence)]


    def _explanation(self, name: str, msg: OcppMessage, ctx: ChargePointContext, state: State) -> str | None:
        """Why this critical event is expected, or None when nothing explains it."""
        window = self.firmware_window_s if name == "FirmwareUpdated" else self.window_s
        seen: dict[str, float] = state.get("explainers", {})
        for action, sender in EXPLAINED_BY[name]:
            ts = seen.get(f"{action}|{sender}")
            if ts is not None and 0 <= msg.ts - ts <= window:
                return f"{action} from the {'central system' if sender == 'csms' else 'charge point'} " \
                       f"{msg.ts - ts:.0f}s earlier"
        if ctx.first_ts is None or msg.ts - ctx.first_ts < window:
            return f"watched for less than {window:.0f}s: its cause may predate the capture"
        return None


def _already_reported(state: State, kind: str, msg: OcppMessage) -> bool:
    """True for a re-delivery of an event already seen (critical events are queued and retried)."""
    stamp = msg.payload.get("timestamp")
    key = f"{kind}|{stamp}" if isinstance(stamp, str) else f"id|{msg.message_id}"
    seen: dict[str, float] = state.setdefault("seen", {})
    if key in seen:
        return True
    seen[key] = msg.ts
    if len(seen) > SEEN_EVENTS:
        del seen[next(iter(seen))]
    return False


def _evidence(payload: dict[str, Any], kind: str) -> dict[str, Any]:
    tech_info = payload.get("techInfo")
    if isinstance(tech_info, str) and len(tech_info) > MAX_TECH_INFO:
        tech_info = tech_info[:MAX_TECH_INFO] + "…"
    return {"type": kind, "tech_info": tech_info, "event_timestamp": payload.get("timestamp")}
