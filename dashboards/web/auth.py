"""Login, logout, the session check in front of every page, CSRF tokens and login rate limits.

Nothing but the login page and the static files is served to a visitor without a valid
session. Sessions live in cookies signed with the dashboard's secret key (HttpOnly,
SameSite=Strict, Secure when configured) and hold the user name, the login time, a stamp of
the user's password hash (a changed password or a removed user ends the session) and the CSRF
token every POST must carry. Failed logins are limited per client address.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Blueprint, abort, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from dashboards.web.context import dashboard_state

bp = Blueprint("auth", __name__)

#: Endpoints a visitor without a session may reach.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static"})


class LoginLimiter:
    """At most ``attempts`` failed logins per client address within ``window_s`` seconds.

    Memory is bounded: at most ``max_addresses`` addresses are tracked, the least recently
    failing one is forgotten first (an attacker spreading over more addresses than that gets
    ``attempts`` tries per address and eviction, which the bound on threads keeps slow).
    """

    def __init__(self, attempts: int, window_s: float, max_addresses: int, clock: Callable[[], float]) -> None:
        self.attempts, self.window_s, self.max_addresses, self.clock = attempts, window_s, max_addresses, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float:
        """Seconds until address may try again (0.0: it may try now)."""
        now = self.clock()
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                return 0.0
            self._expire(times, now)
            if not times:
                del self._failures[address]
                return 0.0
            if len(times) < self.attempts:
                return 0.0
            return max(times[0] + self.window_s - now, 0.0)

    def failed(self, address: str) -> None:
        """Count one failed login from address."""
        now = self.clock()
        with self._lock:
            times = self._failures.pop(address, None)
            if times is None:
                times = deque(maxlen=self.attempts)
                while len(self._failures) >= self.max_addresses:
                    self._failures.popitem(last=False)
            self._expire(times, now)
            times.append(now)
            self._failures[address] = times  # most recent last

    def succeeded(self, address: str) -> None:
        """A successful login clears the address's failures."""
        with self._lock:
            self._failures.pop(address, None)

    def tracked(self) -> int:
        """How many addresses are tracked now."""
        with self._lock:
            return len(self._failures)

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()


def csrf_token() -> str:
    """The session's CSRF token (created on first use); every form posts it back."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Refuse (400) a POST whose form token is missing or differs from the session's."""
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, description="The form's security token is missing or out of date (CSRF check). "
                               "Reload the page and submit it again.")


def current_user() -> str | None:
    """The logged-in user, or None when the session is missing, expired or revoked."""
    name = session.get("user")
    if not isinstance(name, str):
        return None
    state = dashboard_state()
    login_at = session.get("login_at")
    if not isinstance(login_at, int | float) or state.settings.clock() - login_at > state.settings.session_hours * 3600:
        return None
    stamp = state.users.stamp(name)
    if stamp is None or not hmac.compare_digest(stamp, str(session.get("stamp", ""))):
        return None
    return name


def guard() -> ResponseReturnValue | None:
    """Runs before every request: CSRF check of POSTs, then the login requirement."""
    if request.method == "POST":
        check_csrf()
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if current_user() is None:
        session.pop("user", None)
        if request.method != "GET":
            abort(401)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    return None


def _safe_next(target: str | None) -> str:
    """A redirect target after login: a path on this site only (no scheme, host or '//')."""
    if not target:
        return url_for("views.overview")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("views.overview")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """The login form; on success a fresh session (new CSRF token) and the page asked for."""
    state = dashboard_state()
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", next_url=next_url, error=None)
    address = request.remote_addr or "unknown"
    wait = state.limiter.retry_after(address)
    if wait > 0:
        response = render_template("login.html", next_url=next_url,
                                   error=f"Too many failed logins from your address. Try again in {int(wait) + 1} s.")
        return response, 429, {"Retry-After": str(int(wait) + 1)}
    name = request.form.get("username", "").strip()
    stamp = state.users.authenticate(name, request.form.get("password", ""))
    if stamp is None:
        state.limiter.failed(address)
        return render_template("login.html", next_url=next_url, error="Wrong user name or password."), 401
    state.limiter.succeeded(address)
    session.clear()  # no session fixation: everything from before the login is dropped
    session.permanent = True
    session.update({"user": name, "stamp": stamp, "login_at": state.settings.clock(),
                    "csrf": secrets.token_urlsafe(32)})
    return redirect(next_url)


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    """End the session (POST with the CSRF token, so another site cannot log a user out)."""
    session.clear()
    return redirect(url_for("auth.login"))
