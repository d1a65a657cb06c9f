"""The evidence bundle of one alert: what a responder hands on, self-describing and checkable.

A directory with ``alert.json`` (the alert document, triage included), ``messages.jsonl`` (the
archived records of the alert's charge point from ``window`` before its first occurrence to
``window`` after its last: already redacted by the collector), ``evidence.pcap`` (the packets of
the alert's connection in that window, redacted the same way; only when its source is a capture
file that can be found: :mod:`chargewatch.responder.pcap_evidence`), ``README.txt`` (what it is,
for a person) and ``manifest.json`` (what, when, the SHA-256 of every other file, and why there
is no pcap when there is none).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chargewatch.errors import ConfigError, StoreError
from chargewatch.responder.pcap_evidence import PcapOutcome, locate_capture, parse_reference, write_evidence_pcap
from chargewatch.responder.timeline import epoch
from chargewatch.store import MessageQuery, Store
from chargewatch.store.documents import get_field, precise_time

MAX_RECORDS = 1_000_000
Remembered = Callable[[str], Path | None]  # capture file name -> where it was analysed from
FILES = {"alert.json": "the alert document (Chargewatch alert schema), with its triage state",
         "messages.jsonl": "the archived records (OCPP messages, connection events) of the charge point in the "
                           "window, oldest first, one document per line; idTags are pseudonyms (pt_...), secrets "
                           "[REDACTED]",
         "evidence.pcap": "the packets of the alert's TCP connection in the window, from the original capture; "
                          "idTags, secrets and Basic-auth credentials overwritten in place (see manifest.json)",
         "README.txt": "this description"}


@dataclass(frozen=True)
class Bundle:
    """What :func:`write_bundle` wrote."""

    directory: Path
    files: dict[str, str]  # name -> sha256
    records: int
    pcap: PcapOutcome


def write_bundle(store: Store, alert_id: str, out: Path, window_s: float, now: float,
                 capture_places: Sequence[Path] = (), remembered: Remembered | None = None) -> Bundle:
    """Write the bundle of alert_id into out (created if missing). capture_places: files or
    directories where the capture named by the alert's source reference may be, looked at first;
    remembered: where the store recorded that capture (the embedded store does), looked at next;
    then the name relative to the working directory."""
    alert = store.get_alert(alert_id)
    if alert is None:
        raise StoreError(f"no alert with id {alert_id!r}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    cp_id = get_field(alert, "ocpp.charge_point_id")
    since = epoch(alert["@timestamp"]) - window_s
    until = epoch(get_field(alert, "event.end") or alert["@timestamp"]) + window_s
    records = store.messages(MessageQuery(charge_point_id=cp_id, since=since, until=until, limit=MAX_RECORDS))
    _write_json(out / "alert.json", alert)
    with (out / "messages.jsonl").open("w", encoding="utf-8") as handle:
        for doc in records:
            handle.write(json.dumps(doc, sort_keys=True, ensure_ascii=False) + "\n")
    pcap = _pcap(alert, records, since, until, out / "evidence.pcap", capture_places, remembered)
    names = ["alert.json", "messages.jsonl", *(["evidence.pcap"] if pcap.status == "written" else [])]
    hashes = {name: _sha256(out / name) for name in names}
    if pcap.status != "written":
        (out / "evidence.pcap").unlink(missing_ok=True)  # a stale one from an earlier export
    (out / "README.txt").write_text(_readme(alert, since, until, len(records), pcap, hashes, now), encoding="utf-8")
    hashes["README.txt"] = _sha256(out / "README.txt")
    manifest = {
        "format": "chargewatch-evidence/1", "created_at": precise_time(now),
        "alert": {"id": alert_id, "rule": get_field(alert, "rule.id"), "charge_point_id": cp_id,
                  "first": alert["@timestamp"], "last": get_field(alert, "event.end"),
                  "reference": get_field(alert, "event.reference")},
        "window": {"since": precise_time(since), "until": precise_time(until), "seconds_around": window_s},
        "records": len(records),
        "files": [{"name": n, "sha256": h, "bytes": (out / n).stat().st_size, "content": FILES[n]}
                  for n, h in hashes.items()],
        "pcap": asdict(pcap),
    }
    _write_json(out / "manifest.json", manifest)
    return Bundle(out, hashes, len(records), pcap)


def _pcap(alert: dict[str, Any], records: list[dict[str, Any]], since: float, until: float, out: Path,
          places: Sequence[Path], remembered: Remembered | None) -> PcapOutcome:
    reference = get_field(alert, "event.reference")
    parsed = parse_reference(reference)
    if parsed is None:
        return PcapOutcome("not_a_capture", f"the alert's source {reference or '(none)'} is not a frame of a "
                                            "capture file (a log, the proxy or live capture): no packets to export")
    name, frame = parsed
    known = remembered(name) if remembered is not None else None
    path, looked = locate_capture(name, [*places, *([known] if known else []), Path(name)])
    if path is None:
        return PcapOutcome("unavailable", f"capture {name} not found (looked at {', '.join(looked)}); "
                                          "pass --capture-dir DIR")
    endpoints = _endpoints(alert, records)
    if endpoints is None:
        return PcapOutcome("unavailable", "the alert names no connection endpoints and no archived record of its "
                                          "connection has them", str(path))
    trigger = next((d for d in records if get_field(d, "event.reference") == reference), None)
    frame_ts = epoch(trigger["@timestamp"]) if trigger is not None else epoch(alert["@timestamp"])
    return write_evidence_pcap(path, endpoints[0], endpoints[1], frame, frame_ts, since, until, out)


def _endpoints(alert: dict[str, Any], records: list[dict[str, Any]]) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(charge point side, central system side) of the alert's connection."""
    connection = get_field(alert, "ocpp.connection_id")
    for doc in records:
        if get_field(doc, "ocpp.connection_id") == connection and get_field(doc, "event.action") == "upgrade":
            return ((get_field(doc, "source.ip"), get_field(doc, "source.port")),
                    (get_field(doc, "destination.ip"), get_field(doc, "destination.port")))
    ends = [(get_field(alert, f"{side}.ip"), get_field(alert, f"{side}.port")) for side in ("source", "destination")]
    if any(ip is None or port is None for ip, port in ends):
        return None
    return (ends[0], ends[1]) if get_field(alert, "ocpp.direction") != "csms->cp" else (ends[1], ends[0])


def _readme(alert: dict[str, Any], since: float, until: float, records: int, pcap: PcapOutcome,
            hashes: dict[str, str], now: float) -> str:
    lines = [f"Chargewatch evidence bundle, written {precise_time(now)}",
             "",
             f"alert        {get_field(alert, 'event.id')}",
             f"rule         {get_field(alert, 'rule.id')} {get_field(alert, 'rule.name')}",
             f"charge point {get_field(alert, 'ocpp.charge_point_id')}",
             f"occurred     {alert['@timestamp']} .. {get_field(alert, 'event.end')} "
             f"({get_field(alert, 'chargewatch.occurrences')} occurrence(s))",
             f"source       {get_field(alert, 'event.reference')}",
             f"reason       {alert.get('message', '')}",
             f"window       {precise_time(since)} .. {precise_time(until)} ({records} records)",
             f"pcap         {pcap.status}: {pcap.detail}",
             "",
             "files (SHA-256):"]
    lines += [f"  {hashes[name]}  {name}: {FILES[name]}" for name in hashes]
    lines += ["", "manifest.json repeats this with the sizes and the SHA-256 of README.txt itself.", ""]
    return "\n".join(lines)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
