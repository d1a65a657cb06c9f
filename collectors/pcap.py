"""The pcap collector: a capture file in, redacted OCPP records and dead letters out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chargewatch.catalog import Catalog
from chargewatch.redaction import Redactor
from collectors.frames import DecodeContext, Sink
from collectors.native import open_native
from collectors.pcapfile import CaptureReader
from collectors.stats import CollectorStats, DeadLetter
from collectors.streams import PacketProcessor

if TYPE_CHECKING:
    from chargewatch_native import PcapSegments

Progress = Callable[[int], None]


def read_capture(path: Path, sink: Sink, redactor: Redactor, catalog: Catalog, max_message: int,
                 progress: Progress | None = None, share: tuple[int, int] = (0, 1),
                 decoder: str = "auto") -> CollectorStats:
    """Decode one pcap/pcapng file into sink; returns what was seen and every error counted.

    progress, when given, is called with the number of file bytes consumed since the last call.
    share (index, count) decodes only the charge points of one process of a parallel analysis.
    decoder is ``[collector] pcap_decoder``: auto, native or python (see :mod:`collectors.native`).
    """
    stats = CollectorStats()
    ctx = DecodeContext(sink=sink, stats=stats, redactor=redactor, catalog=catalog, source=path.name,
                        max_message=max_message, share_index=share[0], share_count=share[1],
                        native=decoder != "python")
    processor = PacketProcessor(ctx)
    native = open_native(path, decoder)
    problem = _read_python(path, processor, progress) if native is None else _read_native(native, processor, progress)
    if problem is not None and ctx.primary:
        stats.error(problem.kind)
        sink.dead_letter(DeadLetter.of(problem.ts, problem.kind, problem.detail, path.name))
    return stats


@dataclass
class _Ending:
    """Why a file ended early, and the time of its last packet."""

    kind: str
    detail: str
    ts: float


def _read_python(path: Path, processor: PacketProcessor, progress: Progress | None) -> _Ending | None:
    """The reference path: every record through :meth:`PacketProcessor.packet`."""
    packet = processor.packet
    reader = CaptureReader(path)
    last_ts, done = 0.0, 0
    for number, ts, linktype, data in reader:
        packet(number, ts, linktype, data)
        last_ts = ts
        if progress is not None and reader.position - done >= 1 << 20:
            progress(reader.position - done)
            done = reader.position
    processor.finish(last_ts)
    if progress is not None:
        progress(reader.size - done)
    problem = reader.problem
    return None if problem is None else _Ending(problem.kind, problem.detail, last_ts)


def _read_native(reader: PcapSegments, processor: PacketProcessor, progress: Progress | None) -> _Ending | None:
    """Batches from the native front end: parsed segments to :meth:`PacketProcessor.segment`,
    whole frames to :meth:`PacketProcessor.packet`; the packets it counted itself (segments and
    those it dropped) are added at the end."""
    packet, segment = processor.packet, processor.segment
    processor.ignore, processor.unignore = reader.ignore, reader.unignore
    done = 0
    for batch in reader:
        for item in batch:
            if len(item) == 7:
                segment(*item)
            else:
                packet(*item)
        if progress is not None and reader.position - done >= 1 << 20:
            progress(reader.position - done)
            done = reader.position
    stats = processor.stats
    stats.packets += reader.packets
    stats.bytes += reader.frame_bytes
    processor.finish(reader.last_ts)  # the last packet's time, dropped or not, as in the Python path
    if progress is not None:
        progress(reader.size - done)
    problem = reader.problem
    return None if problem is None else _Ending(problem[0], problem[1], reader.last_ts)
