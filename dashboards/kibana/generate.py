"""``python -m dashboards.kibana.generate``: write or check the Kibana saved objects.

The committed ``dashboards/kibana/chargewatch.ndjson`` holds the objects for the default index
names (``chargewatch-*``); ``--check`` fails when it differs from what the generator makes
(a test runs it). A deployment with another ``[elasticsearch] alerts_index`` writes its own
file with ``--config FILE --out PATH``. The output is deterministic: the same schema and
configuration always give the same bytes, and object ids never change.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chargewatch.config import ElasticsearchConfig, load_config
from chargewatch.errors import ChargewatchError
from dashboards.kibana.objects import Json
from dashboards.kibana.views import charge_point, data_views, overview
from dashboards.kibana.views_audit import command_audit, transactions

HERE = Path(__file__).resolve().parent
COMMITTED = HERE / "chargewatch.ndjson"
TYPE_ORDER = ("index-pattern", "search", "lens", "visualization", "dashboard")


def build(es: ElasticsearchConfig) -> list[Json]:
    """Every saved object of one deployment: data views first, dashboards last, each once."""
    views = data_views(es)
    objects = [dv.to_object() for dv in views.all()]
    for make in (overview, charge_point, command_audit, transactions):
        objects += make(views)
    unique: dict[tuple[str, str], Json] = {}
    for obj in objects:
        key = (obj["type"], obj["id"])
        if key in unique and unique[key] != obj:
            raise ValueError(f"two different {key[0]} objects share the id {key[1]}")
        unique[key] = obj
    return sorted(unique.values(), key=lambda o: (TYPE_ORDER.index(o["type"]), o["id"]))


def render(objects: Sequence[Json]) -> str:
    """NDJSON as Kibana's import reads it: one object per line, keys sorted."""
    return "".join(json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for obj in objects)


def drift(path: Path = COMMITTED) -> str | None:
    """None when path holds exactly the generated objects of the default names, else a diff."""
    expected = render(build(ElasticsearchConfig()))
    try:
        current = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"{path}: cannot read ({exc}); run python -m dashboards.kibana.generate"
    if current == expected:
        return None
    diff = difflib.unified_diff(current.splitlines(keepends=True), expected.splitlines(keepends=True),
                                fromfile=f"{path} (committed)", tofile=f"{path} (generated)", n=0)
    return "".join(list(diff)[:40]) + "\nrun python -m dashboards.kibana.generate to regenerate it"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.kibana.generate",
        description="Generate the Kibana 8.19 saved objects (NDJSON) from chargewatch/schema.py.")
    parser.add_argument("--config", type=Path, help="Chargewatch TOML config whose [elasticsearch] names to use")
    parser.add_argument("--out", type=Path, help=f"file to write (default: {COMMITTED})")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        problem = drift()
        print(problem or f"{COMMITTED}: up to date", file=sys.stderr if problem else sys.stdout)
        return 1 if problem else 0
    try:
        es = load_config(args.config).elasticsearch
        objects = build(es)
    except ChargewatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or COMMITTED
    out.write_text(render(objects), encoding="utf-8")
    print(f"wrote {len(objects)} saved objects to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
