"""MITM indicators from ARP (``arp`` connection events, keyed by the sender's IP address).

* CW-MITM-013: a watched address (a central system's IP from the policy's ``csms_endpoints``,
  or one listed in the rule's ``watched_ips``) is claimed by a MAC address other than the one it
  was bound to: the classic ARP-spoofing step that puts a relay between station and CSMS.
* CW-MITM-014: a burst of gratuitous ARPs for one address (spoofing tools re-announce the
  forged binding every second or two to keep caches poisoned; a host announces itself a few
  times at boot).

The collector emits an ``arp`` event for the first binding of each address, for every change,
and for every gratuitous ARP (see README, message model), so the state here is one MAC and a
short list of times per address.
"""

from __future__ import annotations

from collections import deque

from chargewatch.model import ConnectionEvent, OcppMessage
from detectors.base import Finding, State
from detectors.context import ChargePointContext
from detectors.policy import Policy
from detectors.rules import Rule

ARP_SPOOF, GARP_BURST = "CW-MITM-013", "CW-MITM-014"


class ArpDetector:
    """CW-MITM-013 and CW-MITM-014."""

    name: str = "mitm_link"
    rule_ids: tuple[str, ...] = (ARP_SPOOF, GARP_BURST)
    actions: frozenset[str] | None = frozenset()  # connection events only

    def __init__(self, rules: dict[str, Rule], policy: Policy) -> None:
        watched = {str(ip) for ip in rules[ARP_SPOOF].param("watched_ips")}
        self.watched = frozenset(watched | {e.ip for e in policy.csms_endpoints if e.ip})
        burst = rules[GARP_BURST]
        self.window_s = float(burst.param("window_s"))
        self.min_count = int(burst.param("min_count"))

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        return []

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        link = event.link
        if event.kind != "arp" or not link:
            return []
        found = self._binding(event, link, state)
        if link.get("gratuitous"):
            found += self._burst(event, link, state)
        return found

    def _binding(self, event: ConnectionEvent, link: dict[str, object], state: State) -> list[Finding]:
        mac, ip = str(link.get("sender_mac")), str(link.get("sender_ip"))
        known = state.get("mac") or link.get("previous_mac")
        since = state.get("since", event.ts)
        if known == mac:
            return []
        state["mac"], state["since"] = mac, event.ts
        if known is None or ip not in self.watched:
            return []
        return [Finding(ARP_SPOOF,
                        f"watched address {ip} is now claimed by {mac}, bound to {known} "
                        f"since {event.ts - since:.0f}s before (ARP {link.get('op')})",
                        {"ip": ip, "mac": mac, "previous_mac": known, "previous_since": since,
                         "op": link.get("op"), "gratuitous": bool(link.get("gratuitous")),
                         "target_ip": link.get("target_ip"), "target_mac": link.get("target_mac")})]

    def _burst(self, event: ConnectionEvent, link: dict[str, object], state: State) -> list[Finding]:
        times: deque[float] = state.setdefault("garp", deque(maxlen=self.min_count))
        times.append(event.ts)
        if len(times) < self.min_count or event.ts - times[0] > self.window_s:
            return []
        span = event.ts - times[0]
        times.clear()  # one finding per min_count announcements; the runner collapses the storm
        return [Finding(GARP_BURST,
                        f"{self.min_count} gratuitous ARPs for {link.get('sender_ip')} within {span:.1f}s "
                        f"(latest from {link.get('sender_mac')})",
                        {"ip": link.get("sender_ip"), "mac": link.get("sender_mac"), "count": self.min_count,
                         "span_s": round(span, 3), "window_s": self.window_s})]
