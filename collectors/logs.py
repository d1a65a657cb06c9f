"""The log collector: OCPP message logs of a central system in, the same records as a capture out.

Each log line goes through :class:`collectors.frames.MessageBuilder`, exactly like a frame the
pcap collector reassembled, so charge point, direction, message ids, action inheritance and
redaction are the same. Logs carry no TCP 5-tuple: one builder serves each (charge point,
connection) of a followed path, where the connection is what the format names (a JSONL
``connection_id``, a SteVe session id) or else the whole log; its id is
``connection_id((file name [| connection key], 0), (charge point, 0), time of its first line)``,
so the same log always gives the same ids. Addresses are the line's, else ``0.0.0.0``/0.

:class:`Tail` follows one path across appends, rotation (a new inode: the old file is finished,
then the new one read from 0) and truncation (size below the offset: read again from 0), and
keeps an unfinished last line until its newline arrives. :class:`LogCollector` keeps the state
a restart needs (per path: device, inode, offset of the first byte not yet published; per
connection: its id, version and unanswered CALLs) as one JSON document.
"""

from __future__ import annotations

import json
import os
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from chargewatch.catalog import Catalog
from chargewatch.config import CollectorConfig
from chargewatch.errors import CaptureError, ConfigError
from chargewatch.model import ConnectionEvent, connection_id
from chargewatch.redaction import Redactor
from collectors.frames import DecodeContext, MessageBuilder, Sink
from collectors.logformats import FORMATS, LineError, LogEntry, parse_line, recognised, zone
from collectors.pcapfile import PCAP_MAGICS, PCAPNG_MAGIC
from collectors.stats import CollectorStats, DeadLetter

CHUNK = 1 << 20
SNIFF_BYTES = 64 << 10
MAX_CONNECTIONS = 10_000  # builders kept per followed path (least recently used beyond are forgotten)
LINE_SLACK = 64 << 10  # a line may hold a frame of max_message_bytes (JSON-escaped: twice) plus this
UNKNOWN_ENDPOINT = ("0.0.0.0", 0)  # noqa: S104 - a placeholder address, nothing listens on it


def check_format(fmt: str, allow_pcap: bool = True) -> str:
    """fmt if it names an input format, else ConfigError listing them."""
    known = ("auto", "pcap", *FORMATS) if allow_pcap else ("auto", *FORMATS)
    if fmt not in known:
        raise ConfigError(f"input format {fmt!r} unknown; known: {', '.join(known)}")
    return fmt


def is_log_file(path: Path, fmt: str) -> bool:
    """Whether path goes to the log reader: named formats do; auto looks at the content.

    auto: pcap/pcapng magic bytes mean a capture; otherwise a log when a line of the first
    64 KiB is a message line of a known format, else CaptureError (neither).
    """
    if check_format(fmt) != "auto":
        return fmt != "pcap"
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return False  # the capture reader reports why it cannot open the file
    if head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC:
        return False
    if any(recognised(line.decode("utf-8", "replace").rstrip("\r")) for line in head.split(b"\n")):
        return True
    raise CaptureError(f"{path}: not a pcap or pcapng file (magic {head[:4].hex() or 'empty'}), "
                       f"and no line of its first {SNIFF_BYTES >> 10} KiB is an OCPP log line of a known format")


class LogDecoder:
    """The lines of one followed log (whatever file currently holds it) into records."""

    def __init__(self, ctx: DecodeContext, name: str, fmt: str, cfg: CollectorConfig) -> None:
        self.ctx, self.name, self.fmt = ctx, name, check_format(fmt, allow_pcap=False)
        self.tz = zone(cfg.log_timezone)
        self.default_version = cfg.log_ocpp_version or None
        self.max_message = cfg.max_message_bytes
        self.lines = 0
        self.last_ts = 0.0  # dead letters of lines without a time carry the last time seen, never the clock
        self.builders: OrderedDict[tuple[str, str], MessageBuilder] = OrderedDict()

    def line(self, raw: bytes, offset: int) -> None:
        """One complete line (without its newline) that starts at byte offset of the file."""
        self.lines += 1
        source = f"{self.name}#{offset}"
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            self._dead("invalid_utf8", f"log line is not UTF-8: {exc}", raw, source)
            return
        if not text.strip():
            self.ctx.stats.ignored["blank_log_line"] += self.ctx.primary
            return
        try:
            entry = parse_line(text, self.fmt, self.tz)
        except LineError as exc:
            self._dead(exc.kind, str(exc), raw, source)
            return
        if entry is None:
            self.ctx.stats.ignored["other_log_line"] += self.ctx.primary
            return
        self.last_ts = entry.ts
        if not self.ctx.owns(entry.charge_point_id):
            return
        builder = self._builder(entry, source)
        data = entry.frame.encode()
        if len(data) > self.max_message:
            builder.dead(entry.ts, "oversized_message", f"frame of {len(data)} bytes exceeds {self.max_message}",
                         data, source)
            return
        builder.message(entry.from_cp, data, entry.ts, source, len(data))

    def oversized_line(self, raw: bytes, offset: int) -> None:
        """A line longer than any frame could make it: dead-lettered, the rest of it skipped."""
        self.lines += 1
        self._dead("oversized_log_line", f"log line longer than {len(raw)} bytes (frame limit: max_message_bytes)",
                   raw, f"{self.name}#{offset}")

    def _dead(self, kind: str, detail: str, raw: bytes, source: str) -> None:
        if self.ctx.primary:
            self.ctx.stats.error(kind)
            self.ctx.sink.dead_letter(DeadLetter.of(self.last_ts, kind, detail, source, raw))

    def _builder(self, entry: LogEntry, source: str) -> MessageBuilder:
        key = (entry.charge_point_id, entry.connection)
        builder = self.builders.get(key)
        if builder is not None:
            self.builders.move_to_end(key)
            return builder
        conn = entry.connection
        if not conn.startswith("steve:") and conn:
            cid = conn  # the CSMS's own connection id
        else:
            where = f"{self.name}|{conn}" if conn else self.name
            cid = connection_id((where, 0), (entry.charge_point_id, 0), entry.ts)
        builder = self._new_builder(entry.charge_point_id, conn, cid, entry.version or self.default_version,
                                    entry.client, entry.server)
        if entry.tls is not None:
            self._announce(builder, entry, source)
        return builder

    def _new_builder(self, cp_id: str, conn: str, cid: str, version: str | None,
                     client: tuple[str, int] | None, server: tuple[str, int] | None) -> MessageBuilder:
        builder = MessageBuilder(self.ctx, cid, client or UNKNOWN_ENDPOINT, server or UNKNOWN_ENDPOINT)
        builder.cp_id = cp_id
        builder.negotiated(version)
        self.builders[(cp_id, conn)] = builder
        while len(self.builders) > MAX_CONNECTIONS:
            self.builders.popitem(last=False)
        return builder

    def _announce(self, builder: MessageBuilder, entry: LogEntry, source: str) -> None:
        """A connection event carrying the TLS facts the line gave (first line of a connection only)."""
        (cip, cport), (sip, sport) = builder.client, builder.server
        self.ctx.stats.connection_events += 1
        self.ctx.sink.record(ConnectionEvent(entry.ts, "upgrade", builder.connection, entry.charge_point_id,
                                             cip, cport, sip, sport, ocpp_version=builder.version, tls=entry.tls,
                                             source=source))

    def state(self) -> list[dict[str, Any]]:
        """What a restart needs to continue every connection: id, version, endpoints, unanswered CALLs."""
        return [{"cp": cp, "key": key, "connection_id": b.connection, "version": b.version,
                 "client": list(b.client), "server": list(b.server),
                 "pending": [list(call) for call in b.pending_calls()]}
                for (cp, key), b in self.builders.items()]

    def restore(self, saved: list[dict[str, Any]]) -> None:
        for item in saved:
            client, server = item["client"], item["server"]
            builder = self._new_builder(item["cp"], item["key"], item["connection_id"], item["version"],
                                        (client[0], client[1]), (server[0], server[1]))
            builder.restore_pending([(bool(c), str(m), str(a)) for c, m, a in item["pending"]])


def split_lines(buf: bytearray, base: int, decoder: LogDecoder, max_line: int) -> tuple[int, bool]:
    """Hand every complete line of buf (which starts at file offset base) to decoder.

    Returns (bytes consumed, whether the rest is an over-long line being skipped).
    """
    start = 0
    while True:
        end = buf.find(b"\n", start)
        if end < 0:
            break
        if end - start > max_line:
            decoder.oversized_line(bytes(buf[start:start + max_line]), base + start)
        else:
            decoder.line(bytes(buf[start:end]), base + start)
        start = end + 1
    if len(buf) - start > max_line:
        decoder.oversized_line(bytes(buf[start:start + max_line]), base + start)
        return len(buf), True
    return start, False


class Tail:
    """One path followed across appends, rotation and truncation; offset = first unpublished byte."""

    def __init__(self, path: Path, decoder: LogDecoder, max_line: int, saved: dict[str, Any] | None = None) -> None:
        self.path, self.decoder, self.max_line = path, decoder, max_line
        saved = saved or {}
        self.dev: int | None = saved.get("dev")
        self.ino: int | None = saved.get("ino")
        self.offset: int = saved.get("offset", 0)
        self.skipping: bool = saved.get("skipping", False)  # inside an over-long line: drop until its newline
        self.buf = bytearray()
        self.fh: BinaryIO | None = None
        self.events: Counter[str] = Counter()  # rotations, truncations, rotated files lost while stopped

    def state(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "skipping": self.skipping}

    def poll(self, budget: int = 8 * CHUNK) -> int:
        """Read what was appended (up to budget bytes); handles rotation and truncation. Bytes read."""
        if self.fh is None and not self._open():
            return 0
        read = self._read(budget)
        if read < budget:  # at the end of the file: has it been rotated or truncated?
            read += self._check_replaced(budget - read)
        return read

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def _open(self) -> bool:
        try:
            fh: BinaryIO = self.path.open("rb")
        except OSError:
            return False
        st = os.fstat(fh.fileno())
        if self.ino is not None and (st.st_dev, st.st_ino) != (self.dev, self.ino):
            old = _find_inode(self.path.parent, self.dev, self.ino)
            if old is not None:  # rotated while we were stopped: finish the old file first
                fh.close()
                fh = old
                st = os.fstat(fh.fileno())
            else:
                self.events["rotated_file_lost"] += 1
                self._restart(st.st_dev, st.st_ino)
        elif self.ino is None:
            self._restart(st.st_dev, st.st_ino)
        if st.st_size < self.offset:
            self.events["truncated"] += 1
            self.offset, self.skipping = 0, False
        self.fh = fh
        return True

    def _restart(self, dev: int, ino: int) -> None:
        self.dev, self.ino, self.offset, self.skipping, self.buf = dev, ino, 0, False, bytearray()

    def _read(self, budget: int) -> int:
        assert self.fh is not None
        total = 0
        while total < budget:
            self.fh.seek(self.offset + len(self.buf))
            chunk = self.fh.read(min(CHUNK, budget - total))
            if not chunk:
                break
            total += len(chunk)
            self._feed(chunk)
        return total

    def _feed(self, chunk: bytes) -> None:
        if self.skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                self.offset += len(chunk)
                return
            self.offset += newline + 1
            self.skipping = False
            chunk = chunk[newline + 1:]
        self.buf += chunk
        used, self.skipping = split_lines(self.buf, self.offset, self.decoder, self.max_line)
        del self.buf[:used]
        self.offset += used

    def _check_replaced(self, budget: int) -> int:
        assert self.fh is not None
        try:
            st = self.path.stat()
        except OSError:
            return 0  # between rotation's rename and the new file's creation: look again next poll
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            read = self._read(budget)  # lines appended to the old file before it was replaced
            if read:
                return read
            if self.buf:  # a rotated file is finished: its last line is complete
                self.decoder.line(bytes(self.buf), self.offset)
            self.events["rotated"] += 1
            self.close()
            self._restart(st.st_dev, st.st_ino)
            return 0
        if os.fstat(self.fh.fileno()).st_size < self.offset + len(self.buf):
            self.events["truncated"] += 1
            self.offset, self.skipping, self.buf = 0, False, bytearray()
            return self._read(budget)
        return 0


def _find_inode(directory: Path, dev: int | None, ino: int | None) -> BinaryIO | None:
    """The file of directory with that device and inode (a rotated log), opened; None if gone."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (dev, ino) and entry.is_file():
            return open(entry.path, "rb")
    return None


class LogCollector:
    """Every followed path with its decoder; state() / the saved state make restarts exact."""

    def __init__(self, paths: list[Path], ctx: DecodeContext, fmt: str, cfg: CollectorConfig,
                 saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        files, conns = saved.get("files", {}), saved.get("connections", {})
        self.max_line = 2 * cfg.max_message_bytes + LINE_SLACK
        self.tails: list[Tail] = []
        for path in paths:
            key = str(path.absolute())
            decoder = LogDecoder(ctx, path.name, fmt, cfg)
            decoder.restore(conns.get(key, []))
            self.tails.append(Tail(path, decoder, self.max_line, files.get(key)))

    def poll(self, budget: int = 8 * CHUNK) -> int:
        """Read what was appended to every path (up to budget bytes each); bytes read."""
        return sum(tail.poll(budget) for tail in self.tails)

    @property
    def lines(self) -> int:
        return sum(t.decoder.lines for t in self.tails)

    def events(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for tail in self.tails:
            total.update(tail.events)
        return total

    def state(self) -> dict[str, Any]:
        return {"files": {str(t.path.absolute()): t.state() for t in self.tails},
                "connections": {str(t.path.absolute()): t.decoder.state() for t in self.tails}}

    def close(self) -> None:
        for tail in self.tails:
            tail.close()


def load_state(path: Path) -> dict[str, Any]:
    """The saved state ({} when there is none yet)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable log collector state file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: log collector state file is not a JSON object")
    return data


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write state atomically (a crash leaves the previous or the new state, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(state, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_log(path: Path, sink: Sink, redactor: Redactor, catalog: Catalog, cfg: CollectorConfig,
             progress: Callable[[int], None] | None = None, share: tuple[int, int] = (0, 1)) -> CollectorStats:
    """Decode one whole log file into sink (the embedded ``analyze`` path); returns the counters.

    An unfinished last line (no newline) is counted as ``ignored.partial_log_line``.
    """
    stats = CollectorStats()
    ctx = DecodeContext(sink=sink, stats=stats, redactor=redactor, catalog=catalog, source=path.name,
                        max_message=cfg.max_message_bytes, share_index=share[0], share_count=share[1])
    fmt = cfg.input_format if cfg.input_format in FORMATS else "auto"
    tail = Tail(path, LogDecoder(ctx, path.name, fmt, cfg), 2 * cfg.max_message_bytes + LINE_SLACK)
    if not tail._open():
        raise CaptureError(f"{path}: cannot open")
    try:
        while (read := tail._read(CHUNK)) > 0:
            stats.bytes += read
            if progress is not None:
                progress(read)
    finally:
        tail.close()
    if tail.buf and ctx.primary:
        stats.ignored["partial_log_line"] += 1
    return stats
