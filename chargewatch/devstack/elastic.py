"""A real single-node Elasticsearch for the dev stack, started from a Maven Central zip.

The distribution is ``org.elasticsearch.distribution.integ-test-zip:elasticsearch`` (a
minimal build: server, transport and x-pack core/security only, no bundled JDK). It is
fetched once by Maven into ``~/.m2``, unpacked once under ``<root>/cache`` and run with the
system Java 17. Elasticsearch refuses to run as root, so when we are root it runs as the
system user ``chargewatch-es`` (created on first use) through ``runuser``.

The minimal build serves index creation, composable index templates, ``_bulk``, refresh,
``_search`` with queries and aggregations, ``_doc`` get/update and index deletion. It has
no ``GET /`` handler, no ``_delete_by_query`` / ``_reindex`` (the reindex module is not in
it), no ILM, no data streams and no scripting: health is ``GET /_cluster/health``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from chargewatch.devstack.common import (
    ServiceInfo,
    StackPaths,
    port_open,
    process_alive,
    read_pid,
    run_checked,
    spawn,
    stop_pid,
    tail,
    wait_until,
)
from chargewatch.errors import ServiceError

NAME = "elasticsearch"
VERSION = "8.19.21"
GROUP_ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch"
CLUSTER_NAME = "chargewatch-dev"
HOST = "127.0.0.1"
HEAP = "512m"
ES_USER = "chargewatch-es"
JAVA_CANDIDATES = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/temurin-17-jdk-amd64")
START_TIMEOUT = 180.0
STOP_GRACE = 30.0
LAUNCHER_GRACE = 10.0


def up(paths: StackPaths, port: int = 19200, fresh: bool = False) -> ServiceInfo:
    """Start Elasticsearch on 127.0.0.1:port unless it already runs; wait until healthy.

    Idempotent: a running, healthy instance is returned as is (fresh: one that is started
    starts from an empty data directory). Raises ServiceError (with the tail of the log) when
    the port is taken by something else, or when the server exits or is not healthy within
    START_TIMEOUT seconds.
    """
    info = status(paths, port)
    if info is not None:
        return info
    svc = paths.service_dir(NAME)
    down(paths)
    if fresh:
        shutil.rmtree(svc / "data", ignore_errors=True)
    if port_open(HOST, port) or port_open(HOST, _transport_port(port)):
        msg = (f"cannot start Elasticsearch: port {port} or {_transport_port(port)} on {HOST} "
               f"is already used by another process")
        raise ServiceError(msg)
    home = _install(paths)
    _prepare_service_dir(svc, home, port)
    pid = spawn(_command(home, svc), _stdout_log(svc), _pid_file(svc), env=_env(svc), cwd=svc)
    wait_until(lambda: _healthy(port), START_TIMEOUT, f"Elasticsearch on {HOST}:{port}",
               _stdout_log(svc), alive=lambda: process_alive(pid))
    return ServiceInfo(NAME, _address(port), _server_log(svc), pid)


def down(paths: StackPaths) -> bool:
    """Stop the dev Elasticsearch (launcher and server JVM); True if something was running."""
    svc = paths.service_dir(NAME)
    launcher = read_pid(_pid_file(svc))
    stopped = _stop_server_jvm(svc)
    if launcher is not None:
        _await_exit(launcher, LAUNCHER_GRACE)
    return stop_pid(_pid_file(svc), grace=STOP_GRACE) or stopped


def status(paths: StackPaths, port: int = 19200) -> ServiceInfo | None:
    """ServiceInfo of the dev Elasticsearch when it runs and is healthy, else None."""
    svc = paths.service_dir(NAME)
    pid = read_pid(_pid_file(svc))
    if pid is None or not _healthy(port):
        return None
    return ServiceInfo(NAME, _address(port), _server_log(svc), pid)


# --- layout ---------------------------------------------------------------------------


def _address(port: int) -> str:
    return f"http://{HOST}:{port}"


def _transport_port(port: int) -> int:
    return port + 100


def _pid_file(svc: Path) -> Path:
    """Hold the pid of the launcher (runuser or bin/elasticsearch) that spawn() started."""
    return svc / "elasticsearch.pid"


def _server_pid_file(svc: Path) -> Path:
    """Hold the pid of the server JVM, written by Elasticsearch itself (``-p``)."""
    return svc / "run" / "server.pid"


def _stdout_log(svc: Path) -> Path:
    return svc / "logs" / "stdout.log"


def _server_log(svc: Path) -> Path:
    return svc / "logs" / f"{CLUSTER_NAME}.log"


# --- install ----------------------------------------------------------------------------


def _install(paths: StackPaths) -> Path:
    """ES_HOME of the unpacked distribution; downloads and unpacks it on first use."""
    home = paths.cache / f"elasticsearch-{VERSION}"
    if (home / "bin" / "elasticsearch").is_file():
        return home
    with tempfile.TemporaryDirectory(dir=paths.cache, prefix="es-download-") as tmp:
        archive = _download(Path(tmp))
        staging = Path(tmp) / "unpacked"
        _unzip(archive, staging)
        (staging / f"elasticsearch-{VERSION}").rename(home)
    return home


def _download(target: Path) -> Path:
    """Copy the zip out of the local Maven repository, fetching it from Central if needed."""
    run_checked(["mvn", "-q", "-B", "dependency:copy",
                 f"-Dartifact={GROUP_ARTIFACT}:{VERSION}:zip", f"-DoutputDirectory={target}"],
                f"downloading Elasticsearch {VERSION} with Maven")
    archive = target / f"elasticsearch-{VERSION}.zip"
    if not archive.is_file():
        msg = f"Maven did not produce {archive}"
        raise ServiceError(msg)
    return archive


def _unzip(archive: Path, target: Path) -> None:
    """Extract archive keeping the unix permission bits (zipfile drops them)."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            path = Path(zf.extract(member, target))
            mode = (member.external_attr >> 16) & 0o777
            if mode and not member.is_dir():
                path.chmod(mode)
    for path in [target, *target.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)


def _java_home() -> Path:
    """Find a Java 17+ runtime for Elasticsearch 8 (this distribution ships no JDK)."""
    candidates = [os.environ.get("CHARGEWATCH_ES_JAVA_HOME", ""), *JAVA_CANDIDATES,
                  os.environ.get("JAVA_HOME", "")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "java").is_file():
            return Path(candidate)
    msg = "no Java 17 for Elasticsearch: install openjdk-17 or set CHARGEWATCH_ES_JAVA_HOME"
    raise ServiceError(msg)


# --- configuration ----------------------------------------------------------------------


def _settings(svc: Path, port: int) -> dict[str, str]:
    return {
        "cluster.name": CLUSTER_NAME,
        "node.name": CLUSTER_NAME,
        "network.host": HOST,
        "http.port": str(port),
        "transport.port": str(_transport_port(port)),
        "discovery.type": "single-node",
        "path.data": str(svc / "data"),
        "path.logs": str(svc / "logs"),
        "xpack.security.enabled": "false",
        "xpack.ml.enabled": "false",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "action.auto_create_index": "true",
    }


def _prepare_service_dir(svc: Path, home: Path, port: int) -> None:
    """Write config (copied from the distribution), data/log/tmp dirs; hand them to ES_USER."""
    config = svc / "config"
    shutil.copytree(home / "config", config, dirs_exist_ok=True)
    lines = [f"{key}: {json.dumps(value)}" for key, value in _settings(svc, port).items()]
    (config / "elasticsearch.yml").write_text("\n".join(lines) + "\n")
    (config / "jvm.options.d").mkdir(exist_ok=True)
    (config / "jvm.options.d" / "chargewatch.options").write_text(f"-Xms{HEAP}\n-Xmx{HEAP}\n")
    for sub in ("data", "logs", "tmp", "run"):
        (svc / sub).mkdir(exist_ok=True)
    _server_pid_file(svc).unlink(missing_ok=True)
    _stdout_log(svc).write_bytes(b"")  # only this start's console output, for error tails
    if os.geteuid() == 0:
        _hand_over(svc, home)


def _env(svc: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("JAVA_HOME", "ES_JAVA_OPTS", "JAVA_TOOL_OPTIONS")}
    env.update(ES_JAVA_HOME=str(_java_home()), ES_PATH_CONF=str(svc / "config"),
               ES_TMPDIR=str(svc / "tmp"))
    if os.geteuid() == 0:
        env.update(HOME=str(svc), USER=ES_USER, LOGNAME=ES_USER)
    return env


def _command(home: Path, svc: Path) -> list[str]:
    cmd = [str(home / "bin" / "elasticsearch"), "-p", str(_server_pid_file(svc))]
    if os.geteuid() == 0:
        return ["runuser", "-u", ES_USER, "--", *cmd]
    return cmd


# --- running as root --------------------------------------------------------------------


def _ensure_user() -> pwd.struct_passwd:
    """Return the unprivileged system user Elasticsearch runs as, creating it if missing."""
    try:
        return pwd.getpwnam(ES_USER)
    except KeyError:
        run_checked(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                     "--shell", "/usr/sbin/nologin", ES_USER], f"creating user {ES_USER}")
        return pwd.getpwnam(ES_USER)


def _hand_over(svc: Path, home: Path) -> None:
    """Give the service dir to ES_USER; check it can reach the distribution and svc."""
    user = _ensure_user()
    for path in [svc, *svc.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    try:
        run_checked(["runuser", "-u", ES_USER, "--", "test", "-x",
                     str(home / "bin" / "elasticsearch"), "-a", "-w", str(svc / "data")],
                    f"checking that {ES_USER} can use {home} and {svc}")
    except ServiceError as exc:
        msg = (f"user {ES_USER} cannot run {home} or write {svc}: every parent directory "
               f"of the dev-stack root must be world-traversable (o+x)")
        raise ServiceError(msg) from exc


# --- health and shutdown ----------------------------------------------------------------


def _healthy(port: int) -> bool:
    """Tell whether our cluster answers /_cluster/health with status yellow or green."""
    url = f"{_address(port)}/_cluster/health?wait_for_status=yellow&timeout=2s"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=5) as resp:
            body = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return bool(body.get("cluster_name") == CLUSTER_NAME
                and body.get("status") in ("yellow", "green"))


def _stop_server_jvm(svc: Path) -> bool:
    """Make sure the server JVM is gone even if its launcher died without taking it along."""
    pid_file = _server_pid_file(svc)
    pid = read_pid(pid_file)
    if pid is None or not _is_server_jvm(pid, svc):
        pid_file.unlink(missing_ok=True)
        return False
    stop_pid(pid_file, grace=STOP_GRACE)
    if _is_server_jvm(pid, svc):
        msg = (f"Elasticsearch server JVM {pid} would not stop; see {_server_log(svc)}:\n"
               f"{tail(_server_log(svc))}")
        raise ServiceError(msg)
    return True


def _await_exit(pid: int, timeout: float) -> None:
    """Wait up to timeout seconds for the launcher to exit once its JVM is gone."""
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def _is_server_jvm(pid: int, svc: Path) -> bool:
    """Tell whether pid is this dev stack's Elasticsearch JVM (guards against pid reuse)."""
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes()
        cwd = (proc / "cwd").readlink()
    except OSError:
        return False
    return b"org.elasticsearch.bootstrap.Elasticsearch" in cmdline and cwd == svc / "logs"
