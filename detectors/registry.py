"""The one place detectors are registered."""

from __future__ import annotations

from chargewatch.catalog import Catalog
from detectors.base import Detector
from detectors.direction import DirectionDetector
from detectors.policy import Policy
from detectors.replay import ReplayDetector
from detectors.rules import Rule


def default_detectors(rules: dict[str, Rule], catalog: Catalog, policy: Policy) -> list[Detector]:
    """Every shipped per-charge-point detector, configured from its rules and the policy."""
    return [ReplayDetector(rules), DirectionDetector(catalog)]
