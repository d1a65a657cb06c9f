"""``chargewatch features``: export one row of features per charging session to a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from chargewatch.config import Config
from chargewatch.embedded import AnalysisResult


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("features", help="export per-session transaction features (Parquet or CSV)",
                       description="Reconstruct the charging sessions of captures or OCPP logs (or of the synthetic "
                                   "fleet), or read the sessions indexed in Elasticsearch, and write one row of "
                                   "features per finished session, the rows the anomaly models train on and score. "
                                   "Parquet by default, CSV when --out ends in .csv.")
    p.add_argument("--from", dest="source", choices=("capture", "synthetic", "elasticsearch"), required=True,
                   help="capture: pcap/pcapng files or OCPP logs (decoded as `analyze` does); synthetic: the seeded "
                        "synthetic fleet, with anomaly labels; elasticsearch: the transactions index "
                        "(<prefix>-transactions of [elasticsearch]), with the scores the detector gave")
    p.add_argument("--charge-point", help="--from elasticsearch: only this charge point's sessions")
    p.add_argument("--limit", type=int, default=1_000_000, help="--from elasticsearch: at most this many sessions")
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="captures or logs (--from capture)")
    p.add_argument("--out", type=Path, required=True, help="output file (.parquet, or .csv)")
    p.add_argument("--sessions", type=int, default=10_000, help="--from synthetic: sessions to generate")
    p.add_argument("--seed", type=int, default=0, help="--from synthetic: random seed")
    p.add_argument("--anomaly-rate", type=float, default=0.03, help="--from synthetic: share of anomalous sessions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    from models.datasets import synthetic_frame, write_features

    if args.source == "capture":
        if not args.paths:
            print("chargewatch features: --from capture needs at least one PATH", file=sys.stderr)
            return 2
        frame, result, partial = _from_capture(args, config)
        for problem in result.unreadable:
            print(f"unreadable: {problem}", file=sys.stderr)
        note = f" ({partial} sessions whose start was not seen left out)" if partial else ""
    elif args.paths:
        print(f"chargewatch features: --from {args.source} takes no PATH", file=sys.stderr)
        return 2
    elif args.source == "elasticsearch":
        frame = _from_elasticsearch(args, config)
        note, result = "", None
    else:
        frame = synthetic_frame(args.sessions, args.seed, args.anomaly_rate, progress=not args.no_progress)
        note = f" ({int(frame['label'].sum())} labelled anomalous)"
        result = None
    write_features(frame, args.out)
    print(f"{len(frame)} sessions written to {args.out}{note}")
    return 1 if result is not None and result.unreadable else 0


def _from_elasticsearch(args: argparse.Namespace, config: Config) -> pd.DataFrame:
    """The indexed sessions as a frame: the row columns (models.features.ROW_COLUMNS) in order,
    then the scoring the detector stored (score, threshold, model, top_features)."""
    from chargewatch.store.elastic import ElasticAlertStore
    from chargewatch.store.es_archive import SCORE_FIELDS, session_row
    from models.features import ROW_COLUMNS

    store = ElasticAlertStore(config.elasticsearch)
    try:
        docs = store.transactions(charge_point_id=args.charge_point, limit=args.limit)
    finally:
        store.close()
    rows = [session_row(doc) for doc in reversed(docs)]  # oldest first, as from a capture
    columns = [*ROW_COLUMNS, *SCORE_FIELDS]
    return pd.DataFrame(rows, columns=columns)


def _from_capture(args: argparse.Namespace, config: Config) -> tuple[pd.DataFrame, AnalysisResult, int]:
    from models.datasets import capture_frame

    paths = list(args.paths)
    if args.no_progress:
        return capture_frame(paths, config)
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in paths if p.is_file())
    with tqdm(total=total, unit="B", unit_scale=True, desc="features", file=sys.stderr, disable=None) as bar:
        return capture_frame(paths, config, bar.update)
