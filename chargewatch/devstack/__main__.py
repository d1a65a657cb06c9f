"""``python -m chargewatch.devstack up|down|status``: the real Kafka and Elasticsearch the
tests and a developer use, built from Maven Central artifacts, on 127.0.0.1 only.

``up`` is safe to call twice (running services are left alone) and waits until both are
healthy (``--fresh``: a service it starts starts from empty data, as ``make test`` asks, so
test topics and indices never pile up across runs); it prints where each listens and where
its logs are. Downloads are cached (Maven's ``~/.m2`` plus unpacked copies under
``<root>/cache``). The root is
``$CHARGEWATCH_DEVSTACK_DIR``, else ``/var/tmp/chargewatch-devstack`` for root (Elasticsearch
runs as an unprivileged user who must be able to enter it) or ``~/.cache/chargewatch/devstack``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chargewatch.devstack import elastic, kafka
from chargewatch.devstack.common import ServiceInfo, StackPaths
from chargewatch.errors import ServiceError


def default_root() -> Path:
    """Where the dev stack keeps its data, logs and caches."""
    if os.environ.get("CHARGEWATCH_DEVSTACK_DIR"):
        return Path(os.environ["CHARGEWATCH_DEVSTACK_DIR"])
    if os.geteuid() == 0:
        return Path("/var/tmp/chargewatch-devstack")  # noqa: S108 - fixed, root-only, documented
    return Path.home() / ".cache" / "chargewatch" / "devstack"


def _show(info: ServiceInfo | None, name: str) -> None:
    if info is None:
        print(f"{name:<14} not running")
    else:
        print(f"{info.name:<14} {info.address:<24} pid {info.pid:<8} log {info.log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chargewatch.devstack",
                                     description="Start/stop the local Kafka and Elasticsearch used by the tests.")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--only", choices=("kafka", "elasticsearch"), help="act on one service")
    parser.add_argument("--fresh", action="store_true",
                        help="up: a service that is not running starts from empty data (running ones are left alone)")
    args = parser.parse_args(argv)
    root = default_root()
    root.mkdir(parents=True, exist_ok=True)
    paths = StackPaths(root)
    services = {"kafka": kafka, "elasticsearch": elastic}
    if args.only:
        services = {args.only: services[args.only]}
    try:
        for name, module in services.items():
            if args.action == "up":
                _show(module.up(paths, fresh=args.fresh), name)
            elif args.action == "down":
                print(f"{name:<14} {'stopped' if module.down(paths) else 'was not running'}")
            else:
                _show(module.status(paths), name)
    except ServiceError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
