"""Live capture of one loopback TCP port with scapy, complete or not at all.

:class:`LiveCapture` sniffs a TCP port on ``lo`` while peers talk; UDP marker datagrams sent
to itself tell when the sniffer is really running and when it has seen everything. A capture
that dropped packets or lacks any byte of a TCP flow (:func:`check_complete`) raises
:class:`HarnessError` instead of silently producing a pcap with holes. Needs root (CAP_NET_RAW).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scapy.arch.linux import L2Socket
from scapy.error import Scapy_Exception
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet
from scapy.sendrecv import AsyncSniffer
from scapy.utils import wrpcap, wrpcapng

SOL_PACKET, PACKET_STATISTICS = 263, 6  # <linux/if_packet.h>: drop counters of a packet socket
MARKER_PREFIX = "chargewatch"


class HarnessError(RuntimeError):
    """The peers or the live capture did not behave (names the step that failed)."""


class LiveCapture:
    """Sniffer on ``lo`` for one TCP port, synchronised with UDP marker datagrams.

    The packet socket is opened (BPF attached, bound, flushed) before :meth:`start` returns, and
    :meth:`start` only returns once the sniffer thread has seen a start marker. :meth:`stop`
    sends an end marker, waits until it arrives and the TCP flow has been quiet for ``settle``
    seconds, then checks that no packet was dropped and that every TCP flow is complete.
    """

    def __init__(self, port: int, settle: float = 0.2) -> None:
        self._settle = settle
        self._marker_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._marker_rx.bind(("127.0.0.1", 0))
        self._marker_port = self._marker_rx.getsockname()[1]
        self._seen: set[bytes] = set()
        self._last_tcp = time.monotonic()
        self._cond = threading.Condition()
        bpf = f"tcp port {port} or (udp and dst port {self._marker_port})"
        try:
            self._sock = L2Socket(iface="lo", filter=bpf, promisc=False)
        except PermissionError as exc:
            self._marker_rx.close()
            raise PermissionError(
                "recording OCPP peers needs root (CAP_NET_RAW) to sniff on lo; "
                "run as root or grant the capability to this python"
            ) from exc
        except Scapy_Exception as exc:  # BPF compilation needs libpcap (libpcap0.8)
            self._marker_rx.close()
            raise HarnessError(f"cannot attach BPF filter {bpf!r} on lo: {exc}") from exc
        self._sniffer = AsyncSniffer(opened_socket=self._sock, prn=self._on_packet, store=True)

    def _on_packet(self, pkt: Packet) -> None:
        with self._cond:
            if UDP in pkt and pkt[UDP].dport == self._marker_port:
                self._seen.add(bytes(pkt[UDP].payload))
            else:
                self._last_tcp = time.monotonic()
            self._cond.notify_all()

    def _sync(self, tag: str, timeout: float = 5.0) -> None:
        """Send a marker until the sniffer thread reports it (everything before it is in)."""
        nonce = f"{MARKER_PREFIX}-{tag}-{uuid.uuid4()}".encode()
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            while time.monotonic() < deadline:
                tx.sendto(nonce, ("127.0.0.1", self._marker_port))
                with self._cond:
                    if self._cond.wait_for(lambda: nonce in self._seen, timeout=0.05):
                        return
        raise HarnessError(f"live capture on lo never saw its {tag} marker within {timeout}s")

    def _drops(self) -> int:
        raw = self._sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return int(struct.unpack("II", raw)[1])  # reading resets the kernel counters

    def start(self) -> None:
        """Start sniffing; returns once packets are really being captured."""
        self._sniffer.start()
        self._sync("start")
        self._drops()

    def stop(self) -> list[Packet]:
        """Wait for every packet, stop, and return the complete TCP packets in arrival order."""
        try:
            self._sync("end")
            with self._cond:
                while (quiet := time.monotonic() - self._last_tcp) < self._settle:
                    self._cond.wait(self._settle - quiet)
            drops = self._drops()
        finally:
            packets = self.close()
        if drops:
            raise HarnessError(f"the kernel dropped {drops} packets on lo during the capture")
        tcp = [p for p in packets if TCP in p]
        check_complete(tcp)
        return tcp

    def close(self) -> list[Packet]:
        """Stop the sniffer and release its sockets (safe to call twice)."""
        packets: list[Packet] = []
        if self._sniffer.running:
            packets = list(self._sniffer.stop() or [])
        self._sock.close()
        self._marker_rx.close()
        return packets


def check_complete(packets: Sequence[Packet]) -> None:
    """Raise unless every TCP direction has its SYN, its FIN and no gap in between."""
    flows: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    for pkt in packets:
        ip, tcp = pkt[IP], pkt[TCP]
        flow = flows.setdefault((ip.src, tcp.sport, ip.dst, tcp.dport), {"ranges": []})
        size = len(tcp.payload)
        if tcp.flags.S:
            flow["isn"] = tcp.seq
        if tcp.flags.F:
            flow["fin"] = tcp.seq + size
        if size:
            flow["ranges"].append((tcp.seq, size))
    for key, flow in flows.items():
        if "isn" not in flow or "fin" not in flow:
            raise HarnessError(f"capture of TCP flow {key} lacks its SYN or FIN")
        expected = (flow["fin"] - flow["isn"] - 1) % 2**32
        covered = 0
        for start, size in sorted(((s - flow["isn"] - 1) % 2**32, n) for s, n in flow["ranges"]):
            if start > covered:
                raise HarnessError(f"capture of TCP flow {key} misses bytes {covered}..{start}")
            covered = max(covered, start + size)
        if covered != expected:
            raise HarnessError(f"capture of TCP flow {key} has {covered} of {expected} bytes")


def write_capture(path: Path, packets: Sequence[Packet], *, pcapng: bool = False) -> None:
    """Write captured packets as pcap (or pcapng), creating the parent directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (wrpcapng if pcapng else wrpcap)(str(path), packets)


__all__ = ["HarnessError", "LiveCapture", "check_complete", "write_capture"]
