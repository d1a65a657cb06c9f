"""Anomaly models for transaction patterns and their registry (artifacts live here as data)."""
