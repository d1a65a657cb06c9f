"""The HTTP/1.1 WebSocket upgrade: path, subprotocols, auth scheme, extensions.

The Basic-auth password is decoded only to split off the username and is never kept.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from chargewatch.errors import DecodeError

MAX_HEAD = 16 * 1024


@dataclass(frozen=True)
class UpgradeRequest:
    """What the charge point asked for."""

    method: str
    path: str
    subprotocols: tuple[str, ...]
    extensions: str | None
    auth_scheme: str | None
    auth_username: str | None
    is_websocket: bool


@dataclass(frozen=True)
class UpgradeResponse:
    """What the central system answered."""

    status: int
    subprotocol: str | None
    extensions: str | None


def split_head(buf: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) once the blank line ending the HTTP head is in buf, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    return buf[:end], buf[end + 4:]


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


def parse_request(head: bytes) -> UpgradeRequest:
    """Parse the client's request head; DecodeError when it is not HTTP."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise DecodeError(f"not an HTTP request line: {lines[0][:80]!r}")
    headers = _headers(lines[1:])
    offered = tuple(p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip())
    scheme, username = _authorization(headers.get("authorization"))
    upgrade = "websocket" in headers.get("upgrade", "").lower()
    return UpgradeRequest(parts[0], parts[1], offered, headers.get("sec-websocket-extensions"), scheme,
                          username, upgrade)


def parse_response(head: bytes) -> UpgradeResponse:
    """Parse the server's response head; DecodeError when it is not HTTP."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise DecodeError(f"not an HTTP status line: {lines[0][:80]!r}")
    headers = _headers(lines[1:])
    return UpgradeResponse(int(parts[1]), headers.get("sec-websocket-protocol"),
                           headers.get("sec-websocket-extensions"))


def _authorization(value: str | None) -> tuple[str | None, str | None]:
    """(scheme, Basic username); the password is dropped here."""
    if not value:
        return None, None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return scheme, None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "Basic", None
    user = decoded.split(b":", 1)[0]
    return "Basic", user.decode("utf-8", errors="replace")


def identity_from_path(path: str) -> str:
    """The charge point identity: last path segment, percent-decoded (query dropped)."""
    try:
        path = urlsplit(path).path
    except ValueError:  # e.g. "//[x": an authority urlsplit rejects; the path is still usable
        path = path.partition("?")[0]
    segments = [s for s in path.split("/") if s]
    return unquote(segments[-1]) if segments else ""


@dataclass(frozen=True)
class Deflate:
    """permessage-deflate as accepted by the server, per sending side."""

    client_no_context_takeover: bool
    server_no_context_takeover: bool


def negotiated_deflate(response_extensions: str | None) -> Deflate | None:
    """The permessage-deflate agreement in the server's Sec-WebSocket-Extensions, if any."""
    if not response_extensions:
        return None
    for offer in response_extensions.split(","):
        params = [p.strip().lower() for p in offer.split(";")]
        if params[0] == "permessage-deflate":
            names = {p.split("=")[0].strip() for p in params[1:]}
            return Deflate("client_no_context_takeover" in names, "server_no_context_takeover" in names)
    return None
