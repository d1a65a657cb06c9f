"""The one place detectors are registered."""

from __future__ import annotations

from pathlib import Path

from chargewatch.catalog import Catalog
from detectors.base import Detector
from detectors.commands import command_detectors
from detectors.correlation import AuthorizeSpreadDetector, CommandBurstDetector, TokenSessionDetector
from detectors.direction import DirectionDetector
from detectors.mitm import mitm_detectors
from detectors.mitm_tls import TlsStripDetector
from detectors.model_scoring import ModelScoringDetector
from detectors.policy import Policy
from detectors.protocol import protocol_detectors
from detectors.replay import ReplayDetector
from detectors.replay_state import ReplayStateDetector
from detectors.rules import Rule
from detectors.transactions import TransactionDetector


def default_detectors(rules: dict[str, Rule], catalog: Catalog, policy: Policy,
                      sessions: bool = False, models: Path | None = None) -> list[Detector]:
    """Every shipped per-charge-point detector, configured from its rules and the policy;
    sessions: something wants every finished session's features (a store or the sessions topic),
    so CW-TX-006's detector runs even with its rule disabled; models: the model registry
    (``[models] registry_dir``; None: the packaged one) unless the rule names another."""
    return [ReplayDetector(rules), DirectionDetector(catalog), *mitm_detectors(rules, policy),
            *command_detectors(rules, catalog, policy), *protocol_detectors(rules, catalog),
            TransactionDetector(rules, policy), ReplayStateDetector(rules),
            ModelScoringDetector(rules, policy, registry=models, sessions=sessions)]


def correlation_detectors(rules: dict[str, Rule], catalog: Catalog, policy: Policy) -> list[Detector]:
    """Every shipped cross-charge-point detector; each names the stage it runs in (``route``:
    "id_tag", "fleet" or "client_ip", see detectors/stages.py)."""
    return [CommandBurstDetector(rules, policy), AuthorizeSpreadDetector(rules), TokenSessionDetector(rules, policy),
            TlsStripDetector(rules)]
