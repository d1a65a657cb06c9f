"""The Elasticsearch alert store against the real server: template, idempotent upserts of
storm updates, triage set by people survives pipeline updates, the responder filters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chargewatch.alerts import Alert
from chargewatch.config import Config, with_overrides
from chargewatch.errors import ServiceError, StoreError
from chargewatch.store import AlertQuery
from chargewatch.store.elastic import ElasticAlertStore
from tests.test_es_layout import drop_all

pytestmark = pytest.mark.services

NOW = 1_795_617_163.0


def _alert(count: int, last: float | None, alert_id: str = "storm-1", cp: str = "CP-ES", ts: float = 1_795_000_000.0,
           severity: int = 2) -> Alert:
    return Alert(id=alert_id, ts=ts, rule_id="CW-PROTO-001", rule_name="n", category="protocol_anomaly",
                 severity=severity, risk_score=55, techniques=("T0855",), charge_point_id=cp, message_id="m0",
                 action="Reset", ocpp_version="1.6", direction="cp->csms", connection_id="C1", source_ip="10.0.0.2",
                 source_port=4000, destination_ip="10.0.0.1", destination_port=9000, reason="r",
                 evidence={"sender": "cp"}, count=count, last_ts=last,
                 latest={"message_id": f"m{count - 1}"} if count > 1 else None)


@pytest.fixture
def store(service_config: Config) -> Iterator[ElasticAlertStore]:
    es = ElasticAlertStore(service_config.elasticsearch, clock=lambda: NOW)
    try:
        yield es
    finally:
        drop_all(es)
        es.close()


def test_storm_updates_in_place_and_triage_survives(store: ElasticAlertStore) -> None:
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


def test_set_triage_then_the_pipeline_re_puts_the_alert(store: ElasticAlertStore) -> None:
    store.setup()
    store.put_alerts([_alert(1, None)], sites={"CP-ES": "depot"})
    doc = store.set_triage("storm-1", "acknowledged", "calling the site", "ana")
    assert doc["triage"] == {"status": "acknowledged", "note": "calling the site", "updated_by": "ana",
                             "updated_at": "2026-11-25T14:32:43.000Z"}
    store.put_alerts([_alert(2, 1_795_000_001.0)])  # the storm goes on; this writer knows no site
    stored = store.get_alert("storm-1")
    assert stored is not None
    assert stored["chargewatch"]["occurrences"] == 2 and stored["triage"] == doc["triage"]
    assert stored["chargewatch"]["site"] == "depot"  # kept from the earlier write
    assert store.set_triage("storm-1", "closed", "benign", "bo")["triage"]["status"] == "closed"
    store.put_alerts([_alert(3, 1_795_000_002.0)])
    after = store.get_alert("storm-1")
    assert after is not None and after["triage"]["updated_by"] == "bo"
    assert after["chargewatch"]["occurrences"] == 3


def test_triage_errors_are_store_errors(store: ElasticAlertStore) -> None:
    store.setup()
    store.put_alerts([_alert(1, None)])
    with pytest.raises(StoreError, match="no alert 'nope'"):
        store.set_triage("nope", "closed", "", "ana")
    with pytest.raises(StoreError, match="unknown triage state 'done'; use one of new, acknowledged, closed"):
        store.set_triage("storm-1", "done", "", "ana")
    assert store.get_alert("nope") is None


def test_search_filters(store: ElasticAlertStore) -> None:
    store.setup()
    day = 86_400.0
    store.put_alerts([_alert(1, None, "a-old", "CP-A", NOW - 3 * day, 1),
                      _alert(1, None, "b-mid", "CP-B", NOW - day, 3),
                      _alert(1, None, "c-new", "CP-C", NOW, 4)], sites={"CP-A": "north", "CP-C": "north"})
    store.set_triage("b-mid", "acknowledged", "", "ana")
    store.set_triage("c-new", "closed", "", "ana")
    store.refresh()

    def ids(**filters: object) -> list[str]:
        return [d["event"]["id"] for d in store.search(AlertQuery(**filters))]  # type: ignore[arg-type]

    assert ids() == ["c-new", "b-mid", "a-old"]  # newest first
    assert ids(until=NOW - day) == ["b-mid", "a-old"]
    assert ids(since=NOW - 2 * day, until=NOW - day) == ["b-mid"]
    assert ids(site="north") == ["c-new", "a-old"]
    assert ids(triage_status="new") == ["a-old"]  # never triaged counts as new
    assert ids(triage_status="acknowledged") == ["b-mid"]
    assert ids(triage_status="closed", site="north") == ["c-new"]
    assert ids(min_severity=3, limit=1) == ["c-new"]


def test_unreachable_cluster_is_a_service_error(service_config: Config) -> None:
    cfg = with_overrides(service_config, elasticsearch={"url": "http://127.0.0.1:9", "request_timeout": 2.0})
    store = ElasticAlertStore(cfg.elasticsearch)
    try:
        with pytest.raises(ServiceError, match=r"Elasticsearch at http://127.0.0.1:9 unreachable \(search\)"):
            store.search(AlertQuery())
        with pytest.raises(ServiceError, match="unreachable"):
            store.setup()
    finally:
        store.close()
