"""Shared fixtures. Service-backed tests FAIL (never skip) when Kafka/Elasticsearch are down:
`make test` starts them; by hand run `make services` first."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chargewatch.config import Config, with_overrides

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
