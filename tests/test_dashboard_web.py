"""The built-in web dashboard: password storage, CSRF, login limits and sessions (Flask's test
client on a real SQLite store), and the whole flow end to end in Debian's headless Chromium
driven by Selenium, against `chargewatch dashboard` serving a store written by a real
`chargewatch analyze --store` run over the shipped capture with attacks.

The browser test FAILS (never skips) when chromium or chromedriver is missing: `make
system-deps` installs them. Its screenshots go to the test's tmp dir and to out/screenshots/.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from chargewatch.config import Config, to_toml, with_overrides
from chargewatch.errors import ConfigError
from chargewatch.store import AlertQuery, MessageQuery
from chargewatch.store.sqlite import SqliteAlertStore
from dashboards.web import DashboardSettings, create_app
from dashboards.web.auth import LoginLimiter
from dashboards.web.settings import load_secret_key
from dashboards.web.users import PasswordError, UsersFile, hash_password, verify_password
from detectors.rules import load_rules
from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "demo.pcap"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = ROOT / "out" / "screenshots"
USER, PASSWORD = "alice", "correct horse battery"


def _cli(*args: str, config: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chargewatch.cli", "--config", str(config), *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real pipeline run: `chargewatch analyze --store` over the demo capture, and a user.
    Returns the config file and the store."""
    base = tmp_path_factory.mktemp("dashboard")
    config = with_overrides(Config(), redaction={"key": TEST_KEY},
                            dashboard={"users_file": str(base / "users"), "secret_key_file": str(base / "secret.key"),
                                       "default_range": "all"})
    path = base / "chargewatch.toml"
    path.write_text(to_toml(config))
    db = base / "demo.db"
    run = _cli("analyze", str(DEMO), "--store", str(db), "--no-progress", config=path)
    assert run.returncode == 0, run.stderr
    added = _cli("dashboard", "add-user", USER, "--password-stdin", config=path, stdin=PASSWORD + "\n")
    assert added.returncode == 0 and "added user alice" in added.stdout, added.stderr
    return path, db


# --- passwords and the users file -------------------------------------------------------------------

def test_password_hash_is_salted_scrypt_with_parameters() -> None:
    first, second = hash_password("s3cret-words"), hash_password("s3cret-words")
    assert first != second  # a fresh random salt each time
    scheme, params, salt, key = first.split("$")
    assert scheme == "scrypt" and params == "ln=15,r=8,p=1" and len(salt) >= 20 and len(key) >= 40
    assert "s3cret-words" not in first
    assert verify_password(first, "s3cret-words") and verify_password(second, "s3cret-words")
    assert not verify_password(first, "s3cret-wordz")
    assert not verify_password(first, "")
    # Parameters travel with the hash: a cheaper hash made earlier still verifies.
    cheap = hash_password("s3cret-words", log_n=12)
    assert "ln=12" in cheap and verify_password(cheap, "s3cret-words")
    for broken in ("", "plain", "scrypt$ln=15,r=8,p=1$!!!$!!!", first.replace("ln=15", "ln=99"), "md5$x$y$z"):
        assert not verify_password(broken, "s3cret-words"), broken
    with pytest.raises(PasswordError, match="at least 8"):
        hash_password("short")


def test_users_file_is_private_and_checked(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "state" / "users")
    assert users.load() == {}
    assert users.add("alice", "first password") is False
    assert (users.path.stat().st_mode & 0o777) == 0o600 and (users.path.parent.stat().st_mode & 0o777) == 0o700
    with pytest.raises(PasswordError, match="already exists"):
        users.add("alice", "second password")
    assert users.add("alice", "second password", replace=True) is True
    assert verify_password(users.load()["alice"], "second password")
    with pytest.raises(PasswordError, match="invalid user name"):
        users.add("bad:name", "whatever123")
    users.remove("alice")
    assert users.load() == {}
    users.path.write_text("# comment\nbob:not-a-hash\n")
    with pytest.raises(ConfigError, match=r"users:2: not a 'NAME:scrypt"):
        users.load()


def test_secret_key_created_private_and_refused_when_shared(tmp_path: Path) -> None:
    path = tmp_path / "k" / "secret.key"
    key = load_secret_key(path)
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600 and load_secret_key(path) == key
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_secret_key(path)


# --- what the views compute from archive documents ------------------------------------------------

def _msg(ts: str, direction: str, kind: int, mid: str, action: str, payload: dict[str, Any] | None = None,
         **ocpp: Any) -> dict[str, Any]:
    """An archived message document (MESSAGE_FIELDS shape) as the stores return it."""
    return {"@timestamp": f"2026-11-25T10:00:{ts}Z", "event": {"dataset": "chargewatch.ocpp"},
            "source": {"ip": "10.0.0.1", "port": 9000} if direction == "csms->cp" else {"ip": "10.0.0.7"},
            "ocpp": {"charge_point_id": "CP-1", "direction": direction, "message_type": kind, "message_id": mid,
                     "action": action, "version": "1.6", "payload": payload or {}, **ocpp}}


def test_command_outcomes_sessions_and_trigger_from_archive_documents() -> None:
    from chargewatch.catalog import load_catalog
    from dashboards.web.activity import commands, sessions, timeline

    docs = [
        _msg("00.000", "csms->cp", 2, "r1", "Reset", {"type": "Hard"}),
        _msg("00.100", "cp->csms", 4, "r1", "Reset", error_code="NotSupported"),
        _msg("01.000", "csms->cp", 2, "u1", "UnlockConnector", {"connectorId": 1}),
        _msg("02.000", "csms->cp", 2, "s1", "RemoteStopTransaction", {"transactionId": 7}),
        _msg("02.100", "cp->csms", 3, "s1", "RemoteStopTransaction", {"status": "Rejected"}, status="Rejected"),
        _msg("03.000", "csms->cp", 2, "g1", "GetConfiguration", {}),
        _msg("03.100", "cp->csms", 3, "g1", "GetConfiguration", {"configurationKey": []}),
        _msg("04.000", "cp->csms", 2, "st", "StartTransaction", {"connectorId": 2, "meterStart": 1000},
             connector_id=2, id_token="pt_abc"),
        _msg("04.100", "csms->cp", 3, "st", "StartTransaction", {"transactionId": 7}, transaction_id="7"),
        _msg("09.000", "cp->csms", 2, "sp", "StopTransaction", {"transactionId": 7, "meterStop": 4500,
                                                               "reason": "Remote"}, transaction_id="7"),
        _msg("10.000", "cp->csms", 2, "a1", "Authorize", {"idTag": "pt_abc"}),
        _msg("12.000", "cp->csms", 2, "a1", "Authorize", {"idTag": "pt_other"}),  # the replay
    ]
    alert = {"@timestamp": "2026-11-25T10:00:00.000Z", "message": "Reset outside the window",
             "event": {"id": "al1", "severity": 2, "kind": "alert"}, "rule": {"id": "CW-CMD-002"},
             "ocpp": {"charge_point_id": "CP-1", "message_id": "r1", "direction": "csms->cp"}}
    sensitive = frozenset({"Reset", "UnlockConnector", "RemoteStopTransaction"})
    rows = {c.action: c for c in commands(docs, [alert], load_catalog(), sensitive)}
    assert set(rows) == sensitive  # GetConfiguration is routine; the charge point's CALLs are not commands
    assert (rows["Reset"].outcome, rows["Reset"].outcome_class) == ("CALLERROR NotSupported", "error")
    assert rows["Reset"].alerts == [("al1", "CW-CMD-002", 2)] and rows["Reset"].sender == "10.0.0.1:9000"
    assert (rows["UnlockConnector"].outcome, rows["UnlockConnector"].outcome_class) == (
        "no answer in the archive", "none")
    assert (rows["RemoteStopTransaction"].outcome, rows["RemoteStopTransaction"].outcome_class) == (
        "Rejected", "refused")
    every = commands(docs, [], load_catalog(), None)
    assert [c.action for c in every] == ["GetConfiguration", "RemoteStopTransaction", "UnlockConnector", "Reset"]
    assert every[0].outcome == "answered (no status)" and every[0].sensitivity  # a catalog tag (recon)

    (session,) = sessions(docs)
    assert (session.transaction_id, session.connector, session.id_token) == ("7", 2, "pt_abc")
    assert session.ended and session.stop_reason == "Remote" and session.energy_wh == 3500.0
    assert session.duration_s == pytest.approx(5.0)

    replayed = {**alert, "@timestamp": "2026-11-25T10:00:12.000Z",
                "ocpp": {"charge_point_id": "CP-1", "message_id": "a1", "direction": "cp->csms"}}
    marked = [row for row in timeline(docs, [replayed], replayed) if row.marked]
    assert len(marked) == 1 and marked[0].ts.endswith("12.000Z")  # the replay, not the original


# --- the application through Flask's test client -----------------------------------------------------

class Clock:
    """A clock the test moves (login windows, session lifetime)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app_on_demo(demo_run: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Flask, SqliteAlertStore, Clock]]:
    _, db = demo_run
    copy = tmp_path / "demo.db"
    shutil.copy(db, copy)
    store = SqliteAlertStore(copy, create=False)
    users = UsersFile(tmp_path / "users")
    users.add(USER, PASSWORD)
    clock = Clock()
    settings = DashboardSettings(users_file=users.path, secret_key=b"k" * 32, store_label="test", default_range="all",
                                 login_attempts=3, login_window_s=60.0, clock=clock)
    yield create_app(store, settings), store, clock
    store.close()


def _token(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def _login(client: FlaskClient, password: str = PASSWORD) -> Any:
    return client.post("/login", data={"csrf_token": _token(client), "username": USER, "password": password,
                                       "next": "/"})


def test_anonymous_gets_only_login_and_static(app_on_demo: tuple[Flask, SqliteAlertStore, Clock]) -> None:
    app, store, _ = app_on_demo
    client = app.test_client()
    alert_id = store.search(AlertQuery(limit=1))[0]["event"]["id"]
    for path in ("/", "/cp/", "/cp/CP16-001", "/commands", "/transactions", "/timeline/CP16-001",
                 f"/alerts/{alert_id}", "/nowhere"):
        response = client.get(path)
        assert response.status_code == 302 and response.location.startswith("/login?next="), path
    assert client.post(f"/alerts/{alert_id}/triage", data={"csrf_token": "x"}).status_code == 400
    assert client.get("/login").status_code == 200
    css = client.get("/static/dashboard.css")
    assert css.status_code == 200 and b"--sev4" in css.data
    headers = client.get("/login").headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    # After login the page asked for is shown; an off-site "next" is ignored.
    token = _token(client)
    answer = client.post("/login", data={"csrf_token": token, "username": USER, "password": PASSWORD,
                                         "next": "https://evil.example/"})
    assert answer.status_code == 302 and answer.location == "/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_csrf_token_required_on_every_post(app_on_demo: tuple[Flask, SqliteAlertStore, Clock]) -> None:
    app, store, _ = app_on_demo
    client = app.test_client()
    # Login form without the token, or with another session's token: refused before the password is checked.
    assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 400
    other = app.test_client()
    assert client.post("/login", data={"csrf_token": _token(other), "username": USER,
                                       "password": PASSWORD}).status_code == 400
    assert _login(client).status_code == 302
    alert_id = store.search(AlertQuery(limit=1))[0]["event"]["id"]
    good = _token(client, f"/alerts/{alert_id}")
    for sent in ({}, {"csrf_token": ""}, {"csrf_token": good[:-2] + "xx"}):
        response = client.post(f"/alerts/{alert_id}/triage", data={"status": "closed", "note": "forged", **sent})
        assert response.status_code == 400 and b"CSRF" in response.data
    assert "triage" not in store.get_alert(alert_id)  # type: ignore[operator]
    assert client.post("/logout", data={}).status_code == 400  # logging out needs the token too
    saved = client.post(f"/alerts/{alert_id}/triage", data={"status": "closed", "note": "benign", "csrf_token": good})
    assert saved.status_code == 302
    triage = store.get_alert(alert_id)["triage"]  # type: ignore[index]
    assert (triage["status"], triage["note"], triage["updated_by"]) == ("closed", "benign", USER)
    assert client.post("/logout", data={"csrf_token": good}).status_code == 302
    assert client.get("/").status_code == 302


def test_login_rate_limit_per_address(app_on_demo: tuple[Flask, SqliteAlertStore, Clock]) -> None:
    app, _, clock = app_on_demo
    client = app.test_client()
    for _ in range(3):
        assert _login(client, "wrong password").status_code == 401
    # The 4th try inside the window is refused without checking, even with the right password.
    refused = _login(client)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert _login(other).status_code == 302  # another address is not affected
    clock.now += 61
    assert _login(client).status_code == 302


def test_login_limiter_bounds_memory_and_forgets() -> None:
    clock = Clock()
    limiter = LoginLimiter(attempts=2, window_s=10.0, max_addresses=3, clock=clock)
    limiter.failed("a")
    assert limiter.retry_after("a") == 0.0
    limiter.failed("a")
    assert 9.9 < limiter.retry_after("a") <= 10.0
    for address in ("b", "c", "d", "e"):
        limiter.failed(address)
    assert limiter.tracked() == 3  # bounded: the least recently failing addresses were dropped
    clock.now += 10.5
    assert all(limiter.retry_after(a) == 0.0 for a in "abcde")
    limiter.failed("x")
    limiter.succeeded("x")
    assert limiter.retry_after("x") == 0.0


def test_session_expires_and_ends_with_password_change(app_on_demo: tuple[Flask, SqliteAlertStore, Clock],
                                                        tmp_path: Path) -> None:
    app, _, clock = app_on_demo
    client = app.test_client()
    assert _login(client).status_code == 302 and client.get("/").status_code == 200
    clock.now += 8 * 3600 + 1
    assert client.get("/").status_code == 302  # older than session_hours
    clock.now = Clock().now
    assert _login(client).status_code == 302 and client.get("/").status_code == 200
    time.sleep(0.01)  # a new modification time for the users file
    UsersFile(tmp_path / "users").add(USER, "a brand new password", replace=True)
    assert client.get("/").status_code == 302


def test_views_filter_and_report_bad_filters(app_on_demo: tuple[Flask, SqliteAlertStore, Clock]) -> None:
    app, store, _ = app_on_demo
    client = app.test_client()
    _login(client)
    high = {a["rule"]["id"] for a in store.search(AlertQuery(min_severity=3))}
    page = client.get("/?severity=high").get_data(as_text=True)
    shown = set(re.findall(r'<tr data-alert-id="[0-9a-f]+" data-rule="([^"]+)"', page))
    assert shown == high and high
    for query, message in (("severity=bogus", "unknown severity"), ("range=3y", "unknown time range"),
                           ("from=yesterday", "must be a UTC date"), ("category=nope", "unknown category"),
                           ("from=2026-01-02&to=2026-01-01", "must come after")):
        response = client.get(f"/?{query}")
        assert response.status_code == 400 and message in response.get_data(as_text=True), query
    # A window before the capture: the overview is empty and offers the newest alert's time.
    empty = client.get("/?from=2020-01-01&to=2020-01-02").get_data(as_text=True)
    assert 'id="empty-state"' in empty and "No alerts match" in empty
    # The audit lists the sensitive commands (rule CW-CMD-002's list) with their outcome; all=1 adds routine ones.
    sensitive = {str(a) for a in load_rules()["CW-CMD-002"].param("actions")}
    calls = [m for m in store.messages(MessageQuery()) if m["ocpp"].get("direction") == "csms->cp"
             and m["ocpp"].get("message_type") == 2]
    audit, every = client.get("/commands").get_data(as_text=True), client.get("/commands?all=1").get_data(as_text=True)
    assert {c["ocpp"]["action"] for c in calls} - sensitive and {c["ocpp"]["action"] for c in calls} & sensitive
    for call in calls:
        row = f'data-action="{call["ocpp"]["action"]}" data-cp="{call["ocpp"]["charge_point_id"]}" ' \
              f'data-message-id="{call["ocpp"]["message_id"]}"'
        assert (row in audit) == (call["ocpp"]["action"] in sensitive) and row in every, row
    assert "RemoteStartTransaction" in audit and '<span class="outcome outcome-accepted">Accepted</span>' in audit
    # The SQLite store keeps the scored sessions (CW-TX-006): the page shows them, not the archive's.
    page = client.get("/transactions").get_data(as_text=True)
    assert 'id="transactions"' in page and 'id="no-scores"' not in page


def test_cli_refuses_without_users_or_store(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(to_toml(with_overrides(Config(), dashboard={"users_file": str(tmp_path / "none"),
                                                                  "secret_key_file": str(tmp_path / "k")})))
    no_users = _cli("dashboard", "--store", str(tmp_path / "x.db"), config=config)
    assert no_users.returncode == 2 and "no dashboard users" in no_users.stderr and "Traceback" not in no_users.stderr
    added = _cli("dashboard", "add-user", "bob", "--password-stdin", config=config, stdin="long enough\n")
    assert added.returncode == 0, added.stderr
    no_store = _cli("dashboard", "--store", str(tmp_path / "x.db"), "--listen", "127.0.0.1:1", config=config)
    assert no_store.returncode == 2 and "no such SQLite store" in no_store.stderr
    bad_listen = _cli("dashboard", "--listen", "nowhere", config=config)
    assert bad_listen.returncode == 2 and "must be HOST:PORT" in bad_listen.stderr
    short = _cli("dashboard", "add-user", "carol", "--password-stdin", config=config, stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    config.write_text(to_toml(with_overrides(Config(), dashboard={"users_file": str(tmp_path / "none"),
                                                                  "secret_key_file": str(tmp_path / "k")},
                                             elasticsearch={"url": "http://127.0.0.1:1"})))
    no_es = _cli("dashboard", "--listen", "127.0.0.1:1", config=config)
    assert no_es.returncode == 2 and "unreachable" in no_es.stderr and "Traceback" not in no_es.stderr


@pytest.mark.services
def test_dashboard_reads_and_triages_elasticsearch(service_config: Config, tmp_path: Path) -> None:
    """The same views over the real Elasticsearch store: alerts, archive, assets and triage."""
    from chargewatch.embedded import analyze
    from chargewatch.model import Record
    from chargewatch.store.elastic import ElasticAlertStore
    from tests.test_es_layout import drop_all

    records: list[Record] = []
    result = analyze([DEMO], service_config, on_record=records.append)
    es = ElasticAlertStore(service_config.elasticsearch)
    try:
        es.setup()
        es.put_records(records)
        es.put_alerts(result.alerts)
        es.refresh()
        users = UsersFile(tmp_path / "users")
        users.add(USER, PASSWORD)
        app = create_app(es, DashboardSettings(users_file=users.path, secret_key=b"e" * 32, default_range="all"))
        client = app.test_client()
        assert _login(client).status_code == 302
        overview = client.get("/").get_data(as_text=True)
        assert set(re.findall(r'data-alert-id="[0-9a-f]+" data-rule="([^"]+)"', overview)) == {
            a.rule_id for a in result.alerts}
        target = next(a for a in result.alerts if a.rule_id == "CW-MITM-003")
        page = client.get(f"/cp/{target.charge_point_id}").get_data(as_text=True)
        assert 'data-action="RemoteStartTransaction"' in page and "CW-MITM-003" in page and 'id="posture"' in page
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        saved = client.post(f"/alerts/{target.id}/triage", data={"csrf_token": token, "status": "closed",
                                                                  "note": "planned test"})
        assert saved.status_code == 302
        triage = (es.get_alert(target.id) or {})["triage"]
        assert (triage["status"], triage["note"], triage["updated_by"]) == ("closed", "planned test", USER)
    finally:
        drop_all(es)
        es.close()


# --- end to end in headless Chromium ------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dashboard_server(demo_run: tuple[Path, Path]) -> Iterator[str]:
    """`chargewatch dashboard` on 127.0.0.1 and a free port, serving the demo run's store."""
    config, db = demo_run
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chargewatch.cli", "--config", str(config), "dashboard",
                             "--listen", f"127.0.0.1:{port}", "--store", str(db)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"the dashboard did not start: {err}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err  # SIGTERM is a clean stop
    assert f"dashboard at http://127.0.0.1:{port}/" in out
    assert "Traceback" not in err, err


def _browser(tmp_path: Path) -> Any:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
                    "(`make system-deps` as root)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1440,1000"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager is never asked (it would try to download).
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    return driver


class Screens:
    """Numbered full-page screenshots in the test's tmp dir, copied to out/screenshots/."""

    def __init__(self, driver: Any, directory: Path) -> None:
        self.driver, self.directory = driver, directory
        self.saved: list[Path] = []
        directory.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page, not the viewport
            "width": 1440, "height": max(900, min(int(height), 6000)), "deviceScaleFactor": 1, "mobile": False})
        path = self.directory / f"{len(self.saved) + 1:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        self.saved.append(path)
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _wait(driver: Any, condition: Any, what: str, timeout: float = 15.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message=f"timed out waiting for {what}")


def _rows(driver: Any, table_id: str, attribute: str) -> set[str]:
    from selenium.webdriver.common.by import By

    return {row.get_attribute(attribute) for row in
            driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr[{attribute}]")}


def test_dashboard_end_to_end_in_chromium(demo_run: tuple[Path, Path], dashboard_server: str,
                                          tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    _, db = demo_run
    store = SqliteAlertStore(db, create=False)
    alerts = store.search(AlertQuery(limit=1000))
    calls = [m for m in store.messages(MessageQuery()) if m["ocpp"].get("direction") == "csms->cp"
             and m["ocpp"].get("message_type") == 2]
    # The charge point to drill into: one with alerts that also received commands.
    commanded = {m["ocpp"]["charge_point_id"] for m in calls}
    target = sorted({a["ocpp"]["charge_point_id"] for a in alerts} & commanded)[0]
    store.close()
    assert len(alerts) >= 3 and calls, "the demo run should have alerts and central-system commands"

    driver = _browser(tmp_path)
    shots = Screens(driver, tmp_path / "screenshots")
    try:
        driver.get(dashboard_server + "/cp/")
        _wait(driver, ec.presence_of_element_located((By.ID, "login-form")), "the login page")
        assert "/login?next=" in driver.current_url
        shots.take("anonymous-redirected-to-login")

        driver.find_element(By.ID, "username").send_keys(USER)
        driver.find_element(By.ID, "password").send_keys("not the password")
        driver.find_element(By.ID, "login-submit").click()
        error = _wait(driver, ec.visibility_of_element_located((By.ID, "login-error")), "the login error")
        assert "Wrong user name or password" in error.text
        shots.take("wrong-password")

        driver.find_element(By.ID, "username").send_keys(USER)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        _wait(driver, ec.presence_of_element_located((By.ID, "inventory")), "the page asked for before login")
        assert driver.find_element(By.ID, "current-user").text == USER
        driver.find_element(By.LINK_TEXT, "Overview").click()
        _wait(driver, ec.presence_of_element_located((By.ID, "latest-alerts")), "the overview")
        assert _rows(driver, "latest-alerts", "data-rule") == {a["rule"]["id"] for a in alerts}
        assert _rows(driver, "latest-alerts", "data-cp") == {a["ocpp"]["charge_point_id"] for a in alerts}
        assert _rows(driver, "top-charge-points", "data-cp") == {a["ocpp"]["charge_point_id"] for a in alerts
                                                                 if a["event"]["kind"] == "alert"}
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-category svg rect")
        shots.take("overview")

        Select(driver.find_element(By.ID, "f-severity")).select_by_value("high")  # the page applies it at once
        _wait(driver, ec.url_contains("severity=high"), "the severity filter")
        _wait(driver, ec.presence_of_element_located((By.ID, "latest-alerts")), "the filtered overview")
        high = {a["rule"]["id"] for a in alerts if a["event"]["severity"] >= 3}
        assert high and _rows(driver, "latest-alerts", "data-rule") == high
        shots.take("overview-severity-high")

        Select(driver.find_element(By.ID, "f-severity")).select_by_value("")
        _wait(driver, lambda d: "severity=" not in d.current_url, "the severity filter to clear")
        _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, f'#top-charge-points tr[data-cp="{target}"]')),
              "the charge point in the top list")
        driver.find_element(By.CSS_SELECTOR, f'#top-charge-points tr[data-cp="{target}"] a').click()
        _wait(driver, ec.text_to_be_present_in_element((By.ID, "cp-title"), target), "the drill-down")
        assert _rows(driver, "cp-alerts", "data-rule") == {a["rule"]["id"] for a in alerts
                                                           if a["ocpp"]["charge_point_id"] == target}
        assert _rows(driver, "commands", "data-action") == {m["ocpp"]["action"] for m in calls
                                                            if m["ocpp"]["charge_point_id"] == target}
        assert driver.find_element(By.ID, "posture").is_displayed()
        shots.take("charge-point")

        first = driver.find_element(By.CSS_SELECTOR, "#cp-alerts tbody tr[data-alert-id]")
        alert_id = first.get_attribute("data-alert-id")
        first.find_element(By.CSS_SELECTOR, "a.rule-link").click()
        _wait(driver, ec.presence_of_element_located((By.ID, "triage-form")), "the alert page")
        driver.find_element(By.ID, "status-acknowledged").click()
        note = driver.find_element(By.ID, "triage-note-input")
        note.clear()
        note.send_keys("Checked with the operator: <b>known</b> legacy charger")
        driver.find_element(By.ID, "triage-save").click()
        _wait(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".flash"), "Triage saved"), "the save")
        assert driver.find_element(By.ID, "triage-user").text == USER
        assert "<b>known</b>" in driver.find_element(By.ID, "triage-note").text  # shown as text, not markup
        shots.take("alert-triaged")

        driver.find_element(By.ID, "alert-timeline").click()
        _wait(driver, ec.presence_of_element_located((By.ID, "timeline")), "the timeline")
        shots.take("timeline")
        driver.find_element(By.LINK_TEXT, "Remote commands").click()
        _wait(driver, ec.presence_of_element_located((By.ID, "command-count")), "the command audit")
        shots.take("remote-commands")
        driver.find_element(By.LINK_TEXT, "Transactions").click()
        _wait(driver, ec.presence_of_element_located((By.ID, "transactions")), "the transactions view")
        shots.take("transactions")
        driver.find_element(By.ID, "logout").click()
        _wait(driver, ec.presence_of_element_located((By.ID, "login-form")), "the login page after logout")
    finally:
        driver.quit()

    store = SqliteAlertStore(db, create=False)
    try:
        triage = (store.get_alert(str(alert_id)) or {}).get("triage")
    finally:
        store.close()
    assert triage is not None and triage["status"] == "acknowledged" and triage["updated_by"] == USER
    assert triage["note"] == "Checked with the operator: <b>known</b> legacy charger"
    assert len(shots.saved) == 9 and all(p.stat().st_size > 5000 for p in shots.saved)
    assert all((SHOTS / p.name).is_file() for p in shots.saved)

