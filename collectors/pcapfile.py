"""Reading raw records from pcap and pcapng files.

Classic pcap is read here directly (a 24-byte header and 16-byte record headers) so that a
truncated record is reported with its byte offset; pcapng goes through scapy's
``RawPcapNgReader`` (raw bytes, no dissection). Neither path builds scapy packets.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chargewatch.errors import CaptureError

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
MAX_RECORD = 1 << 20  # a record claiming more than 1 MiB is corrupt


# One captured frame: (1-based number in the file, time, link type, bytes). A plain tuple, not a
# class: one is made per packet, and building a tuple costs a fraction of building an object.
RawRecord = tuple[int, float, int, bytes]


@dataclass
class ReadProblem:
    """Why reading stopped early (None when the file was read to its end)."""

    kind: str
    detail: str


class CaptureReader:
    """Iterates the records of one capture file; ``problem`` says if the file ended badly."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: ReadProblem | None = None
        try:
            self.size = os.path.getsize(path)
        except OSError as exc:  # a missing file must fail like an unreadable one: CaptureError
            raise CaptureError(f"{path}: cannot open: {exc}") from exc
        self.position = 0

    def __iter__(self) -> Iterator[RawRecord]:
        # Not a generator itself: each record then passes through one generator, not two.
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open: {exc}") from exc
        magic = handle.read(4)
        if magic in PCAP_MAGICS:
            return self._pcap(handle, magic)
        handle.close()
        if magic == PCAPNG_MAGIC:
            return self._pcapng()
        raise CaptureError(f"{self.path}: not a pcap or pcapng file (magic {magic.hex() or 'empty'})")

    def _pcap(self, f: BinaryIO, magic: bytes) -> Iterator[RawRecord]:
        """Classic pcap records; closes f when done."""
        with f:
            endian, unit = PCAP_MAGICS[magic]
            header = f.read(20)
            if len(header) < 20:
                detail = f"{self.path}: file header cut at byte {4 + len(header)}"
                self.problem = ReadProblem("truncated_file_header", detail)
                return
            linktype = struct.unpack(endian + "HHiIII", header)[5] & 0x0FFFFFFF
            rec = struct.Struct(endian + "IIII")
            offset, number, size = 24, 0, self.size
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                while offset < size:
                    if size - offset < 16:
                        detail = f"{self.path}: record header cut at byte {offset}"
                        self.problem = ReadProblem("truncated_record", detail)
                        break
                    sec, frac, caplen, _wire = rec.unpack_from(buf, offset)
                    if caplen > MAX_RECORD:
                        detail = f"{self.path}: record at byte {offset} claims {caplen} bytes"
                        self.problem = ReadProblem("corrupt_record", detail)
                        break
                    start = offset + 16
                    if start + caplen > size:
                        detail = (f"{self.path}: record {number + 1} at byte {offset} cut after {size - start} "
                                  f"of {caplen} bytes")
                        self.problem = ReadProblem("truncated_record", detail)
                        break
                    number += 1
                    offset = start + caplen
                    self.position = offset
                    yield number, sec + frac * unit, linktype, buf[start:offset]

    def _pcapng(self) -> Iterator[RawRecord]:
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapNgReader

        # scapy logs what we report ourselves (with the byte offset) as a counted problem.
        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        try:
            reader = RawPcapNgReader(str(self.path))
        except (Scapy_Exception, EOFError) as exc:
            self.problem = ReadProblem("corrupt_file_header", f"{self.path}: {exc}")
            return
        number, ts = 0, 0.0
        with reader:
            while True:
                self.position = reader.f.tell()
                if self.position >= self.size:
                    break
                try:
                    # Block by block (not _read_packet, which turns a cut block into a silent EOF) so a
                    # truncated or corrupt block is told apart from the clean end of the file.
                    block = reader._read_block(size=MAX_RECORD)
                except (EOFError, OSError, OverflowError, zlib.error):
                    detail = f"{self.path}: pcapng block after packet {number} unreadable at byte {self.position}"
                    self.problem = ReadProblem("truncated_record", f"{detail} of {self.size}")
                    break
                if block is None:
                    continue  # not a packet: interface description, statistics, name resolution...
                data, meta = block
                number += 1
                if meta.tshigh is not None and meta.tslow is not None:
                    ts = (meta.tshigh << 32 | meta.tslow) / meta.tsresol
                # else a Simple Packet Block, which has no time: it keeps the previous packet's
                yield number, ts, meta.linktype, data
