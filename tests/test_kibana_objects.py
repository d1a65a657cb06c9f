"""Structure of the Kibana saved objects under dashboards/kibana (Kibana cannot run here).

Every check collects all of its offenders and fails once with the whole list. Field checks
follow the one definition, chargewatch/schema.py, and the committed index templates
(dashboards/elasticsearch/) generated from it: a field a visualization, saved search, control
or data view uses must exist for that index, with a type the use needs (an aggregation needs
an aggregatable field, a date histogram a date, an average a number).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from chargewatch.alerts import SEVERITY_NAMES
from chargewatch.catalog import load_catalog
from chargewatch.config import ElasticsearchConfig
from chargewatch.model import Direction, MessageType
from chargewatch.schema import ALERT_FIELDS, ASSET_FIELDS, MESSAGE_FIELDS, TRANSACTION_FIELDS
from chargewatch.store import TRIAGE_STATES
from chargewatch.store.es_templates import IndexNames
from dashboards.kibana import generate, objects
from dashboards.kibana.views_audit import command_queries, sensitive_actions
from detectors.rules import KINDS, load_rules

ROOT = Path(__file__).resolve().parent.parent
KIBANA_DIR = ROOT / "dashboards" / "kibana"
TEMPLATE_DIR = ROOT / "dashboards" / "elasticsearch"
# The pin, stated a second time on purpose: what Kibana 8.19's export writes for each type.
KIBANA_VERSION = "8.19.21"
CORE_VERSION = "8.8.0"
TYPE_VERSIONS = {"index-pattern": "8.0.0", "search": "10.5.0", "visualization": "8.5.0", "lens": "8.9.0",
                 "dashboard": "10.3.0"}
# The commands issue 5 names for the remote-command audit.
ISSUE_COMMANDS = ("Reset", "UpdateFirmware", "UnlockConnector", "RemoteStartTransaction", "RemoteStopTransaction",
                  "RequestStartTransaction", "RequestStopTransaction", "ChangeConfiguration", "SetVariables",
                  "SetNetworkProfile", "InstallCertificate", "DeleteCertificate", "CertificateSigned", "SendLocalList",
                  "ClearCache", "SetChargingProfile", "ClearChargingProfile", "GetLog", "GetDiagnostics",
                  "DataTransfer", "TriggerMessage")
NO_TEMPLATE_YET = "-transactions"  # the transactions index gets its template with the models issue
AGGREGATABLE = {"keyword": "string", "long": "number", "float": "number", "date": "date", "ip": "ip",
                "boolean": "boolean"}
OPERATION_TYPES = {"date_histogram": {"date"}, "terms": {"string", "number", "ip", "boolean"}, "range": {"number"},
                   "average": {"number"}, "sum": {"number"}, "median": {"number"}, "min": {"number", "date"},
                   "max": {"number", "date"}, "unique_count": set(AGGREGATABLE.values()),
                   "last_value": set(AGGREGATABLE.values()), "count": set(AGGREGATABLE.values())}
KQL_FIELD = re.compile(r"(?<![\w.@])([A-Za-z@_][\w.@]*)\s*(?::|<=|>=|<|>)")
KQL_TERM = re.compile(r'([A-Za-z@_][\w.@]*)\s*:\s*(\([^)]*\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
VEGA_FIELD = re.compile(r"datum\.fields\['([^']+)'\]")
Problems = list[str]


def schemas() -> dict[str, Mapping[str, Mapping[str, Any]]]:
    """Data view title (index name or pattern) -> the schema field dict of its documents."""
    names = IndexNames.from_config(ElasticsearchConfig())
    return {names.alerts: ALERT_FIELDS, names.messages_pattern: MESSAGE_FIELDS, names.assets: ASSET_FIELDS,
            f"{names.prefix}-transactions": TRANSACTION_FIELDS}


def template_fields() -> dict[str, dict[str, str]]:
    """Index pattern -> {dotted field: mapping type} of every committed index template."""
    out: dict[str, dict[str, str]] = {}

    def walk(props: Mapping[str, Any], prefix: str, into: dict[str, str]) -> None:
        for name, spec in props.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.", into)
            else:
                into[f"{prefix}{name}"] = "disabled" if spec.get("enabled") is False else spec.get("type", "object")

    for path in sorted(TEMPLATE_DIR.glob("*.json")):
        body = json.loads(path.read_text())
        fields: dict[str, str] = {}
        walk(body["template"]["mappings"]["properties"], "", fields)
        for pattern in body["index_patterns"]:
            out[pattern] = fields
    return out


@cache
def vocabularies() -> dict[str, set[str]]:
    """Values a query may compare a field with, from their definitions."""
    catalog = load_catalog()
    return {"ocpp.direction": {d.value for d in Direction}, "ocpp.message_type_name": {t.name for t in MessageType},
            "rule.category": {r.category for r in load_rules().values()},
            "ocpp.action": {a for v in catalog.versions() for a in catalog.actions[v]},
            "chargewatch.severity_name": set(SEVERITY_NAMES.values()), "triage.status": set(TRIAGE_STATES),
            "event.kind": set(KINDS)}


def read_files() -> tuple[list[dict[str, Any]], Problems]:
    """Every saved object of every committed NDJSON file, and the lines that are not one."""
    objs: list[dict[str, Any]] = []
    problems: Problems = []
    files = sorted(KIBANA_DIR.glob("*.ndjson"))
    if not files:
        problems.append(f"{KIBANA_DIR}: no NDJSON file")
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.name}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not JSON ({exc})")
                continue
            missing = [k for k in ("type", "id", "attributes", "references")
                       if not isinstance(obj, dict) or k not in obj]
            if missing:
                problems.append(f"{where}: not a saved object (missing {missing})")
                continue
            objs.append(obj)
    return objs, problems


@pytest.fixture(scope="module")
def saved() -> list[dict[str, Any]]:
    return read_files()[0]


def label(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('type')} {obj.get('id')}"


def parse(text: Any, where: str, problems: Problems) -> Any:
    """JSON inside a string attribute; None (and a problem) when it is not."""
    if not isinstance(text, str):
        problems.append(f"{where}: expected a JSON string, found {type(text).__name__}")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{where}: does not parse ({exc})")
        return None


def embedded_json(obj: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
    """Every JSON-in-a-string attribute of obj, parsed (name -> value)."""
    attrs, where, out = obj["attributes"], label(obj), {}
    names = {"index-pattern": ["fieldAttrs", "fieldFormatMap", "fields", "runtimeFieldMap", "sourceFilters",
                               "typeMeta"],
             "visualization": ["visState", "uiStateJSON"], "dashboard": ["panelsJSON", "optionsJSON"]}
    for name in names.get(obj["type"], []):
        out[name] = parse(attrs.get(name), f"{where} {name}", problems)
    if obj["type"] in ("search", "visualization", "dashboard"):
        meta = attrs.get("kibanaSavedObjectMeta", {})
        out["searchSourceJSON"] = parse(meta.get("searchSourceJSON"), f"{where} searchSourceJSON", problems)
    if obj["type"] == "lens" and not isinstance(attrs.get("state"), dict):
        out["state"] = parse(attrs.get("state"), f"{where} Lens state", problems)
    elif obj["type"] == "lens":
        out["state"] = attrs["state"]
    if obj["type"] == "visualization" and isinstance(out.get("visState"), dict):
        out["spec"] = parse(out["visState"].get("params", {}).get("spec"), f"{where} Vega spec", problems)
    if obj["type"] == "dashboard" and "controlGroupInput" in attrs:
        group = attrs["controlGroupInput"]
        out["controls"] = parse(group.get("panelsJSON"), f"{where} controlGroupInput.panelsJSON", problems)
        parse(group.get("ignoreParentSettingsJSON"), f"{where} controlGroupInput.ignoreParentSettingsJSON", problems)
    return out


def structure_problems(objs: list[dict[str, Any]]) -> Problems:
    """Unique ids, references that resolve (type + id), embedded JSON that parses, and a
    searchSourceJSON whose indexRefName names one of the object's references."""
    problems: Problems = []
    seen = {(o["type"], o["id"]) for o in objs}
    if len(seen) != len(objs):
        problems.append("two objects share a type and id")
    for obj in objs:
        names = [r.get("name") for r in obj["references"]]
        if len(set(names)) != len(names):
            problems.append(f"{label(obj)}: duplicate reference names")
        for ref in obj["references"]:
            if (ref.get("type"), ref.get("id")) not in seen:
                problems.append(f"{label(obj)}: reference {ref.get('name')} -> {ref.get('type')} {ref.get('id')} "
                                "is not in the files")
        parsed = embedded_json(obj, problems)
        source = parsed.get("searchSourceJSON")
        if isinstance(source, dict) and "indexRefName" in source and source["indexRefName"] not in names:
            problems.append(f"{label(obj)}: searchSourceJSON.indexRefName {source['indexRefName']} is no reference")
    return problems


def kql_problems(text: str, fields: Mapping[str, Mapping[str, Any]], where: str) -> Problems:
    """Fields a KQL query names that its index lacks (or cannot search), and values outside a
    field's vocabulary."""
    problems: Problems = []
    bare = QUOTED.sub('""', text)
    for name in KQL_FIELD.findall(bare):
        spec = fields.get(name)
        if spec is None or spec.get("enabled") is False:
            problems.append(f"{where}: query field {name!r} is not a searchable field of the index")
    vocab = vocabularies()
    for name, value in KQL_TERM.findall(text):
        values = QUOTED.findall(value) if '"' in value else [value.strip("()")]
        for v in values:
            if name in vocab and v != "*" and v not in vocab[name]:
                problems.append(f"{where}: {name} is never {v!r}")
    return problems


def lens_problems(obj: Mapping[str, Any], state: Mapping[str, Any], views: Mapping[str, Mapping[str, Any]],
                  where: str) -> Problems:
    problems: Problems = []
    refs = {r["name"]: r["id"] for r in obj["references"]}
    layers = state.get("datasourceStates", {}).get("formBased", {}).get("layers", {})
    if not layers:
        problems.append(f"{where}: no form-based layer")
    for layer_id, layer in layers.items():
        fields = views.get(refs.get(f"indexpattern-datasource-layer-{layer_id}", ""))
        if fields is None:
            problems.append(f"{where}: layer {layer_id} has no data view reference")
            continue
        columns = layer.get("columns", {})
        order = list(layer.get("columnOrder", []))
        if sorted(order) != sorted(columns):
            problems.append(f"{where}: layer {layer_id} columnOrder lists other columns than it has")
        elif [columns[c].get("isBucketed") for c in order] != sorted((columns[c].get("isBucketed") for c in order),
                                                                    reverse=True):
            problems.append(f"{where}: layer {layer_id} columnOrder puts a metric before a bucket")
        for cid, col in columns.items():
            at, op, source = f"{where} column {cid}", col.get("operationType"), col.get("sourceField")
            if op not in OPERATION_TYPES:
                problems.append(f"{at}: unknown operation {op!r}")
            elif source != objects.RECORDS:
                spec = fields.get(source, {})
                kind = AGGREGATABLE.get(spec.get("type", ""))
                result = "number" if op in ("count", "unique_count") else kind
                if kind is None:
                    problems.append(f"{at}: {source!r} is not an aggregatable field of the index")
                elif kind not in OPERATION_TYPES[op] or col.get("dataType") != result:
                    problems.append(f"{at}: {op} on {source!r} ({spec['type']}) with dataType {col.get('dataType')}")
            order = col.get("params", {}).get("orderBy", {})
            if order.get("type") == "column" and order.get("columnId") not in columns:
                problems.append(f"{at}: orders by missing column {order.get('columnId')}")
            sort_field = col.get("params", {}).get("sortField")
            if sort_field and AGGREGATABLE.get(fields.get(sort_field, {}).get("type", "")) != "date":
                problems.append(f"{at}: sortField {sort_field!r} is not a date of the index")
            if col.get("filter"):
                problems += kql_problems(col["filter"]["query"], fields, at)
        problems += kql_problems(state.get("query", {}).get("query", ""), fields, where)
        problems += [f"{where}: visualization uses missing column {a}"
                     for a in accessors(state.get("visualization", {})) if a not in columns]
    return problems


def accessors(vis: Mapping[str, Any]) -> Iterator[str]:
    """Column ids a Lens visualization state refers to (XY, data table, metric)."""
    for layer in vis.get("layers", []):
        yield from [layer[k] for k in ("xAccessor", "splitAccessor") if layer.get(k)]
        yield from layer.get("accessors", [])
    yield from [c["columnId"] for c in vis.get("columns", [])]
    if vis.get("sorting"):
        yield vis["sorting"]["columnId"]
    yield from [vis[k] for k in ("metricAccessor", "maxAccessor", "breakdownByAccessor") if vis.get(k)]


def field_problems(objs: list[dict[str, Any]]) -> Problems:
    """Every field a data view, saved search, Lens column, Vega spec or control uses exists for
    its index (schema and committed template) with a type fit for the use."""
    problems: Problems = []
    titles = schemas()
    templates = template_fields()
    views: dict[str, Mapping[str, Mapping[str, Any]]] = {}
    for dv in (o for o in objs if o["type"] == "index-pattern"):
        title, fields = dv["attributes"].get("title"), titles.get(dv["attributes"].get("title"))
        if fields is None:
            problems.append(f"{label(dv)}: {title!r} is no Chargewatch index (known: {sorted(titles)})")
            continue
        views[dv["id"]] = fields
        template = templates.get(title)
        if template is None and not title.endswith(NO_TEMPLATE_YET):
            problems.append(f"{label(dv)}: no committed index template covers {title!r}")
        for name in fields:
            if template is not None and name not in template:
                problems.append(f"{label(dv)}: {name} is in the schema but not in the template of {title!r}")
        parsed = embedded_json(dv, [])
        time_field = dv["attributes"].get("timeFieldName")
        if time_field and fields.get(time_field, {}).get("type") != "date":
            problems.append(f"{label(dv)}: time field {time_field!r} is not a date of the index")
        for name in list(parsed.get("fieldAttrs") or {}) + list(parsed.get("fieldFormatMap") or {}):
            if name not in fields:
                problems.append(f"{label(dv)}: field attribute for unknown field {name!r}")
    for obj in objs:
        where, refs, parsed = label(obj), {r["name"]: r["id"] for r in obj["references"]}, embedded_json(obj, [])
        if obj["type"] == "search":
            fields = views.get(refs.get(objects.SEARCH_INDEX_REF, ""), {})
            attrs = obj["attributes"]
            for name in list(attrs.get("columns", [])) + [s[0] for s in attrs.get("sort", [])]:
                if name not in fields or fields[name].get("enabled") is False:
                    problems.append(f"{where}: column or sort field {name!r} is not a field of its index")
            problems += kql_problems((parsed.get("searchSourceJSON") or {}).get("query", {}).get("query", ""),
                                     fields, where)
        elif obj["type"] == "lens" and isinstance(parsed.get("state"), dict):
            problems += lens_problems(obj, parsed["state"], views, where)
        elif obj["type"] == "visualization" and isinstance(parsed.get("spec"), dict):
            problems += vega_problems(parsed["spec"], titles, where)
        elif obj["type"] == "dashboard":
            for cid, control in (parsed.get("controls") or {}).items():
                fields = views.get(refs.get(f"controlGroup_{cid}:optionsListDataView", ""), {})
                name = control.get("explicitInput", {}).get("fieldName")
                if AGGREGATABLE.get(fields.get(name, {}).get("type", "")) is None:
                    problems.append(f"{where}: control {cid} field {name!r} is not an aggregatable field of its index")
    return problems


def vega_problems(spec: Mapping[str, Any], titles: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  where: str) -> Problems:
    url = spec.get("data", {}).get("url", {})
    fields = titles.get(url.get("index", ""))
    if fields is None:
        return [f"{where}: Vega reads {url.get('index')!r}, no Chargewatch index"]
    body = url.get("body", {})
    used = [url.get("%timefield%"), *body.get("fields", []), *(k for s in body.get("sort", []) for k in s)]
    used += VEGA_FIELD.findall(json.dumps(spec.get("transform", [])))
    return [f"{where}: Vega uses {name!r}, not a field of {url['index']}" for name in used
            if name not in fields or fields[name].get("enabled") is False]


def panel_problems(objs: list[dict[str, Any]]) -> Problems:
    """Each dashboard panel points (panelRefName) at a reference of its type; grid cells are
    unique, inside the 48 columns and do not overlap; each control has its data view."""
    problems: Problems = []
    for board in (o for o in objs if o["type"] == "dashboard"):
        where, parsed = label(board), embedded_json(board, problems)
        refs = {r["name"]: r for r in board["references"]}
        panels, cells = parsed.get("panelsJSON") or [], []
        if not panels:
            problems.append(f"{where}: no panels")
        for panel in panels:
            index, grid = panel.get("panelIndex"), panel.get("gridData", {})
            ref = refs.get(f"{index}:{panel.get('panelRefName')}")
            if ref is None or ref["type"] != panel.get("type"):
                problems.append(f"{where}: panel {index} has no {panel.get('type')} reference "
                                f"{index}:{panel.get('panelRefName')}")
            x, w, h = grid.get("x", -1), grid.get("w", 0), grid.get("h", 0)
            if grid.get("i") != index or x < 0 or x + w > objects.GRID_COLUMNS or w <= 0 or h <= 0:
                problems.append(f"{where}: panel {index} has a bad gridData {grid}")
            cells.append((index, (x, grid.get("y", 0), w, h)))
        if len({i for i, _ in cells}) != len(cells):
            problems.append(f"{where}: duplicate panelIndex")
        for n, (a, (ax, ay, aw, ah)) in enumerate(cells):
            for b, (bx, by, bw, bh) in cells[n + 1:]:
                if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                    problems.append(f"{where}: panels {a} and {b} overlap")
        for cid in parsed.get("controls") or {}:
            if f"controlGroup_{cid}:optionsListDataView" not in refs:
                problems.append(f"{where}: control {cid} has no data view reference")
    return problems


def version_problems(objs: list[dict[str, Any]]) -> Problems:
    return [f"{label(o)}: coreMigrationVersion {o.get('coreMigrationVersion')!r} / typeMigrationVersion "
            f"{o.get('typeMigrationVersion')!r}, pinned {CORE_VERSION!r} / {TYPE_VERSIONS.get(o['type'])!r}"
            for o in objs if o.get("coreMigrationVersion") != CORE_VERSION
            or o.get("typeMigrationVersion") != TYPE_VERSIONS.get(o["type"])]


def report(problems: Problems) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_every_line_is_a_saved_object(saved: list[dict[str, Any]]) -> None:
    problems = read_files()[1]
    assert not problems, report(problems)
    assert {o["type"] for o in saved} == set(TYPE_VERSIONS)
    assert sum(o["type"] == "dashboard" for o in saved) == 4


def test_references_resolve_and_embedded_json_parses(saved: list[dict[str, Any]]) -> None:
    problems = structure_problems(saved)
    assert not problems, report(problems)


def test_every_field_exists_in_the_schema_of_its_index(saved: list[dict[str, Any]]) -> None:
    problems = field_problems(saved)
    assert not problems, report(problems)
    assert {o["attributes"]["title"] for o in saved if o["type"] == "index-pattern"} == set(schemas())


def test_dashboard_panels_reference_their_objects(saved: list[dict[str, Any]]) -> None:
    problems = panel_problems(saved)
    assert not problems, report(problems)


def test_versions_are_the_pinned_kibana(saved: list[dict[str, Any]]) -> None:
    problems = version_problems(saved)
    assert not problems, report(problems)
    assert (objects.KIBANA_VERSION, objects.CORE_MIGRATION_VERSION) == (KIBANA_VERSION, CORE_VERSION)
    assert objects.TYPE_MIGRATION_VERSIONS == TYPE_VERSIONS
    assert f"Kibana {KIBANA_VERSION}" in (KIBANA_DIR / "README.md").read_text()


def test_committed_file_is_what_the_generator_writes() -> None:
    problem = generate.drift()
    assert problem is None, problem
    assert generate.main(["--check"]) == 0


def test_audit_covers_every_sensitive_command(saved: list[dict[str, Any]]) -> None:
    trail = next(o for o in saved if o["id"] == "chargewatch-audit-trail")
    text = json.loads(trail["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
    named = set(QUOTED.findall(text))
    assert set(sensitive_actions()) <= named
    assert set(ISSUE_COMMANDS) <= named
    scope, calls, answers = command_queries()
    assert all(part in text for part in (scope, calls, answers))
    assert {"source.ip", "ocpp.status", "ocpp.error_code"} <= set(trail["attributes"]["columns"])


def test_checks_report_every_offender_at_once(saved: list[dict[str, Any]]) -> None:
    """The checks are not vacuous: break several objects, and each break is reported."""
    broken = copy.deepcopy(saved)
    by_id = {o["id"]: o for o in broken}
    by_id["chargewatch-top-rules"]["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]["layer1"][
        "columns"]["rule"]["sourceField"] = "rule.nonexistent"
    by_id["chargewatch-tx-score-over-time"]["attributes"]["state"]["datasourceStates"]["formBased"]["layers"][
        "layer1"]["columns"]["avg"]["sourceField"] = "ocpp.charge_point_id"
    by_id["chargewatch-cp-posture"]["attributes"]["columns"].append("ocpp.payload")
    by_id["chargewatch-audit-trail"]["references"][0]["id"] = "missing-data-view"
    by_id["chargewatch-overview"]["attributes"]["panelsJSON"] = "[{not json"
    source = json.loads(by_id["chargewatch-cp-commands"]["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    source["query"]["query"] = 'ocpp.direction:"csms-cp" and ocpp.nothing:1'
    by_id["chargewatch-cp-commands"]["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"] = json.dumps(source)
    by_id["chargewatch-dv-assets"]["typeMigrationVersion"] = "10.1.0"
    board = by_id["chargewatch-transactions"]["attributes"]
    panels = json.loads(board["panelsJSON"])
    panels[1]["gridData"].update(x=0, y=0)
    board["panelsJSON"] = json.dumps(panels)
    group = by_id["chargewatch-charge-point"]["attributes"]["controlGroupInput"]
    group["panelsJSON"] = group["panelsJSON"].replace('"ocpp.charge_point_id"', '"ocpp.payload"')
    found = structure_problems(broken) + field_problems(broken) + panel_problems(broken) + version_problems(broken)
    text = "\n".join(found)
    for expected in ("rule.nonexistent", "average on 'ocpp.charge_point_id'", "'ocpp.payload'", "missing-data-view",
                     "chargewatch-overview panelsJSON: does not parse", "ocpp.direction is never 'csms-cp'",
                     "'ocpp.nothing'", "index-pattern chargewatch-dv-assets: coreMigrationVersion",
                     "chargewatch-transactions-1 and chargewatch-transactions-2 overlap",
                     "control chargewatch-control-cp field 'ocpp.payload'"):
        assert expected in text, f"{expected!r} not reported in:\n{text}"
