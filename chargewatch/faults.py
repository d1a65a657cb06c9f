"""Crash-test hooks: make a stage SIGKILL itself at the Nth pass of a named point.

Used by the recovery tests (``--kill-at after_alerts_flushed:3``) to kill a real process at
the exact place where losing or duplicating work would show. Off unless asked for.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from chargewatch.errors import ConfigError


class FaultPoints:
    """Counts passes through named points and kills the process at the configured one."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.at = 0
        self.seen: Counter[str] = Counter()
        if spec:
            name, _, count = spec.partition(":")
            if not count.isdigit() or int(count) < 1:
                raise ConfigError(f"--kill-at wants POINT:N with N >= 1, got {spec!r}")
            self.point, self.at = name, int(count)

    def hit(self, point: str) -> None:
        """Mark a pass through point; SIGKILL this process if it is the chosen pass."""
        self.seen[point] += 1
        if point == self.point and self.seen[point] == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
