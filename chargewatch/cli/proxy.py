"""``chargewatch proxy``: the mirroring proxy in front of a central system (collectors/proxy.py)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from chargewatch.catalog import load_catalog
from chargewatch.config import Config, resolve_redaction_key, with_overrides
from chargewatch.redaction import Redactor
from chargewatch.status import StatusWriter

if TYPE_CHECKING:  # the proxy (asyncio, websockets) is imported only when it runs
    from collectors.proxy import OcppProxy

# CLI option -> [proxy] key; an option given on the command line overrides the configuration.
OPTIONS = {"listen": "listen", "upstream": "upstream", "tls_cert": "tls_cert", "tls_key": "tls_key",
           "tls_client_ca": "tls_client_ca", "upstream_ca": "upstream_ca",
           "upstream_client_cert": "upstream_client_cert", "upstream_client_key": "upstream_client_key",
           "status_name": "status_name", "spool_dir": "spool_dir"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy", help="relay charge points to a central system, mirroring OCPP into Kafka",
                       description="Accept charge point WebSocket connections, relay them unchanged to the "
                                   "central system (subprotocol, Basic auth and path passed through), and mirror "
                                   "every message and connection event into Kafka. Records go to a durable spool on "
                                   "disk first and a separate publisher process takes them to Kafka, so Kafka trouble "
                                   "never slows or alters the relayed traffic and a crash loses no relayed message. "
                                   "Defaults come from the [proxy] configuration section.")
    p.add_argument("--listen", metavar="HOST:PORT", help="where charge points connect (default: [proxy] listen)")
    p.add_argument("--upstream", metavar="URL", help="central system, ws://HOST:PORT[/path] or wss://...; the "
                                                     "charge point's path is appended")
    p.add_argument("--tls-cert", metavar="PEM", help="terminate TLS with this certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--tls-client-ca", metavar="PEM", help="verify and record charge point client certificates")
    p.add_argument("--upstream-ca", metavar="PEM", help="CA file to verify a wss:// central system")
    p.add_argument("--upstream-client-cert", metavar="PEM", help="client certificate the proxy presents upstream")
    p.add_argument("--upstream-client-key", metavar="PEM", help="private key of --upstream-client-cert")
    p.add_argument("--status-name", metavar="NAME", help="counters go to [collector] status_dir/NAME.json")
    p.add_argument("--spool-dir", metavar="DIR", help="durable spool between relay and Kafka (default: [proxy] "
                                                      "spool_dir, else <status_dir>/../spool/<status name>)")
    p.add_argument("--publisher-kill-at", default=None, metavar="POINT:N",
                   help="crash tests: the first publisher process SIGKILLs itself at its Nth sent, flushed or "
                        "checkpointed")
    p.set_defaults(run=run)


def proxy_config(args: argparse.Namespace, config: Config) -> Config:
    """config with the [proxy] keys the command line names replaced."""
    given = {key: getattr(args, option) for option, key in OPTIONS.items() if getattr(args, option) is not None}
    return with_overrides(config, proxy=given) if given else config


def spool_dir(config: Config) -> Path:
    """The proxy's spool directory: [proxy] spool_dir, else <status_dir>/../spool/<status_name>."""
    from chargewatch.spool_output import default_spool_dir

    cfg = config.proxy
    return Path(cfg.spool_dir).expanduser() if cfg.spool_dir else default_spool_dir(config.collector.status_dir,
                                                                                     cfg.status_name)


def build(config: Config, publisher_kill_at: str | None = None) -> OcppProxy:
    """The proxy, its mirror and its spool, from the configuration (validates it; the spool is
    opened, i.e. locked and recovered, but its publisher process is not started yet)."""
    from chargewatch.spool_output import SpooledOutput
    from collectors.proxy import OcppProxy
    from collectors.proxy_mirror import Mirror

    cfg = config.proxy
    redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
    output = SpooledOutput(config.kafka, spool_dir(config), max_bytes=cfg.spool_max_bytes,
                           fsync_interval_s=cfg.fsync_interval_s, kafka_block_ms=cfg.kafka_block_ms,
                           drain_timeout_s=cfg.drain_timeout_s, kill_at=publisher_kill_at)
    mirror = Mirror(output, redactor, load_catalog(), source=f"proxy:{cfg.status_name}",
                    max_message=config.collector.max_message_bytes)
    try:
        return OcppProxy(cfg, mirror)
    except BaseException:
        output.writer.close()
        raise


def run(args: argparse.Namespace, config: Config) -> int:
    config = proxy_config(args, config)
    proxy = build(config, args.publisher_kill_at)
    status = StatusWriter(Path(config.collector.status_dir).expanduser(), config.proxy.status_name, "proxy",
                          proxy.snapshot)
    proxy.mirror.start()
    with status:
        try:
            asyncio.run(_serve(proxy))
        finally:
            proxy.mirror.close()
    final = proxy.snapshot()
    details = final["details"]
    print(f"proxy stopped: {details['connections_total']} connections, {final['frames']} frames relayed, "
          f"{details['delivered']} records in Kafka, {details['spool']['pending_bytes']} bytes still spooled "
          f"(published at the next start), {final['drops']} dropped", file=sys.stderr)
    return 0


async def _serve(proxy: OcppProxy) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = await proxy.start()
    print(f"proxy listening on {proxy.host}:{port}, relaying to {proxy.upstream}, spooling to "
          f"{proxy.mirror.output.directory}; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)
    await stop.wait()
    await proxy.stop()
