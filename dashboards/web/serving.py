"""Serving the dashboard: the store it reads, the address it listens on, the WSGI server.

Waitress serves requests from a pool of threads. The Elasticsearch client is shared by them;
a SQLite connection may only be used by the thread that opened it, so the embedded store is
opened once per server thread (:class:`PerThreadStore`), all on the same file (WAL mode: the
dashboard reads while ``analyze`` writes).
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from flask import Flask

from chargewatch.alerts import Alert
from chargewatch.errors import ConfigError, ServiceError
from chargewatch.model import Record
from chargewatch.store import AlertQuery, MessageQuery, Store


class PerThreadStore:
    """A Store that opens one underlying store per calling thread (for SQLite connections)."""

    def __init__(self, opener: Callable[[], Store]) -> None:
        self._opener = opener
        self._local = threading.local()
        self._first = self._mine()  # opened now, in the starting thread: a bad path fails at start

    def _mine(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._opener()
        return store

    def setup(self) -> str:
        return self._mine().setup()

    def put_alerts(self, alerts: Sequence[Alert], sites: dict[str, str] | None = None) -> int:
        return self._mine().put_alerts(alerts, sites)

    def search(self, query: AlertQuery) -> list[dict[str, Any]]:
        return self._mine().search(query)

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        return self._mine().get_alert(alert_id)

    def set_triage(self, alert_id: str, status: str, note: str, user: str) -> dict[str, Any]:
        return self._mine().set_triage(alert_id, status, note, user)

    def put_records(self, records: Sequence[Record], sites: dict[str, str] | None = None) -> int:
        return self._mine().put_records(records, sites)

    def messages(self, query: MessageQuery) -> list[dict[str, Any]]:
        return self._mine().messages(query)

    def assets(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        return self._mine().assets(charge_point_id)

    def refresh(self) -> None:
        self._mine().refresh()

    def close(self) -> None:
        """Close the calling thread's store; the server threads' connections close with the
        process (a SQLite connection cannot be closed from another thread)."""
        store: Store | None = getattr(self._local, "store", None)
        if store is not None:
            store.close()
            self._local.store = None

    def __getattr__(self, name: str) -> Any:
        """Optional capabilities of the underlying store (e.g. ``transactions``) pass through."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._mine(), name)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (``[v6]:PORT`` for IPv6) as host and port; ConfigError when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen address {text!r} must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when host names this machine only (connections from elsewhere cannot reach it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app: Flask, host: str, port: int, threads: int, on_ready: Callable[[str], None],
          trusted_proxy: str = "") -> None:
    """Serve app with waitress until SIGINT or SIGTERM; on_ready gets the URL once listening.

    Forwarding headers are honoured only from trusted_proxy (its X-Forwarded-For becomes the
    client address the login limits count) and stripped from everyone else.
    """
    from waitress import create_server

    proxy: dict[str, Any] = {}
    if trusted_proxy:
        proxy = {"trusted_proxy": trusted_proxy, "trusted_proxy_count": 1,
                 "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"}}
    try:
        server = create_server(app, host=host, port=port, threads=threads, ident="chargewatch",
                               clear_untrusted_proxy_headers=True, **proxy)
    except OSError as exc:
        raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    shown = f"[{host}]" if ":" in host else host
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        on_ready(f"http://{shown}:{server.effective_port}/")
        server.run()
    except KeyboardInterrupt:
        pass  # SIGINT or SIGTERM: the normal way to stop a server
    finally:
        server.close()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
