"""Detectors: stateful, per-charge-point OCPP checks driven by rule data files."""
