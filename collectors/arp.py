"""ARP frames into IP↔MAC binding events (``ConnectionEvent`` of kind ``"arp"``).

ARP spoofing is how a relay usually gets between a charge point and its central system on a
shared network, so the capture collectors follow who claims which IPv4 address. Volume is
bounded by emitting only what detectors need: the first binding seen for an address, every
change of binding, and every gratuitous ARP (an announcement, sender IP = target IP). Repeated
ARPs that confirm a known binding are only counted (``ignored.arp_repeat``).
"""

from __future__ import annotations

import socket
from collections import OrderedDict

from chargewatch.model import ConnectionEvent, connection_id
from collectors.frames import DecodeContext
from collectors.packets import PacketError, network_layer
from collectors.stats import CollectorStats, DeadLetter

MAX_BINDINGS = 65536  # addresses remembered (the least recently confirmed is forgotten first)
OPS = {1: "request", 2: "reply"}
UNSPECIFIED = socket.inet_ntoa(bytes(4))  # sender address of an address probe


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class ArpTracker:
    """Keeps the IP→MAC table of one capture and emits its changes into the context's sink."""

    def __init__(self, ctx: DecodeContext, stats: CollectorStats) -> None:
        self.ctx, self.stats = ctx, stats
        self.bindings: OrderedDict[str, str] = OrderedDict()

    def frame(self, number: int, ts: float, linktype: int, data: bytes) -> None:
        """One link-layer frame whose ethertype is ARP."""
        if not self.ctx.primary:
            return  # share 0 of a parallel analysis reports what belongs to no charge point
        try:
            _, off = network_layer(linktype, data)
            fields = self._parse(data, off)
        except PacketError as err:
            self.stats.error(err.reason)
            self.ctx.sink.dead_letter(DeadLetter.of(ts, err.reason, "malformed ARP frame",
                                                    f"{self.ctx.source}#{number}", data))
            return
        if fields is None:
            self.stats.ignored["arp"] += 1  # not Ethernet/IPv4 ARP: nothing to bind
            return
        self._observe(number, ts, *fields)

    @staticmethod
    def _parse(data: bytes, off: int) -> tuple[int, str, str, str, str] | None:
        """(op, sender MAC, sender IP, target MAC, target IP); None for ARP not about Ethernet/IPv4."""
        if len(data) < off + 8:
            raise PacketError("truncated_arp")
        htype, ptype, hlen, plen = int.from_bytes(data[off:off + 2], "big"), \
            int.from_bytes(data[off + 2:off + 4], "big"), data[off + 4], data[off + 5]
        if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
            return None
        if len(data) < off + 28:
            raise PacketError("truncated_arp")
        op = int.from_bytes(data[off + 6:off + 8], "big")
        body = data[off + 8:off + 28]
        return (op, _mac(body[0:6]), socket.inet_ntoa(body[6:10]), _mac(body[10:16]),
                socket.inet_ntoa(body[16:20]))

    def _observe(self, number: int, ts: float, op: int, sender_mac: str, sender_ip: str, target_mac: str,
                 target_ip: str) -> None:
        if sender_ip == UNSPECIFIED:  # an address probe (RFC 5227) claims nothing yet
            self.stats.ignored["arp_probe"] += 1
            return
        gratuitous = sender_ip == target_ip
        previous = self.bindings.get(sender_ip)
        self.bindings[sender_ip] = sender_mac
        self.bindings.move_to_end(sender_ip)
        if len(self.bindings) > MAX_BINDINGS:
            self.bindings.popitem(last=False)
        if previous == sender_mac and not gratuitous:
            self.stats.ignored["arp_repeat"] += 1
            return
        self.stats.connection_events += 1
        link = {"op": OPS.get(op, str(op)), "sender_mac": sender_mac, "sender_ip": sender_ip,
                "target_mac": target_mac, "target_ip": target_ip, "gratuitous": gratuitous,
                "previous_mac": previous}
        self.ctx.sink.record(ConnectionEvent(
            ts=ts, kind="arp", connection_id=connection_id((sender_ip, 0), (target_ip, 0), ts),
            charge_point_id=None, client_ip=sender_ip, client_port=0, server_ip=target_ip, server_port=0,
            link=link, source=f"{self.ctx.source}#{number}"))
