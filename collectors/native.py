"""The optional native capture front end (the ``chargewatch-native`` Rust extension in native/).

It reads classic pcap files and plain pcapng files (one section, whole blocks, the usual block
types and options: what dumpcap and tcpdump write; see native/src/pcapng.rs), and parses,
counts and drops in Rust what the Python path would parse, count and drop (bare ACKs, data of
connections another process decodes); the rest
reaches :class:`~collectors.streams.PacketProcessor` as parsed segments or, for anything off its
fast path, as whole frames that the Python code handles as always. Python stays the reference:
``tests/test_native_decoder.py`` checks that both give identical records, counters and dead
letters. ``[collector] pcap_decoder`` picks one: ``auto`` (native when installed), ``native``
(fail when it is not), ``python``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chargewatch.errors import ConfigError

if TYPE_CHECKING:  # the extension's own stubs (native/chargewatch_native.pyi)
    from chargewatch_native import PcapSegments as NativeReader

DECODERS = ("auto", "native", "python")
#: Packets the native reader reads ahead and hands over at once.
BATCH = 4096
# Classic pcap (both byte orders, micro- and nanoseconds) and pcapng.
PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")


def available() -> bool:
    """Whether the native extension is installed (``make install`` builds it when cargo is there)."""
    try:
        import chargewatch_native  # noqa: F401
    except ImportError:
        return False
    return True


def open_native(path: Path, decoder: str) -> NativeReader | None:
    """A native reader for path, or None when the Python reader must read it (decoder
    ``python``; ``auto`` without the extension; a pcapng file that is not plain; a file the
    Python reader reports as unreadable)."""
    if decoder not in DECODERS:
        raise ConfigError(f"[collector] pcap_decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "python":
        return None
    try:
        from chargewatch_native import PcapSegments
    except ImportError as exc:
        if decoder == "native":
            raise ConfigError("[collector] pcap_decoder = \"native\" but the chargewatch-native extension is not "
                              "installed (`make install` builds it; it needs Rust's cargo)") from exc
        return None
    try:
        with path.open("rb") as handle:
            if handle.read(4) not in PCAP_MAGICS:
                return None
        reader = PcapSegments(str(path), str(path), BATCH)
    except OSError:
        return None  # the Python reader raises the CaptureError users know
    except ValueError:
        return None  # a pcapng file that is not plain: see native/src/pcapng.rs
    return reader
