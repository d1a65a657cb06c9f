"""Builders of Kibana 8.19 saved objects in the shape Kibana's export writes them.

Every object carries ``coreMigrationVersion`` and the ``typeMigrationVersion`` its type has in
Kibana 8.19 (the version Kibana itself writes on export), so an import runs no migration and
each attribute is already in the form that version reads:

- ``index-pattern`` 8.0.0 (last migration of data views), ``visualization`` 8.5.0 (last
  migration of legacy visualizations), ``lens`` 8.9.0 (last Lens migration; Lens got model
  versions only in 9.2), ``search`` 10.5.0 (model version 5, before the 9.2 Discover tabs) and
  ``dashboard`` 10.3.0 (model version 3, collapsible sections, backported to 8.19).
- ``coreMigrationVersion`` is 8.8.0, the last core transform (core stopped following the
  Kibana version in 8.8).

Charts are Lens (the editor Kibana 8.19 offers; its state is plain JSON the tests can walk),
document lists are saved searches, and the one scatter plot is Vega (Lens has no scatter of
single documents). Field types come from the data view's schema definition, so a column's
``dataType`` always agrees with the mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

KIBANA_VERSION = "8.19.21"  # the Kibana of the dev stack's Elasticsearch (chargewatch/devstack/elastic.py)
CORE_MIGRATION_VERSION = "8.8.0"
TYPE_MIGRATION_VERSIONS = {
    "index-pattern": "8.0.0",
    "search": "10.5.0",
    "visualization": "8.5.0",
    "lens": "8.9.0",
    "dashboard": "10.3.0",
}
LAYER = "layer1"  # every Lens object here has one data layer
RECORDS = "___records___"  # Lens' source field of a count
GRID_COLUMNS = 48  # width of Kibana's dashboard grid
SEARCH_INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"
LENS_DATA_TYPES = {"keyword": "string", "long": "number", "float": "number", "date": "date", "ip": "ip",
                   "boolean": "boolean"}


@dataclass(frozen=True)
class DataView:
    """A data view over one kind of Chargewatch index and the schema of its documents."""

    id: str
    title: str  # index name or pattern
    name: str
    time_field: str | None
    fields: Mapping[str, Mapping[str, Any]]  # the chargewatch.schema field dict of the index
    field_formats: Mapping[str, Json] = field(default_factory=dict)  # field -> Kibana field format
    field_labels: Mapping[str, str] = field(default_factory=dict)  # field -> custom label

    def data_type(self, name: str) -> str:
        """The Lens data type of an aggregatable field; ValueError names a field the schema lacks."""
        spec = self.fields.get(name)
        if spec is None or spec.get("type") not in LENS_DATA_TYPES:
            raise ValueError(f"data view {self.id}: {name!r} is not an aggregatable field of its schema")
        return LENS_DATA_TYPES[str(spec["type"])]

    def to_object(self) -> Json:
        """The ``index-pattern`` saved object (fields are read from Elasticsearch at runtime)."""
        attributes: Json = {
            "allowHidden": False,
            "fieldAttrs": dumps({f: {"customLabel": label} for f, label in dict(self.field_labels).items()}),
            "fieldFormatMap": dumps(dict(self.field_formats)),
            "fields": "[]",
            "name": self.name,
            "runtimeFieldMap": "{}",
            "sourceFilters": "[]",
            "title": self.title,
            "typeMeta": "{}",
        }
        if self.time_field:
            attributes["timeFieldName"] = self.time_field
        return saved_object("index-pattern", self.id, attributes, [])


def dumps(value: Any) -> str:
    """Compact JSON for the string-valued attributes (searchSourceJSON, panelsJSON, visState ...)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def saved_object(kind: str, oid: str, attributes: Json, references: Sequence[Json]) -> Json:
    """One exported saved object (one NDJSON line)."""
    return {"attributes": attributes, "coreMigrationVersion": CORE_MIGRATION_VERSION, "id": oid,
            "managed": False, "references": list(references), "type": kind,
            "typeMigrationVersion": TYPE_MIGRATION_VERSIONS[kind]}


def reference(name: str, kind: str, oid: str) -> Json:
    return {"id": oid, "name": name, "type": kind}


# --- KQL -------------------------------------------------------------------------------------

def quoted(value: str) -> str:
    """A KQL quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kql_is(field: str, value: str) -> str:
    return f"{field}:{quoted(value)}"


def kql_any(field: str, values: Sequence[str]) -> str:
    """``field`` equal to any of values."""
    return f"{field}:({' or '.join(quoted(v) for v in values)})"


def kql_all(*clauses: str) -> str:
    """Every clause (each parenthesised, so an ``or`` inside one stays inside it)."""
    return " and ".join(f"({c})" for c in clauses)


def query(text: str) -> Json:
    return {"query": text, "language": "kuery"}


# --- saved searches --------------------------------------------------------------------------

def saved_search(dv: DataView, oid: str, title: str, description: str, columns: Sequence[str],
                 kql: str = "", sort: Sequence[tuple[str, str]] = ()) -> Json:
    """A saved search: the document list a dashboard embeds, sorted by (field, direction) pairs
    (newest first when none are given)."""
    order = list(sort) or [(dv.time_field or "@timestamp", "desc")]
    for name in [*columns, *(f for f, _ in order)]:
        if name not in dv.fields:
            raise ValueError(f"saved search {oid}: {name!r} is not a field of data view {dv.id}")
    search_source = {"query": query(kql), "filter": [], "indexRefName": SEARCH_INDEX_REF}
    attributes = {
        "columns": list(columns), "description": description, "grid": {}, "hideChart": False,
        "isTextBasedQuery": False, "kibanaSavedObjectMeta": {"searchSourceJSON": dumps(search_source)},
        "sort": [list(pair) for pair in order], "title": title,
    }
    return saved_object("search", oid, attributes, [reference(SEARCH_INDEX_REF, "index-pattern", dv.id)])


# --- Lens ------------------------------------------------------------------------------------

def date_histogram(dv: DataView, label: str = "Time") -> Json:
    field = dv.time_field or "@timestamp"
    return {"label": label, "customLabel": True, "dataType": dv.data_type(field), "operationType": "date_histogram",
            "sourceField": field, "isBucketed": True, "scale": "interval",
            "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False}}


def terms(dv: DataView, field: str, label: str, order_by: str, size: int = 10, other: bool = True,
          missing: bool = False) -> Json:
    """Top values of field, ordered by the metric column ``order_by`` (missing: a bucket for
    documents without the field)."""
    return {"label": label, "customLabel": True, "dataType": dv.data_type(field), "operationType": "terms",
            "sourceField": field, "isBucketed": True, "scale": "ordinal",
            "params": {"size": size, "orderBy": {"type": "column", "columnId": order_by}, "orderDirection": "desc",
                       "otherBucket": other, "missingBucket": missing, "parentFormat": {"id": "terms"}}}


def count(label: str, kql: str = "") -> Json:
    """Number of documents (of those matching kql when given)."""
    column: Json = {"label": label, "customLabel": True, "dataType": "number", "operationType": "count",
                    "sourceField": RECORDS, "isBucketed": False, "scale": "ratio", "params": {"emptyAsNull": True}}
    if kql:
        column["filter"] = query(kql)
    return column


def metric(dv: DataView, operation: str, field: str, label: str, kql: str = "") -> Json:
    """An aggregate of one numeric field (average, max, sum, median) or a unique_count of any field."""
    data_type = dv.data_type(field)
    if operation != "unique_count" and data_type != "number":
        raise ValueError(f"data view {dv.id}: {operation} needs a numeric field, {field!r} is {data_type}")
    column: Json = {"label": label, "customLabel": True, "dataType": "number", "operationType": operation,
                    "sourceField": field, "isBucketed": False, "scale": "ratio",
                    "params": {"emptyAsNull": True}}
    if kql:
        column["filter"] = query(kql)
    return column


def lens(dv: DataView, oid: str, title: str, description: str, visualization_type: str,
         columns: Mapping[str, Json], visualization: Json, kql: str = "") -> Json:
    """A Lens visualization with one form-based layer on data view dv."""
    layer = {"columns": dict(columns), "columnOrder": list(columns), "incompleteColumns": {}, "sampling": 1}
    state = {
        "adHocDataViews": {}, "internalReferences": [], "filters": [], "query": query(kql),
        "datasourceStates": {"formBased": {"layers": {LAYER: layer}}, "textBased": {"layers": {}}},
        "visualization": visualization,
    }
    attributes = {"description": description, "state": state, "title": title,
                  "visualizationType": visualization_type}
    return saved_object("lens", oid, attributes,
                        [reference(f"indexpattern-datasource-layer-{LAYER}", "index-pattern", dv.id)])


def xy(series: str, x: str, accessors: Sequence[str], split: str | None = None) -> tuple[str, Json]:
    """Visualization type and state of a Lens XY chart (series: bar_stacked, line, bar_horizontal ...)."""
    layer: Json = {"layerId": LAYER, "layerType": "data", "seriesType": series, "xAccessor": x,
                   "accessors": list(accessors)}
    if split:
        layer["splitAccessor"] = split
    on = {"x": True, "yLeft": True, "yRight": True}
    return "lnsXY", {
        "legend": {"isVisible": True, "position": "right"}, "valueLabels": "hide", "fittingFunction": "None",
        "axisTitlesVisibilitySettings": on, "tickLabelsVisibilitySettings": on, "gridlinesVisibilitySettings": on,
        "preferredSeriesType": series, "layers": [layer],
    }


def table(column_ids: Sequence[str], sort_by: str | None = None) -> tuple[str, Json]:
    """Visualization type and state of a Lens data table showing column_ids in order."""
    state: Json = {"layerId": LAYER, "layerType": "data", "rowHeight": "single", "rowHeightLines": 1,
                   "columns": [{"columnId": c, "isTransposed": False} for c in column_ids]}
    if sort_by:
        state["sorting"] = {"columnId": sort_by, "direction": "desc"}
    return "lnsDatatable", state


def big_number(accessor: str) -> tuple[str, Json]:
    """Visualization type and state of a Lens metric (one big number)."""
    return "lnsMetric", {"layerId": LAYER, "layerType": "data", "metricAccessor": accessor}


# --- Vega --------------------------------------------------------------------------------------

def vega(oid: str, title: str, description: str, spec: Json) -> Json:
    """A Vega visualization (the spec names its index itself; dashboard filters reach it through
    ``%context%``)."""
    vis_state = {"title": title, "type": "vega", "aggs": [], "params": {"spec": json.dumps(spec, indent=2)}}
    attributes = {"description": description, "title": title, "uiStateJSON": "{}", "version": 1,
                  "visState": dumps(vis_state),
                  "kibanaSavedObjectMeta": {"searchSourceJSON": dumps({"query": query(""), "filter": []})}}
    return saved_object("visualization", oid, attributes, [])


# --- dashboards --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Panel:
    """A saved object placed on the dashboard grid (x, y, width, height in grid units)."""

    obj: Json
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Control:
    """An options-list control: a drop-down of a field's values that filters every panel."""

    id: str
    dv: DataView
    field: str
    title: str
    single: bool = True


def dashboard(oid: str, title: str, description: str, panels: Sequence[Panel], time_from: str,
              controls: Sequence[Control] = (), refresh_s: int = 0) -> Json:
    """A dashboard of by-reference panels (``<panelIndex>:panel_<panelIndex>`` references, as
    Kibana extracts them), with optional controls."""
    saved_panels, references = [], []
    for number, panel in enumerate(panels, 1):
        index = f"{oid}-{number}"
        saved_panels.append({"type": panel.obj["type"], "panelIndex": index, "panelRefName": f"panel_{index}",
                             "gridData": {"x": panel.x, "y": panel.y, "w": panel.w, "h": panel.h, "i": index},
                             "embeddableConfig": {"enhancements": {}}})
        references.append(reference(f"{index}:panel_{index}", panel.obj["type"], panel.obj["id"]))
    attributes: Json = {
        "description": description, "timeRestore": True, "timeFrom": time_from, "timeTo": "now",
        "refreshInterval": {"pause": refresh_s == 0, "value": (refresh_s or 60) * 1000},
        "kibanaSavedObjectMeta": {"searchSourceJSON": dumps({"query": query(""), "filter": []})},
        "optionsJSON": dumps({"useMargins": True, "syncColors": False, "syncCursor": True, "syncTooltips": False,
                              "hidePanelTitles": False}),
        "panelsJSON": dumps(saved_panels), "title": title, "version": 1,
    }
    if controls:
        attributes["controlGroupInput"] = control_group(controls)
        references += [reference(f"controlGroup_{c.id}:optionsListDataView", "index-pattern", c.dv.id)
                       for c in controls]
    return saved_object("dashboard", oid, attributes, references)


def control_group(controls: Sequence[Control]) -> Json:
    """The dashboard's ``controlGroupInput`` (data views travel as references, not in the input)."""
    panels = {}
    for order, c in enumerate(controls):
        c.dv.data_type(c.field)
        panels[c.id] = {"order": order, "width": "medium", "grow": True, "type": "optionsListControl",
                        "explicitInput": {"id": c.id, "fieldName": c.field, "title": c.title, "grow": True,
                                          "width": "medium", "singleSelect": c.single, "enhancements": {}}}
    return {"controlStyle": "oneLine", "chainingSystem": "HIERARCHICAL", "showApplySelections": False,
            "panelsJSON": dumps(panels),
            "ignoreParentSettingsJSON": dumps({"ignoreFilters": False, "ignoreQuery": False,
                                               "ignoreTimerange": False, "ignoreValidations": False})}
