"""Redaction, applied once, in the collector, before anything leaves it.

* idTags / idTokens (and other customer identifiers) become keyed pseudonyms: HMAC-SHA256
  with the operator's key over the case-folded value (idTags are case-insensitive), so the
  same card always maps to the same pseudonym and a responder can look one up with
  ``chargewatch pseudonym TAG``.
* Secrets are removed: ``AuthorizationKey`` (1.6 ChangeConfiguration / GetConfiguration),
  ``BasicAuthPassword`` (2.x Set/GetVariables), SetNetworkProfile VPN/APN credentials. The
  Basic-auth password of the HTTP upgrade is never stored by any collector in the first place.

Operators may turn redaction off (``[redaction] enabled = false``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REDACTED = "[REDACTED]"
PSEUDONYM_PREFIX = "pt_"

# Keys whose string value identifies a person (card, contract, customer).
TOKEN_KEYS = frozenset({"idTag", "parentIdTag", "idToken", "groupIdToken", "additionalIdToken",
                        "customerIdentifier"})
# Keys whose value is a credential, wherever they appear.
SECRET_KEYS = frozenset({"password", "apnPassword", "simPin", "basicAuthPassword"})
SECRET_CONFIG_NAMES = frozenset({"authorizationkey", "basicauthpassword"})
# Lower-cased substrings of a raw frame without which no key above can occur in it.
RAW_MARKERS = (b"idtag", b"idtoken", b"customeridentifier", b"password", b"simpin", b"authorizationkey")
_ANY_MARKER = re.compile(b"|".join(RAW_MARKERS))  # one pass instead of one search per marker


@dataclass(frozen=True)
class Redactor:
    """Pseudonymises tokens and strips secrets from OCPP payloads."""

    key: bytes
    enabled: bool = True

    def pseudonym(self, token: str) -> str:
        """The keyed pseudonym of an idTag/idToken (case-insensitive)."""
        digest = hmac.new(self.key, token.casefold().encode(), hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:24]

    def payload(self, action: str | None, payload: Any, raw: bytes | None = None) -> Any:
        """A redacted copy of payload (the input is not modified).

        raw, the frame's JSON text, lets frames that cannot hold anything sensitive skip the walk.
        """
        if not self.enabled:
            return payload
        if raw is not None and action != "SetNetworkProfile" and not _may_hold_secrets(raw):
            return payload
        redacted = self._walk(payload)
        if action == "SetNetworkProfile" and isinstance(redacted, dict):
            _strip_network_secrets(redacted)
        return redacted

    def _walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self._walk_dict(value)
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        return value

    def _walk_dict(self, obj: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k in TOKEN_KEYS and isinstance(v, str):
                out[k] = self.pseudonym(v)
            elif k in SECRET_KEYS and v is not None:
                out[k] = REDACTED
            else:
                out[k] = self._walk(v)
        _redact_config_value(out)
        return out


def may_hold_secrets(raw: bytes) -> bool:
    """Whether a frame's raw text may hold anything redaction changes (the reference of the
    native extension's one-pass version, which replaces it when installed)."""
    # A \u escape could spell a key in a way the raw text does not show: walk to be safe.
    return b"\\u" in raw or _ANY_MARKER.search(raw.lower()) is not None


def _fastest() -> Callable[[bytes], bool]:
    try:
        from chargewatch_native import may_hold_secrets as native
    except ImportError:  # the extension is optional: see collectors.native
        return may_hold_secrets
    return native


_may_hold_secrets = _fastest()


def _redact_config_value(obj: dict[str, Any]) -> None:
    """Blank the value of a secret configuration key / device-model variable, in place."""
    key = obj.get("key")
    if isinstance(key, str) and key.casefold() in SECRET_CONFIG_NAMES and "value" in obj:
        obj["value"] = REDACTED
    variable = obj.get("variable")
    if isinstance(variable, dict) and str(variable.get("name", "")).casefold() in SECRET_CONFIG_NAMES:
        for field_name in ("attributeValue", "value"):
            if field_name in obj:
                obj[field_name] = REDACTED
        attributes = obj.get("variableAttribute")
        for result in attributes if isinstance(attributes, list) else []:
            if isinstance(result, dict) and "value" in result:
                result["value"] = REDACTED


def _strip_network_secrets(payload: dict[str, Any]) -> None:
    data = payload.get("connectionData")
    if not isinstance(data, dict):
        return
    for block, fields in (("vpn", ("password", "key")), ("apn", ("apnPassword", "simPin"))):
        section = data.get(block)
        if isinstance(section, dict):
            for name in fields:
                if name in section:
                    section[name] = REDACTED
