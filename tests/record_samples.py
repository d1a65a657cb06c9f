"""Regenerate the committed captures of real OCPP peers (needs root).

Run from the repository root: ``python -m tests.record_samples``. Each pcap gets a sibling
``<name>.sent.jsonl`` with every frame the peers sent, the ground truth for golden tests.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tests.peers import SCENARIOS, record, sent_path, write_sent

ROOT = Path(__file__).resolve().parents[1]

# (path relative to the repository root, scenarios, permessage-deflate, pcapng)
SAMPLES: list[tuple[str, list[str], bool, bool]] = [
    ("tests/data/golden/v16_deflate.pcap", ["v16_session"], True, False),
    ("tests/data/golden/v201_plain.pcapng", ["v201_session"], False, True),
    ("samples/demo.pcap", list(SCENARIOS), True, False),
]


def main(argv: list[str] | None = None) -> int:
    """Record every sample under ``--root`` and print one line per file written."""
    parser = argparse.ArgumentParser(prog="python -m tests.record_samples", description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root to write under")
    args = parser.parse_args(argv)
    # The ocpp library logs a traceback for the deliberate CP-sent Reset; it is expected here.
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    for relative, scenarios, compression, pcapng in SAMPLES:
        pcap = args.root / relative
        frames = record(pcap, scenarios, compression=compression, pcapng=pcapng)
        write_sent(frames, sent_path(pcap))
        print(f"{relative}: {len(frames)} frames, {pcap.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
