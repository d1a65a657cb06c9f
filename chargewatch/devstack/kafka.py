"""A real single-node Apache Kafka 4.x broker for the dev stack (KRaft, combined mode).

The broker's jars come from Maven Central through ``kafka-pom.xml`` beside this module
(cached in ``~/.m2`` and copied once to ``<root>/cache/kafka-libs-<version>-<pom hash>``). One JVM acts as
broker and controller, PLAINTEXT on 127.0.0.1, with every replication factor at 1. Its
config, pid, log and data live in ``<root>/kafka``; storage is formatted once.

Nothing here runs at import time: call :func:`up`, :func:`status` and :func:`down`.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from chargewatch.devstack.common import (
    ServiceInfo,
    StackPaths,
    port_open,
    read_pid,
    run_checked,
    spawn,
    stop_pid,
    tail,
    wait_until,
)
from chargewatch.errors import ServiceError

NAME = "kafka"
HOST = "127.0.0.1"
DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
START_TIMEOUT = 120.0
JVM_OPTS = ("-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            "-Dlog4j2.shutdownHookEnabled=false")
POM = Path(__file__).with_name("kafka-pom.xml")
DEFAULT_JAVA = Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")


@dataclass(frozen=True)
class _Layout:
    """Files of the Kafka service inside its service directory."""

    root: Path

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def log(self) -> Path:
        return self.root / "broker.log"

    @property
    def props(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.root / "log4j2.xml"

    @property
    def data(self) -> Path:
        return self.root / "data"


def up(paths: StackPaths, port: int = DEFAULT_PORT,
       controller_port: int = DEFAULT_CONTROLLER_PORT, fresh: bool = False) -> ServiceInfo:
    """Start the broker unless it already runs healthy; return where it listens.

    Downloads the jars once, formats storage once (fresh: starts from empty storage when it
    is not running), then waits (up to ``START_TIMEOUT``) until the broker answers a Kafka
    metadata request. Raises ServiceError with the log tail when it cannot start.
    """
    layout = _Layout(paths.service_dir(NAME))
    with _locked(layout):
        info = status(paths, port)
        if info is not None:
            return info
        if read_pid(layout.pid_file) is None:
            if fresh:
                shutil.rmtree(layout.data, ignore_errors=True)
            _start(paths, layout, port, controller_port)
        _wait_healthy(layout, port)
        pid = read_pid(layout.pid_file)
        if pid is None:
            raise ServiceError(f"Kafka exited right after start-up; see {layout.log}:\n{tail(layout.log)}")
        return _info(layout, port, pid)


def down(paths: StackPaths) -> bool:
    """Stop the broker (SIGTERM, SIGKILL after a grace period); True if it was running."""
    layout = _Layout(paths.service_dir(NAME))
    return stop_pid(layout.pid_file)


def status(paths: StackPaths, port: int = DEFAULT_PORT) -> ServiceInfo | None:
    """The running broker's info if its process lives and it answers metadata, else None."""
    layout = _Layout(paths.service_dir(NAME))
    pid = read_pid(layout.pid_file)
    if pid is None or not _healthy(port):
        return None
    return _info(layout, port, pid)


def java_binary() -> str:
    """The java to run: $JAVA_HOME/bin/java, else the Debian JDK 17, else java on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        return str(Path(home) / "bin" / "java")
    if DEFAULT_JAVA.exists():
        return str(DEFAULT_JAVA)
    found = shutil.which("java")
    if found is None:
        raise ServiceError("no java found: set JAVA_HOME or install a JDK 17+")
    return found


def kafka_version() -> str:
    """The Kafka version pinned in kafka-pom.xml."""
    found = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", POM.read_text())
    if found is None:
        raise ServiceError(f"{POM}: no <kafka.version> property")
    return found.group(1)


def libs_dir(paths: StackPaths) -> Path:
    """Directory with the broker's runtime jars, copied from Maven once and then reused."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:8]
    libs = paths.cache / f"kafka-libs-{kafka_version()}-{digest}"
    if (libs / ".complete").exists():
        return libs
    staging = paths.cache / f".kafka-libs-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    run_checked([_mvn(), "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                 f"-DoutputDirectory={staging}"], "Maven download of the Kafka jars")
    (staging / ".complete").write_text(kafka_version())
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def server_properties(layout_dir: Path, port: int, controller_port: int) -> str:
    """The broker+controller configuration for one node rooted at layout_dir."""
    layout = _Layout(layout_dir)
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(layout.data),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j_config(log: Path) -> str:
    """A log4j2 XML configuration sending INFO and above to the given file."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName={quoteattr(str(log))} append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
  </Loggers>
</Configuration>
"""


def _start(paths: StackPaths, layout: _Layout, port: int, controller_port: int) -> None:
    """Write config, format storage if needed and spawn the broker JVM."""
    for busy in (port, controller_port):
        if port_open(HOST, busy):
            raise ServiceError(f"Kafka cannot start: {HOST}:{busy} is already in use by another process")
    libs = libs_dir(paths)
    layout.props.write_text(server_properties(layout.root, port, controller_port))
    layout.log4j.write_text(log4j_config(layout.log))
    _format_storage(libs, layout)
    spawn(_java_cmd(libs, layout, "kafka.Kafka", [str(layout.props)]), layout.log,
          layout.pid_file, cwd=layout.root)


def _format_storage(libs: Path, layout: _Layout) -> None:
    """Format the KRaft log directory once, with a fresh cluster id."""
    if (layout.data / "meta.properties").exists():
        return
    args = ["format", "-t", _cluster_id(), "-c", str(layout.props), "--ignore-formatted"]
    run_checked(_java_cmd(libs, layout, "kafka.tools.StorageTool", args), "Kafka storage format",
                cwd=layout.root)


def _java_cmd(libs: Path, layout: _Layout, main: str, args: list[str]) -> list[str]:
    """The java command line running main with the broker's classpath and logging."""
    return [java_binary(), *JVM_OPTS, f"-Dlog4j2.configurationFile={layout.log4j}",
            f"-Dkafka.logs.dir={layout.root}", "-cp", f"{libs}/*", main, *args]


def _cluster_id() -> str:
    """A random Kafka cluster id (base64url UUID, not starting with '-' like Kafka's own)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _wait_healthy(layout: _Layout, port: int) -> None:
    """Block until the broker answers metadata; ServiceError with the log tail otherwise."""
    wait_until(lambda: _healthy(port), START_TIMEOUT, f"Kafka on {HOST}:{port}", layout.log,
               alive=lambda: read_pid(layout.pid_file) is not None)


def _healthy(port: int) -> bool:
    """True when the port accepts, a Kafka metadata request lists at least one broker and the
    broker names a group coordinator (on fresh storage the first group request creates the
    offsets topic; until then consumer groups cannot form)."""
    if not port_open(HOST, port):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=f"{HOST}:{port}", client_id="chargewatch-devstack",
                                 request_timeout_ms=5000, bootstrap_timeout_ms=5000)
    except (KafkaError, OSError):
        return False
    try:
        if not admin.describe_cluster().get("brokers"):
            return False
        admin.describe_groups(["chargewatch-devstack-probe"])
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


@contextmanager
def _locked(layout: _Layout) -> Iterator[None]:
    """Serialise concurrent up() calls on the same stack with a lock file."""
    with (layout.root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mvn() -> str:
    """The Maven executable, or ServiceError when Maven is not installed."""
    found = shutil.which("mvn")
    if found is None:
        raise ServiceError("Maven (mvn) is needed to download Kafka: apt-get install maven")
    return found


def _info(layout: _Layout, port: int, pid: int) -> ServiceInfo:
    return ServiceInfo(name=NAME, address=f"{HOST}:{port}", log=layout.log, pid=pid)
