"""Collector counters written for ``chargewatch status``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from chargewatch.cli import main
from chargewatch.errors import ConfigError
from chargewatch.status import StatusWriter, read_status


def test_status_written_while_running_and_final_at_stop(tmp_path: Path) -> None:
    counters = {"frames": 0, "messages": 0, "bytes": 0, "errors": 0, "drops": 0, "details": {}}

    def snapshot() -> dict[str, object]:
        return dict(counters)

    writer = StatusWriter(tmp_path, "live-lo", "live", snapshot, interval_s=0.05).start()
    counters.update(frames=10, messages=4, bytes=900, drops=1, details={"drops": {"queue_full": 1}})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and read_status(tmp_path)[0]["frames"] != 10:
        time.sleep(0.02)
    [doc] = read_status(tmp_path)
    assert (doc["state"], doc["frames"], doc["messages"], doc["drops"]) == ("running", 10, 4, 1)
    counters.update(errors=2)
    writer.stop()
    [doc] = read_status(tmp_path)
    assert (doc["state"], doc["errors"], doc["details"]) == ("stopped", 2, {"drops": {"queue_full": 1}})


def test_status_reports_stale_and_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "proxy.json").write_text(json.dumps({"name": "proxy", "kind": "proxy", "running": True,
                                                    "updated": time.time() - 60, "interval_s": 5, "frames": 3}))
    (tmp_path / "broken.json").write_text("{not json")
    states = {d["name"]: d["state"] for d in read_status(tmp_path)}
    assert states == {"proxy": "stale", "broken": "unreadable"}
    assert main(["status", "--dir", str(tmp_path), "--json"]) == 0
    assert {d["name"] for d in json.loads(capsys.readouterr().out)} == {"proxy", "broken"}
    with pytest.raises(ConfigError):
        StatusWriter(tmp_path, "../escape", "live", dict)
