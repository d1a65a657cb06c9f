"""The mirroring proxy's records: built on the relay's loop, appended to a durable spool.

The relay (an asyncio event loop) must never wait for Kafka. For each relayed message
:meth:`Mirror.frame` builds the record with the connection's
:class:`~collectors.frames.MessageBuilder` (the step every collector shares: OCPP-J decoding,
action inheritance, redaction) and appends it to the spool of a
:class:`~chargewatch.spool_output.SpooledOutput`: one ``write(2)`` into the page cache, no Kafka
call and no lock shared with Kafka work. The spool's publisher runs in its own process, drains
the spool into Kafka exactly once and is restarted when it dies; so neither a crash of the proxy
nor one of the publisher loses a record of a relayed message, and Kafka client work does not
compete with the relay for the interpreter lock.

A record that does not fit in the spool (``spool_max_bytes``) is dropped and counted
(``spool_full``); the next record of a connection that lost some is preceded by a ``mirror_gap``
dead letter, so downstream knows that connection's record is incomplete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chargewatch.catalog import Catalog
from chargewatch.model import ConnectionEvent, Record
from chargewatch.redaction import Redactor
from chargewatch.spool_output import SpooledOutput
from collectors.frames import DecodeContext, Endpoint, MessageBuilder
from collectors.stats import CollectorStats, DeadLetter

GAP_LETTER_BYTES = 1024  # room a mirror_gap dead letter needs in the spool (they take about 400 bytes)


@dataclass
class MirrorLink:
    """Mirroring state of one proxied connection: its record builder, and how many of its frames
    could not be spooled (``dropped``) and have been reported downstream (``reported``)."""

    builder: MessageBuilder
    dropped: int = 0
    reported: int = 0


class Mirror:
    """Relayed messages and connection events → records → spool (see the module docstring).

    Every method but ``start``/``close`` runs on the relay's event loop; each is O(1) in the
    number of connections and never blocks on Kafka.
    """

    def __init__(self, output: SpooledOutput, redactor: Redactor, catalog: Catalog, *, source: str,
                 max_message: int) -> None:
        self.output = output
        self.stats = CollectorStats()
        self.ctx = DecodeContext(sink=self, stats=self.stats, redactor=redactor, catalog=catalog, source=source,
                                 max_message=max_message)
        self._link: MirrorLink | None = None  # the connection whose frame is being spooled

    def open(self, event: ConnectionEvent, client: Endpoint, server: Endpoint) -> MirrorLink:
        """A connection was upgraded: its link, and its upgrade event spooled."""
        builder = MessageBuilder(self.ctx, event.connection_id, client, server)
        builder.cp_id = event.charge_point_id
        builder.negotiated(event.ocpp_version)
        link = MirrorLink(builder)
        self.event(event, link)
        return link

    def event(self, event: ConnectionEvent, link: MirrorLink | None = None) -> None:
        """Spool a connection event (upgrade, refused upgrade, closed)."""
        if link is not None:
            self._report_gap(link, event.ts)
        self.stats.connection_events += 1
        self.record(event)

    def frame(self, link: MirrorLink, from_client: bool, data: bytes, ts: float, binary: bool, seq: int) -> None:
        """Spool the record (or dead letter) of one relayed WebSocket message (data: its payload bytes)."""
        self._report_gap(link, ts)
        builder, source = link.builder, f"{self.ctx.source}#{seq}"
        self.stats.bytes += len(data)
        self._link = link
        try:
            if len(data) > self.ctx.max_message:
                builder.dead(ts, "oversized_message", f"{len(data)} bytes > {self.ctx.max_message}", data, source)
            else:
                builder.message(from_client, data, ts, source, len(data), ("binary_frame",) if binary else ())
        finally:
            self._link = None

    # --- Sink, for the builders -------------------------------------------------------------

    def record(self, record: Record) -> None:
        self.output.sink.record(record)
        self._count_loss()

    def dead_letter(self, letter: DeadLetter) -> None:
        self.output.sink.dead_letter(letter)
        self._count_loss()

    def _count_loss(self) -> None:
        if not self.output.sink.last_ok and self._link is not None:
            self._link.dropped += 1

    def _report_gap(self, link: MirrorLink, ts: float) -> None:
        """A dead letter telling downstream that records of this connection are missing (once the
        spool has room for it again: trying earlier would only count more drops)."""
        missing = link.dropped - link.reported
        if missing > 0 and self.output.writer.has_room(GAP_LETTER_BYTES):
            builder = link.builder
            self.output.sink.dead_letter(DeadLetter.of(
                ts, "mirror_gap", f"{missing} frame(s) of this connection were relayed but not mirrored (spool full)",
                self.ctx.source, b"", builder.connection, builder.cp_id))
            if self.output.sink.last_ok:
                link.reported += missing

    # --- lifetime and counters ----------------------------------------------------------------

    def start(self) -> Mirror:
        """Start the spool's publisher process."""
        self.output.start()
        return self

    def close(self) -> None:
        """Close the spool; the publisher gets drain_timeout_s to publish it (the rest stays spooled)."""
        self.output.close()

    def counters(self) -> dict[str, Any]:
        """Records built and decode errors, plus the spool's and publisher's counters."""
        return self.output.counters() | {"messages": self.stats.messages, "errors": dict(self.stats.errors)}
