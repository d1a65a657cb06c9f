"""The one place detectors are registered."""

from __future__ import annotations

from chargewatch.catalog import Catalog
from detectors.base import Detector
from detectors.direction import DirectionDetector
from detectors.replay import ReplayDetector
from detectors.rules import Rule


def default_detectors(rules: dict[str, Rule], catalog: Catalog) -> list[Detector]:
    """Every shipped detector, configured from its rules' parameters."""
    return [ReplayDetector(rules), DirectionDetector(catalog)]
