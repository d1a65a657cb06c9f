"""MITM indicators from TLS handshake metadata (``tls`` connection events of the capture collectors).

* CW-MITM-010: a handshake below TLS 1.2, with a cipher suite OCPP does not allow (1.6 security
  whitepaper and 2.0.1/2.1 A00.FR.318-321), or with TLS compression;
* CW-MITM-011: the central system's certificate (TLS 1.2 and below) or, when no certificate is
  visible (TLS 1.3), its server fingerprint changed for a charge point without a rotation the
  policy lists;
* CW-MITM-012: a client address that used TLS now opens a plain ws:// connection (a stripping
  relay). TLS events carry no identity (it travels encrypted) and are keyed by client address,
  plain upgrades by identity, so this rule runs in the ``client_ip`` correlation stage where
  both meet by client address.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from chargewatch.model import ConnectionEvent, OcppMessage
from collectors.tls_names import suite_id, suite_name
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.policy import Policy
from detectors.rules import Rule

WEAK_TLS, CERT_CHANGED, TLS_STRIPPED = "CW-MITM-010", "CW-MITM-011", "CW-MITM-012"
VERSION_ORDER = {"SSLv2": 0, "SSLv3": 1, "TLSv1": 2, "TLSv1.0": 2, "TLSv1.1": 3, "TLSv1.2": 4, "TLSv1.3": 5}
MAX_SERVERS = 16  # central-system endpoints remembered per client address
MAX_IDENTITIES = 64  # identities remembered per client address (CW-MITM-012)


def _normalise_sha256(value: str) -> str:
    return value.replace(":", "").strip().lower()


def _cipher(tls: dict[str, Any]) -> int | None:
    """The chosen suite's id, from ``cipher_id`` or from a suite name (IANA or OpenSSL spelling)."""
    for key in ("cipher_id", "cipher"):
        value = tls.get(key)
        if isinstance(value, str) and value:
            found = suite_id(value)
            if found is not None:
                return found
    return None


class TlsPolicyDetector:
    """CW-MITM-010 and CW-MITM-011, per client address (the key of ``tls`` events)."""

    name: str = "mitm_tls"
    rule_ids: tuple[str, ...] = (WEAK_TLS, CERT_CHANGED)
    actions: frozenset[str] | None = frozenset()  # connection events only

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        weak = rules[WEAK_TLS]
        self.min_version = VERSION_ORDER[str(weak.param("min_version"))]
        self.allowed: frozenset[int] = frozenset(
            sid for name in weak.param("allowed_suites") if (sid := suite_id(str(name))) is not None)
        listed = {_normalise_sha256(f) for f in policy.csms_cert_fingerprints}
        listed |= {_normalise_sha256(e.cert_sha256) for e in policy.csms_endpoints if e.cert_sha256}
        self.rotations = frozenset(listed)

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        tls = event.tls
        if event.kind != "tls" or not tls:
            return []
        found = self._weak(event, tls)
        changed = self._changed(event, tls, state)
        return found + changed

    def _weak(self, event: ConnectionEvent, tls: dict[str, Any]) -> list[Finding]:
        """CW-MITM-010: version, suite and compression against OCPP's TLS requirements."""
        version = tls.get("version")
        offered = [v for v in tls.get("client_versions") or [] if v in VERSION_ORDER]
        if version is None and offered:  # no ServerHello: judge what the client was willing to use
            version = max(offered, key=VERSION_ORDER.__getitem__)
        problems: list[str] = []
        if isinstance(version, str) and VERSION_ORDER.get(version, self.min_version) < self.min_version:
            problems.append("version")
        cipher = _cipher(tls)
        if cipher is not None and cipher not in self.allowed:
            problems.append("cipher")
        if tls.get("compression"):
            problems.append("compression")
        if not problems:
            return []
        cipher_name = suite_name(cipher) if cipher is not None else None
        return [Finding(WEAK_TLS,
                        f"{event.client_ip} → {event.server_ip}:{event.server_port} negotiated "
                        f"{version or 'an unknown version'} with {cipher_name or 'an unknown suite'}: "
                        f"{', '.join(problems)} below OCPP's TLS requirements",
                        {"problems": problems, "version": version, "client_versions": tls.get("client_versions"),
                         "cipher": cipher_name, "cipher_id": f"0x{cipher:04X}" if cipher is not None else None,
                         "compression": tls.get("compression"), "sni": tls.get("sni"), "ja4": tls.get("ja4"),
                         "server": f"{event.server_ip}:{event.server_port}"})]

    def _changed(self, event: ConnectionEvent, tls: dict[str, Any], state: State) -> list[Finding]:
        """CW-MITM-011: the server's leaf certificate, else its JA3S for the same client JA4."""
        servers: OrderedDict[tuple[str, int, str], dict[str, Any]] = state.setdefault("servers", OrderedDict())
        key = (event.server_ip, event.server_port, str(tls.get("sni") or ""))
        certs = tls.get("server_certs") or []
        leaf = certs[0] if certs and isinstance(certs[0], dict) else None
        now = {"sha256": _normalise_sha256(str(leaf.get("sha256", ""))) if leaf else None,
               "subject": leaf.get("subject") if leaf else None, "issuer": leaf.get("issuer") if leaf else None,
               "ja3s": tls.get("ja3s"), "ja4": tls.get("ja4"), "connection_id": event.connection_id,
               "ts": event.ts}
        before = servers.get(key)
        servers[key] = {**before, **{k: v for k, v in now.items() if v is not None}} if before else now
        servers.move_to_end(key)
        while len(servers) > MAX_SERVERS:
            servers.popitem(last=False)
        if before is None:
            return []
        what = self._difference(before, now)
        if what is None:
            return []
        return [Finding(CERT_CHANGED,
                        f"{event.server_ip}:{event.server_port} ({key[2] or 'no SNI'}) presented another "
                        f"{what} to {event.client_ip} than on connection {before['connection_id']} "
                        f"({event.ts - before['ts']:.0f}s earlier), and the policy lists no such rotation",
                        {"changed": what, "server": f"{event.server_ip}:{event.server_port}", "sni": key[2] or None,
                         "sha256": now["sha256"], "previous_sha256": before.get("sha256"),
                         "subject": now["subject"], "previous_subject": before.get("subject"),
                         "issuer": now["issuer"], "previous_issuer": before.get("issuer"),
                         "ja3s": now["ja3s"], "previous_ja3s": before.get("ja3s"),
                         "previous_connection_id": before["connection_id"], "previous_ts": before["ts"]})]

    def _difference(self, before: dict[str, Any], now: dict[str, Any]) -> str | None:
        """"certificate" / "server fingerprint" when the change is suspicious, else None.

        A certificate on the policy's list is a planned rotation. Without such a list, a new
        certificate from the same issuer for the same subject is routine renewal (OCPP recommends
        short-lived CSMS certificates); another issuer or subject is not.
        """
        old, new = before.get("sha256"), now["sha256"]
        if old and new:
            if old == new or new in self.rotations:
                return None
            if not self.rotations and (before.get("issuer"), before.get("subject")) == (now["issuer"], now["subject"]):
                return None
            return "certificate"
        if new is None and before.get("ja4") == now["ja4"] and before.get("ja3s") and now["ja3s"] \
                and before["ja3s"] != now["ja3s"]:
            return "server fingerprint"
        return None


class TlsStripDetector:
    """CW-MITM-012, in the ``client_ip`` correlation stage: TLS first, then plain ws:// from that address."""

    name: str = "mitm_tls_strip"
    rule_ids: tuple[str, ...] = (TLS_STRIPPED,)
    route: str = "client_ip"
    actions: frozenset[str] | None = frozenset()

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.memory_s = float(rules[TLS_STRIPPED].param("memory_s"))

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        if event.kind == "tls" or (event.kind == "upgrade" and event.tls):
            if "first_tls" not in state:
                state["first_tls"] = event.ts
            if event.ts >= state.get("last_tls_ts", 0.0):
                state["last_tls_ts"], state["last_tls_id"] = event.ts, event.connection_id
                state["last_tls_sni"] = (event.tls or {}).get("sni") or (event.tls or {}).get("server_name")
            return []
        if event.kind != "upgrade":
            return []
        plain: OrderedDict[str, float] = state.setdefault("plain", OrderedDict())
        cp_id = event.charge_point_id or ""
        first_plain = plain.setdefault(cp_id, event.ts)
        plain.move_to_end(cp_id)
        while len(plain) > MAX_IDENTITIES:
            plain.popitem(last=False)
        last_tls = state.get("last_tls_ts")
        if last_tls is None or event.ts < last_tls or event.ts - last_tls > self.memory_s:
            return []
        if first_plain < state["first_tls"]:
            return []  # this identity spoke plain ws:// from here before any TLS: a mixed address
        return [Finding(TLS_STRIPPED,
                        f"{cp_id or event.client_ip} connected over plain ws:// from {event.client_ip}, which used "
                        f"TLS {event.ts - last_tls:.0f}s earlier (connection {state['last_tls_id']})",
                        {"client_ip": event.client_ip, "charge_point_id": event.charge_point_id,
                         "server": f"{event.server_ip}:{event.server_port}", "last_tls_ts": last_tls,
                         "last_tls_connection_id": state["last_tls_id"], "last_tls_sni": state["last_tls_sni"],
                         "auth_scheme": event.auth_scheme})]
