"""``chargewatch dashboard``: serve the built-in web dashboard, and manage its users.

* ``chargewatch dashboard [--listen HOST:PORT] [--store FILE.db]`` serves it from Elasticsearch
  (``[elasticsearch]``) or the embedded SQLite store.
* ``chargewatch dashboard add-user NAME [--password-stdin] [--replace]`` stores a user with a
  scrypt hash of the password read from the terminal (no echo, asked twice) or, for scripts,
  the first line of stdin.
* ``chargewatch dashboard remove-user NAME`` deletes a user; their sessions end.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from chargewatch.config import Config
from chargewatch.errors import ConfigError
from chargewatch.store import Store

if TYPE_CHECKING:  # the web package (Flask) is imported only when the command runs
    from dashboards.web.users import UsersFile


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboard", help="serve the built-in web dashboard (or manage its users)",
                       description="Serve the web dashboard (overview, charge points, remote commands, transactions, "
                                   "alert triage) behind a login. Binds to loopback by default; put a TLS-terminating "
                                   "reverse proxy in front for anything else.")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="address to serve on (default: [dashboard] listen, 127.0.0.1:8080)")
    p.add_argument("--store", type=Path, default=None, metavar="FILE.db",
                   help="read the embedded SQLite store written by `chargewatch analyze --store` "
                        "(default: Elasticsearch from [elasticsearch])")
    p.set_defaults(run=run)
    users = p.add_subparsers(dest="user_command", metavar="{add-user,remove-user}")
    add = users.add_parser("add-user", help="add a dashboard user (or change a password with --replace)",
                           description="Add a user to [dashboard] users_file. The password is read from the terminal "
                                       "without echo (asked twice), or from the first line of stdin with "
                                       "--password-stdin.")
    add.add_argument("name", help="user name: letters, digits, '.', '_', '@', '-'")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--replace", action="store_true", help="change the password of an existing user")
    remove = users.add_parser("remove-user", help="remove a dashboard user (their sessions end)")
    remove.add_argument("name")


def run(args: argparse.Namespace, config: Config) -> int:
    from dashboards.web.users import UsersFile

    users = UsersFile(Path(config.dashboard.users_file).expanduser())
    if args.user_command == "add-user":
        existed = users.add(args.name, _read_password(args.password_stdin), replace=args.replace)
        print(f"{'changed the password of' if existed else 'added'} user {args.name} in {users.path}")
        return 0
    if args.user_command == "remove-user":
        users.remove(args.name)
        print(f"removed user {args.name} from {users.path}")
        return 0
    return _serve(args, config, users)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise ConfigError("stdin is not a terminal: pass --password-stdin to read the password from its first line")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise ConfigError("the two passwords differ; nothing was changed")
    return first


def _serve(args: argparse.Namespace, config: Config, users: UsersFile) -> int:
    from dashboards.web import create_app, settings_from_config
    from dashboards.web.serving import is_loopback, parse_listen, serve

    host, port = parse_listen(args.listen or config.dashboard.listen)
    if not users.load():
        raise ConfigError(f"no dashboard users in {users.path}: add one with `chargewatch dashboard add-user NAME`")
    store, label = _open_store(args.store, config)
    try:
        settings = settings_from_config(config, label)
        app = create_app(store, settings)
        if not is_loopback(host):
            print(f"chargewatch: warning: serving on {host}, reachable from other machines over plain HTTP; put a "
                  "TLS-terminating reverse proxy in front and set [dashboard] secure_cookies = true", file=sys.stderr)
        serve(app, host, port, config.dashboard.threads,
              lambda url: print(f"dashboard at {url} reading {label} (Ctrl-C to stop)", flush=True),
              config.dashboard.trusted_proxy)
    finally:
        store.close()
    return 0


def _open_store(path: Path | None, config: Config) -> tuple[Store, str]:
    """The store to read and how the page footer names it."""
    if path is not None:
        from chargewatch.store.sqlite import SqliteAlertStore
        from dashboards.web.serving import PerThreadStore

        return PerThreadStore(lambda: SqliteAlertStore(path, create=False)), f"the SQLite store {path}"
    from chargewatch.store.elastic import ElasticAlertStore

    if not logging.getLogger().isEnabledFor(logging.INFO):
        # The client logs each retry with a traceback; the failure itself is reported once, as an error.
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    es = ElasticAlertStore(config.elasticsearch)
    try:
        es.check()
    except BaseException:
        es.close()
        raise
    return es, f"Elasticsearch {config.elasticsearch.url} ({config.elasticsearch.alerts_index})"
