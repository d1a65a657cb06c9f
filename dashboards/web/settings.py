"""What the dashboard application needs besides its store, resolved from ``[dashboard]``.

:func:`settings_from_config` turns the configuration section into :class:`DashboardSettings`
(paths expanded, the cookie-signing key read or created), so :func:`dashboards.web.create_app`
never reads the configuration or the environment itself.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chargewatch.config import Config
from chargewatch.errors import ConfigError

KEY_BYTES = 32
RANGES: dict[str, float | None] = {"1h": 3600.0, "24h": 86_400.0, "7d": 7 * 86_400.0, "30d": 30 * 86_400.0,
                                   "all": None}


@dataclass(frozen=True)
class DashboardSettings:
    """Everything :func:`dashboards.web.create_app` is configured with."""

    users_file: Path
    secret_key: bytes
    store_label: str = ""  # shown in the page footer: which store the dashboard reads
    session_hours: float = 8.0
    secure_cookies: bool = False
    login_attempts: int = 5
    login_window_s: float = 300.0
    login_tracked_addresses: int = 10_000
    default_range: str = "24h"
    max_alerts: int = 2000
    max_messages: int = 10_000
    policy_file: Path | None = None  # operator policy: its rule overrides reach the audit and guidance
    clock: Callable[[], float] = field(default=time.time, compare=False)  # "now" of relative ranges


def settings_from_config(config: Config, store_label: str) -> DashboardSettings:
    """Settings from the ``[dashboard]`` section (and ``[detector] policy_file``); creates the
    secret key file on first start."""
    cfg = config.dashboard
    if cfg.default_range not in RANGES:
        raise ConfigError(f"[dashboard] default_range must be one of {', '.join(RANGES)}, got {cfg.default_range!r}")
    for name in ("login_attempts", "login_tracked_addresses", "max_alerts", "max_messages", "threads"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"[dashboard] {name} must be at least 1")
    if cfg.session_hours <= 0 or cfg.login_window_s <= 0:
        raise ConfigError("[dashboard] session_hours and login_window_s must be positive")
    return DashboardSettings(
        users_file=Path(cfg.users_file).expanduser(),
        secret_key=load_secret_key(Path(cfg.secret_key_file).expanduser()),
        store_label=store_label, session_hours=cfg.session_hours, secure_cookies=cfg.secure_cookies,
        login_attempts=cfg.login_attempts, login_window_s=cfg.login_window_s,
        login_tracked_addresses=cfg.login_tracked_addresses, default_range=cfg.default_range,
        max_alerts=cfg.max_alerts, max_messages=cfg.max_messages,
        policy_file=Path(config.detector.policy_file).expanduser() if config.detector.policy_file else None)


def load_secret_key(path: Path) -> bytes:
    """The session-signing key in path, created (32 random bytes, mode 0600) when absent.

    A key file others can read is refused: whoever reads it can forge any user's session.
    """
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(os.urandom(KEY_BYTES))
        except FileExistsError:
            pass  # another dashboard process created it first: use theirs
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create the dashboard secret key: {exc}") from exc
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the dashboard secret key: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: the dashboard secret key is readable by others (mode {stat.S_IMODE(mode):o}); "
                          f"run chmod 600 {path}")
    if len(key) < KEY_BYTES:
        raise ConfigError(f"{path}: the dashboard secret key is shorter than {KEY_BYTES} bytes; "
                          "delete it to get a new one")
    return key
