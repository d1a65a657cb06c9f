"""One TCP connection seen as HTTP upgrade → WebSocket → OCPP-J messages.

The decoder turns the two reassembled byte streams of a connection into redacted
:class:`~chargewatch.model.OcppMessage` records and :class:`~chargewatch.model.ConnectionEvent`
records, and hands every problem to the sink as a counted dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chargewatch.errors import DecodeError
from chargewatch.model import (
    ConnectionEvent,
    connection_id,
    version_from_subprotocol,
)
from collectors.frames import DecodeContext, MessageBuilder
from collectors.http import (
    MAX_HEAD,
    UpgradeRequest,
    UpgradeResponse,
    identity_from_path,
    negotiated_deflate,
    parse_request,
    parse_response,
    split_head,
)
from collectors.tls import TlsObserver
from collectors.websocket import OP_BINARY, DeflateParams, Frames, WsMessage, WsProblem, frame_decoder

TLS_HANDSHAKE = 0x16


@dataclass(slots=True)
class _Side:
    head: bytearray = field(default_factory=bytearray)
    early: bytearray = field(default_factory=bytearray)
    frames: Frames | None = None
    ttl: int | None = None  # IP TTL / hop limit of the last packet that delivered bytes of this side


class ConnectionDecoder:
    """Decodes both directions of one TCP connection."""

    def __init__(self, ctx: DecodeContext, client: tuple[str, int], server: tuple[str, int], start_ts: float) -> None:
        self.ctx = ctx
        self.client, self.server = client, server
        self.id = connection_id(client, server, start_ts)
        self.request: UpgradeRequest | None = None
        self.response: UpgradeResponse | None = None
        self.cp_id: str | None = None
        self.version: str | None = None
        self.messages = MessageBuilder(ctx, self.id, client, server)
        self.state = "http"  # http -> websocket | ignored
        self._sides = {True: _Side(), False: _Side()}
        # The packet (1-based; 0: none yet) that delivered the latest bytes: records and dead letters
        # name it as their source.
        self.last_number = 0
        self.tls: TlsObserver | None = None  # set when the stream starts with a TLS handshake

    @property
    def last_ref(self) -> str:
        """Where the latest bytes came from, e.g. ``demo.pcap#94`` (built only when something is emitted)."""
        return f"{self.ctx.source}#{self.last_number}" if self.last_number else ""

    def feed(self, from_client: bool, data: bytes, ts: float, number: int, ttl: int | None, gap: bool) -> None:
        """Bytes of one direction, in order, from packet number (ttl: its IP TTL, None to keep the
        last one); gap=True when bytes before them were lost."""
        self.last_number = number
        if self.state in ("ignored", "foreign", "tls"):
            if self.tls is not None:
                self.tls.feed(from_client, data, ts, self.last_ref, gap)
            return
        side = self._sides[from_client]
        if ttl is not None:
            side.ttl = ttl
        if gap:
            self._lost(from_client, ts)
            return
        if self.state == "http" or side.frames is None:
            self._http(from_client, side, data, ts)
        else:
            self._websocket(from_client, side, data, ts)

    def _http(self, from_client: bool, side: _Side, data: bytes, ts: float) -> None:
        if from_client and self.request is not None:
            side.early += data  # WebSocket bytes queued until the response tells how to decode
            return
        if not side.head and not from_client and self.request is None:
            side.head += data  # server spoke first; keep until we know what this is
            return
        side.head += data
        parts = split_head(bytes(side.head))
        if parts is None:
            # A request may arrive a few bytes at a time: only a prefix that cannot become "GET " rules it out.
            if len(side.head) > MAX_HEAD or (from_client and not b"GET ".startswith(bytes(side.head[:4]))):
                self._ignore(side.head, ts)
            return
        head, rest = parts
        side.head.clear()
        if from_client:
            self._on_request(head, rest, ts)
        else:
            self._on_response(head, rest, ts)

    def _on_request(self, head: bytes, rest: bytes, ts: float) -> None:
        try:
            self.request = parse_request(head)
        except DecodeError:
            self._ignore(bytearray(head), ts)
            return
        self.cp_id = identity_from_path(self.request.path)
        self.messages.cp_id = self.cp_id
        if not self.ctx.owns(self.cp_id):
            self.state = "foreign"  # another process decodes this charge point
            return
        self._sides[True].early += rest
        server_head = self._sides[False].head
        if server_head:
            pending = bytes(server_head)
            server_head.clear()
            self._http(False, self._sides[False], pending, ts)

    def _on_response(self, head: bytes, rest: bytes, ts: float) -> None:
        try:
            self.response = parse_response(head)
        except DecodeError as exc:
            self._dead(ts, "bad_http_response", str(exc), head)
            self.state = "ignored"
            return
        req = self.request
        self.version = version_from_subprotocol(self.response.subprotocol)
        self.messages.negotiated(self.version)
        self._event("upgrade", ts)
        if self.response.status != 101 or req is None or not req.is_websocket:
            self.state = "ignored"
            return
        self.ctx.stats.websocket_connections += 1
        self.state = "websocket"
        deflate = negotiated_deflate(self.response.extensions)
        for from_client, no_takeover in ((True, deflate and deflate.client_no_context_takeover),
                                         (False, deflate and deflate.server_no_context_takeover)):
            params = DeflateParams(bool(no_takeover)) if deflate else None
            self._sides[from_client].frames = frame_decoder(params, self.ctx.max_message, self.ctx.native)
        early = bytes(self._sides[True].early)
        self._sides[True].early.clear()
        if early:
            self._websocket(True, self._sides[True], early, ts)
        if rest:
            self._websocket(False, self._sides[False], rest, ts)

    def _websocket(self, from_client: bool, side: _Side, data: bytes, ts: float) -> None:
        assert side.frames is not None
        for item in side.frames.feed(data):
            if isinstance(item, WsProblem):
                self._dead(ts, item.kind, item.detail, item.raw)
            else:
                self._message(from_client, item, ts, side.ttl)

    def _message(self, from_client: bool, ws: WsMessage, ts: float, ttl: int | None) -> None:
        transport: list[str] = []
        if ws.opcode == OP_BINARY:
            transport.append("binary_frame")
        if ws.masked != from_client:
            transport.append("unmasked_client_frame" if from_client else "masked_server_frame")
        self.messages.message(from_client, ws.data, ts, self.last_ref, ws.wire_size, transport, ttl)

    def _lost(self, from_client: bool, ts: float) -> None:
        self._dead(ts, "tcp_gap", "bytes missing from the capture; rest of this direction not decoded", b"")
        side = self._sides[from_client]
        if side.frames is not None:
            side.frames.desynced = True
        else:
            self.state = "ignored"

    def _ignore(self, head: bytearray | bytes, ts: float) -> None:
        kind = "tls_stream" if head[:1] == bytes([TLS_HANDSHAKE]) else "non_websocket_stream"
        if self.ctx.primary:
            self.ctx.stats.ignored[kind] += 1
        self.state = "ignored"
        if kind == "tls_stream" and self.ctx.primary:  # OCPP stays unreadable; the handshake is not
            self.state = "tls"
            self.tls = TlsObserver(self.ctx, self.messages, self.id, self.client, self.server)
            self.tls.feed(True, bytes(head), ts, self.last_ref, False)

    def close(self, ts: float, observed: bool) -> None:
        """End of the connection (observed=True for FIN/RST, False at end of capture)."""
        if self.state == "foreign":
            return
        if self.tls is not None:
            self.tls.close(ts)
            return
        if self.state == "websocket":
            for side in self._sides.values():
                if side.frames is not None and side.frames.in_message:
                    self._dead(ts, "truncated_message", "connection ended inside a WebSocket message", b"")
        if observed and self.request is not None:
            self._event("closed", ts)

    def _event(self, kind: str, ts: float) -> None:
        req, resp = self.request, self.response
        self.ctx.stats.connection_events += 1
        self.ctx.sink.record(ConnectionEvent(
            ts=ts, kind=kind, connection_id=self.id, charge_point_id=self.cp_id, client_ip=self.client[0],
            client_port=self.client[1], server_ip=self.server[0], server_port=self.server[1],
            path=req.path if req else None, subprotocols_offered=req.subprotocols if req else (),
            subprotocol=resp.subprotocol if resp else None, ocpp_version=self.version,
            auth_scheme=req.auth_scheme if req else None, auth_username=req.auth_username if req else None,
            status=resp.status if resp else None, extensions=resp.extensions if resp else None,
            source=self.last_ref))

    def _dead(self, ts: float, kind: str, detail: str, raw: bytes) -> None:
        self.messages.dead(ts, kind, detail, raw, self.last_ref)
