"""Helpers for tests that run real pipeline processes against the real Kafka/Elasticsearch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chargewatch.config import Config, to_toml
from chargewatch.store.elastic import ElasticAlertStore


def write_config(config: Config, directory: Path, name: str = "chargewatch") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(to_toml(config))
    return path


def cli(config_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run one chargewatch command as a real process."""
    return subprocess.run([sys.executable, "-m", "chargewatch.cli", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def start(config_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "chargewatch.cli", "--config", str(config_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record currently in topic (all partitions), values decoded."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in records)
        return out
    finally:
        consumer.close()


def indexed_alerts(config: Config) -> list[dict[str, Any]]:
    """Every alert document in the test's Elasticsearch index."""
    from chargewatch.store import AlertQuery

    store = ElasticAlertStore(config.elasticsearch)
    try:
        store.refresh()
        return store.search(AlertQuery(limit=10_000))
    finally:
        store.close()


def group_members(bootstrap: str, group: str) -> int:
    """Members of a stable consumer group; 0 while it is forming or while the broker cannot name
    its coordinator yet (a retriable error: on a fresh broker, the first group request creates
    the offsets topic). Callers poll it with a deadline."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_groups([group]).get(group, {})
    except KafkaError as exc:
        if exc.retriable:
            return 0
        raise
    finally:
        admin.close()
    return len(described.get("members", [])) if described.get("group_state") == "Stable" else 0
