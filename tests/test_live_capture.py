"""Acceptance: real ``ocpp`` peers on loopback, captured live, decoded exactly by the collector.

Each test runs a central system and OCPP 1.6 / 2.0.1 charge points of the PyPI ``ocpp`` library
over ``websockets`` on 127.0.0.1, sniffs them live on ``lo`` into a capture under tmp_path
(:func:`tests.peers.record`), then reads it back with the pcap collector and compares with
every frame the peers sent. Live capture needs root (CAP_NET_RAW): without it these tests FAIL.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargewatch.config import Config, with_overrides
from chargewatch.embedded import analyze
from tests.framecheck import check_frames, collect
from tests.peers import SentFrame, record

pytestmark = pytest.mark.root

SESSIONS = ["v16_session", "v201_session"]
ATTACKS = ["v16_replay", "v16_direction"]
KEY_HEX = "00ff" * 16


@pytest.fixture(autouse=True)
def _quiet_ocpp(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # The ocpp library logs a traceback for the deliberate CP-sent Reset of v16_direction.
    caplog.set_level(logging.CRITICAL, logger="ocpp")
    yield


def _record(path: Path, scenarios: list[str], cp_ids: set[str], *, compression: bool,
            pcapng: bool = False) -> list[SentFrame]:
    """Record scenarios live; FAILS (never skips) when not root: this is the acceptance test."""
    if os.geteuid() != 0:
        pytest.fail("live capture on lo needs root (CAP_NET_RAW): run this acceptance test as root, "
                    "e.g. `sudo python -m pytest tests/test_live_capture.py`", pytrace=False)
    frames = record(path, scenarios, compression=compression, pcapng=pcapng)
    assert path.is_file() and path.stat().st_size > 0, f"no capture written at {path}"
    assert {f.cp_id for f in frames} == cp_ids, f"peers of {scenarios} sent as {sorted({f.cp_id for f in frames})}"
    return frames


@pytest.mark.parametrize(("compression", "pcapng"), [(True, False), (False, False), (True, True)],
                         ids=["pcap-deflate", "pcap-plain", "pcapng-deflate"])
def test_collector_extracts_exactly_what_peers_sent(tmp_path: Path, compression: bool, pcapng: bool) -> None:
    path = tmp_path / ("live.pcapng" if pcapng else "live.pcap")
    frames = _record(path, SESSIONS, {"CP16-001", "RDAM 123"}, compression=compression, pcapng=pcapng)
    collected = collect(path)
    check_frames(collected, frames)
    extensions = {e.charge_point_id: e.extensions for e in collected.events if e.kind == "upgrade"}
    for cp_id, negotiated in extensions.items():
        assert ("permessage-deflate" in (negotiated or "")) == compression, (cp_id, negotiated)


def test_embedded_pipeline_finds_replay_and_wrong_direction(tmp_path: Path) -> None:
    path = tmp_path / "attacks.pcap"
    frames = _record(path, ATTACKS, {"CP16-ATTACK", "CP16-DIR"}, compression=True)
    check_frames(collect(path), frames)
    config = with_overrides(Config(), redaction={"key": KEY_HEX})
    result = analyze([path], config)
    assert not result.unreadable, result.unreadable
    assert not result.dead_letters, result.dead_letters
    assert result.stats.error_total == 0, result.stats.errors
    found = Counter((a.rule_id, a.charge_point_id) for a in result.alerts)
    expected = Counter({("CW-REPLAY-001", "CP16-ATTACK"): 1, ("CW-PROTO-001", "CP16-DIR"): 1})
    assert found == expected, [a.to_document() for a in result.alerts]
