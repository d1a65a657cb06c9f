"""Shared fixtures. Service-backed tests FAIL (never skip) when Kafka/Elasticsearch are down:
`make test` starts them; by hand run `make services` first."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from chargewatch.config import Config, with_overrides

if TYPE_CHECKING:  # the attack kit (ocpp peers, scapy) is imported only when the capture is made
    from chargewatch.embedded import AnalysisResult
    from chargewatch.model import ConnectionEvent
    from tests.livefleet import FleetRun, Injection

KAFKA = os.environ.get("CHARGEWATCH_TEST_KAFKA", "127.0.0.1:19092")
ELASTIC = os.environ.get("CHARGEWATCH_TEST_ES", "http://127.0.0.1:19200")
TEST_KEY = "5e" * 32


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="regenerate the golden baselines instead of comparing with them")


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition("/")[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Services:
    """Addresses of the real services under test."""

    kafka: str
    elastic: str


@pytest.fixture(scope="session")
def services() -> Services:
    missing = [f"{name} at {addr}" for name, addr in (("Kafka", KAFKA), ("Elasticsearch", ELASTIC))
               if not _reachable(addr)]
    if missing:
        pytest.fail(f"required service(s) not running: {', '.join(missing)}. "
                    "Run `make services` (or `make test`, which starts them).", pytrace=False)
    return Services(KAFKA, ELASTIC)


def isolated_config(services: Services, **kafka: object) -> Config:
    """Config with topics, groups and index unique to one test."""
    run = uuid.uuid4().hex[:10]
    kafka_values = {"bootstrap_servers": services.kafka, "messages_topic": f"t{run}.messages",
                    "alerts_topic": f"t{run}.alerts", "deadletter_topic": f"t{run}.deadletter",
                    "detector_group": f"t{run}-detectors", "indexer_group": f"t{run}-indexer",
                    "correlation_topic": f"t{run}.correlation", "correlation_group": f"t{run}-correlation",
                    "sessions_topic": f"t{run}.sessions",
                    "session_timeout_ms": 6000} | kafka
    return with_overrides(Config(), kafka=kafka_values,
                          elasticsearch={"url": services.elastic, "alerts_index": f"cwtest-{run}"},
                          redaction={"key": TEST_KEY})


@pytest.fixture
def service_config(services: Services) -> Config:
    return isolated_config(services)


@pytest.fixture
def embedded_config() -> Config:
    return with_overrides(Config(), redaction={"key": TEST_KEY})


@pytest.fixture(scope="session")
def repo_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent


# --- the live capture with attacks, shared by the acceptance suites ------------------------------------

@dataclass
class AttackCapture:
    """The attack suite recorded once per session: the pcap, its manifest, the run, the embedded analysis."""

    path: Path
    manifest: Path
    run: FleetRun
    result: AnalysisResult
    upgrades: list[ConnectionEvent]


def write_manifest(path: Path, injections: list[Injection]) -> list[dict[str, object]]:
    """One entry per attack: what it is, what must fire, where and when it was injected."""
    from tests.attacks import ATTACKS

    by_attack: dict[str, list[Injection]] = defaultdict(list)
    for injection in injections:
        by_attack[injection.attack].append(injection)
    entries: list[dict[str, object]] = []
    for attack, expectation in ATTACKS.items():
        done = by_attack.get(attack, [])
        entries.append({"attack": attack, "category": expectation.category, "rule": expectation.rule,
                        "pending": expectation.pending, "what": expectation.what,
                        "charge_points": sorted({i.charge_point for i in done}),
                        "message_ids": [i.message_id for i in done if i.message_id],
                        "first_ts": min((i.ts for i in done), default=None),
                        "last_ts": max((i.ts for i in done), default=None)})
    path.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    return entries


@pytest.fixture(scope="session")
def attack_capture(tmp_path_factory: pytest.TempPathFactory) -> AttackCapture:
    """:func:`tests.attacks.attack_fleet` recorded live on lo (needs root) and analysed in process."""
    from chargewatch.embedded import analyze
    from chargewatch.model import ConnectionEvent
    from tests.attacks import attack_fleet, attack_plan
    from tests.livefleet import acceptance_config, csms_port, record_fleet, require_root

    require_root()
    path = tmp_path_factory.mktemp("scenarios") / "attacks.pcap"
    run = record_fleet(path, attack_fleet, port=csms_port(), plan=attack_plan())
    manifest = path.with_suffix(".manifest.json")
    write_manifest(manifest, run.injections)
    upgrades: list[ConnectionEvent] = []
    result = analyze([path], acceptance_config(), on_record=lambda r: upgrades.append(r) if isinstance(
        r, ConnectionEvent) and r.kind == "upgrade" else None)
    return AttackCapture(path, manifest, run, result, upgrades)


# --- figures of the live acceptance suites, printed at the end of every run -------------------------

ACCEPTANCE_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def acceptance_figures(request: pytest.FixtureRequest) -> list[str]:
    """Lines the acceptance tests report (recall per category, false alerts per 10,000 messages)."""
    return request.config.stash.setdefault(ACCEPTANCE_FIGURES, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(ACCEPTANCE_FIGURES, [])
    if lines:
        terminalreporter.section("Chargewatch acceptance figures")
        for line in lines:
            terminalreporter.write_line(line)
