"""The ``chargewatch`` command: one module per subcommand, each with ``--help``.

This is the entry point, and the only place environment variables are read
(``CHARGEWATCH_CONFIG``: default path of the configuration file).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from chargewatch.config import load_config
from chargewatch.errors import ChargewatchError

#: Subcommand name -> the module that defines it (``add_parser(sub)``, ``run(args, config)``).
COMMANDS = {name: f"chargewatch.cli.{name}" for name in
            ("analyze", "collect", "detect", "index", "setup", "pseudonym", "status", "proxy", "dashboard",
             "alerts", "timeline", "export", "triage", "models", "features")}
_VALUED_OPTIONS = ("--config",)  # global options that take a value (to find the subcommand in argv)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` just that subcommand: a command then imports only its own
    module (the proxy's asyncio, the Kafka client, ... stay unloaded for ``analyze``)."""
    parser = argparse.ArgumentParser(prog="chargewatch", description="OCPP security monitoring pipeline.")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML configuration file (default: $CHARGEWATCH_CONFIG, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_parser(sub)
    return parser


def subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv, None when there is none we know (help, typos: full parser)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


# Young-generation size of the cyclic garbage collector. Decoding and detection allocate a few
# dozen short-lived objects per message, almost none in reference cycles; with Python's default
# (700) a collection runs every ~20 messages and walks the young objects each time. Larger
# batches cut the collector's share of the run by about a tenth; memory stays bounded.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cycles in larger batches, and move what start-up loaded (modules, rules, the
    action catalog) out of the collector's sight: it lives as long as the process."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(subcommand(argv)).parse_args(argv)
    tune_gc()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    env_config = os.environ.get("CHARGEWATCH_CONFIG")
    config_path = args.config or (Path(env_config) if env_config else None)
    try:
        config = load_config(config_path)
        return int(args.run(args, config))
    except ChargewatchError as exc:
        print(f"chargewatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
