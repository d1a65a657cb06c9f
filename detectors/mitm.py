"""Man-in-the-middle indicators (rules CW-MITM-*), in three detectors:

* :mod:`detectors.mitm_session`: who connects as a charge point, from where and how
  (CW-MITM-001 concurrent connections, 002 new address / version downgrade, 004 username
  that is not the identity);
* :mod:`detectors.mitm_posture`: the security profile connections use (003 Basic auth over
  plain ws://, 005 profile downgrade or below policy, 008 plain ws:// without auth);
* :mod:`detectors.mitm_responses`: the answers (006 answer without a request or not fitting
  it, 007 round trip far above the baseline);
* :mod:`detectors.mitm_ttl`: 009, the IP TTL of one side of a connection changing;
* :mod:`detectors.mitm_tls`: 010 weak TLS, 011 central-system certificate changed, 012 TLS
  stripped (the last in the ``client_ip`` correlation stage);
* :mod:`detectors.mitm_link`: 013 ARP binding of a watched address changed, 014 gratuitous-ARP burst.

Falling meter registers belong to the transaction rules.
"""

from __future__ import annotations

from detectors.base import Detector
from detectors.mitm_link import ArpDetector
from detectors.mitm_posture import MitmPostureDetector
from detectors.mitm_responses import MitmResponseDetector
from detectors.mitm_session import MitmSessionDetector
from detectors.mitm_tls import TlsPolicyDetector
from detectors.mitm_ttl import HopCountDetector
from detectors.policy import Policy
from detectors.rules import Rule


def mitm_detectors(rules: dict[str, Rule], policy: Policy) -> list[Detector]:
    """The MITM detectors, configured from their rules and the policy."""
    return [MitmSessionDetector(rules), MitmPostureDetector(rules, policy), MitmResponseDetector(rules),
            HopCountDetector(rules), TlsPolicyDetector(rules, policy), ArpDetector(rules, policy)]
