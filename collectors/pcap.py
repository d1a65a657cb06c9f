"""The pcap collector: a capture file in, redacted OCPP records and dead letters out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from chargewatch.catalog import Catalog
from chargewatch.redaction import Redactor
from collectors.frames import DecodeContext, Sink
from collectors.pcapfile import CaptureReader
from collectors.stats import CollectorStats, DeadLetter
from collectors.streams import PacketProcessor

Progress = Callable[[int], None]


def read_capture(path: Path, sink: Sink, redactor: Redactor, catalog: Catalog, max_message: int,
                 progress: Progress | None = None, share: tuple[int, int] = (0, 1)) -> CollectorStats:
    """Decode one pcap/pcapng file into sink; returns what was seen and every error counted.

    progress, when given, is called with the number of file bytes consumed since the last call.
    share (index, count) decodes only the charge points of one process of a parallel analysis.
    """
    stats = CollectorStats()
    ctx = DecodeContext(sink=sink, stats=stats, redactor=redactor, catalog=catalog, source=path.name,
                        max_message=max_message, share_index=share[0], share_count=share[1])
    processor = PacketProcessor(ctx)
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
    if reader.problem is not None and ctx.primary:
        stats.error(reader.problem.kind)
        sink.dead_letter(DeadLetter.of(last_ts, reader.problem.kind, reader.problem.detail, path.name))
    if progress is not None:
        progress(reader.size - done)
    return stats
