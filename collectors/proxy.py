"""The mirroring proxy: charge points ⇄ proxy ⇄ central system, every frame mirrored to Kafka.

Where a fleet runs TLS (security profiles 2 and 3) its OCPP content is visible only at the
central system, so the proxy sits in front of it. For each charge point it:

1. receives the WebSocket upgrade, opens the upstream connection to the same path with the
   same offered subprotocols, Authorization header and User-Agent, and answers the charge
   point with the subprotocol the central system chose (or with the central system's refusal,
   e.g. 401, unchanged; 502 when the central system cannot be reached);
2. relays every message unchanged in both directions (text stays text, binary stays binary,
   payload bytes identical; permessage-deflate and pings are per hop), and closes each side with
   the close code and reason the other side sent;
3. mirrors every message and the connection events (client address, path, subprotocols, auth
   scheme and username — never the password — and the TLS metadata) through
   :class:`collectors.proxy_mirror.Mirror` into a durable spool, before the message is forwarded;
   a separate publisher process takes them to Kafka, so Kafka never makes the relay wait.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from chargewatch.config import ProxyConfig
from chargewatch.errors import ConfigError
from chargewatch.model import ConnectionEvent, connection_id, version_from_subprotocol
from collectors.http import identity_from_path, parse_request
from collectors.proxy_mirror import Mirror, MirrorLink
from collectors.proxy_tls import ServerTls, upstream_context

log = logging.getLogger(__name__)

# Close codes a peer may put in a close frame; anything else (1005 no code, 1006 connection lost,
# 1015 TLS failure) is reported to the other side as 1000 (no code) or 1001 (going away).
SENDABLE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))
PASSED_HEADERS = ("WWW-Authenticate", "Retry-After")  # from an upstream refusal to the charge point


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) → (host, port); ConfigError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"[proxy] listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def check_upstream(url: str) -> str:
    """The upstream URL without a trailing slash; ConfigError unless ws:// or wss:// with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"[proxy] upstream must be ws://HOST[:PORT][/path] or wss://..., got {url!r}")
    return url.rstrip("/")


@dataclass
class RelayCounters:
    """What the relay did (written on the event loop only)."""

    frames: int = 0
    bytes: int = 0
    connections_open: int = 0
    connections_total: int = 0
    upstream_failures: int = 0
    upstream_refusals: int = 0
    relay_errors: int = 0


class OcppProxy:
    """One listening endpoint relaying to one central system (see the module docstring)."""

    def __init__(self, cfg: ProxyConfig, mirror: Mirror) -> None:
        self.cfg, self.mirror = cfg, mirror
        self.host, self.port = parse_listen(cfg.listen)
        self.upstream = check_upstream(cfg.upstream)
        self.server_tls = ServerTls(cfg) if cfg.tls_cert or cfg.tls_key else None
        self.upstream_ssl = upstream_context(cfg) if self.upstream.startswith("wss:") else None
        if cfg.upstream_client_cert and self.upstream_ssl is None:
            raise ConfigError("[proxy] upstream_client_cert needs a wss:// upstream")
        self.counters = RelayCounters()
        self._pending: dict[ServerConnection, ClientConnection] = {}
        self._seq = itertools.count(1)
        # When each connection's upgrade arrived: part of its connection id, the same in every event.
        self._started: weakref.WeakKeyDictionary[ServerConnection, float] = weakref.WeakKeyDictionary()
        self._server: Server | None = None
        self._ping = cfg.ping_interval_s or None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await serve(
            self._handle, self.host, self.port, ssl=self.server_tls.context if self.server_tls else None,
            process_request=self._open_upstream, select_subprotocol=self._subprotocol, compression="deflate",
            max_size=self.cfg.max_message_bytes, ping_interval=self._ping, open_timeout=self.cfg.open_timeout_s)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop listening, close every connection (1001 to both sides), wait for the handlers."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # --- handshake -------------------------------------------------------------------------

    async def _open_upstream(self, conn: ServerConnection, request: Request) -> Response | None:
        offered = [Subprotocol(p.strip()) for value in request.headers.get_all("Sec-WebSocket-Protocol")
                   for p in value.split(",") if p.strip()]
        headers = [(name, request.headers[name]) for name in ("Authorization",) if name in request.headers]
        try:
            upstream = await connect(
                self.upstream + request.path, subprotocols=offered or None, additional_headers=headers,
                user_agent_header=request.headers.get("User-Agent"), ssl=self.upstream_ssl, compression="deflate",
                open_timeout=self.cfg.open_timeout_s, max_size=self.cfg.max_message_bytes,
                ping_interval=self._ping, proxy=None)
        except InvalidStatus as exc:
            self.counters.upstream_refusals += 1
            refusal = exc.response
            response = conn.respond(refusal.status_code, refusal.body.decode("utf-8", "replace") if refusal.body
                                    else f"{refusal.reason_phrase}\n")
            for name in PASSED_HEADERS:
                if name in refusal.headers:
                    response.headers[name] = refusal.headers[name]
            self.mirror.event(self._event(conn, request, "upgrade", refusal.status_code, None, None))
            return response
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            self.counters.upstream_failures += 1
            log.warning("proxy: upstream %s unreachable for %s: %s", self.upstream, request.path, exc)
            self.mirror.event(self._event(conn, request, "upgrade", 502, None, None))
            return conn.respond(502, "Central system unreachable.\n")
        self._pending[conn] = upstream
        asyncio.get_running_loop().create_task(self._reap(conn, upstream))
        return None

    def _subprotocol(self, conn: ServerConnection, offered: Any) -> Subprotocol | None:
        upstream = self._pending.get(conn)
        return upstream.subprotocol if upstream is not None else None

    async def _reap(self, conn: ServerConnection, upstream: ClientConnection) -> None:
        """Close an upstream whose charge point never completed its side of the handshake."""
        await conn.wait_closed()
        if self._pending.pop(conn, None) is not None:
            await upstream.close(CloseCode.GOING_AWAY)

    # --- relay -------------------------------------------------------------------------------

    async def _handle(self, conn: ServerConnection) -> None:
        upstream = self._pending.pop(conn, None)
        if upstream is None:  # cannot happen: process_request accepted only with an upstream
            await conn.close(CloseCode.INTERNAL_ERROR)
            return
        assert conn.request is not None and conn.response is not None
        event = self._event(conn, conn.request, "upgrade", conn.response.status_code, upstream.subprotocol,
                            conn.response.headers.get("Sec-WebSocket-Extensions"))
        counters = self.counters
        counters.connections_open += 1
        counters.connections_total += 1
        link = self.mirror.open(event, _endpoint(conn.remote_address), _endpoint(conn.local_address))
        try:
            await self._relay(conn, upstream, link)
        finally:
            counters.connections_open -= 1
            self.mirror.event(_closed(event))

    async def _relay(self, conn: ServerConnection, upstream: ClientConnection, link: MirrorLink) -> None:
        to_upstream = asyncio.create_task(self._pump(conn, upstream, True, link))
        to_client = asyncio.create_task(self._pump(upstream, conn, False, link))
        done, _ = await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        src, dst = (conn, upstream) if first is to_upstream else (upstream, conn)
        if isinstance(first.exception(), ConnectionClosed):
            code, reason = _close_of(src)
        else:  # a bug in the relay, not a peer's doing: say so to both sides
            self.counters.relay_errors += 1
            log.error("proxy: relay failed on %s", link.builder.connection, exc_info=first.exception())
            code, reason = CloseCode.INTERNAL_ERROR, "proxy error"
            await src.close(code, reason)
        await dst.close(code, reason)
        for task in (to_upstream, to_client):
            task.cancel()
        await asyncio.gather(to_upstream, to_client, return_exceptions=True)

    async def _pump(self, src: Any, dst: Any, from_client: bool, link: MirrorLink) -> None:
        """Relay src's messages to dst until src closes (raises ConnectionClosed then)."""
        mirror, counters, seq = self.mirror, self.counters, self._seq
        while True:
            message = await src.recv()
            binary = isinstance(message, bytes)
            data = message if binary else message.encode()  # the text frame's exact (validated UTF-8) bytes
            counters.frames += 1
            counters.bytes += len(data)
            # Mirrored before it is forwarded, so an answer can never be mirrored before its request.
            mirror.frame(link, from_client, data, time.time(), binary, next(seq))
            await dst.send(data, text=not binary)

    # --- connection events ---------------------------------------------------------------------

    def _event(self, conn: ServerConnection, request: Request, kind: str, status: int,
               subprotocol: str | None, extensions: str | None) -> ConnectionEvent:
        client, server = _endpoint(conn.remote_address), _endpoint(conn.local_address)
        head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.raw_items())
        upgrade = parse_request(f"GET {request.path} HTTP/1.1\r\n{head}".encode("latin-1", "replace"))
        ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport is not None else None
        tls = self.server_tls.metadata(ssl_object) if self.server_tls is not None and ssl_object else None
        started = self._started.setdefault(conn, time.time())
        return ConnectionEvent(
            ts=time.time(), kind=kind, connection_id=connection_id(client, server, started),
            charge_point_id=identity_from_path(request.path), client_ip=client[0], client_port=client[1],
            server_ip=server[0], server_port=server[1], path=request.path, subprotocols_offered=upgrade.subprotocols,
            subprotocol=subprotocol, ocpp_version=version_from_subprotocol(subprotocol),
            auth_scheme=upgrade.auth_scheme, auth_username=upgrade.auth_username, status=status,
            extensions=extensions, tls=tls, source=self.mirror.ctx.source)

    def snapshot(self) -> dict[str, Any]:
        """Counters for chargewatch.status.StatusWriter."""
        relay, mirror = self.counters, self.mirror.counters()
        return {"frames": relay.frames, "messages": mirror["messages"], "bytes": relay.bytes,
                "errors": sum(mirror["errors"].values()) + relay.relay_errors, "drops": sum(mirror["drops"].values()),
                "details": {"connections_open": relay.connections_open, "connections_total": relay.connections_total,
                            "upstream_failures": relay.upstream_failures,
                            "upstream_refusals": relay.upstream_refusals, "relay_errors": relay.relay_errors,
                            "drops": mirror["drops"], "drops_by_kind": mirror["drops_by_kind"],
                            "spool": mirror["spool"], "delivered": mirror["delivered"],
                            "redelivered_skipped": mirror["redelivered_skipped"],
                            "kafka_connected": mirror["kafka_connected"], "publisher": mirror["publisher"],
                            "decode_errors": mirror["errors"], "upstream": self.upstream}}


def _endpoint(address: Any) -> tuple[str, int]:
    return (str(address[0]), int(address[1])) if address else ("", 0)


def _close_of(conn: Any) -> tuple[int, str]:
    """The close code and reason conn's peer sent, as something the other side may be sent."""
    code, reason = conn.close_code, conn.close_reason or ""
    if code in SENDABLE:
        return code, reason
    return (CloseCode.NORMAL_CLOSURE, "") if code == CloseCode.NO_STATUS_RCVD else (CloseCode.GOING_AWAY, "")


def _closed(upgrade: ConnectionEvent) -> ConnectionEvent:
    return replace(upgrade, ts=time.time(), kind="closed")

