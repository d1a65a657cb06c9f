"""A durable local spool between "record built" and "record in Kafka".

The proxy and live capture cannot re-read their input after a crash, so what they built and
Kafka has not yet acknowledged must outlive the process. Like Filebeat's disk queue and Vector's
disk buffers, the spool is a directory of append-only segments: the collector appends
(:class:`SpoolWriter`), a publisher process reads in order (:class:`SpoolReader`,
:mod:`chargewatch.spool_publisher`) and checkpoints how far Kafka acknowledged.

* ``<20-digit number>.seg``: 8 bytes of magic, then entries ``<u32 length><u32 CRC-32><body>``,
  body = topic byte (``m`` messages, ``d`` dead letters), ``<u16 key length>``, key, value: the
  Kafka value exactly as :func:`chargewatch.kafkaio.encode` makes it, sent unchanged.
* ``checkpoint.json``: the position (segment, offset) up to which Kafka acknowledged everything
  and the topics' end offsets then (:class:`chargewatch.resume.TopicEnds`); replaced atomically.
* ``writer.lock`` / ``publisher.lock``: ``flock``-ed by the one writer and the one publisher.

An append is one ``write(2)``: once it returned, a crash of the process cannot lose the entry. A
crash of the machine can lose what was written since the last fsync (every ``fsync_interval_s``;
0: each append). A torn or corrupt tail is detected by length and CRC, counted and truncated by
the next writer. Beyond ``max_bytes`` an entry is refused (the caller counts ``spool_full``),
never waited for. The publisher deletes segments wholly before the checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from chargewatch.errors import ConfigError, ServiceError

log = logging.getLogger(__name__)

MAGIC = b"CWSPOOL1"
HEADER = struct.Struct("<II")  # body length, CRC-32 of the body
KEY_LENGTH = struct.Struct("<H")
MESSAGES, DEADLETTERS = b"m", b"d"
SEGMENT_BYTES = 16 << 20  # a segment is closed once it holds this much (less for small spools)
MAX_ENTRY_BYTES = 256 << 20  # a longer length field can only be corruption
REFRESH_S = 0.1  # while full, the writer looks at most this often whether segments were deleted
CHECKPOINT, WRITER_LOCK, PUBLISHER_LOCK = "checkpoint.json", "writer.lock", "publisher.lock"
Position = tuple[int, int]  # (segment number, byte offset in it)


class Spooled(NamedTuple):
    """One entry read back: where it starts and ends, its topic byte, key and value."""

    start: Position
    end: Position
    topic: bytes
    key: bytes
    value: bytes


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:020d}.seg"


def segments(directory: Path) -> list[int]:
    """Segment numbers present, in order."""
    found = []
    for entry in os.scandir(directory) if directory.is_dir() else ():
        stem, dot, ext = entry.name.partition(".")
        if ext == "seg" and dot and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def segment_sizes(directory: Path) -> list[tuple[int, int]]:
    """(number, bytes) of each segment, in order (one the publisher just deleted is left out)."""
    sizes = []
    for number in segments(directory):
        with contextlib.suppress(FileNotFoundError):
            sizes.append((number, segment_path(directory, number).stat().st_size))
    return sizes


def disk_bytes(directory: Path) -> int:
    """Bytes the segments take (what max_bytes bounds)."""
    return sum(size for _, size in segment_sizes(directory))


def spool_end(directory: Path) -> Position:
    """The position just after the last entry written so far."""
    sizes = segment_sizes(directory)
    return (sizes[-1][0], max(len(MAGIC), sizes[-1][1])) if sizes else (0, len(MAGIC))


def pending_bytes(directory: Path, position: Position) -> int:
    """Bytes of the entries after position (for a checkpoint's: not yet acknowledged by Kafka)."""
    return sum(max(0, size - (position[1] if number == position[0] else len(MAGIC)))
               for number, size in segment_sizes(directory) if number >= position[0])


def entry_bytes(topic: bytes, key: str, value: bytes) -> bytes:
    """One entry as written to a segment."""
    raw_key = key.encode()[:0xFFFF]
    body = topic + KEY_LENGTH.pack(len(raw_key)) + raw_key + value
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def parse(buf: bytes, segment: int, base: int) -> tuple[list[Spooled], int, str]:
    """Entries at the start of buf (read from offset base of a segment): (entries, bytes used,
    state), state "ok" (ended on an entry boundary), "short" (an entry continues past buf) or
    "corrupt" (a length or CRC that cannot be right)."""
    out: list[Spooled] = []
    pos, end = 0, len(buf)
    while pos < end:
        if end - pos < HEADER.size:
            return out, pos, "short"
        length, crc = HEADER.unpack_from(buf, pos)
        if length < 1 + KEY_LENGTH.size or length > MAX_ENTRY_BYTES:
            return out, pos, "corrupt"
        stop = pos + HEADER.size + length
        if stop > end:
            return out, pos, "short"
        body = buf[pos + HEADER.size:stop]
        if zlib.crc32(body) != crc:
            return out, pos, "corrupt"
        (key_length,) = KEY_LENGTH.unpack_from(body, 1)
        if 1 + KEY_LENGTH.size + key_length > length:
            return out, pos, "corrupt"
        key_end = 1 + KEY_LENGTH.size + key_length
        out.append(Spooled((segment, base + pos), (segment, base + stop), body[:1], body[3:key_end], body[key_end:]))
        pos = stop
    return out, pos, "ok"


def recover_tail(directory: Path) -> int:
    """Truncate a torn or corrupt tail of the last segment (left by a crash); returns 1 if it had one."""
    numbers = segments(directory)
    if not numbers:
        return 0
    path = segment_path(directory, numbers[-1])
    data = path.read_bytes()
    if data[:len(MAGIC)] != MAGIC:
        log.warning("spool %s: segment %s has no valid header (%d bytes); removed", directory, path.name, len(data))
        path.unlink()
        return 1 if data else 0
    _, used, state = parse(data[len(MAGIC):], numbers[-1], len(MAGIC))
    if state == "ok":
        return 0
    keep = len(MAGIC) + used
    log.warning("spool %s: %s tail of %s truncated at byte %d (%d bytes dropped)", directory,
                "torn" if state == "short" else "corrupt", path.name, keep, len(data) - keep)
    with path.open("r+b") as fh:
        fh.truncate(keep)
        os.fsync(fh.fileno())
    return 1


def hold_lock(path: Path, wait: Callable[[], bool] | None = None) -> int:
    """An exclusive flock on path (released when the process dies); the fd. Without wait a held lock
    raises ServiceError; with it, retries while wait() (which should pause a little) returns True."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is not None and wait():
                continue
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ServiceError(f"spool lock {path} is held by another process (pid {holder or '?'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def fsync_dir(directory: Path) -> None:
    """Make created, renamed and deleted names in directory durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    """How far Kafka acknowledged the spool, and the topics' end offsets at that moment."""

    segment: int = 0  # position: segment number, byte offset
    offset: int = 0
    kafka: dict[str, dict[str, int]] | None = None
    delivered: int = 0  # records acknowledged by Kafka (cumulative for this spool)
    skipped: int = 0  # records found already in Kafka after a crash, not sent again
    refused: int = 0  # records Kafka refused for good (e.g. too large), counted as kafka_error
    saved_at: float = 0.0

    @property
    def position(self) -> Position:
        return (self.segment, self.offset)


def load_checkpoint(directory: Path) -> Checkpoint:
    """The saved checkpoint (a fresh one when there is none); a leftover temporary file is ignored."""
    try:
        raw = json.loads((directory / CHECKPOINT).read_text())
        return Checkpoint(**{k: v for k, v in raw.items() if k in Checkpoint.__dataclass_fields__})
    except FileNotFoundError:
        return Checkpoint()
    except (OSError, ValueError, TypeError) as exc:
        raise ServiceError(f"spool checkpoint {directory / CHECKPOINT} unreadable: {exc}") from exc


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint atomically: a crash leaves the old or the new one, never a mix."""
    checkpoint.saved_at = time.time()
    tmp = directory / (CHECKPOINT + ".tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps(asdict(checkpoint), sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / CHECKPOINT)
    fsync_dir(directory)


def delete_segments_before(directory: Path, segment: int) -> None:
    """Delete the segments numbered below segment (wholly acknowledged by Kafka)."""
    for number in segments(directory):
        if number < segment:
            with contextlib.suppress(FileNotFoundError):
                segment_path(directory, number).unlink()


class SpoolWriter:
    """Appends entries to a spool directory (the one writer; see the module docstring). On open it
    takes the writer lock, truncates a torn tail of the last segment (counted in ``corrupt_tail``)
    and starts a new segment. :meth:`append` may be called from any thread."""

    def __init__(self, directory: Path, max_bytes: int, fsync_interval_s: float,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        if max_bytes < 1 or fsync_interval_s < 0:
            raise ConfigError(f"spool {directory}: max_bytes must be positive and fsync_interval_s at least 0, "
                              f"got {max_bytes} and {fsync_interval_s}")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.max_bytes, self.fsync_interval_s = directory, max_bytes, fsync_interval_s
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 8))
        self._lock_fd = hold_lock(directory / WRITER_LOCK)
        self.corrupt_tail = recover_tail(directory)
        numbers = segments(directory)
        self.segment = (numbers[-1] if numbers else 0) + 1
        self.size = disk_bytes(directory)
        self.appended = self.appended_bytes = self.errors = self.full = 0
        self._lock = threading.Lock()
        self._retired: list[int] = []  # closed segments not yet fsynced (the syncer closes them)
        self._fd, self._segment_size = self._create(self.segment), len(MAGIC)
        self._dir_dirty, self._refreshed = True, 0.0
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name=f"spool-sync-{directory.name}", daemon=True)
        if fsync_interval_s > 0:
            self._syncer.start()

    def _create(self, number: int) -> int:
        fd = os.open(segment_path(self.directory, number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(fd, MAGIC)
        self.size += len(MAGIC)
        return fd

    def append(self, topic: bytes, key: str, value: bytes) -> bool:
        """Write one entry; False (nothing written) when the spool is full or the disk refused it."""
        data = entry_bytes(topic, key, value)
        size = len(data)
        with self._lock:
            if self._stop.is_set():  # closed: its file descriptors may already belong to other files
                return False
            rotate = self._segment_size + size > self.segment_bytes and self._segment_size > len(MAGIC)
            need = size + len(MAGIC) * rotate  # a new segment starts with its magic
            if self.size + need > self.max_bytes and not self._fits_after_refresh(need):
                self.full += 1
                return False
            if rotate:
                self._rotate()
            try:
                written = os.write(self._fd, data)
                if written != size:  # only when the disk is full: undo the torn entry
                    raise OSError(f"short write ({written} of {size} bytes)")
            except OSError as exc:
                self._undo(exc)
                return False
            self._segment_size += size
            self.size += size
            self.appended += 1
            self.appended_bytes += size
            if self.fsync_interval_s == 0:
                os.fsync(self._fd)
        return True

    def has_room(self, size: int) -> bool:
        """Whether an entry of size bytes fits now (nothing written, nothing counted)."""
        with self._lock:
            return self.size + size <= self.max_bytes or self._fits_after_refresh(size)

    def _fits_after_refresh(self, size: int) -> bool:
        now = time.monotonic()
        if now - self._refreshed < REFRESH_S:
            return False
        self._refreshed = now
        self.size = disk_bytes(self.directory)
        return self.size + size <= self.max_bytes

    def _rotate(self) -> None:
        self._retired.append(self._fd)
        self.segment += 1
        self._fd, self._segment_size = self._create(self.segment), len(MAGIC)
        self._dir_dirty = True

    def _undo(self, exc: OSError) -> None:
        self.errors += 1
        log.warning("spool %s: append failed (%s); entry dropped", self.directory, exc)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._segment_size)

    def sync(self) -> None:
        """fsync what was written (closed segments, the current one, new directory entries)."""
        with self._lock:
            retired, self._retired = self._retired, []
            current, dir_dirty, self._dir_dirty = self._fd, self._dir_dirty, False
        for fd in retired:
            os.fsync(fd)
            os.close(fd)
        os.fsync(current)
        if dir_dirty:
            fsync_dir(self.directory)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            try:
                self.sync()
            except OSError as exc:
                log.error("spool %s: fsync failed: %s", self.directory, exc)

    def close(self) -> None:
        """Stop the syncer, fsync and close everything, release the writer lock (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._syncer.is_alive():
            self._syncer.join()
        self.sync()
        os.close(self._fd)
        os.close(self._lock_fd)


class SpoolReader:
    """Reads a spool's entries in order from a position, following the writer (another process).
    A cut-short or corrupt entry ends a segment that a later one follows (counted: ``corrupt_tail``,
    the rest skipped); in the segment being written it is the writer's next entry, waited for."""

    def __init__(self, directory: Path, position: Position = (0, 0)) -> None:
        self.directory, self.position, self.corrupt_tail = directory, position, 0
        self._normalise()

    def _normalise(self) -> None:
        """Move the position to a segment that exists (the checkpoint's may have been deleted)."""
        numbers = segments(self.directory)
        segment, offset = self.position
        if segment not in numbers:
            later = [n for n in numbers if n > segment]
            segment, offset = (later[0], len(MAGIC)) if later else (max(segment, 0), len(MAGIC))
        self.position = (segment, max(offset, len(MAGIC)))

    def read(self) -> list[Spooled]:
        """The next entries (the rest of the current segment); [] when there is nothing new yet."""
        while True:
            segment, offset = self.position
            path = segment_path(self.directory, segment)
            sealed = any(n > segment for n in segments(self.directory))  # looked at before reading
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    buf = fh.read()
            except FileNotFoundError:
                buf = b""
            entries, _, state = parse(buf, segment, offset)
            if entries:
                self.position = entries[-1].end
                return entries
            if not sealed:
                return []
            if state != "ok":
                self.corrupt_tail += 1
                log.warning("spool %s: %s tail of %s at byte %d skipped", self.directory,
                            "torn" if state == "short" else "corrupt", path.name, offset)
            self.position = (min(n for n in segments(self.directory) if n > segment), len(MAGIC))

    def at_end(self) -> bool:
        """Whether every entry written so far has been read."""
        return self.position >= spool_end(self.directory)
