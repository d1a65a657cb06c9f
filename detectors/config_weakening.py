"""Configuration commands that weaken a charge point's security, and credential changes.

- CW-CMD-003: a setting switched to its weak value (1.6 ChangeConfiguration keys, 2.x
  SetVariables component.variable names, both listed in the rule's parameters), the security
  profile lowered below what we know of it, or SetNetworkProfile pointing the station at
  another central system, a plain ``ws://`` URL on a TLS link, or a lower profile.
- CW-CMD-009: the Basic-auth credential replaced (1.6 AuthorizationKey, 2.x
  SecurityCtrlr.BasicAuthPassword, 2.1 SetNetworkProfile basicAuthPassword). Payload secrets
  are already "[REDACTED]", so the change itself is the signal, never the value.

The security-profile baseline is the highest of: the last value the station reported or
accepted (GetConfiguration, GetVariables, NotifyReport, an accepted change), the profile the
policy expects, and the profile the connection's upgrade shows (TLS, Basic auth). With none of
them known, nothing is judged: a value we never saw may be the station's current one.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.links import link_of, remember_link
from detectors.policy import Policy
from detectors.rules import Rule

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CALL = int(MessageType.CALL)
_CALLRESULT = int(MessageType.CALLRESULT)
_CSMS_TO_CP = Direction.CSMS_TO_CP

WEAKENING = "CW-CMD-003"
CREDENTIAL = "CW-CMD-009"
PROFILE_SETTINGS = frozenset({"securityprofile", "securityctrlr.securityprofile"})
ACCEPTED = frozenset({"Accepted", "RebootRequired"})
HANDLED = frozenset({"ChangeConfiguration", "SetVariables", "SetNetworkProfile", "GetConfiguration",
                     "GetVariables", "NotifyReport"})
MAX_SLOTS = 8


class ConfigWeakeningDetector:
    """CW-CMD-003 and CW-CMD-009."""

    name: str = "config_weakening"
    rule_ids: tuple[str, ...] = (WEAKENING, CREDENTIAL)
    actions: frozenset[str] | None = HANDLED

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        self.policy = policy
        weak = rules[WEAKENING].param("weakening_settings")
        self.weak = {str(k).casefold(): (str(k), str(v).casefold()) for k, v in dict(weak).items()}
        self.credentials = {str(n).casefold(): str(n) for n in rules[CREDENTIAL].param("credential_settings")}
        self.endpoint_ips = frozenset(e.ip for e in policy.csms_endpoints if e.ip)

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        remember_link(state, event)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if msg.action not in HANDLED or not isinstance(msg.payload, dict):
            return []
        if msg.message_type == _CALLRESULT:
            self._learn_result(msg, ctx, state)
            return []
        if msg.message_type != _CALL:
            return []
        if msg.action == "NotifyReport":
            self._learn(state, _report_profile(msg.payload), f"NotifyReport {msg.message_id}", msg.ts)
            return []
        if msg.direction is not _CSMS_TO_CP:
            return []
        if msg.action == "ChangeConfiguration":
            return self._settings(msg, ctx, state, [(msg.payload.get("key"), msg.payload.get("value"))])
        if msg.action == "SetVariables":
            return self._settings(msg, ctx, state, [(_variable_name(d), d.get("attributeValue"))
                                                    for d in _dicts(msg.payload.get("setVariableData"))])
        if msg.action == "SetNetworkProfile":
            return self._network(msg, state)
        return []

    # --- judging ----------------------------------------------------------------------------

    def _settings(self, msg: OcppMessage, ctx: ChargePointContext, state: State,
                  pairs: list[tuple[Any, Any]]) -> list[Finding]:
        found: list[Finding] = []
        for name, value in pairs:
            if not isinstance(name, str):
                continue
            folded = name.casefold()
            if folded in self.credentials:
                found.append(Finding(CREDENTIAL, f"{msg.action} replaces the charge point's Basic-auth credential "
                                     f"({name})", {"setting": name, "value": value}))
            elif folded in PROFILE_SETTINGS:
                found += self._profile(msg, state, name, value)
            elif folded in self.weak and str(value).casefold() == self.weak[folded][1]:
                found.append(Finding(WEAKENING, f"{msg.action} sets {name}={value}, which weakens authorization",
                                     {"setting": name, "value": value, "weak_value": self.weak[folded][1]}))
        return found

    def _profile(self, msg: OcppMessage, state: State, name: str, value: Any) -> list[Finding]:
        new = _int(value)
        baseline = self._baseline(msg, state)
        if new is None or baseline is None or new >= baseline[0]:
            return []
        return [Finding(WEAKENING, f"{msg.action} lowers the security profile to {new} "
                        f"(known: {baseline[0]}, {baseline[1]})",
                        {"setting": name, "value": new, "baseline": baseline[0], "baseline_source": baseline[1]})]

    def _baseline(self, msg: OcppMessage, state: State) -> tuple[int, str] | None:
        known: list[tuple[int, str]] = []
        if "profile" in state:
            known.append((state["profile"][0], state["profile"][1]))
        expected = self.policy.security_profile(msg.charge_point_id)
        if expected >= 0:
            known.append((expected, "policy expected_security_profile"))
        link = link_of(state, msg.connection_id)
        if link is not None:
            known.append((link.profile, "this connection's upgrade"))
        return max(known) if known else None

    def _network(self, msg: OcppMessage, state: State) -> list[Finding]:
        data = msg.payload.get("connectionData")
        if not isinstance(data, dict):
            return []
        found = self._profile(msg, state, "connectionData.securityProfile", data.get("securityProfile"))
        url = data.get("ocppCsmsUrl")
        if isinstance(url, str):
            found += self._csms_url(msg, state, url)
        if data.get("basicAuthPassword") is not None:
            found.append(Finding(CREDENTIAL, "SetNetworkProfile sets a new Basic-auth password",
                                 {"setting": "connectionData.basicAuthPassword", "value": data["basicAuthPassword"],
                                  "slot": msg.payload.get("configurationSlot")}))
        return found

    def _csms_url(self, msg: OcppMessage, state: State, url: str) -> list[Finding]:
        try:
            parts = urlsplit(url.strip())
            host = (parts.hostname or "").lower()
        except ValueError:
            return []
        slot = str(msg.payload.get("configurationSlot"))
        slots: dict[str, str] = state.setdefault("slots", {})
        previous = slots.pop(slot, None)
        slots[slot] = host
        while len(slots) > MAX_SLOTS:
            del slots[next(iter(slots))]
        problems = []
        link = link_of(state, msg.connection_id)
        if link is not None and link.tls and parts.scheme.lower() in ("ws", "http"):
            problems.append(f"plain {parts.scheme}:// URL while this connection runs over TLS")
        if previous is not None and previous != host:
            problems.append(f"slot {slot} pointed at {previous} before")
        elif previous is None and _is_ip(host) and host not in self.endpoint_ips | {msg.src_ip}:
            problems.append("an IP address that is neither the current central system nor on the allowlist")
        if not problems:
            return []
        return [Finding(WEAKENING, f"SetNetworkProfile points the station at {host}: {'; '.join(problems)}",
                        {"setting": "connectionData.ocppCsmsUrl", "url": url, "host": host, "slot": slot,
                         "previous_host": previous, "current_csms": f"{msg.src_ip}:{msg.src_port}",
                         "problems": problems})]

    # --- learning the current profile ---------------------------------------------------------

    def _learn_result(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> None:
        body: dict[str, Any] = msg.payload
        where = f"{msg.action} answer {msg.message_id}"
        if msg.action == "GetConfiguration":
            for entry in _dicts(body.get("configurationKey")):
                if str(entry.get("key", "")).casefold() == "securityprofile":
                    self._learn(state, entry.get("value"), where, msg.ts)
        elif msg.action == "GetVariables":
            for entry in _dicts(body.get("getVariableResult")):
                if (entry.get("attributeStatus") == "Accepted" and entry.get("attributeType", "Actual") == "Actual"
                        and _variable_name(entry).casefold() in PROFILE_SETTINGS):
                    self._learn(state, entry.get("attributeValue"), where, msg.ts)
        elif msg.action in ("ChangeConfiguration", "SetVariables"):
            request = ctx.request_for(msg)
            if request is not None and isinstance(request.payload, dict):
                self._learn(state, _accepted_profile(request.payload, body), f"accepted {where}", msg.ts)

    def _learn(self, state: State, value: Any, source: str, ts: float) -> None:
        profile = _int(value)
        if profile is not None:
            state["profile"] = (profile, source, ts)


def _accepted(status: Any) -> bool:
    """An Accepted/RebootRequired status (any other value, of any JSON type, is not)."""
    return isinstance(status, str) and status in ACCEPTED


def _accepted_profile(request: dict[str, Any], result: dict[str, Any]) -> Any:
    """The security profile a ChangeConfiguration/SetVariables set, if the station accepted it."""
    if "key" in request:
        accepted = str(request.get("key", "")).casefold() == "securityprofile" and _accepted(result.get("status"))
        return request.get("value") if accepted else None
    if not any(_accepted(r.get("attributeStatus")) and _variable_name(r).casefold() in PROFILE_SETTINGS
               for r in _dicts(result.get("setVariableResult"))):
        return None
    return next((d.get("attributeValue") for d in _dicts(request.get("setVariableData"))
                 if _variable_name(d).casefold() in PROFILE_SETTINGS), None)


def _report_profile(body: dict[str, Any]) -> Any:
    for entry in _dicts(body.get("reportData")):
        if _variable_name(entry).casefold() in PROFILE_SETTINGS:
            for attribute in _dicts(entry.get("variableAttribute")):
                if attribute.get("type", "Actual") == "Actual":
                    return attribute.get("value")
    return None


def _variable_name(entry: dict[str, Any]) -> str:
    """``Component.Variable`` of a 2.x device-model entry (instances ignored)."""
    component, variable = entry.get("component"), entry.get("variable")
    if not isinstance(component, dict) or not isinstance(variable, dict):
        return ""
    return f"{component.get('name', '')}.{variable.get('name', '')}"


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
