"""Typed, frozen configuration; loaded from TOML, unknown keys rejected.

Environment variables are read only by the CLI entry point (see ``chargewatch.cli``); every
other module receives a :class:`Config` (or a section of it) explicitly.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from chargewatch.errors import ConfigError


@dataclass(frozen=True)
class KafkaConfig:
    """Kafka connection and topic names."""

    bootstrap_servers: str = "127.0.0.1:19092"
    messages_topic: str = "ocpp.messages"
    alerts_topic: str = "ocpp.alerts"
    deadletter_topic: str = "ocpp.deadletter"
    detector_group: str = "chargewatch-detectors"
    indexer_group: str = "chargewatch-indexer"
    partitions: int = 4
    replication_factor: int = 1
    client_id: str = "chargewatch"
    # A dead consumer's partitions move to the others after this long (broker minimum: 6000).
    session_timeout_ms: int = 10_000
    # Key of the messages topic (a name from chargewatch.model.RECORD_KEYS).
    messages_key: str = "charge_point"
    # Records the per-charge-point detector stage routes to a correlation key (an idTag, a
    # command's action), keyed "<stage>:<key>", consumed by `chargewatch detect --stage correlation`.
    correlation_topic: str = "ocpp.correlation"
    correlation_group: str = "chargewatch-correlation"
    # One session document per finished charging session (features; score and model version
    # when CW-TX-006 is enabled), published by `chargewatch detect`, keyed by charge point, and
    # indexed by `chargewatch index --what sessions|all`. Empty: not published (and the session
    # features are then only computed when CW-TX-006 is enabled).
    sessions_topic: str = "ocpp.sessions"


@dataclass(frozen=True)
class ElasticsearchConfig:
    """Elasticsearch endpoint and index names."""

    url: str = "http://127.0.0.1:19200"
    alerts_index: str = "chargewatch-alerts"
    request_timeout: float = 30.0
    # Retention (chargewatch.store.es_retention): archived messages and alerts older than this
    # many days are deleted (ILM where the cluster has it, else a sweep); 0 keeps them forever.
    messages_retention_days: int = 30
    alerts_retention_days: int = 365
    # How often `chargewatch index` runs the retention sweep (0: only `chargewatch setup` does).
    retention_sweep_interval_s: float = 3600.0


@dataclass(frozen=True)
class RedactionConfig:
    """Pseudonymisation of idTags and removal of secrets in the collector."""

    enabled: bool = True
    # Hex key; when empty, key_file is used (created with a random key on first use).
    key: str = ""
    key_file: str = "~/.local/state/chargewatch/pseudonym.key"


#: OCPP log formats the log reader knows (collectors.logformats), besides pcap/pcapng captures.
LOG_FORMATS = ("jsonl", "ocpp-lib", "steve")


@dataclass(frozen=True)
class CollectorConfig:
    """Collector settings: decoding limits, where counters go."""

    max_message_bytes: int = 1_048_576
    # Which code reads pcap and (plain) pcapng files: auto (the native front end when the chargewatch-native
    # extension is installed, else Python), native (refuse to run without it) or python.
    pcap_decoder: str = "auto"
    # Ports are not required: any TCP stream that starts with a WebSocket upgrade is decoded.
    # Where long-running collectors write their counters (read by `chargewatch status`).
    status_dir: str = "~/.local/state/chargewatch/status"
    # What `analyze` (and `collect logs`) reads: auto (pcap/pcapng by magic bytes, else a log
    # whose format is recognised line by line), pcap, jsonl, ocpp-lib or steve.
    input_format: str = "auto"
    # Time zone of log timestamps written without an offset (IANA name or +HH:MM).
    log_timezone: str = "UTC"
    # OCPP version of log lines that do not say it ("" = unknown; e.g. "1.6").
    log_ocpp_version: str = ""
    # How often `collect logs --follow` looks for appended lines, rotation and truncation.
    log_poll_interval_s: float = 0.5
    # Live capture (`collect live`): frames buffered between the sniffer and the decoder (beyond
    # either bound a frame is dropped and counted as queue_full), the kernel socket buffer that
    # absorbs bursts first, and how often the output (Kafka, evidence pcap) is flushed.
    live_queue_packets: int = 100_000
    live_queue_bytes: int = 268_435_456
    live_socket_buffer_bytes: int = 33_554_432
    live_flush_interval_s: float = 1.0
    # Live capture's durable spool between decoding and Kafka (chargewatch.spool; empty dir:
    # <status_dir>/../spool/live-<status name>): its bound (beyond it a record is dropped and counted
    # as spool_full), its fsync interval (what a machine crash can lose; 0: every record), and how
    # long its publisher may take at stop to empty it (what is left is published by the next run).
    live_spool_dir: str = ""
    live_spool_max_bytes: int = 1_073_741_824
    live_fsync_interval_s: float = 1.0
    live_drain_timeout_s: float = 10.0


@dataclass(frozen=True)
class DetectorConfig:
    """Detector runner settings."""

    # Batch of consumed records processed before alerts are flushed and offsets committed.
    batch_size: int = 500
    # What detector state is keyed by (a name from chargewatch.model.RECORD_KEYS); must match
    # the key of the topic the stage consumes so one process owns each key.
    state_key: str = "charge_point"
    # Operator policy (TOML): allowlists, maintenance windows, sites, rule switches. Empty: defaults.
    policy_file: str = ""


@dataclass(frozen=True)
class ProxyConfig:
    """The mirroring proxy (`chargewatch proxy`): where it listens, the central system behind it,
    TLS on both hops, and the bounds that keep mirroring from ever holding up the relayed traffic."""

    # HOST:PORT to accept charge points on, and the central system's ws:// or wss:// URL; the
    # charge point's request path (its identity) is appended to the URL's path.
    listen: str = "127.0.0.1:9180"
    upstream: str = ""
    # Terminate TLS towards the charge points (PEM files); with tls_client_ca, client certificates
    # (security profile 3) are verified against it and recorded, required if tls_require_client_cert.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_require_client_cert: bool = False
    # wss:// upstream: CA file to verify the central system (empty: the system store), and the
    # proxy's own client certificate for central systems that demand one.
    upstream_ca: str = ""
    upstream_client_cert: str = ""
    upstream_client_key: str = ""
    # Counters go to [collector] status_dir/<status_name>.json.
    status_name: str = "proxy"
    # Durable spool between the relay and Kafka (chargewatch.spool; empty dir:
    # <status_dir>/../spool/<status_name>): its bound (beyond it a record is dropped and counted as
    # spool_full; the relay never waits for Kafka), and its fsync interval (what a machine crash
    # can lose; 0: every record, which makes the relay wait for the disk).
    spool_dir: str = ""
    spool_max_bytes: int = 1_073_741_824
    fsync_interval_s: float = 1.0
    # Longest a Kafka call (connect, metadata) may block the publisher process; on stop, how long
    # it may take to publish what is spooled (the rest stays spooled for the next start).
    kafka_block_ms: int = 5_000
    drain_timeout_s: float = 10.0
    # Upstream connect + handshake timeout; keepalive pings on each hop (0: off); largest relayed message.
    open_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    max_message_bytes: int = 16_777_216


@dataclass(frozen=True)
class DashboardConfig:
    """The built-in web dashboard (`chargewatch dashboard`): where it listens, who may log in,
    how sessions and login attempts are bounded, and how much one page reads from the store."""

    # HOST:PORT to serve on; anything but loopback belongs behind a TLS-terminating reverse proxy.
    listen: str = "127.0.0.1:8080"
    # Users and their scrypt password hashes (`chargewatch dashboard add-user NAME`), and the key
    # that signs session cookies (created with 32 random bytes, mode 0600, on first start).
    users_file: str = "~/.local/state/chargewatch/dashboard-users"
    secret_key_file: str = "~/.local/state/chargewatch/dashboard-secret.key"  # noqa: S105 - a path
    # A login lasts this long; cookies carry the Secure flag when true (set it behind HTTPS).
    session_hours: float = 8.0
    secure_cookies: bool = False
    # Address of the reverse proxy in front, whose X-Forwarded-For/-Proto are trusted ("": none; the
    # peer address is the client's, which is what login rate limits count).
    trusted_proxy: str = ""
    # Failed logins allowed per client address within login_window_s; addresses tracked at most.
    login_attempts: int = 5
    login_window_s: float = 300.0
    login_tracked_addresses: int = 10_000
    # Time range a view shows when the link names none: 1h, 24h, 7d, 30d or all.
    default_range: str = "24h"
    # Most alert documents and archived records one page reads from the store.
    max_alerts: int = 2000
    max_messages: int = 10_000
    # Web server threads (waitress).
    threads: int = 4


@dataclass(frozen=True)
class ModelsConfig:
    """The transaction anomaly models (models/): where their registry of versions lives."""

    # Empty: the registry shipped in the package (models/registry, with a small promoted model;
    # fine for development and trying things out). Deployments set a writable state directory,
    # e.g. ~/.local/state/chargewatch/models, that `chargewatch models train|promote` write to.
    registry_dir: str = ""


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    elasticsearch: ElasticsearchConfig = field(default_factory=ElasticsearchConfig)
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)


T = TypeVar("T")


def load_config(path: Path | None) -> Config:
    """Config from a TOML file (None = defaults); errors name the file and the key."""
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    return _build(Config, raw, f"{path}")


def _build(cls: type[T], raw: dict[str, Any], where: str) -> T:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        if is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{name}] must be a table")
            values[name] = _build(hint, value, f"{where} [{name}]")  # type: ignore[arg-type]
        else:
            values[name] = _check_scalar(hint, value, f"{where}: {name}")
    return cls(**values)


def _check_scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of config with some fields of some sections replaced (used by the CLI)."""
    updated = config
    for section, values in sections.items():
        current = getattr(updated, section)
        updated = replace(updated, **{section: replace(current, **values)})
    return updated


def resolve_redaction_key(cfg: RedactionConfig) -> bytes:
    """The pseudonymisation key: the configured hex key, or the key file (created if absent)."""
    if cfg.key:
        try:
            return bytes.fromhex(cfg.key)
        except ValueError as exc:
            raise ConfigError(f"[redaction] key must be hex: {exc}") from exc
    path = Path(cfg.key_file).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable pseudonymisation key: {exc}") from exc


def to_toml(config: Config) -> str:
    """The configuration as TOML that :func:`load_config` reads back unchanged."""
    lines: list[str] = []
    for section in fields(config):
        lines.append(f"[{section.name}]")
        values = getattr(config, section.name)
        for f in fields(values):
            lines.append(f"{f.name} = {_toml_value(getattr(values, f.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
