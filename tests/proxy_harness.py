"""Harness for the mirroring proxy tests and benchmark: real ``ocpp`` peers talking through the proxy.

The central system and charge points are those of :mod:`tests.peers` (scenarios ``v16_session``
with Basic auth, ``v201_session``, ...). Each peer's WebSocket is tapped so that the frames it
*received* are logged next to the frames it sent: both peers must see exactly what the other sent.
:func:`make_pki` makes a throwaway CA, a server certificate for localhost/127.0.0.1 and client
certificates, with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import json
import queue
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from chargewatch.cli.proxy import build
from chargewatch.config import Config, to_toml, with_overrides
from chargewatch.spool import SpoolReader
from collectors.proxy import OcppProxy
from tests import peers
from tests.peers import SentFrame

PROCESS_TIMEOUT_S = 180.0  # generous: the machine is shared and may be slow


@dataclass
class Pki:
    """PEM files of a throwaway CA and the certificates it signed."""

    ca: Path
    server_cert: Path  # CN localhost, SAN localhost + 127.0.0.1 (proxy and central system)
    server_key: Path
    cp_cert: Path  # a charge point's client certificate (profile 3)
    cp_key: Path
    proxy_cert: Path  # the proxy's client certificate towards the central system
    proxy_key: Path
    cp_cert_der: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Chargewatch Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def issue(cn: str, key: Any, ca: bool, san: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name("Test CA"))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def write(stem: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    ca, _ = write("ca", issue("Test CA", ca_key, True, False), ca_key)
    keys = {stem: ec.generate_private_key(ec.SECP256R1()) for stem in ("server", "cp", "proxy")}
    certs = {"server": issue("localhost", keys["server"], False, True),
             "cp": issue("CP16-001", keys["cp"], False, False),
             "proxy": issue("chargewatch-proxy", keys["proxy"], False, False)}
    paths = {stem: write(stem, certs[stem], keys[stem]) for stem in certs}
    return Pki(ca, *paths["server"], *paths["cp"], *paths["proxy"],
               certs["cp"].public_bytes(serialization.Encoding.DER))


def server_context(pki: Pki, require_client: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client:
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(pki: Pki, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(pki.cp_cert, pki.cp_key)
    return ctx


class _Tap:
    """A peer's WebSocket that logs every frame the peer receives (sender field: the receiver)."""

    def __init__(self, ws: Any, cp_id: str, receiver: str, received: list[SentFrame]) -> None:
        self._ws, self._cp_id, self._receiver, self._received = ws, cp_id, receiver, received

    async def send(self, text: str) -> None:
        await self._ws.send(text)

    async def recv(self) -> Any:
        message = await self._ws.recv()
        self._received.append(SentFrame(time.time(), self._cp_id, self._receiver, str(message)))
        return message


def tap_peers(monkeypatch: pytest.MonkeyPatch, received: list[SentFrame], client_ssl: ssl.SSLContext | None) -> None:
    """Log what every tests.peers peer receives; connect charge points with client_ssl (wss://)."""
    original = peers._Recorder

    class Tapped(original):  # type: ignore[misc, valid-type]
        def __init__(self, ws: Any, cp_id: str, sender: str, log: list[SentFrame]) -> None:
            super().__init__(_Tap(ws, cp_id, sender, received), cp_id, sender, log)

    monkeypatch.setattr(peers, "_Recorder", Tapped)
    if client_ssl is not None:
        monkeypatch.setattr(peers, "connect", functools.partial(connect, ssl=client_ssl))


@contextlib.asynccontextmanager
async def central_system(log: list[SentFrame], ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[
        tuple[peers._Central, int]]:
    """The tests.peers central system (Basic auth for CP16-001) on a free loopback port."""
    central = peers._Central(log)
    async with serve(central.handle, "127.0.0.1", 0, subprotocols=peers.SUBPROTOCOLS,  # type: ignore[arg-type]
                     compression="deflate", process_request=central.process_request, ssl=ssl_context) as server:
        yield central, server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def running_proxy(config: Config, publisher_kill_at: str | None = None,
                        **proxy: object) -> AsyncIterator[tuple[OcppProxy, int]]:
    """The proxy of config (with [proxy] overrides) listening on a free port, with a spool of its
    own under the status directory unless [proxy] spool_dir names one; on exit the spool is
    closed and its publisher process drains it into Kafka (what it cannot publish stays spooled)."""
    config = with_overrides(config, proxy={"listen": "127.0.0.1:0"} | proxy)
    if not config.proxy.spool_dir:
        spool = Path(config.collector.status_dir).expanduser() / f"spool-{uuid.uuid4().hex[:8]}"
        config = with_overrides(config, proxy={"spool_dir": str(spool)})
    instance = build(config, publisher_kill_at)
    instance.mirror.start()
    try:
        port = await instance.start()
        try:
            yield instance, port
        finally:
            await instance.stop()
    finally:
        await asyncio.to_thread(instance.mirror.close)


async def run_scenarios(base_url: str, central: peers._Central, log: list[SentFrame],
                        scenarios: Sequence[str]) -> float:
    """Run tests.peers scenarios against base_url (e.g. ``ws://127.0.0.1:PORT/ocpp/``); wall seconds."""
    started = time.perf_counter()
    ctx = peers._Context(base_url, "deflate", central, log)
    for name in scenarios:
        await peers.SCENARIOS[name](ctx)
    return time.perf_counter() - started


class ProxyProcess:
    """``chargewatch proxy`` as a real process (a test can SIGKILL it), listening on a free port."""

    def __init__(self, config: Config, directory: Path, upstream: str, *extra: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "proxy.toml"
        path.write_text(to_toml(config))
        self.proc = subprocess.Popen([sys.executable, "-m", "chargewatch.cli", "--config", str(path), "proxy",
                                      "--listen", "127.0.0.1:0", "--upstream", upstream, *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.port = self._wait_listening()

    def _drain_stderr(self) -> None:
        """Keep reading stderr (the proxy's and its publisher's) so that neither blocks on a full pipe."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if "proxy listening on " in line:
                return int(line.split("proxy listening on ", 1)[1].split(",", 1)[0].rpartition(":")[2])
        self.kill()
        pytest.fail(f"chargewatch proxy did not start: {''.join(self.stderr)}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(PROCESS_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM (a clean stop: the spool's publisher drains it first); the exit status."""
        self.proc.terminate()
        try:
            return self.proc.wait(PROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"chargewatch proxy did not stop within {PROCESS_TIMEOUT_S}s: {''.join(self.stderr)}")


def spooled(directory: Path) -> Counter[str]:
    """The records in a spool directory by kind (message, connection, deadletter), read as its publisher would."""
    reader, found = SpoolReader(directory), Counter[str]()
    while batch := reader.read():
        found.update(json.loads(entry.value)["record"] for entry in batch)
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = PROCESS_TIMEOUT_S) -> None:
    """Poll a condition that another process makes true (files it writes), within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
