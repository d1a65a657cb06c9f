"""TLS for the mirroring proxy: terminating towards charge points, re-originating to the CSMS.

The metadata of a terminated connection goes into ``ConnectionEvent.tls`` with the keys the MITM
detectors read (``detectors/mitm_posture.py``): a client certificate (``client_cert_subject``,
``client_cert_sha256``) makes the connection security profile 3, Basic auth without one 2.
"""

from __future__ import annotations

import hashlib
import ssl
import weakref
from pathlib import Path
from typing import Any

from cryptography import x509

from chargewatch.config import ProxyConfig
from chargewatch.errors import ConfigError


class ServerTls:
    """The listening side's SSLContext, remembering the SNI name each client sent."""

    def __init__(self, cfg: ProxyConfig) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        _load(ctx.load_cert_chain, "tls_cert/tls_key", cfg.tls_cert, cfg.tls_key)
        if cfg.tls_client_ca:
            _load(ctx.load_verify_locations, "tls_client_ca", cfg.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED if cfg.tls_require_client_cert else ssl.CERT_OPTIONAL
        elif cfg.tls_require_client_cert:
            raise ConfigError("[proxy] tls_require_client_cert needs tls_client_ca")
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        ctx.sni_callback = self._sni
        self.context = ctx

    def _sni(self, ssl_object: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name:
            self._names[ssl_object] = server_name

    def metadata(self, ssl_object: Any) -> dict[str, Any]:
        """version, cipher, client certificate (subject, issuer, sha256) and SNI of one connection."""
        cipher = ssl_object.cipher()
        der = ssl_object.getpeercert(binary_form=True)
        subject = issuer = sha256 = None
        if der:
            sha256 = hashlib.sha256(der).hexdigest()
            try:
                cert = x509.load_der_x509_certificate(der)
                subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
            except ValueError:
                subject = None  # verified by OpenSSL but unparsable here: the fingerprint still says "profile 3"
        return {"version": ssl_object.version(), "cipher": cipher[0] if cipher else None,
                "client_cert_subject": subject, "client_cert_issuer": issuer, "client_cert_sha256": sha256,
                "server_name": self._names.get(ssl_object)}


def upstream_context(cfg: ProxyConfig) -> ssl.SSLContext:
    """Client SSLContext for a wss:// central system: verify it (upstream_ca or the system store),
    present the proxy's own client certificate when configured."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if cfg.upstream_ca:
        _load(ctx.load_verify_locations, "upstream_ca", cfg.upstream_ca)
    if cfg.upstream_client_cert or cfg.upstream_client_key:
        _load(ctx.load_cert_chain, "upstream_client_cert/upstream_client_key", cfg.upstream_client_cert,
              cfg.upstream_client_key or None)
    return ctx


def _load(method: Any, what: str, *paths: str | None) -> None:
    for path in paths:
        if path and not Path(path).is_file():
            raise ConfigError(f"[proxy] {what}: no such file {path}")
    try:
        method(*paths)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"[proxy] {what}: cannot load {', '.join(p for p in paths if p)}: {exc}") from exc
