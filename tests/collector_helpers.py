"""Helpers shared by the collector unit tests: a list sink, one-call decoding, frame crafting."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargewatch.catalog import load_catalog
from chargewatch.model import ConnectionEvent, OcppMessage, Record
from chargewatch.redaction import Redactor
from collectors.pcap import read_capture
from collectors.stats import CollectorStats, DeadLetter
from tests.pcapgen import PcapWriter, TcpFlow, http_upgrade_request, http_upgrade_response, ws_frame

REDACTOR = Redactor(b"test-key")
CATALOG = load_catalog()
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "samples" / "demo.pcap"
V201_PCAPNG = ROOT / "tests" / "data" / "golden" / "v201_plain.pcapng"
MASK = b"\x37\xfa\x21\x3d"


@dataclass
class ListSink:
    """Collects everything a collector emits, in order."""

    records: list[Record] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def record(self, record: Record) -> None:
        self.records.append(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)

    @property
    def messages(self) -> list[OcppMessage]:
        return [r for r in self.records if isinstance(r, OcppMessage)]

    @property
    def events(self) -> list[ConnectionEvent]:
        return [r for r in self.records if isinstance(r, ConnectionEvent)]

    @property
    def kinds(self) -> list[str]:
        return [d.kind for d in self.dead_letters]

    def dump(self) -> str:
        """Every record and dead letter serialised, for searching."""
        return "\n".join(json.dumps(x.to_dict(), sort_keys=True) for x in [*self.records, *self.dead_letters])


def decode(path: Path, max_message: int = 1 << 20) -> tuple[CollectorStats, ListSink]:
    """read_capture into a fresh ListSink."""
    sink = ListSink()
    stats = read_capture(path, sink, REDACTOR, CATALOG, max_message)
    return stats, sink


def capture(path: Path, build: Callable[[PcapWriter], None], *, pcapng: bool = False) -> Path:
    """Write a capture by calling build(writer); returns path."""
    with PcapWriter(str(path), pcapng=pcapng) as writer:
        build(writer)
    return path


def texts(sink: ListSink) -> list[tuple[str, int, str, str | None, Any]]:
    """(direction, type, id, action, payload) of every decoded message."""
    return [(m.direction.value, m.message_type, m.message_id, m.action, m.payload) for m in sink.messages]


def client_frame(text: str | bytes, **kwargs: Any) -> bytes:
    """A masked client text frame."""
    data = text.encode() if isinstance(text, str) else text
    return ws_frame(data, mask=MASK, **kwargs)


def server_frame(text: str | bytes, **kwargs: Any) -> bytes:
    """An unmasked server text frame."""
    data = text.encode() if isinstance(text, str) else text
    return ws_frame(data, **kwargs)


def upgraded_flow(writer: PcapWriter, *, path: str = "/ocpp/CP001", subprotocol: str | None = "ocpp1.6",
                  server: tuple[str, int] = ("127.0.0.1", 9000), client: tuple[str, int] = ("127.0.0.1", 40000),
                  extensions: str | None = None, basic_auth: tuple[str, str] | None = None,
                  status: int = 101) -> TcpFlow:
    """A TCP flow after handshake and WebSocket upgrade (extensions: the server's accepted value)."""
    flow = TcpFlow(writer, client, server)
    flow.handshake()
    protos: Sequence[str] = [subprotocol] if subprotocol else []
    flow.send(True, http_upgrade_request(path, protos, basic_auth=basic_auth, deflate=extensions is not None))
    flow.send(False, http_upgrade_response(subprotocol, deflate_response=extensions, status=status))
    return flow


class FrameList:
    """A stand-in for PcapWriter that keeps the frames a TcpFlow writes."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, ts: float, frame: bytes) -> None:
        self.frames.append(frame)


def tcp_frame(payload: bytes = b"x") -> bytes:
    """One valid Ethernet/IPv4/TCP frame carrying payload (client 127.0.0.1:40000 -> :9000)."""
    frames = FrameList()
    flow = TcpFlow(frames)  # type: ignore[arg-type]
    flow.send(True, payload)
    return frames.frames[0]
