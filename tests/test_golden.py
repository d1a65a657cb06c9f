"""Golden tests on the committed captures of real OCPP peers (``python -m tests.record_samples``).

(a) the collector extracts exactly the frames the peers sent (``<capture>.sent.jsonl``);
(b) its output, serialised, equals the committed baseline ``tests/data/golden/<name>.records.jsonl``
    (regenerate with ``pytest tests/test_golden.py --update-golden`` and review the diff);
(c) no clear idTag and no Basic-auth password survives in anything it wrote.
"""

from __future__ import annotations

import base64
import difflib
from pathlib import Path

import pytest

from tests.framecheck import GOLDEN_KEY, Collected, check_frames, collect
from tests.peers import CREDENTIALS, read_sent, sent_path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
CAPTURES = [
    GOLDEN / "v16_deflate.pcap",
    GOLDEN / "v201_plain.pcapng",
    ROOT / "samples" / "demo.pcap",
]
CLEAR_TAGS = ("TAG1234", "AABBCCDD", "EVIL0001")
IDS = [p.stem for p in CAPTURES]


def baseline_path(capture: Path) -> Path:
    return GOLDEN / f"{capture.stem}.records.jsonl"


@pytest.fixture(scope="module", params=CAPTURES, ids=IDS)
def capture(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    assert path.is_file(), f"missing committed capture {path} (regenerate with `python -m tests.record_samples`)"
    return path


@pytest.fixture(scope="module")
def collected(capture: Path) -> Collected:
    return collect(capture, GOLDEN_KEY)


def test_extracts_exactly_the_sent_frames(capture: Path, collected: Collected) -> None:
    check_frames(collected, read_sent(sent_path(capture)), GOLDEN_KEY)


def test_matches_baseline(capture: Path, collected: Collected, request: pytest.FixtureRequest) -> None:
    baseline = baseline_path(capture)
    actual = "".join(f"{line}\n" for line in collected.lines())
    if request.config.getoption("--update-golden"):
        baseline.write_text(actual, encoding="utf-8")
    assert baseline.is_file(), f"no baseline {baseline}: run `pytest tests/test_golden.py --update-golden`"
    expected = baseline.read_text(encoding="utf-8")
    if actual != expected:
        diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), str(baseline.relative_to(ROOT)),
                                    "collector output", lineterm="", n=0)
        pytest.fail("collector output differs from the golden baseline (if intended, run "
                    "`pytest tests/test_golden.py --update-golden` and review the diff):\n" + "\n".join(diff),
                    pytrace=False)


def test_no_clear_secrets(collected: Collected) -> None:
    texts = collected.lines()
    # Dead-letter excerpts are base64 of raw bytes: look inside them too.
    texts += [base64.b64decode(d.excerpt_b64).decode("utf-8", "replace") for d in collected.dead_letters]
    secrets = [*CLEAR_TAGS, *CREDENTIALS.values()]
    secrets += [base64.b64encode(f"{user}:{password}".encode()).decode() for user, password in CREDENTIALS.items()]
    leaks = [(secret, text) for text in texts for secret in secrets if secret.casefold() in text.casefold()]
    assert not leaks, f"clear secrets in the collector output: {leaks}"


def test_auth_fields(collected: Collected) -> None:
    """Basic-auth scheme and username are kept (the password never is); other peers send no auth."""
    for event in collected.events:
        assert event.charge_point_id is not None, event
        expected = ("Basic", event.charge_point_id) if event.charge_point_id in CREDENTIALS else (None, None)
        assert (event.auth_scheme, event.auth_username) == expected, event


@pytest.mark.parametrize("path", [CAPTURES[0], CAPTURES[2]], ids=["v16_deflate", "demo"])
def test_cp16_001_basic_auth(path: Path) -> None:
    events = [e for e in collect(path).events if e.charge_point_id == "CP16-001"]
    assert [e.kind for e in events] == ["upgrade", "closed"], events
    for event in events:
        assert (event.auth_scheme, event.auth_username) == ("Basic", "CP16-001"), event
