"""``chargewatch models list|train|evaluate|promote``: the transaction anomaly model registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from chargewatch.config import Config
from chargewatch.errors import ConfigError

if TYPE_CHECKING:  # imported when a verb runs: scikit-learn takes a while to import
    from models.registry import Registry
    from models.synthetic import SyntheticFleet


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list, train, evaluate and promote transaction anomaly models",
                       description="The registry of transaction anomaly models ([models] registry_dir; default: the "
                                   "one shipped in the package). The detector scores sessions with the promoted "
                                   "version and picks up a newly promoted one without a restart.")
    p.add_argument("--registry", type=Path, help="registry directory (default: [models] registry_dir)")
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="list the versions (* = promoted)").set_defaults(run=run_list)
    train = verbs.add_parser("train", help="train a new version on the synthetic fleet or a features file",
                             description="Fit a model, choose its threshold on held-out benign sessions, evaluate it "
                                         "on held-out sites and anomaly kinds (synthetic data) and store it as a new "
                                         "version. Prints the version name.")
    train.add_argument("--model", default="lof", help="isolation_forest, robust_z or lof (default: lof)")
    train.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="model parameter (repeatable), e.g. --param n_estimators=200")
    _data_options(train, default_seed=0)
    train.add_argument("--fpr", type=float, default=0.01,
                       help="target false-positive rate on held-out benign sessions that sets the threshold")
    train.add_argument("--promote", action="store_true", help="promote the new version")
    train.set_defaults(run=run_train)
    evaluate = verbs.add_parser("evaluate", help="precision, recall and ROC-AUC of a version on labelled sessions")
    evaluate.add_argument("version", nargs="?", help="version name (default: the promoted one)")
    _data_options(evaluate, default_seed=1)
    evaluate.add_argument("--rules", action="store_true",
                          help="also run the detectors' transaction rules over the same synthetic records")
    evaluate.set_defaults(run=run_evaluate)
    promote = verbs.add_parser("promote", help="make a version the one detectors use")
    promote.add_argument("version", help="version name, e.g. v0002-lof")
    promote.set_defaults(run=run_promote)


def _data_options(p: argparse.ArgumentParser, default_seed: int) -> None:
    p.add_argument("--features", type=Path, help="a features file (chargewatch features) instead of synthetic data; "
                                                 "evaluation needs its label column")
    p.add_argument("--sessions", type=int, default=4000, help="synthetic sessions to generate (default 4000)")
    p.add_argument("--seed", type=int, default=default_seed, help=f"random seed (default {default_seed})")
    p.add_argument("--anomaly-rate", type=float, default=0.03, help="share of anomalous synthetic sessions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _registry(args: argparse.Namespace, config: Config) -> Registry:
    from models.registry import Registry, registry_dir

    return Registry(args.registry.expanduser() if args.registry else registry_dir(config))


def run_list(args: argparse.Namespace, config: Config) -> int:
    registry = _registry(args, config)
    promoted = registry.promoted()
    versions = registry.versions()
    if not versions:
        print(f"no model versions in {registry.root}")
        return 0
    print(f"{'':2}{'version':24} {'created':21} {'sessions':>8} {'ROC-AUC':>8} {'precision':>9} {'recall':>7} "
          f"{'threshold':>10}")
    for version in versions:
        meta = registry.metadata(version)
        holdout = meta.get("metrics", {}).get("holdout", {})
        auc = holdout.get("roc_auc")
        print(f"{'*' if version == promoted else ' ':2}{version:24} {meta.get('created', ''):21} "
              f"{meta.get('training', {}).get('sessions', 0):>8} {_num(auc, 8)} {_num(holdout.get('precision'), 9)} "
              f"{_num(holdout.get('recall'), 7)} {float(meta.get('threshold', 0.0)):>10.4g}")
    return 0


def run_train(args: argparse.Namespace, config: Config) -> int:
    from models.training import HOLDOUT_SITE_SUFFIX, holdout_split, make_model, train

    params = dict(_param(text) for text in args.param)
    try:
        model = make_model(args.model, random_state=args.seed, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"models train: {exc}") from exc
    frame, source, _ = _data(args)
    fit, test = frame, None
    if {"site", "anomaly_kind", "label"} <= set(frame.columns) and frame["site"].astype(str).str.endswith(
            HOLDOUT_SITE_SUFFIX).any():  # labelled synthetic sessions: the standard held-out evaluation
        fit, test = holdout_split(frame)
        source += " (held out: the second site of every type, and anomaly kinds " + \
            ", ".join(sorted(set(test["anomaly_kind"]) - {""})) + ")"
    try:
        trained = train(model, fit, fpr=args.fpr, seed=args.seed, test=test, source=source)
    except ValueError as exc:
        raise ConfigError(f"models train: cannot train on {source}: {exc}") from exc
    registry = _registry(args, config)
    version = registry.save(trained, args.model)
    print(f"trained {version} on {trained.training['sessions']} sessions of {source}")
    print(f"threshold {trained.threshold:.6g}: {trained.threshold_rule}")
    holdout = trained.metrics.get("holdout")
    if holdout:
        print(f"held-out: {_summary(holdout)}")
    if args.promote:
        registry.promote(version)
        print(f"promoted {version}")
    print(version)
    return 0


def run_evaluate(args: argparse.Namespace, config: Config) -> int:
    from models.registry import load_promoted
    from models.training import evaluate

    registry = _registry(args, config)
    loaded = registry.load(args.version) if args.version else load_promoted(registry)
    frame, source, fleet = _data(args)
    if "label" not in frame.columns:
        raise ConfigError(f"{args.features}: evaluation needs a label column (1 = anomalous)")
    metrics = evaluate(loaded.score(frame), frame, loaded.threshold)
    print(f"{loaded.name} on {len(frame)} sessions of {source}")
    print(f"model: {metrics.summary()}")
    for kind, recall in metrics.recall_by_kind.items():
        print(f"  recall {kind:24} {recall:.3f}")
    if args.rules:
        _evaluate_rules(frame, fleet)
    return 0


def run_promote(args: argparse.Namespace, config: Config) -> int:
    registry = _registry(args, config)
    previous = registry.promoted()
    registry.promote(args.version)
    print(f"promoted {args.version} (was {previous or 'none'}) in {registry.root}")
    return 0


def _data(args: argparse.Namespace) -> tuple[pd.DataFrame, str, SyntheticFleet | None]:
    """The sessions to train or evaluate on, where they came from, and the synthetic fleet
    behind them (None for a features file)."""
    from models.datasets import read_features
    from models.synthetic import generate, labelled_sessions

    if args.features is not None:
        return read_features(args.features), f"features file {args.features}", None
    fleet = generate(args.sessions, seed=args.seed, anomaly_rate=args.anomaly_rate, progress=not args.no_progress)
    return labelled_sessions(fleet), f"the synthetic fleet ({args.sessions} sessions, seed {args.seed})", fleet


def _evaluate_rules(frame: pd.DataFrame, fleet: SyntheticFleet | None) -> None:
    from models.checks import rule_flags, rule_metrics

    if fleet is None:
        print("rules: only on synthetic data (a features file has no messages to run them on)")
        return
    metrics = rule_metrics(frame, rule_flags(fleet))
    print(f"rules (abnormal_transaction): {metrics.summary()}")
    for kind, recall in metrics.recall_by_kind.items():
        print(f"  recall {kind:24} {recall:.3f}")


def _param(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--param wants NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def _num(value: Any, width: int) -> str:
    return f"{value:>{width}.3f}" if isinstance(value, int | float) else f"{'-':>{width}}"


def _summary(metrics: dict[str, Any]) -> str:
    auc = metrics.get("roc_auc")
    return (f"ROC-AUC {'n/a' if auc is None else f'{auc:.3f}'}  precision {metrics['precision']:.3f}  "
            f"recall {metrics['recall']:.3f}  FPR {metrics['false_positive_rate']:.4f}  "
            f"({metrics['flagged']} flagged of {metrics['sessions']}, {metrics['anomalies']} anomalous)")
