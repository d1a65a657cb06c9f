"""The embedded default: collector → detectors in one process, no Kafka, no Elasticsearch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from chargewatch.alerts import Alert
from chargewatch.catalog import load_catalog
from chargewatch.config import Config, resolve_redaction_key
from chargewatch.errors import CaptureError
from chargewatch.model import Record, key_function
from chargewatch.redaction import Redactor
from collectors.pcap import read_capture
from collectors.stats import CollectorStats, DeadLetter
from detectors.policy import load_policy
from detectors.rules import apply_overrides, load_rules
from detectors.stages import Stages, build_stages


@dataclass
class AnalysisResult:
    """What an in-process analysis found."""

    stats: CollectorStats = field(default_factory=CollectorStats)
    # Latest version of each alert (storms update an alert in place), in first-seen order.
    by_id: dict[str, Alert] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def alerts(self) -> list[Alert]:
        """Final alerts in a stable order (first occurrence, rule, id), whatever the parallelism."""
        return sorted(self.by_id.values(), key=lambda a: (a.ts, a.rule_id, a.id))


class _Sink(Protocol):
    def record(self, record: Record) -> None: ...

    def dead_letter(self, letter: DeadLetter) -> None: ...


class _RunnerSink:
    def __init__(self, stages: Stages, result: AnalysisResult,
                 on_record: Callable[[Record], None] | None) -> None:
        self.stages, self.result, self.on_record = stages, result, on_record

    def record(self, record: Record) -> None:
        if self.on_record is not None:
            self.on_record(record)
        for alert in self.stages.process(record):
            self.result.by_id[alert.id] = alert

    def dead_letter(self, letter: DeadLetter) -> None:
        self.result.dead_letters.append(letter)


def load_stages(config: Config) -> Stages:
    """Every detector stage (per charge point, then correlation) with the rules and the policy."""
    policy_path = Path(config.detector.policy_file).expanduser() if config.detector.policy_file else None
    policy = load_policy(policy_path)
    rules = apply_overrides(load_rules(), policy.rules, str(policy_path))
    return build_stages(rules, load_catalog(), policy, key_function(config.detector.state_key))


def analyze(paths: Iterable[Path], config: Config, progress: Callable[[int], None] | None = None,
            on_record: Callable[[Record], None] | None = None, workers: int = 1) -> AnalysisResult:
    """Decode every capture (or OCPP log) and run the detectors over it, in file order.

    With workers > 1 the charge points are split over that many processes (see
    :mod:`chargewatch.parallel`); the result is the same as with one.
    """
    paths = list(paths)
    if workers > 1 and on_record is None:
        from chargewatch.parallel import analyze_parallel

        return analyze_parallel(paths, config, workers)
    result = AnalysisResult()
    sink = _RunnerSink(load_stages(config), result, on_record)
    read_all(paths, config, sink, result, progress)
    return result


def read_all(paths: list[Path], config: Config, sink: _Sink, result: AnalysisResult,
             progress: Callable[[int], None] | None = None, share: tuple[int, int] = (0, 1)) -> None:
    """Decode paths into sink, counting into result (a share of the charge points when parallel)."""
    from collectors.logs import is_log_file, read_log  # on first use: captures are the common case

    redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
    for path in paths:
        try:
            if is_log_file(path, config.collector.input_format):  # not a pcap/pcapng: an OCPP log
                stats = read_log(path, sink, redactor, load_catalog(), config.collector, progress, share)
            else:
                stats = read_capture(path, sink, redactor, load_catalog(), config.collector.max_message_bytes,
                                     progress, share)
        except CaptureError as exc:
            if share[0] == 0:
                result.unreadable.append(str(exc))
                result.stats.error("unreadable_file")
            continue
        result.stats.merge(stats)
