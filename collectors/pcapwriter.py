"""A rotating evidence capture: what a live collector saw, as classic pcap files.

Investigators want the packets behind an alert, and every tool reads classic pcap. The live
collector hands each frame it decodes to a :class:`RotatingPcapWriter`, which writes them to
``<directory>/<prefix>-<start time>.pcap`` (start time = the first packet's timestamp, UTC,
microseconds), starts a new file once the current one would grow past ``rotate_bytes``, and
deletes the oldest files of the same prefix beyond the newest ``keep`` (files of an earlier run
included), so the evidence kept on disk is bounded.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import BinaryIO

from chargewatch.errors import ConfigError

PCAP_MAGIC_US = 0xA1B2C3D4  # classic pcap, microsecond timestamps, native byte order
SNAPLEN = 262_144
_FILE_HEADER = struct.Struct("=IHHiIII")
_RECORD_HEADER = struct.Struct("=IIII")


def file_header(linktype: int, snaplen: int = SNAPLEN) -> bytes:
    """The 24-byte global header of a classic pcap file (version 2.4)."""
    return _FILE_HEADER.pack(PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype)


def record_header(ts: float, captured: int, original: int) -> bytes:
    """The 16-byte header of one packet record; ts is rounded to the microsecond."""
    micros = round(ts * 1_000_000)
    return _RECORD_HEADER.pack(micros // 1_000_000, micros % 1_000_000, captured, original)


def file_name(prefix: str, micros: int) -> str:
    """``prefix-YYYYmmddTHHMMSS.ffffffZ.pcap`` for a start time in microseconds since the epoch."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(micros // 1_000_000)) + f".{micros % 1_000_000:06d}Z"
    return f"{prefix}-{stamp}.pcap"


class RotatingPcapWriter:
    """Writes frames of one link type to size-bounded pcap files, keeping the newest ``keep``.

    Not thread-safe: one thread (the live collector's decoding thread) writes and closes it.
    """

    def __init__(self, directory: Path, prefix: str, linktype: int, rotate_bytes: int, keep: int,
                 snaplen: int = SNAPLEN) -> None:
        if rotate_bytes < 1024 or keep < 1:
            raise ConfigError(f"evidence pcap: rotate size must be at least 1 KiB and keep at least 1 "
                              f"(got {rotate_bytes} bytes, keep {keep})")
        if not prefix or "/" in prefix:
            raise ConfigError(f"evidence pcap: prefix {prefix!r} must be a plain file name")
        self.directory, self.prefix, self.linktype = directory, prefix, linktype
        self.rotate_bytes, self.keep, self.snaplen = rotate_bytes, keep, snaplen
        self.files_written = 0  # files opened by this writer
        self.files_deleted = 0  # older files removed to respect keep
        self.packets = 0
        self.path: Path | None = None  # the file being written
        self._out: BinaryIO | None = None
        self._size = 0
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, ts: float, frame: bytes) -> None:
        """Append one frame (cut to snaplen), rotating first when it would overflow the file."""
        data = frame[:self.snaplen]
        grow = _RECORD_HEADER.size + len(data)
        if self._out is None or (self._size + grow > self.rotate_bytes and self._size > _FILE_HEADER.size):
            self._open(ts)
        out = self._out
        assert out is not None
        out.write(record_header(ts, len(data), len(frame)))
        out.write(data)
        self._size += grow
        self.packets += 1

    def flush(self) -> None:
        """Push buffered packets to the file (called periodically, so a crash loses little)."""
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        """Close the current file (safe to call twice)."""
        if self._out is not None:
            self._out.close()
            self._out = None

    def files(self) -> list[Path]:
        """This prefix's pcap files in the directory, oldest first (names sort by start time)."""
        return sorted(self.directory.glob(f"{self.prefix}-*.pcap"))

    def _open(self, ts: float) -> None:
        self.close()
        micros = round(ts * 1_000_000)
        while (path := self.directory / file_name(self.prefix, micros)).exists():
            micros += 1  # same start time as an existing file: the next microsecond keeps names in order
        self._out = path.open("wb")
        self._out.write(file_header(self.linktype, self.snaplen))
        self._size = _FILE_HEADER.size
        self.path = path
        self.files_written += 1
        self._prune()

    def _prune(self) -> None:
        existing = self.files()
        for old in existing[:max(0, len(existing) - self.keep)]:
            if old != self.path:
                old.unlink(missing_ok=True)
                self.files_deleted += 1
