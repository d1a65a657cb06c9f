"""The application factory: one Flask app over one store.

``create_app(store, settings)`` wires the login guard in front of every page, the views, the
error pages (a user's mistake or an unreachable store is a page that says so, never a
traceback) and the security headers: a strict Content-Security-Policy (scripts, styles and
images from this site only; nothing is loaded from anywhere else), no framing, no sniffing,
and no caching of pages that show alerts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, render_template, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from chargewatch.alerts import SEVERITY_NAMES
from chargewatch.errors import ServiceError, StoreError
from chargewatch.store import Store
from dashboards.web import auth, views
from dashboards.web.context import EXTENSION, DashboardState
from dashboards.web.filters import FilterError
from dashboards.web.settings import DashboardSettings
from dashboards.web.users import UserDirectory, UsersFile
from detectors.policy import load_policy
from detectors.rules import apply_overrides, load_rules

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
MAX_REQUEST_BYTES = 64 * 1024  # forms are small: a login, a triage note

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class _Sha256Sessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, signed with HMAC-SHA256 instead of the default SHA-1."""

    digest_method = staticmethod(hashlib.sha256)


def create_app(store: Store, settings: DashboardSettings) -> Flask:
    """The dashboard application reading (and triaging) through store."""
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.config.update(
        SECRET_KEY=settings.secret_key, SESSION_COOKIE_NAME="chargewatch_session", SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours), MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        SEND_FILE_MAX_AGE_DEFAULT=3600)
    app.session_interface = _Sha256Sessions()
    limiter = auth.LoginLimiter(settings.login_attempts, settings.login_window_s, settings.login_tracked_addresses,
                                settings.clock)
    policy = load_policy(settings.policy_file)
    rules = apply_overrides(load_rules(), policy.rules, str(settings.policy_file))
    app.extensions[EXTENSION] = DashboardState(store, settings, UserDirectory(UsersFile(settings.users_file)),
                                               limiter, rules)
    app.before_request(auth.guard)
    app.after_request(_headers)
    app.register_blueprint(auth.bp)
    app.register_blueprint(views.bp)
    app.jinja_env.globals["csrf_token"] = auth.csrf_token
    app.jinja_env.filters.update(when=when, severity_name=severity_name, pretty=pretty, duration=duration)
    app.register_error_handler(FilterError, _bad_filter)
    app.register_error_handler(StoreError, _store_down)
    app.register_error_handler(ServiceError, _store_down)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("error.html", title=title, message=message, status=status,
                           user=auth.current_user() if request.endpoint not in auth.PUBLIC_ENDPOINTS else None,
                           view="", filters=None, store_label=""), status


def _bad_filter(exc: FilterError) -> tuple[str, int]:
    return _error_page(400, "Filter not understood", str(exc))


def _store_down(exc: StoreError | ServiceError) -> tuple[str, int]:
    log.error("store error on %s: %s", request.path, exc)
    return _error_page(503, "The store did not answer", str(exc))


def _http_error(exc: HTTPException) -> Any:
    if exc.code == 401 or exc.code is None:
        return exc
    return _error_page(exc.code, exc.name, exc.description or exc.name)


# --- template filters ----------------------------------------------------------------------------

def when(value: Any) -> str:
    """An RFC 3339 time as shown on pages: date and time, UTC, to the millisecond."""
    if not isinstance(value, str) or not value:
        return ""
    text = value.replace("T", " ").removesuffix("Z")
    head, dot, fraction = text.partition(".")
    return f"{head}.{fraction[:3]}" if dot else head


def severity_name(value: Any) -> str:
    """low, medium, high or critical for a severity level ("" for anything else)."""
    return SEVERITY_NAMES.get(value, "") if isinstance(value, int) else ""


def pretty(value: Any) -> str:
    """JSON for an evidence block (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def duration(seconds: Any) -> str:
    """A duration in the largest unit that keeps it readable (s, min, h)."""
    if not isinstance(seconds, int | float):
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
