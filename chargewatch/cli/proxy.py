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
           "status_name": "status_name"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy", help="relay charge points to a central system, mirroring OCPP into Kafka",
                       description="Accept charge point WebSocket connections, relay them unchanged to the "
                                   "central system (subprotocol, Basic auth and path passed through), and mirror "
                                   "every message and connection event into Kafka. Kafka trouble never slows or "
                                   "alters the relayed traffic: records are buffered to a bound, then dropped and "
                                   "counted. Defaults come from the [proxy] configuration section.")
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
    p.set_defaults(run=run)


def proxy_config(args: argparse.Namespace, config: Config) -> Config:
    """config with the [proxy] keys the command line names replaced."""
    given = {key: getattr(args, option) for option, key in OPTIONS.items() if getattr(args, option) is not None}
    return with_overrides(config, proxy=given) if given else config


def build(config: Config) -> OcppProxy:
    """The proxy and its mirror, from the configuration (validates it; nothing started)."""
    from collectors.proxy import OcppProxy
    from collectors.proxy_mirror import Mirror

    cfg = config.proxy
    redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
    mirror = Mirror(config.kafka, redactor, load_catalog(), source=f"proxy:{cfg.status_name}",
                    max_message=config.collector.max_message_bytes, queue_records=cfg.queue_records,
                    queue_bytes=cfg.queue_bytes, kafka_block_ms=cfg.kafka_block_ms)
    return OcppProxy(cfg, mirror)


def run(args: argparse.Namespace, config: Config) -> int:
    config = proxy_config(args, config)
    proxy = build(config)
    status = StatusWriter(Path(config.collector.status_dir).expanduser(), config.proxy.status_name, "proxy",
                          proxy.snapshot)
    proxy.mirror.start()
    with status:
        try:
            asyncio.run(_serve(proxy))
        finally:
            proxy.mirror.close(config.proxy.drain_timeout_s)
    final = proxy.snapshot()
    print(f"proxy stopped: {final['details']['connections_total']} connections, {final['frames']} frames relayed, "
          f"{final['details']['delivered']} records mirrored, {final['drops']} dropped", file=sys.stderr)
    return 0


async def _serve(proxy: OcppProxy) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = await proxy.start()
    print(f"proxy listening on {proxy.host}:{port}, relaying to {proxy.upstream}; Ctrl-C or SIGTERM stops",
          file=sys.stderr, flush=True)
    await stop.wait()
    await proxy.stop()
