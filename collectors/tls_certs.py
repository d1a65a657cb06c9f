"""X.509 certificate summaries for the TLS metadata: subject, issuer, validity, fingerprint.

The fingerprint (SHA-256 of the DER bytes, the form operators pin and ``openssl x509
-fingerprint -sha256`` prints) needs no parsing, so it is always reported; the rest comes from
the ``cryptography`` package, and a certificate it cannot parse is reported with its
fingerprint and an ``error``.
"""

from __future__ import annotations

import hashlib
from typing import Any


def certificate_info(der: bytes) -> tuple[dict[str, Any], str | None]:
    """(summary of one DER certificate, parse error or None)."""
    info: dict[str, Any] = {"sha256": hashlib.sha256(der).hexdigest(), "subject": None, "issuer": None,
                            "not_before": None, "not_after": None, "serial": None}
    from cryptography import x509  # imported on first use: ~30 ms that plain-ws:// analyses never need

    try:
        cert = x509.load_der_x509_certificate(der)
        info.update(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    not_before=cert.not_valid_before_utc.isoformat(),
                    not_after=cert.not_valid_after_utc.isoformat(), serial=format(cert.serial_number, "x"))
    except ValueError as exc:
        info["error"] = str(exc)
        return info, f"certificate the collector cannot parse: {exc}"
    return info, None
