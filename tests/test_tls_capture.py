"""Acceptance: TLS metadata from live captures of real OCPP peers over wss:// on loopback.

A throwaway CA (made here with ``cryptography``) signs the central system's certificates. A
real ``ocpp`` 1.6 central system serves wss:// with Python's ``ssl``, a real ``ocpp`` charge
point connects to it and boots, and the session is sniffed live on ``lo``
(:mod:`tests.livecapture`). The pcap collector must then report one ``tls`` connection event
whose version, cipher suite, SNI and server certificate fingerprint are what the two ``ssl``
sockets negotiated, and the detectors must judge a legacy handshake (CW-MITM-010). Live capture
needs root (CAP_NET_RAW): without it these tests FAIL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargewatch.config import Config, with_overrides
from chargewatch.embedded import analyze
from tests.framecheck import collect
from tests.livecapture import LiveCapture, write_capture

pytestmark = pytest.mark.root

HOST = "csms.chargewatch.test"
STEP_TIMEOUT = 60.0  # seconds per network step: generous, the test machine is often busy
KEY_HEX = "00ff" * 16


@dataclass
class Pki:
    """Files of a throwaway CA and the central system's certificates (ECDSA and RSA)."""

    ca: Path
    ecdsa: tuple[Path, Path]
    rsa: tuple[Path, Path]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Chargewatch Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path.with_suffix(".crt"), path.with_suffix(".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("Chargewatch Test Root", ca_key, "Chargewatch Test Root", ca_key, True)
    ca_path, _ = _write(base / "ca", ca_cert, ca_key)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Pki(ca_path, _write(base / "csms-ecdsa", _cert(HOST, ec_key, "Chargewatch Test Root", ca_key, False),
                               ec_key),
               _write(base / "csms-rsa", _cert(HOST, rsa_key, "Chargewatch Test Root", ca_key, False), rsa_key))


@dataclass(frozen=True)
class Tls:
    """How both ends are configured for one session."""

    version: ssl.TLSVersion
    ciphers: str | None = None  # OpenSSL cipher string for TLS <= 1.2 (None: the default)
    rsa: bool = False  # serve the RSA certificate (needed by TLS_RSA_* suites)


@dataclass
class Negotiated:
    """What the two ssl sockets agreed on, as the peers themselves report it."""

    version: str
    cipher: str
    server_cert_sha256: str
    booted: bool = False


def _contexts(pki: Pki, tls: Tls) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    server.load_cert_chain(*(pki.rsa if tls.rsa else pki.ecdsa))
    client.load_verify_locations(pki.ca)
    for ctx in (server, client):
        ctx.minimum_version = ctx.maximum_version = tls.version
        if tls.ciphers:
            ctx.set_ciphers(tls.ciphers)
    return server, client


class _Central(ChargePoint16):
    @on(Action16.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        return result16.BootNotification(current_time=datetime.now(UTC).isoformat(), interval=300,
                                         status="Accepted")


async def _session(pki: Pki, tls: Tls, capture_holder: list[LiveCapture]) -> Negotiated:
    server_ctx, client_ctx = _contexts(pki, tls)
    seen: list[ServerConnection] = []

    async def handle(ws: ServerConnection) -> None:
        seen.append(ws)
        central = _Central("CP-TLS-1", ws)
        try:
            await central.start()
        except ConnectionClosed:  # the charge point closing ends the session
            return

    async with serve(handle, "127.0.0.1", 0, subprotocols=["ocpp1.6"], ssl=server_ctx) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        capture = LiveCapture(port)
        capture_holder.append(capture)
        await asyncio.to_thread(capture.start)
        async with connect(f"wss://127.0.0.1:{port}/ocpp/CP-TLS-1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                           ssl=client_ctx, server_hostname=HOST, open_timeout=STEP_TIMEOUT) as ws:
            ssl_object = ws.transport.get_extra_info("ssl_object")
            cp = ChargePoint16("CP-TLS-1", ws, response_timeout=int(STEP_TIMEOUT))
            runner = asyncio.create_task(cp.start())
            reply = await cp.call(call16.BootNotification(charge_point_model="TLS", charge_point_vendor="Test"))
            runner.cancel()
            der = ssl_object.getpeercert(binary_form=True)
            negotiated = Negotiated(ssl_object.version(), ssl_object.cipher()[0], hashlib.sha256(der).hexdigest(),
                                    reply.status == "Accepted")
    return negotiated


def _record(path: Path, pki: Pki, tls: Tls) -> Negotiated:
    if os.geteuid() != 0:
        pytest.fail("live capture on lo needs root (CAP_NET_RAW): run as root, e.g. "
                    "`sudo python -m pytest tests/test_tls_capture.py`", pytrace=False)
    holder: list[LiveCapture] = []
    try:
        negotiated = asyncio.run(asyncio.wait_for(_session(pki, tls, holder), 4 * STEP_TIMEOUT))
        packets = holder[0].stop()  # raises unless every byte of every flow was captured
    finally:
        for capture in holder:
            capture.close()
    write_capture(path, packets)
    assert negotiated.booted, "the central system did not accept the BootNotification over TLS"
    return negotiated


def _suite_id(openssl_name: str) -> str:
    """The IANA id (four hex digits, e.g. 0x1301) of a suite named the OpenSSL way, from the local OpenSSL itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    for suite in ctx.get_ciphers():
        if suite["name"] == openssl_name:
            return f"0x{suite['id'] & 0xFFFF:04X}"
    raise AssertionError(f"local OpenSSL does not list {openssl_name}")


@pytest.fixture(autouse=True)
def _quiet_ocpp(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.CRITICAL, logger="ocpp")
    yield


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_tls_event_matches_what_the_peers_negotiated(tmp_path: Path, pki: Pki, version: ssl.TLSVersion) -> None:
    path = tmp_path / "tls.pcap"
    negotiated = _record(path, pki, Tls(version))
    collected = collect(path)
    events = [e for e in collected.events if e.kind == "tls"]
    assert len(events) == 1, [e.kind for e in collected.events]
    tls = events[0].tls
    assert tls is not None
    assert (tls["version"], tls["cipher_id"], tls["sni"]) == (negotiated.version, _suite_id(negotiated.cipher), HOST)
    assert negotiated.version in tls["client_versions"]
    assert tls["ja4"].startswith(f"t{negotiated.version[-3] + negotiated.version[-1]}d")
    assert len(tls["ja3"]) == 32 and len(tls["ja3s"]) == 32
    assert collected.stats.errors == {}, collected.stats.errors
    assert collected.stats.ignored["tls_stream"] == 1
    if version == ssl.TLSVersion.TLSv1_2:  # the chain is in clear text only up to TLS 1.2
        leaf = tls["server_certs"][0]
        assert leaf["sha256"] == negotiated.server_cert_sha256
        assert leaf["subject"] == f"CN={HOST},O=Chargewatch Test"
        assert leaf["issuer"] == "CN=Chargewatch Test Root,O=Chargewatch Test"
    else:
        assert tls["server_certs"] == []
    config = with_overrides(Config(), redaction={"key": KEY_HEX})
    assert [a.rule_id for a in analyze([path], config).alerts if a.rule_id == "CW-MITM-010"] == []


def _legacy_tls() -> Tls:
    """TLS 1.0 with the one suite the 1.6 whitepaper tolerates, if the local OpenSSL can still
    speak TLS 1.0 at security level 0; else TLS 1.2 with a suite OCPP does not allow."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.minimum_version = probe.maximum_version = ssl.TLSVersion.TLSv1
        probe.set_ciphers("AES128-SHA:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        assert not ssl.HAS_TLSv1, "ssl claims TLS 1.0 support but refuses to configure it"
        return Tls(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA:@SECLEVEL=0", rsa=True)
    return Tls(ssl.TLSVersion.TLSv1, "AES128-SHA:@SECLEVEL=0", rsa=True)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
def test_legacy_tls_fires_cw_mitm_010(tmp_path: Path, pki: Pki) -> None:
    tls = _legacy_tls()
    path = tmp_path / "legacy.pcap"
    negotiated = _record(path, pki, tls)
    if tls.version == ssl.TLSVersion.TLSv1:
        assert negotiated.version == "TLSv1", f"TLS 1.0 was configured on both ends, got {negotiated.version}"
    config = with_overrides(Config(), redaction={"key": KEY_HEX})
    result = analyze([path], config)
    alerts = [a for a in result.alerts if a.rule_id == "CW-MITM-010"]
    assert len(alerts) == 1, [a.rule_id for a in result.alerts]
    evidence = alerts[0].evidence
    assert evidence["version"] == negotiated.version
    assert evidence["cipher_id"] == _suite_id(negotiated.cipher)
    assert evidence["sni"] == HOST
