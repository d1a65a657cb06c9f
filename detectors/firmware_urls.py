"""CW-CMD-004: firmware downloads and log uploads pointed at a plain or unapproved URL.

A firmware image fetched over http/ftp can be swapped on the path (unsigned 1.6 firmware is
then installed as is); a diagnostics or security log uploaded over a plain scheme, or to a
host the operator does not know, leaks the station's logs. The scheme check needs no policy
(``policy.firmware_schemes`` defaults to https, ftps, sftp); the host check runs only when
``policy.firmware_hosts`` lists the approved hosts.
"""

from __future__ import annotations

import fnmatch
from typing import Any
from urllib.parse import SplitResult, urlsplit

from chargewatch.errors import ConfigError
from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.policy import Policy
from detectors.rules import Rule

# Plain values for hot-path comparisons (an enum attribute lookup costs ~0.1 µs each time).
_CALL = int(MessageType.CALL)
_CSMS_TO_CP = Direction.CSMS_TO_CP

UNSAFE_TRANSFER_URL = "CW-CMD-004"

# Where each command carries its URL, and what the station does with it.
URL_FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    "UpdateFirmware": (("location",), "firmware download"),  # 1.6 top level
    "SignedUpdateFirmware": (("firmware", "location"), "firmware download"),
    "PublishFirmware": (("location",), "firmware download"),
    "GetDiagnostics": (("location",), "diagnostics upload"),
    "GetLog": (("log", "remoteLocation"), "log upload"),
}
UPDATE_FIRMWARE_2X: tuple[tuple[str, ...], str] = (("firmware", "location"), "firmware download")


class TransferUrlDetector:
    """CW-CMD-004."""

    name: str = "transfer_urls"
    rule_ids: tuple[str, ...] = (UNSAFE_TRANSFER_URL,)
    actions: frozenset[str] | None

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        self.schemes = frozenset(policy.firmware_schemes)
        self.hosts = policy.firmware_hosts
        rule = rules[UNSAFE_TRANSFER_URL]
        actions = frozenset(str(a) for a in rule.param("actions"))
        self.actions = self.url_actions = actions
        unknown = sorted(actions - set(URL_FIELDS))
        if unknown:
            raise ConfigError(f"{rule.path}: parameter actions: no URL field known for {unknown}; "
                              f"known: {sorted(URL_FIELDS)}")

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        if (msg.action not in self.url_actions or msg.message_type != _CALL
                or msg.direction is not _CSMS_TO_CP):
            return []
        if msg.action == "UpdateFirmware" and msg.ocpp_version != "1.6":
            path, purpose = UPDATE_FIRMWARE_2X
        else:
            path, purpose = URL_FIELDS[msg.action]
        url = _dig(msg.payload, path)
        if not isinstance(url, str):
            return []
        return self._judge(msg, url, purpose)

    def _judge(self, msg: OcppMessage, url: str, purpose: str) -> list[Finding]:
        try:
            parts: SplitResult | None = urlsplit(url.strip())
        except ValueError:  # e.g. an unbalanced IPv6 bracket: judge the scheme, no host
            parts = None
        host = (parts.hostname or "").lower() if parts is not None else ""
        scheme = parts.scheme.lower() if parts is not None else url.strip().partition("://")[0].lower()
        problems = []
        if scheme not in self.schemes:
            problems.append(f"scheme {scheme or '(none)'!r} is not one of {sorted(self.schemes)}")
        if self.hosts and not any(host == h or fnmatch.fnmatchcase(host, h) for h in self.hosts):
            problems.append(f"host {host or '(none)'!r} is not an approved firmware/log host")
        if not problems:
            return []
        return [Finding(UNSAFE_TRANSFER_URL,
                        f"{msg.action} asks for a {purpose} via {safe_url(url, parts)}: {'; '.join(problems)}",
                        {"url": safe_url(url, parts), "scheme": scheme, "host": host, "purpose": purpose,
                         "allowed_schemes": sorted(self.schemes), "allowed_hosts": list(self.hosts),
                         "problems": problems})]


def safe_url(url: str, parts: SplitResult | None) -> str:
    """The URL with any password in its user-info blanked (ftp://user:secret@host is common)."""
    if parts is None or parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":[REDACTED]@", 1)
    return parts._replace(netloc=netloc).geturl()


def _dig(payload: Any, path: tuple[str, ...]) -> Any:
    value = payload
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
