"""Live capture: frames from a network interface through the same decoder as capture files.

Two threads with a bounded queue between them:

* the **sniffer** reads raw frames and their kernel timestamps from a Linux packet socket
  (``AF_PACKET``) whose BPF filter runs in the kernel (libpcap compiles it, through scapy), and
  only enqueues them. When the queue is full it drops the frame and counts it (``queue_full``);
  frames the kernel dropped because the socket buffer overflowed are read from
  ``PACKET_STATISTICS`` and counted too (``kernel``). Nothing is lost silently.
* the **decoder** takes the frames in order, writes them to the optional evidence pcap
  (:mod:`collectors.pcapwriter`), and hands them to :class:`collectors.streams.PacketProcessor`,
  the very code path of ``collect pcap`` and ``analyze``, whose records go to the output (for
  Kafka: the durable spool of :mod:`chargewatch.spool_output`). It flushes the output
  periodically and once more at the end.

Frames are never dissected with scapy: that costs ~100 µs a packet, the packet socket read
~4 µs. On a loopback interface the kernel shows a packet socket every packet twice, once going
out and once coming in; like libpcap, the outgoing copy is skipped there. On other interfaces
outgoing packets (sent by this host) are real traffic and are kept. Needs root or CAP_NET_RAW.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chargewatch.errors import CaptureError, ChargewatchError, ConfigError
from collectors.frames import DecodeContext
from collectors.packets import LINKTYPE_ETHERNET, LINKTYPE_RAW
from collectors.pcapwriter import RotatingPcapWriter
from collectors.streams import PacketProcessor

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_STATISTICS = 263, 6  # <linux/if_packet.h>; reading the statistics resets them
SO_RCVBUFFORCE, SO_TIMESTAMPNS, SO_ATTACH_FILTER = 33, 35, 26  # <asm-generic/socket.h>
PACKET_OUTGOING = 4
ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_NONE = 1, 772, 0xFFFE  # <linux/if_arp.h>
# Interface hardware type -> pcap link type of its frames (Linux loopback uses Ethernet framing).
LINKTYPES = {ARPHRD_ETHER: LINKTYPE_ETHERNET, ARPHRD_LOOPBACK: LINKTYPE_ETHERNET, ARPHRD_NONE: LINKTYPE_RAW}
RECV_BYTES = 262_144  # frames up to this size are read whole (loopback TSO frames reach 65549 bytes)
# Classic BPF: "ret #k" (accept k bytes of the frame, 0: reject), "ld [k]", "jeq #k", and the
# ancillary load of the packet type (SKF_AD_OFF + SKF_AD_PKTTYPE), <linux/filter.h>.
BPF_RET_K, BPF_LD_W_ABS, BPF_JEQ_K, SKF_AD_PKTTYPE = 0x06, 0x20, 0x15, -0x1000 + 4
IDLE_WAIT_S = 0.2  # how long a thread waits for input before it looks at the stop flag again
STATS_EVERY = 4096  # busy sniffer: read the kernel drop counters every this many frames
_TIMESPEC = struct.Struct("=qq")

Item = tuple[float, bytes]


@dataclass(frozen=True)
class LiveOptions:
    """What to capture and how much to buffer."""

    iface: str
    bpf: str = ""  # tcpdump filter syntax; empty: every frame
    queue_packets: int = 100_000
    queue_bytes: int = 256 << 20
    socket_buffer_bytes: int = 32 << 20
    flush_interval_s: float = 1.0
    max_packets: int = 0  # stop after this many frames (0: no limit)


class PacketSocket:
    """A non-blocking packet socket on one interface with a kernel BPF filter (root/CAP_NET_RAW)."""

    def __init__(self, iface: str, bpf: str, buffer_bytes: int) -> None:
        try:
            # Protocol 0 receives nothing: no unfiltered frame can queue before the filter is attached.
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise CaptureError(f"live capture on {iface} needs root or CAP_NET_RAW: {exc}") from exc
        try:
            self.sock.bind((iface, 0))
            hatype = self.sock.getsockname()[3]
            if hatype not in LINKTYPES:
                raise CaptureError(f"live capture on {iface}: link type (ARPHRD {hatype}) not supported; "
                                   "supported: Ethernet, loopback, raw IP (tun)")
            self.linktype, self.loopback = LINKTYPES[hatype], hatype == ARPHRD_LOOPBACK
            if bpf or self.loopback:
                self._attach(bpf)
            self._buffer(buffer_bytes)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.bind((iface, ETH_P_ALL))
        except OSError as exc:
            self.sock.close()
            raise CaptureError(f"cannot capture on interface {iface!r}: {exc}") from exc
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.kernel_stats()  # start counting from now

    def _attach(self, bpf: str) -> None:
        """Attach the kernel filter: on loopback, drop the outgoing copies first; then the user's filter."""
        import ctypes

        from scapy.libs.structures import bpf_insn, sock_fprog

        program = _compile(bpf, self.linktype) if bpf else [(BPF_RET_K, 0, 0, RECV_BYTES)]
        if self.loopback:  # ld pkttype; jeq OUTGOING ? ret 0 : (the filter). Jumps are relative: still valid.
            program = [(BPF_LD_W_ABS, 0, 0, SKF_AD_PKTTYPE), (BPF_JEQ_K, 0, 1, PACKET_OUTGOING),
                       (BPF_RET_K, 0, 0, 0), *program]
        insns = (bpf_insn * len(program))(*(bpf_insn(*insn) for insn in program))
        fprog = sock_fprog(len(program), ctypes.cast(insns, ctypes.POINTER(bpf_insn)))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))

    def _buffer(self, size: int) -> None:
        try:  # root may exceed net.core.rmem_max; bursts are absorbed here first
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def kernel_stats(self) -> tuple[int, int]:
        """(frames received, frames dropped) by the kernel since the previous call."""
        received, dropped = struct.unpack("=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return int(received), int(dropped)

    def close(self) -> None:
        self.sock.close()


class LiveCollector:
    """Sniffer thread -> bounded queue -> decoding thread, with counters for ``chargewatch status``.

    ``flush`` pushes the decoded output on (the embedded output's files; records for Kafka are
    durable once spooled); it is called from the decoding thread every ``flush_interval_s`` and
    at the end, with the evidence pcap's flush. :meth:`stop` only sets a flag
    (safe from a signal handler); :meth:`close` joins the threads, flushes everything and
    raises what a thread failed with.
    """

    def __init__(self, options: LiveOptions, ctx: DecodeContext, flush: Callable[[], None],
                 pcap: Callable[[int], RotatingPcapWriter] | None = None) -> None:
        if options.queue_packets < 1 or options.queue_bytes < RECV_BYTES:
            raise ConfigError(f"live capture queue must hold at least 1 packet and {RECV_BYTES} bytes "
                              f"(got {options.queue_packets} packets, {options.queue_bytes} bytes)")
        self.options, self.ctx, self._flush = options, ctx, flush
        self.source = PacketSocket(options.iface, options.bpf, options.socket_buffer_bytes)
        self.writer = pcap(self.source.linktype) if pcap is not None else None
        self.processor = PacketProcessor(ctx)
        self.stats = ctx.stats
        self._queue: collections.deque[Item] = collections.deque()
        self._ready, self._stop, self._sniffed = threading.Event(), threading.Event(), threading.Event()
        self.finished = threading.Event()  # both threads are done (stopped, limit reached or failed)
        self.failure: BaseException | None = None
        # Each counter is written by one thread only (reads from others are consistent under the GIL).
        self.frames = self.bytes = self.queue_full = self.kernel_drops = self.duplicates = self.truncated = 0
        self.enqueued_bytes = self.dequeued_bytes = self.queue_depth_max = self.flushes = 0
        self._threads = [threading.Thread(target=self._guard, args=(self._sniff, self._sniffed),
                                          name=f"live-sniffer-{options.iface}", daemon=True),
                         threading.Thread(target=self._guard, args=(self._decode, self.finished),
                                          name=f"live-decoder-{options.iface}", daemon=True)]

    def start(self) -> LiveCollector:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask both threads to stop (the decoder first drains the queue); signal-handler safe."""
        self._stop.set()

    def close(self) -> None:
        """Stop, wait for both threads (queue drained, connections finished, output flushed), release
        the socket and the evidence pcap; re-raises a thread's failure."""
        self.stop()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        self.source.close()
        if self.writer is not None:
            self.writer.close()
        failure = self.failure
        if isinstance(failure, ChargewatchError):
            raise failure
        if failure is not None:
            raise CaptureError(f"live capture on {self.options.iface} failed: "
                               f"{type(failure).__name__}: {failure}") from failure

    def _guard(self, body: Callable[[], None], done: threading.Event) -> None:
        try:
            body()
        except BaseException as exc:  # reported by close(); the other thread stops too
            log.error("live capture on %s: %s failed: %s", self.options.iface, body.__name__, exc)
            self.failure = self.failure or exc
            self._stop.set()
        finally:
            done.set()
            self._ready.set()

    # --- sniffer thread -------------------------------------------------------------------

    def _sniff(self) -> None:
        """Read frames and enqueue them until stopped; when stopped, take what the socket already holds."""
        recvmsg, queue, ready, stop = self.source.sock.recvmsg, self._queue, self._ready, self._stop
        loopback, limit = self.source.loopback, self.options.max_packets
        max_items, max_bytes, cmsg = self.options.queue_packets, self.options.queue_bytes, socket.CMSG_SPACE(16)
        while True:
            try:
                data, ancillary, flags, address = recvmsg(RECV_BYTES, cmsg)
            except BlockingIOError:
                self._count_kernel()
                if stop.is_set():
                    return
                select.select([self.source.sock], [], [], IDLE_WAIT_S)
                continue
            if loopback and address[2] == PACKET_OUTGOING:
                self.duplicates += 1  # the same packet comes in again on loopback
                continue
            ts = _timestamp(ancillary)
            if flags & socket.MSG_TRUNC:
                self.truncated += 1  # decoded as far as it goes: the decoder counts what it lacks
            self.frames += 1
            self.bytes += len(data)
            if len(queue) >= max_items or self.enqueued_bytes - self.dequeued_bytes + len(data) > max_bytes:
                self.queue_full += 1
            else:
                queue.append((ts, data))
                self.enqueued_bytes += len(data)
                self.queue_depth_max = max(self.queue_depth_max, len(queue))
                if not ready.is_set():
                    ready.set()
            if not self.frames % STATS_EVERY:
                self._count_kernel()
                if stop.is_set():
                    return  # stopping under sustained traffic: at most STATS_EVERY frames after the request
            if self.frames == limit:
                self._count_kernel()
                stop.set()
                return

    def _count_kernel(self) -> None:
        self.kernel_drops += self.source.kernel_stats()[1]

    # --- decoding thread ------------------------------------------------------------------

    def _decode(self) -> None:
        """Decode queued frames in order until the sniffer is done and the queue is empty."""
        queue, ready, packet, linktype = self._queue, self._ready, self.processor.packet, self.source.linktype
        writer, interval = self.writer, self.options.flush_interval_s
        number, last_ts = 0, time.time()
        next_flush = time.monotonic() + interval
        while True:
            try:
                ts, data = queue.popleft()
            except IndexError:
                if self._sniffed.is_set() and not queue:
                    break
                ready.clear()
                if not queue:  # re-checked after clear(): an append in between has set ready again
                    ready.wait(IDLE_WAIT_S)
                if time.monotonic() >= next_flush:
                    self._flush_all()
                    next_flush = time.monotonic() + interval
                continue
            self.dequeued_bytes += len(data)
            number += 1
            if writer is not None:
                writer.write(ts, data)
            packet(number, ts, linktype, data)
            last_ts = ts
            if not number % 1024 and time.monotonic() >= next_flush:
                self._flush_all()
                next_flush = time.monotonic() + interval
        self.processor.finish(last_ts)
        self._flush_all()

    def _flush_all(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.flush()
        self.flushes += 1

    # --- counters -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters in the shape :class:`chargewatch.status.StatusWriter` writes."""
        stats = self.stats
        errors, ignored = dict(stats.errors), dict(stats.ignored)
        details: dict[str, Any] = {
            "iface": self.options.iface, "bpf": self.options.bpf, "linktype": self.source.linktype,
            "drops": {"queue_full": self.queue_full, "kernel": self.kernel_drops},
            "queue_depth": len(self._queue), "queue_depth_max": self.queue_depth_max,
            "queue_packets": self.options.queue_packets, "decoded_frames": stats.packets,
            "loopback_duplicates_skipped": self.duplicates, "truncated_frames": self.truncated,
            "errors": errors, "ignored": ignored,
            "tcp_connections": stats.tcp_connections, "websocket_connections": stats.websocket_connections,
            "connection_events": stats.connection_events, "flushes": self.flushes,
        }
        if self.writer is not None:
            details["pcap"] = {"files_written": self.writer.files_written, "files_deleted": self.writer.files_deleted,
                               "packets": self.writer.packets, "current": str(self.writer.path or "")}
        return {"frames": self.frames, "messages": stats.messages, "bytes": self.bytes,
                "errors": sum(errors.values()), "drops": self.queue_full + self.kernel_drops, "details": details}


def _compile(bpf: str, linktype: int) -> list[tuple[int, int, int, int]]:
    """The filter as BPF instructions (code, jt, jf, k), compiled by libpcap through scapy."""
    from scapy.arch.common import compile_filter, free_filter
    from scapy.error import Scapy_Exception

    try:
        program = compile_filter(bpf, linktype=linktype)
    except (ImportError, OSError, Scapy_Exception) as exc:
        raise ConfigError(f"BPF filter {bpf!r}: {exc}") from exc
    try:
        insns = [program.bf_insns[i] for i in range(program.bf_len)]
        # scapy compiles with snaplen 65535 and "accept" returns it, which would cut loopback
        # frames (up to 65549 bytes with TSO): accept whole frames instead.
        return [(i.code, i.jt, i.jf, RECV_BYTES if i.code == BPF_RET_K and i.k else i.k) for i in insns]
    finally:
        free_filter(program)


def _timestamp(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time (SO_TIMESTAMPNS), or now when the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return float(seconds + nanos * 1e-9)
    return time.time()
