"""TLS handshake metadata from the reassembled byte streams of one TCP connection.

Security profiles 2 and 3 run OCPP over TLS, so a capture shows no OCPP content for them, but
the handshake is in clear text up to the point where the peers switch to encryption: the
ClientHello (versions, cipher suites, SNI, ALPN, extensions, groups, signature algorithms),
the ServerHello (chosen version, suite, ALPN) and, for TLS 1.2 and below, the server's
certificate chain. :class:`TlsHandshake` reads records from both directions (handshake
messages may span records and TCP segments), stops reading a direction once it is encrypted,
and emits one :class:`~chargewatch.model.ConnectionEvent` of kind ``"tls"`` per connection.

Fingerprints: JA4 for the client (FoxIO's specification, BSD-3-Clause), and JA3 / JA3S
(Salesforce) for the client and the server. JA4S is not computed: it is published under the
FoxIO License 1.1, which restricts its use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chargewatch.model import ConnectionEvent
from collectors.frames import DecodeContext, Endpoint, MessageBuilder
from collectors.tls_certs import certificate_info
from collectors.tls_names import suite_name

CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPDATA = 20, 21, 22, 23
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_CERTIFICATE, HS_SERVER_HELLO_DONE = 1, 2, 11, 14
EXT_SNI, EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN, EXT_VERSIONS = 0, 10, 11, 13, 16, 43
MAX_RECORD = 16384 + 2048  # TLSCiphertext limit (RFC 8446 §5.2)
MAX_HANDSHAKE = 1 << 17  # largest handshake message kept (a certificate chain); larger: malformed
VERSIONS = {0x0002: "SSLv2", 0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
            0x0304: "TLSv1.3"}
JA4_VERSIONS = {0x0002: "s2", 0x0300: "s3", 0x0301: "10", 0x0302: "11", 0x0303: "12", 0x0304: "13"}


class TlsError(ValueError):
    """A handshake that cannot be parsed (the counter name is ``tls_malformed``)."""


def is_grease(value: int) -> bool:
    """GREASE values (RFC 8701): 0x?A?A with both bytes equal; ignored by every fingerprint."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def version_name(value: int) -> str:
    """``TLSv1.2`` style name (as ssl.SSLSocket.version() spells it); the id in hex (e.g. ``0x0A0A``) if unknown."""
    return VERSIONS.get(value, f"0x{value:04X}")


class _Reader:
    """Bounds-checked big-endian reads over one message body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TlsError(f"field of {n} bytes runs past the end of the message")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> bytes:
        return self.take(self.uint(len_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _u16s(data: bytes) -> list[int]:
    if len(data) % 2:
        raise TlsError("odd-length list of 16-bit values")
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def _extensions(r: _Reader) -> list[tuple[int, bytes]]:
    if not r.left:
        return []
    body = _Reader(r.vector(2))
    out = []
    while body.left:
        out.append((body.uint(2), body.vector(2)))
    return out


def _alpn(data: bytes) -> list[str]:
    r, out = _Reader(_Reader(data).vector(2)), []
    while r.left:
        out.append(r.vector(1).decode("latin-1"))
    return out


def _sni(data: bytes) -> str | None:
    r = _Reader(_Reader(data).vector(2))
    while r.left:
        kind, name = r.uint(1), r.vector(2)
        if kind == 0:
            return name.decode("latin-1")
    return None


@dataclass
class ClientHello:
    """What a ClientHello offers (GREASE values kept here; fingerprints drop them)."""

    legacy_version: int
    ciphers: list[int]
    compression: list[int]
    extensions: list[int]
    sni: str | None = None
    alpn: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # supported_versions, in order
    groups: list[int] = field(default_factory=list)
    point_formats: list[int] = field(default_factory=list)
    sig_algs: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes) -> ClientHello:
        r = _Reader(body)
        legacy = r.uint(2)
        r.take(32)  # random
        r.vector(1)  # session id
        hello = cls(legacy, _u16s(r.vector(2)), list(r.vector(1)), [])
        for ext, data in _extensions(r):
            hello.extensions.append(ext)
            if ext == EXT_SNI:
                hello.sni = _sni(data)
            elif ext == EXT_ALPN:
                hello.alpn = _alpn(data)
            elif ext == EXT_VERSIONS:
                hello.versions = _u16s(_Reader(data).vector(1))
            elif ext == EXT_GROUPS:
                hello.groups = _u16s(_Reader(data).vector(2))
            elif ext == EXT_POINT_FORMATS:
                hello.point_formats = list(_Reader(data).vector(1))
            elif ext == EXT_SIG_ALGS:
                hello.sig_algs = _u16s(_Reader(data).vector(2))
        return hello

    @property
    def offered_versions(self) -> list[int]:
        """Versions offered: supported_versions when present, else the legacy version alone."""
        return [v for v in self.versions if not is_grease(v)] or [self.legacy_version]

    def ja4(self) -> str:
        """JA4 (FoxIO): t<version><d|i><ciphers><extensions><alpn>_<ciphers hash>_<extensions hash>."""
        ciphers = [c for c in self.ciphers if not is_grease(c)]
        exts = [e for e in self.extensions if not is_grease(e)]
        version = JA4_VERSIONS.get(max(self.offered_versions), "00")
        alpn = _ja4_alpn(self.alpn[0]) if self.alpn else "00"
        head = f"t{version}{'d' if self.sni else 'i'}{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{alpn}"
        cipher_hash = _hash12(",".join(f"{c:04x}" for c in sorted(ciphers))) if ciphers else "000000000000"
        hashed = [f"{e:04x}" for e in sorted(exts) if e not in (EXT_SNI, EXT_ALPN)]
        sigs = [f"{s:04x}" for s in self.sig_algs if not is_grease(s)]
        ext_text = ",".join(hashed) + ("_" + ",".join(sigs) if sigs else "")
        return f"{head}_{cipher_hash}_{_hash12(ext_text) if hashed else '000000000000'}"

    def ja3_string(self) -> str:
        """JA3 text: version,ciphers,extensions,groups,point formats (decimal, GREASE removed)."""
        def dec(values: list[int]) -> str:
            return "-".join(str(v) for v in values if not is_grease(v))
        return ",".join((str(self.legacy_version), dec(self.ciphers), dec(self.extensions), dec(self.groups),
                         dec(self.point_formats)))


@dataclass
class ServerHello:
    """What the server chose."""

    legacy_version: int
    cipher: int
    compression: int
    extensions: list[int]
    version: int  # supported_versions when present (TLS 1.3), else the legacy version
    alpn: str | None = None

    @classmethod
    def parse(cls, body: bytes) -> ServerHello:
        r = _Reader(body)
        legacy = r.uint(2)
        r.take(32)
        r.vector(1)
        hello = cls(legacy, r.uint(2), r.uint(1), [], legacy)
        for ext, data in _extensions(r):
            hello.extensions.append(ext)
            if ext == EXT_VERSIONS and len(data) == 2:
                hello.version = int.from_bytes(data, "big")
            elif ext == EXT_ALPN:
                names = _alpn(data)
                hello.alpn = names[0] if names else None
        return hello

    def ja3s_string(self) -> str:
        """JA3S text: version,cipher,extensions (decimal)."""
        return f"{self.legacy_version},{self.cipher},{'-'.join(str(e) for e in self.extensions)}"


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ja4_alpn(value: str) -> str:
    """First and last character of the first ALPN value; their hex digits when not alphanumeric."""
    if not value:
        return "00"
    first, last = value[0], value[-1]
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    raw = value.encode("latin-1").hex()
    return raw[0] + raw[-1]


def _certificates(body: bytes) -> list[bytes]:
    """The DER certificates of a TLS 1.2 Certificate message, leaf first."""
    r, out = _Reader(_Reader(body).vector(3)), []
    while r.left:
        out.append(r.vector(3))
    return out


@dataclass
class _Direction:
    """One direction's unparsed record bytes and handshake bytes."""

    records: bytearray = field(default_factory=bytearray)
    handshake: bytearray = field(default_factory=bytearray)
    encrypted: bool = False  # ChangeCipherSpec or application data seen: nothing more to read


# Called with (problem kind, detail, raw excerpt) for bad input; the owner counts and dead-letters it.
Problem = Callable[[str, str, bytes], None]


class TlsHandshake:
    """Handshake metadata of one connection; :meth:`feed` bytes, read :attr:`done` and :meth:`metadata`."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.client: ClientHello | None = None
        self.server: ServerHello | None = None
        self.certs: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.failed = False  # malformed: stop reading, report what was parsed
        self._sides = {True: _Direction(), False: _Direction()}

    @property
    def done(self) -> bool:
        """Nothing more to learn: the server side is encrypted or finished its hello, or input was bad."""
        return self.failed or self._sides[False].encrypted

    def feed(self, from_client: bool, data: bytes) -> None:
        side = self._sides[from_client]
        if self.failed or side.encrypted:
            return
        side.records += data
        try:
            self._records(from_client, side)
        except TlsError as exc:
            self.failed = True
            self.problem("tls_malformed", str(exc), bytes(side.records[:64]) or data[:64])
            side.records.clear()

    def _records(self, from_client: bool, side: _Direction) -> None:
        buf = side.records
        while len(buf) >= 5 and not side.encrypted:
            ctype, length = buf[0], int.from_bytes(buf[3:5], "big")
            if ctype not in (CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPDATA) or buf[1] != 3:
                raise TlsError(f"not a TLS record: content type {ctype}, version {buf[1]}.{buf[2]}")
            if length > MAX_RECORD:
                raise TlsError(f"record of {length} bytes exceeds the TLS limit")
            if len(buf) < 5 + length:
                return
            fragment = bytes(buf[5:5 + length])
            del buf[:5 + length]
            if ctype == CONTENT_HANDSHAKE:
                side.handshake += fragment
                self._messages(from_client, side)
            elif ctype == CONTENT_ALERT and len(fragment) == 2:
                self.alerts.append({"from": "client" if from_client else "server", "level": fragment[0],
                                    "description": fragment[1]})
            else:  # ChangeCipherSpec or application data: the rest of this direction is encrypted
                side.encrypted = True
        if side.encrypted:
            buf.clear()

    def _messages(self, from_client: bool, side: _Direction) -> None:
        hs = side.handshake
        while len(hs) >= 4 and not side.encrypted:
            mtype, length = hs[0], int.from_bytes(hs[1:4], "big")
            if length > MAX_HANDSHAKE:
                raise TlsError(f"handshake message of {length} bytes")
            if len(hs) < 4 + length:
                return
            body = bytes(hs[4:4 + length])
            del hs[:4 + length]
            self._message(from_client, side, mtype, body)

    def _message(self, from_client: bool, side: _Direction, mtype: int, body: bytes) -> None:
        if from_client and mtype == HS_CLIENT_HELLO and self.client is None:
            self.client = ClientHello.parse(body)
        elif not from_client and mtype == HS_SERVER_HELLO and self.server is None:
            self.server = ServerHello.parse(body)
            if self.server.version >= 0x0304:
                side.encrypted = True  # TLS 1.3: everything after the ServerHello is encrypted
        elif not from_client and mtype == HS_CERTIFICATE and not self.certs:
            for der in _certificates(body):
                info, error = certificate_info(der)
                if error:
                    self.problem("tls_bad_certificate", error, der[:64])
                self.certs.append(info)
        elif not from_client and mtype == HS_SERVER_HELLO_DONE:
            side.encrypted = True  # nothing the monitor reads follows from the server until its Finished

    def metadata(self) -> dict[str, Any]:
        """The ``tls`` object of the connection event (keys documented in README, message model)."""
        client, server = self.client, self.server
        out: dict[str, Any] = {"client_versions": [], "version": None, "cipher": None, "cipher_id": None,
                               "compression": None, "sni": None, "alpn": [], "alpn_chosen": None,
                               "ja4": None, "ja3": None, "ja3_string": None, "ja3s": None, "ja3s_string": None,
                               "offered_ciphers": [], "extensions": [], "groups": [], "signature_algorithms": [],
                               "server_certs": self.certs, "alerts": self.alerts, "complete": server is not None}
        if client is not None:
            ja3 = client.ja3_string()
            out.update(client_versions=[version_name(v) for v in client.offered_versions], sni=client.sni,
                       alpn=client.alpn, ja4=client.ja4(), ja3_string=ja3,
                       ja3=hashlib.md5(ja3.encode(), usedforsecurity=False).hexdigest(),
                       offered_ciphers=[suite_name(c) for c in client.ciphers if not is_grease(c)],
                       extensions=[e for e in client.extensions if not is_grease(e)],
                       groups=[g for g in client.groups if not is_grease(g)],
                       signature_algorithms=[f"0x{s:04x}" for s in client.sig_algs])
        if server is not None:
            ja3s = server.ja3s_string()
            out.update(version=version_name(server.version), cipher=suite_name(server.cipher),
                       cipher_id=f"0x{server.cipher:04X}", compression=server.compression,
                       alpn_chosen=server.alpn, ja3s_string=ja3s,
                       ja3s=hashlib.md5(ja3s.encode(), usedforsecurity=False).hexdigest())
        return out


class TlsObserver:
    """The TLS side of one connection decoder: feeds :class:`TlsHandshake`, emits the ``tls`` event.

    The event goes out as soon as the handshake has nothing more to tell (so live capture
    reports it while the connection lasts), or when the connection ends with a ClientHello
    seen (a refused handshake is worth reporting too). Problems are counted and dead-lettered
    through the connection's :class:`~collectors.frames.MessageBuilder`.
    """

    def __init__(self, ctx: DecodeContext, messages: MessageBuilder, conn_id: str, client: Endpoint,
                 server: Endpoint) -> None:
        self.ctx, self.messages = ctx, messages
        self.conn_id, self.client, self.server = conn_id, client, server
        self.handshake = TlsHandshake(self._problem)
        self.emitted = False
        self._ts, self._ref = 0.0, ""

    def feed(self, from_client: bool, data: bytes, ts: float, ref: str, gap: bool) -> None:
        """Bytes of one direction in order (gap: bytes before them were lost)."""
        if self.emitted:
            return
        self._ts, self._ref = ts, ref
        if gap:
            self._problem("tcp_gap", "bytes missing from the capture inside the TLS handshake", b"")
            self.handshake.failed = True
        else:
            self.handshake.feed(from_client, data)
        if self.handshake.done:
            self.emit(ts, ref)

    def close(self, ts: float) -> None:
        """End of the connection: report what the handshake showed, if anything."""
        if not self.emitted and self.handshake.client is not None:
            self.emit(ts, self._ref)

    def emit(self, ts: float, ref: str) -> None:
        self.emitted = True
        self.ctx.stats.connection_events += 1
        self.ctx.sink.record(ConnectionEvent(
            ts=ts, kind="tls", connection_id=self.conn_id, charge_point_id=None, client_ip=self.client[0],
            client_port=self.client[1], server_ip=self.server[0], server_port=self.server[1],
            tls=self.handshake.metadata(), source=ref))

    def _problem(self, kind: str, detail: str, raw: bytes) -> None:
        self.messages.dead(self._ts, kind, detail, raw, self._ref)
