"""The built-in web dashboard (``chargewatch dashboard``): the SOC views for teams without
Kibana and for the embedded default, served by the project itself.

It reads through the :class:`~chargewatch.store.Store` protocol, so Elasticsearch and the
embedded SQLite store look the same: an overview, a charge point drill-down with its timeline,
a remote-command audit and transactions, each filtered by time, site, charge point, category
and severity from its query string, plus an alert page where analysts set triage. Every page
needs a login (users in a file, scrypt-hashed passwords); see :mod:`dashboards.web.auth`.
"""

from __future__ import annotations

from dashboards.web.app import create_app
from dashboards.web.settings import DashboardSettings, settings_from_config

__all__ = ["DashboardSettings", "create_app", "settings_from_config"]
