"""The correlation stage: routing follows a token into its transactions, and the final alerts
do not depend on how the records of different charge points interleave (only each charge
point's own order is kept, as on Kafka)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from chargewatch.catalog import load_catalog
from chargewatch.model import Direction, OcppMessage, Record, record_from_dict, record_key, routing_function
from detectors.policy import load_policy
from detectors.rules import apply_overrides, load_rules
from detectors.stages import Stages, TokenRouter, build_stages

SAMPLES = Path(__file__).resolve().parent.parent / "detectors" / "samples"
FLEET_RULES = ("CW-FLEET-001", "CW-FLEET-002", "CW-FLEET-003", "CW-FLEET-004")


def _stages(rule_id: str) -> Stages:
    policy_file = SAMPLES / rule_id / "policy.toml"
    policy = load_policy(policy_file if policy_file.exists() else None)
    rules = apply_overrides(load_rules(), policy.rules, str(policy_file))
    return build_stages(rules, load_catalog(), policy, record_key)


def _records(rule_id: str) -> list[Record]:
    lines = (SAMPLES / rule_id / "positive.jsonl").read_text().splitlines()
    return [record_from_dict(json.loads(line)) for line in lines]


def _interleave(records: list[Record], seed: int) -> list[Record]:
    """A random merge of the charge points' record sequences, each kept in its own order."""
    queues: dict[str, list[Record]] = {}
    for rec in records:
        queues.setdefault(record_key(rec), []).append(rec)
    rng, out = random.Random(seed), []
    while queues:
        cp = rng.choice(sorted(queues))
        out.append(queues[cp].pop(0))
        if not queues[cp]:
            del queues[cp]
    return out


def _final(stages: Stages, records: list[Record]) -> dict[str, dict[str, object]]:
    out = {}
    for rec in records:
        for alert in stages.process(rec):
            out[alert.id] = alert.to_document()
    return out


def test_correlation_alerts_do_not_depend_on_interleaving() -> None:
    for rule_id in FLEET_RULES:
        records = _records(rule_id)
        expected = _final(_stages(rule_id), records)
        assert any(doc["rule"]["id"] == rule_id for doc in expected.values()), rule_id  # type: ignore[index]
        for seed in range(8):
            assert _final(_stages(rule_id), _interleave(records, seed)) == expected, f"{rule_id} seed {seed}"


def test_reverse_arrival_of_charge_points_gives_the_same_alerts() -> None:
    records = _records("CW-FLEET-001")
    by_cp: dict[str, list[Record]] = {}
    for rec in records:
        by_cp.setdefault(record_key(rec), []).append(rec)
    backwards = [rec for cp in sorted(by_cp, reverse=True) for rec in by_cp[cp]]
    assert _final(_stages("CW-FLEET-001"), backwards) == _final(_stages("CW-FLEET-001"), records)


def _msg(mid: str, action: str, payload: object, sender: str = "cp", mtype: int = 2) -> OcppMessage:
    direction = Direction.CP_TO_CSMS if sender == "cp" else Direction.CSMS_TO_CP
    return OcppMessage(ts=1_795_000_000.0, charge_point_id="CP-1", direction=direction, src_ip="10.0.0.2",
                       src_port=4000, dst_ip="10.0.0.1", dst_port=9000, ocpp_version="2.0.1", message_type=mtype,
                       message_id=mid, action=action, payload=payload, frame_size=10, connection_id="C1")


def test_token_router_follows_a_transaction_that_names_its_token_late() -> None:
    router = TokenRouter()
    info = {"transactionId": "t1"}
    started = _msg("m1", "TransactionEvent", {"eventType": "Started", "transactionInfo": info})
    assert router.route(started) == []  # no token yet: held back
    authorized = _msg("m2", "TransactionEvent", {"eventType": "Updated", "transactionInfo": info,
                                                  "idToken": {"idToken": "pt_x", "type": "ISO14443"}})
    assert router.route(authorized) == [("pt_x", started), ("pt_x", authorized)]
    answer = _msg("m2", "TransactionEvent", {"idTokenInfo": {"status": "Accepted"}}, sender="csms", mtype=3)
    assert router.route(answer) == [("pt_x", answer)]
    ended = _msg("m3", "TransactionEvent", {"eventType": "Ended", "transactionInfo": info})
    assert router.route(ended) == [("pt_x", ended)]
    assert router.route(_msg("m4", "Heartbeat", {})) == []


def test_stateless_routes() -> None:
    reset = _msg("r1", "Reset", {"type": "Hard"}, sender="csms")
    assert routing_function("fleet")(reset) == ("Reset",)
    assert routing_function("fleet")(_msg("r2", "Reset", {"type": "Hard"})) == ()  # a CP sending Reset: no command
    assert routing_function("id_tag")(_msg("a1", "Authorize", {"idTag": "pt_y"})) == ("pt_y",)
    assert routing_function("id_tag")(reset) == ()
    assert routing_function("charge_point")(reset) == ("CP-1",)


def _correlated(stages: Stages, records: list[Record], copies: int) -> dict[str, dict[str, object]]:
    """Correlation alerts when every routed record reaches the stage `copies` times (a
    per-charge-point process that crashed before committing forwards its batch again)."""
    out = {}
    for rec in records:
        for name, key, routed in stages.route(rec):
            for _ in range(copies):
                for alert in stages.correlate(name, key, routed):
                    out[alert.id] = alert.to_document()
    return out


def test_records_forwarded_twice_count_once() -> None:
    for rule_id in FLEET_RULES:
        records = _records(rule_id)
        once = _correlated(_stages(rule_id), records, 1)
        assert once and _correlated(_stages(rule_id), records, 2) == once, rule_id
