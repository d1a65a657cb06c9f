"""Process plumbing shared by the dev-stack services (Kafka, Elasticsearch).

Each service runs as a detached background process whose pid, log and data live in one
directory under the dev-stack root (``.devstack/`` in the work tree unless
``CHARGEWATCH_DEVSTACK_DIR`` is set at the entry point). Downloads are cached by Maven in
``~/.m2`` and unpacked once under ``<root>/cache``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chargewatch.errors import ServiceError


@dataclass(frozen=True)
class ServiceInfo:
    """Where a running service listens and where its logs are."""

    name: str
    address: str
    log: Path
    pid: int


@dataclass(frozen=True)
class StackPaths:
    """Directory layout of one dev stack."""

    root: Path

    def service_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def cache(self) -> Path:
        path = self.root / "cache"
        path.mkdir(parents=True, exist_ok=True)
        return path


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in pid_file if that process is still alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


def process_alive(pid: int) -> bool:
    """Whether pid runs; an exited child of ours is reaped here, so it never lingers as a zombie."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: a plain liveness probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return done == 0


def spawn(cmd: Sequence[str], log: Path, pid_file: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start cmd detached (own session), output appended to log, pid written to pid_file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv built by the dev stack
            list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path,
               alive: Callable[[], bool] | None = None) -> None:
    """Poll check until it holds; raise ServiceError naming the log when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise ServiceError(f"{what} exited during start-up; see {log}:\n{tail(log)}")
        time.sleep(0.5)
    raise ServiceError(f"{what} not healthy after {timeout:.0f}s; see {log}:\n{tail(log)}")


def stop_pid(pid_file: Path, grace: float = 30.0) -> bool:
    """SIGTERM the process group of the recorded pid, SIGKILL after grace seconds."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and read_pid(pid_file) is not None:
        time.sleep(0.3)
    if read_pid(pid_file) is not None:
        _signal_group(pid, signal.SIGKILL)
        time.sleep(0.5)
    pid_file.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(pid), sig)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_checked(cmd: Sequence[str], what: str, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> str:
    """Run a set-up command to completion; raise ServiceError with its output on failure."""
    proc = subprocess.run(  # noqa: S603 - fixed argv built by the dev stack
        list(cmd), capture_output=True, text=True, cwd=cwd, env=env, check=False,
    )
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout
