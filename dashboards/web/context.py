"""The state one dashboard application shares between requests: its store, settings, users and
login limiter. :func:`dashboards.web.create_app` builds it; views reach it through
:func:`dashboard_state` (kept on the Flask app, never in a module global)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from flask import current_app

from chargewatch.store import Store
from dashboards.web.settings import DashboardSettings
from dashboards.web.users import UserDirectory
from detectors.rules import Rule

if TYPE_CHECKING:
    from dashboards.web.auth import LoginLimiter

EXTENSION = "chargewatch"
SENSITIVE_RULE = "CW-CMD-002"


@dataclass(frozen=True)
class DashboardState:
    """Per-application state."""

    store: Store
    settings: DashboardSettings
    users: UserDirectory
    limiter: LoginLimiter
    rules: dict[str, Rule]  # the rule set (with the policy's overrides): triage guidance on alert pages

    @property
    def sensitive_actions(self) -> frozenset[str]:
        """The commands the audit lists: rule CW-CMD-002's ``actions``, as in the Kibana audit."""
        return frozenset(str(a) for a in self.rules[SENSITIVE_RULE].param("actions"))


def dashboard_state() -> DashboardState:
    """The state of the application serving the current request."""
    return cast(DashboardState, current_app.extensions[EXTENSION])
