"""Transport facts of a charge point's connections that the shared context does not keep.

The command detectors need to know, per WebSocket connection, whether it runs over TLS,
which server certificate the central system showed and which security profile the upgrade
implies. Those facts exist only on the upgrade event, so each detector records them in its
own state (bounded: the last few connections) and looks them up by connection id.

``ConnectionEvent.tls`` is None for plain ``ws://``; collectors that see TLS fill it with
``server_cert_sha256`` (the central system's certificate, hex SHA-256) and, for mutual TLS,
one of :data:`CLIENT_CERT_KEYS`. The profile follows the same reading as CW-MITM-005
(``detectors.mitm_posture.observed_profile``). A connection whose upgrade we never saw has no
link: unknown, not plain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chargewatch.model import ConnectionEvent
from detectors.base import State

MAX_LINKS = 16
CLIENT_CERT_KEYS = ("client_cert_subject", "client_cert_sha256", "client_cert")


@dataclass(frozen=True, slots=True)
class Link:
    """What the upgrade of one connection showed."""

    tls: bool
    profile: int  # 0 unauthenticated, 1 plain + Basic auth, 2 TLS + Basic auth, 3 TLS with a client certificate
    server_cert: str | None
    server: str  # "ip:port" of the central system


def link_from_upgrade(event: ConnectionEvent) -> Link:
    """The transport facts of an upgrade event."""
    tls: dict[str, Any] | None = event.tls
    basic = (event.auth_scheme or "").lower() == "basic"
    if tls is None:
        return Link(False, 1 if basic else 0, None, f"{event.server_ip}:{event.server_port}")
    cert = tls.get("server_cert_sha256") or tls.get("cert_sha256")
    profile = 3 if any(tls.get(key) for key in CLIENT_CERT_KEYS) else 2 if basic else 0
    return Link(True, profile, str(cert).lower() if cert else None, f"{event.server_ip}:{event.server_port}")


def remember_link(state: State, event: ConnectionEvent) -> None:
    """Record an upgrade (forget a closed connection), keeping the newest MAX_LINKS."""
    links: dict[str, Link] = state.setdefault("links", {})
    if event.kind == "upgrade":
        links.pop(event.connection_id, None)
        links[event.connection_id] = link_from_upgrade(event)
        while len(links) > MAX_LINKS:
            del links[next(iter(links))]
    elif event.kind == "closed":
        links.pop(event.connection_id, None)


def link_of(state: State, connection_id: str) -> Link | None:
    """The recorded link of a connection, None when its upgrade was not seen."""
    links: dict[str, Link] | None = state.get("links")
    return None if links is None else links.get(connection_id)
