"""The command line as a user runs it: the embedded default, its outputs and exit codes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from chargewatch.config import Config, to_toml, with_overrides
from chargewatch.redaction import Redactor
from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "demo.pcap"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(to_toml(with_overrides(Config(), redaction={"key": TEST_KEY})))
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chargewatch.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT, env=env)


def test_analyze_jsonl_store_deadletter_and_stats(tmp_path: Path) -> None:
    cfg, out, db = _config(tmp_path), tmp_path / "alerts.jsonl", tmp_path / "alerts.db"
    # Another charge point's capture, cut inside a record (the demo's own bytes again would be a replay).
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes((ROOT / "tests" / "data" / "golden" / "v201_plain.pcapng").read_bytes()[:3000])
    proc = _run("--config", str(cfg), "analyze", str(DEMO), str(cut), "--format", "jsonl", "--out", str(out),
                "--store", str(db), "--deadletter", str(tmp_path / "dl.jsonl"),
                "--stats-json", str(tmp_path / "s.json"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    # Nothing from the cut copy: the demo's replay, direction violation, posture finding and boot event.
    assert sorted(d["rule"]["id"] for d in docs) == ["CW-MITM-003", "CW-PROTO-001", "CW-REPLAY-001", "CW-SEC-005"]
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["errors"] == {"truncated_record": 1} and stats["alerts"] == len(docs)
    letters = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert [dl["kind"] for dl in letters] == ["truncated_record"] and "cut.pcapng" in letters[0]["detail"]
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM alerts")}
    assert stored == {d["event"]["id"] for d in docs}
    # Analysing again into the same store adds nothing (deterministic ids).
    again = _run("--config", str(cfg), "analyze", str(DEMO), "--store", str(db), "--no-progress")
    assert again.returncode == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == len(stored)


def test_analyze_table_and_unreadable_file_exit_status(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    junk = tmp_path / "junk.txt"
    junk.write_text("not a capture")
    proc = _run("--config", str(cfg), "analyze", str(DEMO), str(junk), "--no-progress")
    assert proc.returncode == 1
    assert "CW-REPLAY-001" in proc.stdout and "CP16-ATTACK" in proc.stdout
    assert "unreadable: " in proc.stdout and "junk.txt: not a pcap or pcapng file" in proc.stdout
    assert "OCPP messages 50" in proc.stdout


def test_pseudonym_matches_what_the_collector_writes(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc = _run("--config", str(cfg), "pseudonym", "TAG1234", "tag1234")
    lines = proc.stdout.splitlines()
    expected = Redactor(bytes.fromhex(TEST_KEY)).pseudonym("TAG1234")
    assert lines == [f"TAG1234\t{expected}", f"tag1234\t{expected}"]
    out = tmp_path / "a.jsonl"
    _run("--config", str(cfg), "analyze", str(DEMO), "--format", "jsonl", "--out", str(out), "--no-progress")
    assert "TAG1234" not in out.read_text()


def test_config_errors_are_clear_and_env_config_is_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap = 'x'\n")
    proc = _run("--config", str(bad), "pseudonym", "X")
    assert proc.returncode == 2 and "bad.toml [kafka]: unknown key(s) bootstrap" in proc.stderr
    proc = _run("pseudonym", "X", env=os.environ | {"CHARGEWATCH_CONFIG": str(bad)})
    assert proc.returncode == 2 and "unknown key(s) bootstrap" in proc.stderr


def test_every_command_has_help() -> None:
    for command in ("analyze", "collect", "detect", "index", "setup", "pseudonym"):
        proc = _run(command, "--help")
        assert proc.returncode == 0 and "usage: chargewatch" in proc.stdout, command


def test_service_tests_fail_not_skip_without_services(tmp_path: Path) -> None:
    """A service-backed test run against closed ports must FAIL with a clear message."""
    env = os.environ | {"CHARGEWATCH_TEST_KAFKA": "127.0.0.1:1", "CHARGEWATCH_TEST_ES": "http://127.0.0.1:1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_pipeline_kafka.py::test_demo_capture_end_to_end_into_elasticsearch"],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, env=env)
    assert proc.returncode == 1, proc.stdout
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout
    assert "required service(s) not running: Kafka at 127.0.0.1:1" in proc.stdout
