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
from collectors.pcapfile import PCAP_MAGICS, PCAPNG_MAGIC
from collectors.stats import CollectorStats, DeadLetter
from detectors.model_scoring import Scored, end_of_input, scoring_detector
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


#: Records decoded before the detectors run on them. Decoding a batch and then detecting over it
#: is faster than alternating record by record (each side keeps its own code and state warm
#: in the CPU caches): on the benchmark capture, 2 processes, 1.34-1.43 s without batches and
#: 1.09-1.19 s with 5,000 or more (``bench/bench_analyze.py``). Memory: one batch of records
#: (about 1 KB each).
BATCH_RECORDS = 8192


class _Batch:
    """Holds records for the sink until ``BATCH_RECORDS`` are there or the input ends, then
    hands them on in order. Dead letters go straight through."""

    def __init__(self, sink: _Sink, size: int, after: Callable[[], None] | None = None) -> None:
        self.sink, self.size, self.after = sink, size, after
        self.records: list[Record] = []

    def record(self, record: Record) -> None:
        self.records.append(record)
        if len(self.records) >= self.size:
            self.flush()

    def dead_letter(self, letter: DeadLetter) -> None:
        self.sink.dead_letter(letter)

    def flush(self) -> None:
        records, self.records = self.records, []
        handle = self.sink.record
        for record in records:
            handle(record)
        if self.after is not None:
            self.after()


def load_stages(config: Config, sessions: bool = False) -> Stages:
    """Every detector stage (per charge point, then correlation) with the rules and the policy;
    sessions: keep session features for a store or topic even when CW-TX-006 is disabled."""
    policy_path = Path(config.detector.policy_file).expanduser() if config.detector.policy_file else None
    policy = load_policy(policy_path)
    rules = apply_overrides(load_rules(), policy.rules, str(policy_path))
    models = Path(config.models.registry_dir).expanduser() if config.models.registry_dir else None
    return build_stages(rules, load_catalog(), policy, key_function(config.detector.state_key), sessions, models)


def analyze(paths: Iterable[Path], config: Config, progress: Callable[[int], None] | None = None,
            on_record: Callable[[Record], None] | None = None, workers: int = 1,
            on_sessions: Callable[[list[Scored]], None] | None = None) -> AnalysisResult:
    """Decode every capture (or OCPP log) and run the detectors over it, in file order.

    With workers > 1 the charge points are split over that many processes (see
    :mod:`chargewatch.parallel`); the result is the same as with one. on_sessions receives every
    batch of sessions the anomaly model scored (CW-TX-006; one process then).
    """
    paths = list(paths)
    if workers > 1 and on_record is None and on_sessions is None:
        from chargewatch.parallel import analyze_parallel

        return analyze_parallel(paths, config, workers)
    result = AnalysisResult()
    stages = load_stages(config, sessions=on_sessions is not None)
    scoring = scoring_detector(stages.local.runner.detectors)
    if scoring is not None:
        scoring.on_scored = on_sessions
    sink = _RunnerSink(stages, result, on_record)
    read_all(paths, config, sink, result, progress)
    for alert in end_of_input(stages.local.runner):  # sessions still waiting for their micro-batch
        result.by_id[alert.id] = alert
    return result


def read_all(paths: list[Path], config: Config, sink: _Sink, result: AnalysisResult,
             progress: Callable[[int], None] | None = None, share: tuple[int, int] = (0, 1),
             after_batch: Callable[[], None] | None = None) -> None:
    """Decode paths into sink, counting into result (a share of the charge points when parallel);
    after_batch runs each time the sink has been handed a batch of records."""
    redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
    batch = _Batch(sink, BATCH_RECORDS, after_batch)
    fmt = config.collector.input_format
    for path in paths:
        try:
            if _is_capture(path, fmt) or not _is_log(path, fmt):
                stats = read_capture(path, batch, redactor, load_catalog(), config.collector.max_message_bytes,
                                     progress, share, config.collector.pcap_decoder)
            else:
                from collectors.logs import read_log

                stats = read_log(path, batch, redactor, load_catalog(), config.collector, progress, share)
        except CaptureError as exc:
            if share[0] == 0:
                result.unreadable.append(str(exc))
                result.stats.error("unreadable_file")
            continue
        finally:  # what was decoded before an error is detected on too; the next file starts clean
            batch.flush()
        result.stats.merge(stats)


def _is_log(path: Path, fmt: str) -> bool:
    """The log reader's verdict (it raises CaptureError for a file that is neither)."""
    from collectors.logs import is_log_file  # on first use: captures are the common case

    return is_log_file(path, fmt)


def _is_capture(path: Path, fmt: str) -> bool:
    """Whether path goes to the capture reader without asking the log reader: input format
    ``pcap``, or ``auto`` and the magic bytes of pcap/pcapng."""
    if fmt == "pcap":
        return True
    if fmt != "auto":
        return False
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError:
        return False  # the log reader's check reports it as usual
    return magic in PCAP_MAGICS or magic == PCAPNG_MAGIC
