"""Parallel ``analyze``: the charge points are split over worker processes.

Each process reads every capture but decodes only the connections of the charge points that
hash to it (the identity is in the WebSocket upgrade) and runs the per-charge-point detectors
on them. The records the correlation stages need are tagged with their position in the input
and, after every batch, sent to this process (the parent, which works on share 0 itself). The
parent merges the shares' records into input order as they arrive and runs the correlation
stages on them between its own batches, so correlating overlaps decoding instead of
following it, and the result equals a single-process run. Packet-level counters and whatever
belongs to no charge point are reported by share 0 only.

The merge only takes a record once every share still running has sent one (otherwise an
earlier record could still come): its order depends on the records, never on timing.
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from chargewatch.alerts import Alert
from chargewatch.config import Config
from chargewatch.embedded import AnalysisResult, load_stages, read_all
from chargewatch.errors import ChargewatchError
from chargewatch.model import Record
from collectors.stats import DeadLetter
from detectors.model_scoring import end_of_input

Position = tuple[int, int, int]  # (file index, frame number, order within this share)
Routed = tuple[Position, str, str, Record]  # position, correlation stage, key, record

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    Outbox: TypeAlias = Queue[tuple[int, str, Any]]  # (share, "routed" | "done" | "error", body)

JOIN_TIMEOUT_S = 10.0  # a worker that sent its result and does not exit by then is terminated
POLL_S = 0.5  # while waiting for workers: how often to check that they are still alive


@dataclass
class _Share:
    """What one share found; ``routed`` holds the correlation records not yet handed on."""

    result: AnalysisResult
    routed: list[Routed] = field(default_factory=list)

    def take_routed(self) -> list[Routed]:
        routed, self.routed = self.routed, []
        return routed


class _ShareSink:
    """Runs the per-charge-point stage and keeps the records routed to correlation stages."""

    def __init__(self, config: Config, share: _Share) -> None:
        self.stages = load_stages(config)
        self.share = share
        self.file_index = 0
        self.seq = 0

    def record(self, record: Record) -> None:
        for alert in self.stages.local.runner.process(record):
            self.share.result.by_id[alert.id] = alert
        for name, key, routed in self.stages.route(record):
            self.seq += 1
            self.share.routed.append(((self.file_index, _frame(record.source), self.seq), name, key, routed))

    def dead_letter(self, letter: DeadLetter) -> None:
        self.share.result.dead_letters.append(letter)


def _frame(source: str) -> int:
    """Frame number of a record's source reference ``file#N`` (end-of-capture flushes sort last)."""
    _, _, number = source.rpartition("#")
    return int(number) if number.isdigit() else 1 << 62


class _Merger:
    """Runs the correlation stages over the shares' routed records, merged into input order."""

    def __init__(self, config: Config, shares: int) -> None:
        self.stages = load_stages(config)
        self.queues: list[deque[Routed]] = [deque() for _ in range(shares)]
        self.running = [True] * shares
        self.alerts: dict[str, Alert] = {}

    def add(self, index: int, routed: list[Routed]) -> None:
        self.queues[index].extend(routed)

    def finish(self, index: int) -> None:
        self.running[index] = False

    def run(self) -> None:
        """Correlate every record that can be placed: the earliest head, once no running share is
        empty (ties go to the lower share, as a stable sort of the shares in order would)."""
        queues, running, correlate = self.queues, self.running, self.stages.correlate
        while True:
            best: deque[Routed] | None = None
            for index, waiting in enumerate(queues):
                if not waiting:
                    if running[index]:
                        return
                elif best is None or waiting[0][0] < best[0][0]:
                    best = waiting
            if best is None:
                return
            _position, name, key, record = best.popleft()
            for alert in correlate(name, key, record):
                self.alerts[alert.id] = alert
            self.stages.sweep_due()


def _run_share(paths: list[Path], config: Config, index: int, count: int, share: _Share,
               after_batch: Any) -> None:
    sink = _ShareSink(config, share)
    for file_index, path in enumerate(paths):
        sink.file_index = file_index
        read_all([path], config, sink, share.result, share=(index, count), after_batch=after_batch)
    for alert in end_of_input(sink.stages.local.runner):  # sessions still waiting for their micro-batch
        share.result.by_id[alert.id] = alert


def _child(paths: list[Path], config: Config, index: int, count: int, out: Outbox) -> None:
    """A worker process: (index, "routed", records) after every batch, then (index, "done",
    result), or (index, "error", traceback) if anything failed. The queue's feeder thread does
    the sending: a worker never waits for the parent to read."""
    try:
        share = _Share(AnalysisResult())

        def send_routed() -> None:
            if share.routed:
                out.put((index, "routed", share.take_routed()))

        _run_share(paths, config, index, count, share, send_routed)
        send_routed()
        out.put((index, "done", share.result))
    except BaseException:  # reported to the parent, which raises it
        out.put((index, "error", traceback.format_exc()))


def analyze_parallel(paths: list[Path], config: Config, workers: int) -> AnalysisResult:
    """The same result as ``analyze(paths, config)``, computed by several processes.

    The rules, catalog and policy are loaded once, before forking, so the workers inherit
    them; this process works on share 0 and correlates while workers-1 children do the others.
    """
    load_stages(config)  # warms the caches the workers' load_stages reads
    context = multiprocessing.get_context("fork")
    inbox: Outbox = context.Queue()
    processes = {index: context.Process(target=_child, args=(paths, config, index, workers, inbox), daemon=True)
                 for index in range(1, workers)}
    for process in processes.values():
        process.start()
    merger = _Merger(config, workers)
    results: dict[int, AnalysisResult] = {}
    own = _Share(AnalysisResult())

    def between_batches() -> None:
        merger.add(0, own.take_routed())
        _receive(inbox, processes, merger, results, block=False)
        merger.run()

    try:
        _run_share(paths, config, 0, workers, own, between_batches)
        merger.add(0, own.take_routed())
        merger.finish(0)
        results[0] = own.result
        while len(results) < workers:
            _receive(inbox, processes, merger, results, block=True)
            merger.run()
    except BaseException:
        for process in processes.values():  # their work is of no use any more
            process.terminate()
        raise
    finally:
        for process in processes.values():
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.terminate()
    return _combine([results[i] for i in range(workers)], merger.alerts)


def _receive(inbox: Outbox, processes: dict[int, Any], merger: _Merger, results: dict[int, AnalysisResult],
             block: bool) -> None:
    """Take everything the workers have sent (when block, wait for at least one message)."""
    while True:
        try:
            index, kind, body = inbox.get(timeout=POLL_S) if block else inbox.get_nowait()
        except queue.Empty:
            if not block:
                return
            _check_alive(processes, results)
            continue
        block = False
        if kind == "routed":
            merger.add(index, body)
        elif kind == "done":
            results[index] = body
            merger.finish(index)
        else:
            raise ChargewatchError(f"analyze worker {index} failed:\n{body}")


def _check_alive(processes: dict[int, Any], results: dict[int, AnalysisResult]) -> None:
    for index, process in processes.items():
        if index not in results and not process.is_alive():
            raise ChargewatchError(f"analyze worker {index} ended without a result (exit code {process.exitcode})")
def _combine(results: list[AnalysisResult], correlated: dict[str, Alert]) -> AnalysisResult:
    combined = AnalysisResult()
    for share in results:
        combined.stats.merge(share.stats)
        combined.by_id.update(share.by_id)
        combined.dead_letters += share.dead_letters
        combined.unreadable += share.unreadable
    combined.by_id.update(correlated)
    combined.dead_letters.sort(key=lambda d: (d.ts, d.source, d.kind))
    return combined
