"""A fleet of real OCPP peers talking at once on loopback, recorded live: ground for the acceptance suites.

:func:`record_fleet` runs one scenario coroutine against the central system of
:mod:`tests.livepeers` (``ocpp`` library handlers, realistic answers) plus a second, "rogue"
central system on another loopback address and the same port, while :class:`LiveCapture`
sniffs that port on ``lo``; the peers run in a child process so that the sniffer keeps up.
Through :class:`Fleet` a scenario connects charge points that may bind their socket to any
127.0.0.0/8 address, negotiate compression or not, send Basic credentials or offer chosen
subprotocols, and send raw frames where the library cannot produce them; it notes the attacks
it injects and the moments other steps wait for. Builds on :mod:`tests.peers` (its frame
recorder) and :mod:`tests.livecapture`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import ocpp.messages
import pytest
from scapy.packet import Packet
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from chargewatch.config import Config, with_overrides
from detectors.policy import load_policy
from tests.livecapture import HarnessError, LiveCapture, write_capture
from tests.livepeers import Central, Cp16, Cp201, CsmsPlan
from tests.peers import REPLY_TIMEOUT, SUBPROTOCOLS, SentFrame, _Recorder

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # root may exceed net.core.rmem_max
ROGUE_HOST = "127.0.0.9"  # the second "central system": same port, another loopback address


@dataclass(frozen=True)
class Injection:
    """One attack a scenario put on the wire: what, at which charge point, which message, when."""

    attack: str
    charge_point: str
    message_id: str | None
    ts: float


@dataclass
class Link:
    """One charge point connection as the harness opened it (to find it again in a capture)."""

    cp_id: str
    client: tuple[str, int]
    compressed: bool
    opened: float
    closed: float = 0.0


@dataclass
class FleetRun:
    """What a recording produced besides the pcap."""

    frames: list[SentFrame]
    packets: list[Packet]
    injections: list[Injection]
    marks: dict[str, float]
    links: list[Link]
    seconds: float


@dataclass
class Station:
    """One connected charge point: the library peer, its recorder (for raw frames), its identity."""

    cp_id: str
    version: str  # "1.6" or "2.0.1"
    cp: Any
    raw: _Recorder

    async def call(self, payload: Any, **kwargs: Any) -> Any:
        return await self.cp.call(payload, **kwargs)

    async def send_raw(self, message_id: str, action: str, payload: Any) -> str:
        """Send a CALL the library would refuse to build; returns the peer's reply frame."""
        frame = json.dumps([2, message_id, action, payload], separators=(",", ":"))
        return await self.raw.send_raw(frame, message_id)


@dataclass
class Fleet:
    """What a scenario gets: where the central systems listen, and where to note its injections."""

    port: int
    central: Central
    rogue: Central
    log: list[SentFrame]
    injections: list[Injection] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)

    def inject(self, attack: str, cp_id: str, message_id: str | None = None) -> None:
        self.injections.append(Injection(attack, cp_id, message_id, time.time()))

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    @contextlib.asynccontextmanager
    async def station(self, cp_id: str, version: str, *, compress: bool = False, bind: str | None = None,
                      basic: tuple[str, str] | None = None, offer: list[str] | None = None,
                      host: str = "127.0.0.1", timeout: float = REPLY_TIMEOUT) -> AsyncIterator[Station]:
        """Connect a charge point speaking ``version`` (or whatever of ``offer`` the server picks) from
        ``bind`` to the central system on ``host``; run its receive loop; close it on exit."""
        headers = {}
        if basic is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
        url = f"ws://{host}:{self.port}/ocpp/{quote(cp_id, safe='')}"
        async with connect(url, subprotocols=offer or [f"ocpp{version}"],  # type: ignore[arg-type]
                           additional_headers=headers, compression="deflate" if compress else None, proxy=None,
                           open_timeout=REPLY_TIMEOUT, ping_interval=None,
                           **({"local_addr": (bind, 0)} if bind else {})) as ws:
            recorder = _Recorder(ws, cp_id, "cp", self.log)
            negotiated = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}[ws.subprotocol or ""]
            cp = (Cp16 if negotiated == "1.6" else Cp201)(cp_id, recorder, response_timeout=timeout)
            link = Link(cp_id, ws.local_address[:2], compress, time.time())
            self.links.append(link)
            loop_task = asyncio.create_task(cp.start())
            try:
                yield Station(cp_id, negotiated, cp, recorder)
            finally:
                await ws.close()
                link.closed = time.time()
                with contextlib.suppress(ConnectionClosed):
                    await asyncio.wait_for(loop_task, REPLY_TIMEOUT)


# --- recording ------------------------------------------------------------------------------------

CAPTURE_BUFFER = 256 << 20  # bytes of kernel buffer: bursts of a whole fleet wait there for scapy


class FleetCapture(LiveCapture):
    """A live capture whose packet socket can hold the bursts of many peers talking at once."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self._sock.ins.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, CAPTURE_BUFFER)


Scenario = Callable[[Fleet], Awaitable[None]]


@contextlib.contextmanager
def _quiet_and_fast() -> Iterator[None]:
    """Silence the library's per-message logging and validate inline (about twice as fast)."""
    loggers = [logging.getLogger(name) for name in ("ocpp", "websockets")]
    levels = [lg.level for lg in loggers]
    validation = ocpp.messages.ASYNC_VALIDATION
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    ocpp.messages.ASYNC_VALIDATION = False
    try:
        yield
    finally:
        ocpp.messages.ASYNC_VALIDATION = validation
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


async def _play(scenario: Scenario, port: int, plan: CsmsPlan, pipe: Connection) -> Fleet:
    """Serve both central systems, wait until the capture runs, play the scenario, close everything."""
    log: list[SentFrame] = []
    central, rogue = Central(log, plan), Central(log, CsmsPlan(known_tags=None))
    fleet = Fleet(port, central, rogue, log)
    options: dict[str, Any] = {"subprotocols": SUBPROTOCOLS, "compression": "deflate", "ping_interval": None}
    # On exit, serve() stops listening and waits for every connection handler to finish.
    async with serve(central.handle, "127.0.0.1", port, process_request=central.process_request, **options), \
            serve(rogue.handle, ROGUE_HOST, port, process_request=rogue.process_request, **options):
        pipe.send(("listening",))
        await asyncio.to_thread(pipe.recv)  # the capture is running
        await scenario(fleet)
    return fleet


def _peers_process(pipe: Connection, scenario: Scenario, port: int, plan: CsmsPlan) -> None:
    """Child process: every peer of the run, so that the sniffer has the parent's interpreter to itself."""
    try:
        with _quiet_and_fast():
            fleet = asyncio.run(_play(scenario, port, plan, pipe))
        pipe.send(("done", fleet.log, fleet.injections, fleet.marks, fleet.links))
    except BaseException:  # reported to the parent, which raises
        pipe.send(("error", traceback.format_exc()))


def _receive(pipe: Connection, proc: BaseProcess, timeout: float, step: str) -> tuple[Any, ...]:
    if not pipe.poll(timeout):
        raise HarnessError(f"the peers process did not report {step} within {timeout:.0f}s (exit code {proc.exitcode})")
    message: tuple[Any, ...] = pipe.recv()
    if message[0] == "error":
        raise HarnessError(f"the peers failed before {step}:\n{message[1]}")
    return message


def record_fleet(pcap_path: Path, scenario: Scenario, *, port: int, plan: CsmsPlan,
                 timeout: float = 120.0) -> FleetRun:
    """Run ``scenario`` between real peers on loopback ``port`` and capture it into ``pcap_path``.

    The peers (central systems and charge points) run in a child process while this one sniffs
    ``lo``: on a small machine the sniffer otherwise falls behind a busy fleet. The child is
    spawned, not forked (the test process may hold other threads, e.g. Kafka clients), so
    ``scenario`` must be a module-level function and ``plan`` picklable. Needs root
    (CAP_NET_RAW). The port is fixed (it is the central system endpoint the policy allows); the
    run fails naming the cause when something else holds it.
    """
    started = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peers_process, args=(child, scenario, port, plan), daemon=True)
    proc.start()
    capture: FleetCapture | None = None
    try:
        _receive(parent, proc, 60.0, "listening")  # a spawned interpreter imports everything first
        capture = FleetCapture(port)
        capture.start()
        parent.send(("go",))
        _, log, injections, marks, links = _receive(parent, proc, timeout, "the end of the scenario")
        proc.join(REPLY_TIMEOUT)
        packets = capture.stop()  # raises unless every byte was captured
    finally:
        if capture is not None:
            capture.close()
        if proc.is_alive():
            proc.kill()
            proc.join()
    seconds = time.monotonic() - started
    write_capture(pcap_path, packets)
    return FleetRun(sorted(log, key=lambda f: f.t), packets, injections, marks, links, seconds)


# --- the acceptance suites' settings ------------------------------------------------------------

POLICY = Path(__file__).resolve().parent / "data" / "scenario_policy.toml"
KEY_HEX = "00ff" * 16


def require_root() -> None:
    """Live capture needs CAP_NET_RAW: FAIL (never skip) without it, saying how to run."""
    if os.geteuid() != 0:
        pytest.fail("live capture on lo needs root (CAP_NET_RAW): run the acceptance tests as root, e.g. "
                    "`sudo python -m pytest tests/test_scenarios.py tests/test_benign_corpus.py`", pytrace=False)


def acceptance_config() -> Config:
    """Embedded pipeline settings of the acceptance suites: the scenario policy, a fixed pseudonym key."""
    return with_overrides(Config(), redaction={"key": KEY_HEX}, detector={"policy_file": str(POLICY)})


def csms_port() -> int:
    """The legitimate central system's port: the first endpoint the policy allows."""
    return load_policy(POLICY).csms_endpoints[0].port


__all__ = ["POLICY", "ROGUE_HOST", "Fleet", "FleetRun", "Injection", "Link", "Scenario", "Station",
           "acceptance_config", "csms_port", "record_fleet", "require_root"]
