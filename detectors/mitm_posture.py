"""Security-profile indicators: how well a charge point's connection is protected.

The observed profile of an accepted connection follows from the upgrade (OCPP security
profiles, 1.6 security whitepaper §2 and 2.x A.1.3):

* ``tls`` None means plain ``ws://`` (everything the pcap collector decodes): with HTTP Basic
  auth that is profile 1, without it profile 0 (no authentication; valid in 1.6 only);
* with a ``tls`` dict (from a TLS-terminating collector), a client certificate makes profile 3,
  Basic auth without one profile 2, neither 0 (encrypted, but the charge point is not
  authenticated). A client certificate is any non-empty value under one of
  :data:`CLIENT_CERT_KEYS`; no other ``tls`` key is read.

Rules:

* CW-MITM-003: Basic auth over plain ``ws://``: the credential is readable on the path. A
  posture finding, reported once per charge point (own state, plus a collapse window longer
  than any capture so the alert id stays the same after a restart that lost the state).
* CW-MITM-005: a profile lower than the best the charge point used within ``memory_s``
  (lowering is forbidden: A00.FR.005, A05.FR.09 / A05.FR.07), or lower than the operator's
  policy (``Policy.security_profile``).
* CW-MITM-008: plain ``ws://`` without any authentication, once per charge point (off by default).

003 and 008 judge unconfigured fleets only: once the policy states a profile for the charge
point, CW-MITM-005 judges every connection against it instead (an expected profile 1 is the
operator accepting Basic over ``ws://``, e.g. inside a VPN).
"""

from __future__ import annotations

from chargewatch.model import ConnectionEvent, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.mitm_session import accepted_upgrade
from detectors.policy import Policy
from detectors.rules import Rule

BASIC_PLAINTEXT = "CW-MITM-003"
PROFILE_DOWNGRADE = "CW-MITM-005"
NO_AUTH_PLAINTEXT = "CW-MITM-008"

# Keys of ConnectionEvent.tls whose non-empty value means the client presented a certificate.
CLIENT_CERT_KEYS = ("client_cert_subject", "client_cert_sha256", "client_cert")
PROFILE_NAMES = {0: "0 (no authentication)", 1: "1 (Basic auth, plain ws)", 2: "2 (TLS + Basic auth)",
                 3: "3 (TLS client certificate)"}


def observed_profile(event: ConnectionEvent) -> int:
    """The security profile a connection actually used (see the module docstring)."""
    basic = (event.auth_scheme or "").lower() == "basic"
    if event.tls is None:
        return 1 if basic else 0
    if any(event.tls.get(key) for key in CLIENT_CERT_KEYS):
        return 3
    return 2 if basic else 0


class MitmPostureDetector:
    """CW-MITM-003, CW-MITM-005 and CW-MITM-008."""

    name: str = "mitm_posture"
    rule_ids: tuple[str, ...] = (BASIC_PLAINTEXT, PROFILE_DOWNGRADE, NO_AUTH_PLAINTEXT)
    actions: frozenset[str] | None = frozenset()  # judges connections only

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        self.policy = policy
        self.memory_s = float(rules[PROFILE_DOWNGRADE].param("memory_s"))
        self.enabled = {rule_id: rules[rule_id].enabled for rule_id in self.rule_ids}

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        if not accepted_upgrade(event):
            return []
        cp_id = event.charge_point_id or ""
        profile = observed_profile(event)
        expected = self.policy.security_profile(cp_id)
        findings = self._downgrade(event, profile, expected, state)
        if expected < 0 and event.tls is None:
            rule_id = BASIC_PLAINTEXT if profile == 1 else NO_AUTH_PLAINTEXT
            if self.enabled[rule_id] and not state.get(rule_id):
                state[rule_id] = True  # a posture is reported once per charge point
                findings.append(self._posture(rule_id, event))
        return findings

    def _posture(self, rule_id: str, event: ConnectionEvent) -> Finding:
        what = ("sends its Basic-auth credentials over plain ws://, readable by anyone on the path"
                if rule_id == BASIC_PLAINTEXT else "connects over plain ws:// without any authentication")
        return Finding(rule_id, f"{event.charge_point_id} {what} (security profile {observed_profile(event)}; "
                                "reported once per charge point)",
                       {"security_profile": observed_profile(event), "auth_scheme": event.auth_scheme,
                        "auth_username": event.auth_username, "client_ip": event.client_ip,
                        "server": f"{event.server_ip}:{event.server_port}", "path": event.path,
                        "version": event.ocpp_version})

    def _downgrade(self, event: ConnectionEvent, profile: int, expected: int, state: State) -> list[Finding]:
        """Compare with the best profile seen within memory_s and with the policy, then remember."""
        best: list[float] | None = state.get("best_profile")  # [profile, last ts used, ...]
        before = int(best[0]) if best is not None and event.ts - best[1] <= self.memory_s else None
        if before is None or profile >= before:
            state["best_profile"] = [profile, event.ts]
        below_before = before is not None and profile < before
        below_policy = profile < expected  # expected -1: no policy
        if not (below_before or below_policy) or not self.enabled[PROFILE_DOWNGRADE]:
            return []
        said = []
        if below_before and best is not None:
            said.append(f"used profile {before} {event.ts - best[1]:.0f}s earlier")
        if below_policy:
            said.append(f"policy expects profile {expected}")
        return [Finding(
            PROFILE_DOWNGRADE,
            f"{event.charge_point_id} connected with security profile {PROFILE_NAMES[profile]}; {'; '.join(said)}",
            {"security_profile": profile, "previous_profile": before,
             "previous_profile_ts": best[1] if below_before and best is not None else None,
             "policy_profile": expected if expected >= 0 else None, "below_previous": below_before,
             "below_policy": below_policy, "tls": event.tls, "auth_scheme": event.auth_scheme,
             "client_ip": event.client_ip, "version": event.ocpp_version})]
