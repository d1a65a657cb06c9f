"""Counters of long-running processes, written where ``chargewatch status`` reads them.

Each long-running collector (live capture, log tailer, mirroring proxy) writes its counters as
one JSON document, ``<status_dir>/<name>.json``, every few seconds and once more when it stops
(atomic replace: a reader never sees half a file). No server is needed, the last counters of a
process that stopped stay readable, and any monitoring agent that reads files can scrape them.

Every document has the same counters — ``frames``, ``messages``, ``bytes``, ``errors``,
``drops`` — plus ``details`` (per-kind error and drop counters, queue depths, ...).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chargewatch.errors import ConfigError

COUNTERS = ("frames", "messages", "bytes", "errors", "drops")
STALE_AFTER_INTERVALS = 3  # a running process whose file is older than this many intervals is reported stale

Snapshot = Callable[[], dict[str, Any]]


class StatusWriter:
    """Writes a process's counters to ``directory/name.json`` every interval_s, from a thread.

    snapshot returns ``{"frames": n, ..., "details": {...}}``; it is called from the writer
    thread, so it must only read (ints and Counters copied under the GIL are consistent enough).
    """

    def __init__(self, directory: Path, name: str, kind: str, snapshot: Snapshot, interval_s: float = 5.0) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"status name {name!r} must be a plain file name")
        self.path = directory / f"{name}.json"
        self.name, self.kind, self.snapshot, self.interval_s = name, kind, snapshot, interval_s
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StatusWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write(running=True)
        self._thread = threading.Thread(target=self._loop, name=f"status-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and write the final counters (running: false)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        self.write(running=False)

    def write(self, running: bool = True) -> None:
        data = self.snapshot()
        document = {"name": self.name, "kind": self.kind, "pid": os.getpid(), "running": running,
                    "started": self.started, "updated": time.time(), "interval_s": self.interval_s,
                    **{c: int(data.get(c, 0)) for c in COUNTERS}, "details": data.get("details", {})}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.path)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write(running=True)

    def __enter__(self) -> StatusWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_status(directory: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Every status document in directory (sorted by name), each with ``state``: running,
    stale (claims to run but stopped writing) or stopped. Unreadable files are reported too."""
    now = time.time() if now is None else now
    found: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            found.append({"name": path.stem, "state": "unreadable", "error": str(exc)})
            continue
        if not doc.get("running"):
            doc["state"] = "stopped"
        elif now - float(doc.get("updated", 0)) > STALE_AFTER_INTERVALS * float(doc.get("interval_s", 5)):
            doc["state"] = "stale"
        else:
            doc["state"] = "running"
        found.append(doc)
    return found
