"""The durable spool (chargewatch.spool): format, bounds, recovery, checkpoints.

Unit tests, no services: entries written by :class:`SpoolWriter` are read back in order by
:class:`SpoolReader` across segments; a full spool refuses and counts; a torn or corrupt tail
left by a crash is detected by length and CRC, counted and truncated (writer) or skipped
(reader); segments before the checkpoint are deleted; the checkpoint is replaced atomically.
The publisher process and its crash recovery against a real Kafka are tested in
tests/test_proxy.py and tests/test_collect_live.py.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from chargewatch.errors import ConfigError, ServiceError
from chargewatch.kafkaio import encode
from chargewatch.model import Direction, OcppMessage, key_function
from chargewatch.spool import (
    CHECKPOINT,
    HEADER,
    MAGIC,
    Checkpoint,
    SpoolReader,
    SpoolWriter,
    delete_segments_before,
    disk_bytes,
    entry_bytes,
    load_checkpoint,
    pending_bytes,
    save_checkpoint,
    segment_path,
    segments,
    spool_end,
)
from chargewatch.spool_output import SpoolSink
from collectors.stats import DeadLetter


def _value(i: int) -> bytes:
    return encode({"record": "message", "n": i, "pad": "x" * 40})


def _read_all(reader: SpoolReader) -> list[tuple[bytes, bytes, int]]:
    out: list[tuple[bytes, bytes, int]] = []
    while batch := reader.read():
        out.extend((e.topic, e.key, json.loads(e.value)["n"]) for e in batch)
    return out


def _writer(directory: Path, max_bytes: int = 1 << 20, segment_bytes: int = 1 << 20) -> SpoolWriter:
    return SpoolWriter(directory, max_bytes, fsync_interval_s=0.05, segment_bytes=segment_bytes)


def test_entries_come_back_in_order_across_segments_while_being_written(tmp_path: Path) -> None:
    writer = _writer(tmp_path, segment_bytes=400)  # a few entries per segment
    reader = SpoolReader(tmp_path)
    got = []
    for i in range(50):
        assert writer.append(b"m" if i % 5 else b"d", f"CP-{i % 3}", _value(i))
        if i % 7 == 0:  # the reader follows the writer, also in the segment being written
            got.extend(_read_all(reader))
    got.extend(_read_all(reader))
    assert got == [(b"m" if i % 5 else b"d", f"CP-{i % 3}".encode(), i) for i in range(50)]
    assert len(segments(tmp_path)) > 5 and reader.at_end() and reader.corrupt_tail == 0
    assert writer.appended == 50 and disk_bytes(tmp_path) == writer.size
    writer.close()
    writer.close()  # idempotent
    assert not writer.append(b"m", "CP", _value(99))  # closed: refused, nothing written


def test_full_spool_refuses_and_counts_never_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = _writer(tmp_path, max_bytes=2000, segment_bytes=250)
    results = [writer.append(b"m", "CP", _value(i)) for i in range(60)]
    kept = results.count(True)
    assert 0 < kept < 60 and results == [True] * kept + [False] * (60 - kept)  # it fills, then refuses
    assert writer.full == 60 - kept and disk_bytes(tmp_path) <= 2000
    # A record larger than the whole spool is refused too, and counted.
    assert not writer.append(b"m", "CP", b"y" * 5000) and writer.full == 61 - kept
    # Once the publisher deleted acknowledged segments, appends fit again (the writer looks at the
    # disk at most every REFRESH_S while full; not waited for here).
    delete_segments_before(tmp_path, writer.segment)
    monkeypatch.setattr("chargewatch.spool.REFRESH_S", 0.0)
    assert writer.has_room(100) and writer.append(b"m", "CP", _value(1000))
    writer.close()
    assert [n for _, _, n in _read_all(SpoolReader(tmp_path))][-1] == 1000


def test_sink_keys_records_like_kafka_and_counts_refusals_by_kind(tmp_path: Path) -> None:
    writer = _writer(tmp_path, max_bytes=600)
    sink = SpoolSink(writer, key_function("charge_point"))
    message = OcppMessage(1.5, "CP-7", Direction.CP_TO_CSMS, "10.0.0.1", 5000, "10.0.0.2", 9000, "1.6", 2, "m1",
                          "Heartbeat", {}, 30, "C1", "proxy:p#1")
    letter = DeadLetter.of(1.6, "invalid_json", "bad", "proxy:p#2", b"{", "C1", None)
    sink.record(message)
    sink.dead_letter(letter)
    for _ in range(5):
        sink.record(message)
    writer.close()
    entries = [e for batch in iter(SpoolReader(tmp_path).read, []) for e in batch]
    assert [(e.topic, e.key) for e in entries[:2]] == [(b"m", b"CP-7"), (b"d", b"proxy:p#2")]
    assert entries[0].value == encode(message.to_dict()) and entries[1].value == encode(letter.to_dict())
    assert sink.dropped == {"message": 5 - (len(entries) - 2)} and not sink.last_ok


def test_torn_tail_is_truncated_by_the_next_writer_and_counted(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for i in range(5):
        writer.append(b"m", "CP", _value(i))
    writer.close()
    last = segment_path(tmp_path, segments(tmp_path)[-1])
    whole = last.stat().st_size
    torn = entry_bytes(b"m", "CP", _value(5))
    with last.open("ab") as fh:
        fh.write(torn[:len(torn) // 2])  # a crash in the middle of an entry (a machine crash can do this)
    restarted = _writer(tmp_path)
    assert restarted.corrupt_tail == 1 and last.stat().st_size == whole  # cut back to the last whole entry
    assert restarted.segment == segments(tmp_path)[-1] == 2  # the new writer starts a new segment
    restarted.append(b"m", "CP", _value(6))
    restarted.close()
    reader = SpoolReader(tmp_path)
    assert [n for _, _, n in _read_all(reader)] == [0, 1, 2, 3, 4, 6] and reader.corrupt_tail == 0


def test_corrupt_entry_fails_its_crc_and_the_rest_of_the_segment_is_dropped(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for i in range(4):
        writer.append(b"m", "CP", _value(i))
    writer.close()
    path = segment_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    second = len(MAGIC) + len(entry_bytes(b"m", "CP", _value(0)))
    data[second + HEADER.size + 5] ^= 0xFF  # flip a bit inside the second entry's body
    path.write_bytes(bytes(data))
    length, crc = HEADER.unpack_from(data, second)
    assert zlib.crc32(bytes(data[second + HEADER.size:second + HEADER.size + length])) != crc
    # A reader stops at it while the segment may still be written, and skips it once a later one exists.
    reader = SpoolReader(tmp_path)
    assert [n for _, _, n in _read_all(reader)] == [0] and reader.corrupt_tail == 0
    later = segment_path(tmp_path, 2)
    later.write_bytes(MAGIC + entry_bytes(b"m", "CP", _value(9)))
    assert [n for _, _, n in _read_all(reader)] == [9] and reader.corrupt_tail == 1
    # The next writer truncates the last segment's corrupt tail (here: segment 2 is intact).
    later.write_bytes(later.read_bytes() + b"\xff" * 12)
    restarted = _writer(tmp_path)
    assert restarted.corrupt_tail == 1 and later.stat().st_size == len(MAGIC) + len(entry_bytes(b"m", "CP", _value(9)))
    restarted.close()


def test_segment_without_header_is_removed_and_the_reader_moves_past_deleted_segments(tmp_path: Path) -> None:
    writer = _writer(tmp_path, segment_bytes=300)
    for i in range(12):
        writer.append(b"m", "CP", _value(i))
    writer.close()
    numbers = segments(tmp_path)
    segment_path(tmp_path, numbers[-1] + 1).write_bytes(b"CWSP")  # created, header torn by a crash
    restarted = _writer(tmp_path)
    assert restarted.corrupt_tail == 1 and restarted.segment == numbers[-1] + 1
    restarted.close()
    # A checkpoint in a segment that is gone (deleted once acknowledged) resumes at the next one.
    delete_segments_before(tmp_path, numbers[2])
    assert segments(tmp_path)[0] == numbers[2]
    reader = SpoolReader(tmp_path, (numbers[0], 999))
    assert reader.position == (numbers[2], len(MAGIC)) and _read_all(reader)


def test_checkpoint_positions_pending_bytes_and_segment_deletion(tmp_path: Path) -> None:
    writer = _writer(tmp_path, segment_bytes=300)
    for i in range(20):
        writer.append(b"m", "CP", _value(i))
    writer.close()
    reader = SpoolReader(tmp_path)
    first = reader.read()
    assert pending_bytes(tmp_path, (0, 0)) == disk_bytes(tmp_path) - len(MAGIC) * len(segments(tmp_path))
    assert pending_bytes(tmp_path, spool_end(tmp_path)) == 0
    checkpoint = Checkpoint(*first[-1].end, kafka={"t.messages": {"0": 5}}, delivered=len(first))
    save_checkpoint(tmp_path, checkpoint)
    delete_segments_before(tmp_path, checkpoint.segment)
    assert segments(tmp_path)[0] == checkpoint.segment
    back = load_checkpoint(tmp_path)
    assert (back.position, back.kafka, back.delivered) == (first[-1].end, {"t.messages": {"0": 5}}, len(first))
    resumed = SpoolReader(tmp_path, back.position)
    assert [n for _, _, n in _read_all(resumed)] == list(range(len(first), 20))


def test_checkpoint_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_checkpoint(tmp_path) == Checkpoint()  # none yet: start of the spool, no offsets
    save_checkpoint(tmp_path, Checkpoint(1, 100, {"t": {"0": 1}}, delivered=3))
    # A crash while the new checkpoint is written leaves its temporary file behind: ignored.
    (tmp_path / (CHECKPOINT + ".tmp")).write_text('{"segment": 9, "off')
    assert load_checkpoint(tmp_path).position == (1, 100)

    def crash(*_: object) -> None:
        raise OSError("crashed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, Checkpoint(2, 200, {"t": {"0": 9}}, delivered=7))
    old = load_checkpoint(tmp_path)
    assert (old.position, old.kafka, old.delivered) == ((1, 100), {"t": {"0": 1}}, 3)  # the old one, whole
    monkeypatch.undo()
    save_checkpoint(tmp_path, Checkpoint(2, 200, {"t": {"0": 9}}, delivered=7))
    assert load_checkpoint(tmp_path).position == (2, 200)
    (tmp_path / CHECKPOINT).write_text("{not json")
    with pytest.raises(ServiceError, match="checkpoint"):
        load_checkpoint(tmp_path)


def test_one_writer_per_spool_and_bad_settings(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    with pytest.raises(ServiceError, match=f"held by another process \\(pid {os.getpid()}\\)"):
        _writer(tmp_path)
    writer.close()
    _writer(tmp_path).close()  # released by close (and by the kernel when a process dies)
    with pytest.raises(ConfigError, match="max_bytes"):
        SpoolWriter(tmp_path, 0, 1.0)
    with pytest.raises(ConfigError, match="fsync_interval_s"):
        SpoolWriter(tmp_path, 1000, -1.0)


def test_fsync_every_append_when_the_interval_is_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    writer = SpoolWriter(tmp_path, 1 << 20, fsync_interval_s=0.0)

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for i in range(3):
        writer.append(b"m", "CP", _value(i))
    assert len(synced) == 3
    writer.close()
