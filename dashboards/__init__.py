"""Elasticsearch layout (index templates), the alert indexer, and the SOC dashboards."""
