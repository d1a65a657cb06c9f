"""The Elasticsearch alert store against the real server: template, idempotent upserts of
storm updates, triage set by people survives pipeline updates."""

from __future__ import annotations

import pytest

from chargewatch.alerts import Alert
from chargewatch.config import Config
from chargewatch.store import AlertQuery
from chargewatch.store.elastic import ElasticAlertStore

pytestmark = pytest.mark.services


def _alert(count: int, last: float | None) -> Alert:
    return Alert(id="storm-1", ts=1_795_000_000.0, rule_id="CW-PROTO-001", rule_name="n", category="protocol_anomaly",
                 severity=2, risk_score=55, techniques=("T0855",), charge_point_id="CP-ES", message_id="m0",
                 action="Reset", ocpp_version="1.6", direction="cp->csms", connection_id="C1", source_ip="10.0.0.2",
                 source_port=4000, destination_ip="10.0.0.1", destination_port=9000, reason="r",
                 evidence={"sender": "cp"}, count=count, last_ts=last,
                 latest={"message_id": f"m{count - 1}"} if count > 1 else None)


def test_storm_updates_in_place_and_triage_survives(service_config: Config) -> None:
    store = ElasticAlertStore(service_config.elasticsearch)
    try:
        assert "installed" in store.setup() and "installed" in store.setup()  # idempotent
        store.put_alerts([_alert(1, None)])
        store.client.update(index=store.index, id="storm-1",
                            doc={"triage": {"status": "acknowledged", "note": "looking", "updated_by": "ana"}})
        # A batch holding two versions of the storm: the last one wins, triage is carried over.
        store.put_alerts([_alert(2, 1_795_000_001.0), _alert(3, 1_795_000_002.0)])
        store.refresh()
        (doc,) = store.search(AlertQuery(charge_point_id="CP-ES"))
        assert doc["chargewatch"]["occurrences"] == 3
        assert doc["triage"] == {"status": "acknowledged", "note": "looking", "updated_by": "ana"}
        expected = _alert(3, 1_795_000_002.0).to_document() | {"triage": doc["triage"]}
        assert doc == expected
    finally:
        store.client.options(ignore_status=404).indices.delete(index=store.index)
        store.close()
