"""Kibana saved objects (data views, saved searches, Lens and Vega visualizations, dashboards)
for the indices Chargewatch writes, generated from :mod:`chargewatch.schema` so their field
names cannot drift from the documents. ``python -m dashboards.kibana.generate`` writes the
committed NDJSON; see ``dashboards/kibana/README.md``."""
