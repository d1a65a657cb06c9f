"""Parallel ``analyze``: the charge points are split over worker processes.

Each worker reads every capture but decodes only the connections of the charge points that
hash to it (the identity is in the WebSocket upgrade), runs the per-charge-point detectors on
them, and hands back its alerts plus the records the correlation stages need, tagged with
their position in the input. The parent merges those records into input order and runs the
correlation stages, so the result equals a single-process run. Packet-level counters and
whatever belongs to no charge point are reported by worker 0 only.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path

from chargewatch.alerts import Alert
from chargewatch.config import Config
from chargewatch.embedded import AnalysisResult, load_stages, read_all
from chargewatch.model import Record
from collectors.stats import DeadLetter

Position = tuple[int, int, int]  # (file index, frame number, order within this worker)


@dataclass
class _Share:
    """What one worker found."""

    result: AnalysisResult
    routed: list[tuple[Position, str, str, Record]] = field(default_factory=list)


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


def _work(paths: list[Path], config: Config, index: int, count: int) -> _Share:
    share = _Share(AnalysisResult())
    sink = _ShareSink(config, share)
    for file_index, path in enumerate(paths):
        sink.file_index = file_index
        read_all([path], config, sink, share.result, share=(index, count))
    return share


def analyze_parallel(paths: list[Path], config: Config, workers: int) -> AnalysisResult:
    """The same result as ``analyze(paths, config)``, computed by several processes.

    The rules, catalog and policy are loaded once, before forking, so the workers inherit
    them; this process works on share 0 itself while workers-1 children do the others.
    """
    load_stages(config)  # warms the caches the workers' load_stages reads
    context = multiprocessing.get_context("fork")
    with context.Pool(workers - 1) as pool:
        others = pool.starmap_async(_work, [(paths, config, i, workers) for i in range(1, workers)])
        shares = [_work(paths, config, 0, workers), *others.get()]
    result = AnalysisResult()
    for share in shares:
        result.stats.merge(share.result.stats)
        result.by_id.update(share.result.by_id)
        result.dead_letters += share.result.dead_letters
        result.unreadable += share.result.unreadable
    _correlate(config, shares, result)
    result.dead_letters.sort(key=lambda d: (d.ts, d.source, d.kind))
    return result


def _correlate(config: Config, shares: list[_Share], result: AnalysisResult) -> None:
    stages = load_stages(config)
    routed = sorted((item for share in shares for item in share.routed), key=lambda item: item[0])
    for _position, name, key, record in routed:
        alerts: list[Alert] = stages.correlate(name, key, record)
        for alert in alerts:
            result.by_id[alert.id] = alert
        stages.sweep_due()
