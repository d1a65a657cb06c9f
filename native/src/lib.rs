//! Chargewatch's native capture front end.
//!
//! `PcapSegments` reads a classic pcap file or a plain pcapng file (`pcapng.rs`) and does, for nearly every packet, the work that
//! dominates a capture's decoding in Python: reading the record, parsing Ethernet + IPv4 + TCP,
//! and dropping what the Python decoder would drop anyway (bare ACKs, and data of connections
//! another process of a parallel analysis decodes). What is left reaches Python in batches,
//! in capture order, as tuples:
//!
//! * `(number, ts, key, seq, flags, payload, ttl)`: a TCP segment parsed here, exactly as
//!   `collectors.packets.parse_segment`'s fast path parses it (untagged Ethernet, IPv4 without
//!   options, unfragmented TCP); `key` is the same flow key (addresses and ports, 12 bytes);
//! * `(number, ts, linktype, frame)`: anything else (VLAN tags, IPv6, other link types, ARP,
//!   malformed headers...), left whole for the Python reference path, which parses, counts and
//!   dead-letters it.
//!
//! Python stays the reference: a packet is dropped here only when the Python path would drop
//! it too, and `tests/test_native_decoder.py` checks that both paths give identical records,
//! counters and dead letters on every test capture and on mutated ones.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::sync::LazyLock;

use memchr::memmem;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

mod pcapng;
mod websocket;

/// A record claiming more than this many bytes is corrupt (as `collectors.pcapfile.MAX_RECORD`).
const MAX_RECORD: u64 = 1 << 20;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const CONTROL: u8 = FIN | SYN | RST;
const LINKTYPE_ETHERNET: u32 = 1;
/// Bytes read from the file per system call.
const READ_BUFFER: usize = 1 << 20;

fn be16(b: &[u8], at: usize) -> u32 {
    u32::from(b[at]) << 8 | u32::from(b[at + 1])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A parsed segment: flow key, sequence number, flags, payload, TTL (borrowed from the frame).
struct Segment<'a> {
    key: &'a [u8],
    seq: u32,
    flags: u8,
    payload: &'a [u8],
    ttl: u8,
}

/// The fast path of `parse_segment`, or None for every frame that path does not take (or on
/// which it raises): those go to Python whole.
fn fast_segment(linktype: u32, f: &[u8]) -> Option<Segment<'_>> {
    if linktype != LINKTYPE_ETHERNET || f.len() < 54 {
        return None;
    }
    let etype = be16(f, 12);
    let (ver_ihl, total, frag, ttl, proto) = (f[14], be16(f, 16) as usize, be16(f, 20), f[22], f[23]);
    let plain = etype == 0x0800 && ver_ihl == 0x45 && proto == 6 && frag & 0x3FFF == 0;
    if !plain || total < 40 || total > f.len() - 14 {
        return None; // total < 40 is an error Python reports; beyond the frame: Python's general path
    }
    let header_len = usize::from(f[46] >> 4) * 4;
    if header_len < 20 || header_len > total - 20 {
        return None; // bad_tcp_header, reported by Python
    }
    Some(Segment {
        key: &f[26..38],
        seq: be32(f, 38),
        flags: f[47],
        payload: &f[34 + header_len..14 + total],
        ttl,
    })
}

/// What kind of file is read, and what its header said.
enum Format {
    Classic {
        big_endian: bool,
        unit: f64,
        linktype: u32,
    },
    PcapNg {
        big_endian: bool,
        interfaces: Vec<pcapng::Interface>,
    },
}

/// Exactly Python's `n / d` for integers (one correctly rounded division): in floating point when
/// both are exact there, else by Python itself.
fn true_divide(py: Python<'_>, n: u64, d: u64) -> PyResult<f64> {
    const EXACT: u64 = 1 << 53;
    if n <= EXACT && d <= EXACT {
        return Ok(n as f64 / d as f64);
    }
    n.into_pyobject(py)?.div(d)?.extract()
}

/// Reads one classic pcap or plain pcapng file; iterating gives lists of tuples (see the module doc).
#[pyclass(module = "chargewatch_native")]
pub struct PcapSegments {
    file: BufReader<File>,
    /// The path as Python prints it, for problem details.
    display: String,
    format: Format,
    size: u64,
    offset: u64,
    number: u64,
    packets: u64,
    bytes: u64,
    last_ts: f64,
    ignored_keys: HashSet<[u8; 12]>,
    problem: Option<(String, String)>,
    batch: usize,
    frame: Vec<u8>,
    done: bool,
}

impl PcapSegments {
    fn fail(&mut self, kind: &str, detail: String) {
        self.problem = Some((kind.to_string(), detail));
        self.done = true;
    }

    /// Reads the next packet into self.frame; returns its time and link type, or None at the end
    /// or on a problem.
    fn next_record(&mut self, py: Python<'_>) -> PyResult<Option<(f64, u32)>> {
        if self.done || self.offset >= self.size {
            self.done = true;
            return Ok(None);
        }
        match self.format {
            Format::Classic {
                big_endian,
                unit,
                linktype,
            } => Ok(self.next_classic(big_endian, unit).map(|ts| (ts, linktype))),
            Format::PcapNg { big_endian, .. } => self.next_pcapng(py, big_endian),
        }
    }

    fn next_pcapng(&mut self, py: Python<'_>, big: bool) -> PyResult<Option<(f64, u32)>> {
        while self.offset < self.size {
            let start = self.offset;
            let Some((kind, length, body)) = pcapng::block(&mut self.file, big, self.size - start) else {
                // Checked plain when opened: only a file changed since can get here.
                let detail = format!(
                    "{}: pcapng block after packet {} unreadable at byte {start} of {}",
                    self.display, self.number, self.size
                );
                self.fail("truncated_record", detail);
                return Ok(None);
            };
            self.offset += length;
            let Format::PcapNg { ref mut interfaces, .. } = self.format else {
                unreachable!()
            };
            if kind == pcapng::IDB {
                interfaces.extend(pcapng::interface(&body, big));
            } else if kind == pcapng::EPB {
                if let Some((intid, units, data)) = pcapng::packet(&body, big, interfaces.len(), MAX_RECORD) {
                    let iface = interfaces[intid];
                    self.frame.clear();
                    self.frame.extend_from_slice(data);
                    self.number += 1;
                    self.last_ts = true_divide(py, units, iface.tsresol)?;
                    return Ok(Some((self.last_ts, iface.linktype)));
                }
            }
        }
        self.done = true;
        Ok(None)
    }

    /// The next classic pcap record into self.frame; its time, or None at the end or on a problem.
    fn next_classic(&mut self, big_endian: bool, unit: f64) -> Option<f64> {
        if self.done || self.offset >= self.size {
            self.done = true;
            return None;
        }
        let offset = self.offset;
        if self.size - offset < 16 {
            self.fail(
                "truncated_record",
                format!("{}: record header cut at byte {offset}", self.display),
            );
            return None;
        }
        let mut header = [0u8; 16];
        if self.file.read_exact(&mut header).is_err() {
            self.fail(
                "truncated_record",
                format!("{}: record header cut at byte {offset}", self.display),
            );
            return None;
        }
        let (sec, frac, caplen) = (
            pcapng::u32_at(&header, 0, big_endian),
            pcapng::u32_at(&header, 4, big_endian),
            u64::from(pcapng::u32_at(&header, 8, big_endian)),
        );
        if caplen > MAX_RECORD {
            self.fail(
                "corrupt_record",
                format!("{}: record at byte {offset} claims {caplen} bytes", self.display),
            );
            return None;
        }
        let start = offset + 16;
        if start + caplen > self.size {
            let detail = format!(
                "{}: record {} at byte {offset} cut after {} of {caplen} bytes",
                self.display,
                self.number + 1,
                self.size - start
            );
            self.fail("truncated_record", detail);
            return None;
        }
        self.frame.resize(caplen as usize, 0);
        if self.file.read_exact(&mut self.frame).is_err() {
            // The file shrank while it was read: the same problem as a record cut short.
            let detail = format!(
                "{}: record {} at byte {offset} cut while reading",
                self.display,
                self.number + 1
            );
            self.fail("truncated_record", detail);
            return None;
        }
        self.number += 1;
        self.offset = start + caplen;
        // The same operations, in the same order, as Python's `sec + frac * unit`.
        self.last_ts = f64::from(sec) + f64::from(frac) * unit;
        Some(self.last_ts)
    }
}

#[pymethods]
impl PcapSegments {
    /// Opens path (a classic pcap file); display is the path as problem details name it.
    #[new]
    #[pyo3(signature = (path, display, batch = 4096))]
    fn new(path: &str, display: &str, batch: usize) -> PyResult<Self> {
        let handle = File::open(path).map_err(|e| PyOSError::new_err(format!("{display}: cannot open: {e}")))?;
        let size = handle
            .metadata()
            .map_err(|e| PyOSError::new_err(format!("{display}: {e}")))?
            .len();
        let mut file = BufReader::with_capacity(READ_BUFFER, handle);
        let mut magic = [0u8; 4];
        file.read_exact(&mut magic)
            .map_err(|_| PyValueError::new_err("not a pcap file"))?;
        let classic = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => Some((false, 1e-6)),
            [0xa1, 0xb2, 0xc3, 0xd4] => Some((true, 1e-6)),
            [0x4d, 0x3c, 0xb2, 0xa1] => Some((false, 1e-9)),
            [0xa1, 0xb2, 0x3c, 0x4d] => Some((true, 1e-9)),
            [0x0a, 0x0d, 0x0d, 0x0a] => None,
            _ => return Err(PyValueError::new_err("not a pcap file")),
        };
        let (format, offset) = match classic {
            Some((big_endian, unit)) => (
                Format::Classic {
                    big_endian,
                    unit,
                    linktype: 0,
                },
                24,
            ),
            None => {
                // pcapng: only a plain file (see pcapng.rs); the caller reads others in Python.
                if !pcapng::is_plain(path, size, MAX_RECORD) {
                    return Err(PyValueError::new_err("not a plain pcapng file"));
                }
                let handle = File::open(path).map_err(|e| PyOSError::new_err(format!("{display}: {e}")))?;
                file = BufReader::with_capacity(READ_BUFFER, handle);
                let (big_endian, length) =
                    pcapng::section(&mut file, size).ok_or_else(|| PyValueError::new_err("not a plain pcapng file"))?;
                (
                    Format::PcapNg {
                        big_endian,
                        interfaces: Vec::new(),
                    },
                    length,
                )
            }
        };
        let mut reader = PcapSegments {
            file,
            display: display.to_string(),
            format,
            size,
            offset,
            number: 0,
            packets: 0,
            bytes: 0,
            last_ts: 0.0,
            ignored_keys: HashSet::new(),
            problem: None,
            batch: batch.max(1),
            frame: Vec::with_capacity(65536),
            done: false,
        };
        if let Format::Classic { big_endian, unit, .. } = reader.format {
            let available = size.saturating_sub(4).min(20) as usize;
            let mut header = [0u8; 20];
            if available < 20 || reader.file.read_exact(&mut header).is_err() {
                reader.fail(
                    "truncated_file_header",
                    format!("{display}: file header cut at byte {}", 4 + available),
                );
                return Ok(reader);
            }
            let linktype = pcapng::u32_at(&header, 16, big_endian) & 0x0FFF_FFFF;
            reader.format = Format::Classic {
                big_endian,
                unit,
                linktype,
            };
        }
        Ok(reader)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next batch of at most `batch` tuples, in capture order; None (StopIteration) at the end.
    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let out = PyList::empty(py);
        let mut taken = 0;
        while taken < self.batch {
            let Some((ts, linktype)) = self.next_record(py)? else {
                break;
            };
            let number = self.number;
            let frame_len = self.frame.len() as u64;
            match fast_segment(linktype, &self.frame) {
                Some(seg) => {
                    if seg.flags & CONTROL != 0 {
                        // The connection may end or be replaced: stop dropping its data here until
                        // Python says again that it is foreign.
                        let key: [u8; 12] = seg.key.try_into().expect("12-byte key");
                        self.ignored_keys.remove(&key);
                        self.ignored_keys.remove(&reverse_key(&key));
                    } else if seg.payload.is_empty()
                        || self
                            .ignored_keys
                            .contains::<[u8; 12]>(&seg.key.try_into().expect("12-byte key"))
                    {
                        // A bare ACK, or data of a connection another process decodes: Python
                        // would count it and drop it.
                        self.packets += 1;
                        self.bytes += frame_len;
                        continue;
                    }
                    self.packets += 1;
                    self.bytes += frame_len;
                    let item = (
                        number,
                        ts,
                        PyBytes::new(py, seg.key),
                        seg.seq,
                        seg.flags,
                        PyBytes::new(py, seg.payload),
                        seg.ttl,
                    );
                    out.append(item)?;
                }
                None => out.append((number, ts, linktype, PyBytes::new(py, &self.frame)))?,
            }
            taken += 1;
        }
        if taken == 0 && self.done {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// From now on, drop data segments (no SYN, FIN or RST) of this flow key and of its reverse
    /// until a control segment of either is read. Keys other than 12 bytes (IPv6) are ignored.
    fn ignore(&mut self, key: &[u8]) {
        if let Ok(key) = <[u8; 12]>::try_from(key) {
            self.ignored_keys.insert(reverse_key(&key));
            self.ignored_keys.insert(key);
        }
    }

    /// Stop dropping this flow key's (and its reverse's) data.
    fn unignore(&mut self, key: &[u8]) {
        if let Ok(key) = <[u8; 12]>::try_from(key) {
            self.ignored_keys.remove(&reverse_key(&key));
            self.ignored_keys.remove(&key);
        }
    }

    /// Bytes of the file consumed so far.
    #[getter]
    fn position(&self) -> u64 {
        self.offset
    }

    /// File size when opened.
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    /// Packets handled here (segments handed on and packets dropped), not the raw frames.
    #[getter]
    fn packets(&self) -> u64 {
        self.packets
    }

    /// Time of the last record read (0.0 before the first).
    #[getter]
    fn last_ts(&self) -> f64 {
        self.last_ts
    }

    /// Frame bytes of those packets.
    #[getter]
    fn frame_bytes(&self) -> u64 {
        self.bytes
    }

    /// (kind, detail) when reading stopped before the end of the file, else None.
    #[getter]
    fn problem(&self) -> Option<(String, String)> {
        self.problem.clone()
    }
}

/// The flow key of the opposite direction: addresses and ports swapped.
fn reverse_key(key: &[u8; 12]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..4].copy_from_slice(&key[4..8]);
    out[4..8].copy_from_slice(&key[0..4]);
    out[8..10].copy_from_slice(&key[10..12]);
    out[10..12].copy_from_slice(&key[8..10]);
    out
}

/// Lower-cased byte strings without which no sensitive key can occur in a frame
/// (`chargewatch.redaction.RAW_MARKERS`; `tests/test_native_decoder.py` checks they agree).
const SECRET_MARKERS: [&[u8]; 6] = [
    b"idtag",
    b"idtoken",
    b"customeridentifier",
    b"password",
    b"simpin",
    b"authorizationkey",
];

static SECRET_FINDERS: LazyLock<Vec<memmem::Finder<'static>>> =
    LazyLock::new(|| SECRET_MARKERS.iter().map(memmem::Finder::new).collect());

/// Whether a raw frame may hold an idTag or a secret: a `\u` escape (which could spell a key the
/// raw text does not show), or a marker in the ASCII-lower-cased text. Python's reference:
/// `chargewatch.redaction._may_hold_secrets`.
#[pyfunction]
fn may_hold_secrets(raw: &[u8]) -> bool {
    if memmem::find(raw, b"\\u").is_some() {
        return true;
    }
    let lower = raw.to_ascii_lowercase();
    SECRET_FINDERS.iter().any(|f| f.find(&lower).is_some())
}

/// (number of `[` and `{` bytes, whether 19 or more ASCII digits follow one another) of a JSON
/// text: an upper bound of its nesting depth, and whether an integer may overflow 64 bits.
/// Python's reference: `collectors.ocppj.scan_json`.
#[pyfunction]
fn scan_json(raw: &[u8]) -> (usize, bool) {
    let brackets = memchr::memchr2_iter(b'[', b'{', raw).count();
    let mut run = 0usize;
    let mut long_digits = false;
    for &b in raw {
        if b.is_ascii_digit() {
            run += 1;
            if run >= 19 {
                long_digits = true;
                break;
            }
        } else {
            run = 0;
        }
    }
    (brackets, long_digits)
}

/// data XOR the 4-byte WebSocket masking key, repeated (RFC 6455 5.3).
#[pyfunction]
fn unmask<'py>(py: Python<'py>, data: &[u8], mask: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let key: [u8; 4] = mask
        .try_into()
        .map_err(|_| PyValueError::new_err("the mask must be 4 bytes"))?;
    PyBytes::new_with(py, data.len(), |out| {
        for (i, (o, d)) in out.iter_mut().zip(data).enumerate() {
            *o = d ^ key[i & 3];
        }
        Ok(())
    })
}

#[pymodule]
fn chargewatch_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PcapSegments>()?;
    m.add_class::<websocket::FrameDecoder>()?;
    m.add_function(wrap_pyfunction!(unmask, m)?)?;
    m.add_function(wrap_pyfunction!(may_hold_secrets, m)?)?;
    m.add_function(wrap_pyfunction!(scan_json, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_key_swaps_addresses_and_ports() {
        let key = [10, 0, 0, 2, 10, 0, 0, 1, 0xc3, 0x50, 0x23, 0x28];
        assert_eq!(reverse_key(&key), [10, 0, 0, 1, 10, 0, 0, 2, 0x23, 0x28, 0xc3, 0x50]);
        assert_eq!(reverse_key(&reverse_key(&key)), key);
    }

    #[test]
    fn fast_path_rejects_ip_options_and_fragments() {
        let mut frame = vec![0u8; 60];
        frame[12] = 0x08;
        frame[14] = 0x45;
        frame[17] = 46; // total length
        frame[23] = 6;
        frame[46] = 0x50;
        assert!(fast_segment(1, &frame).is_some());
        frame[14] = 0x46; // IPv4 options
        assert!(fast_segment(1, &frame).is_none());
        frame[14] = 0x45;
        frame[20] = 0x20; // more fragments
        assert!(fast_segment(1, &frame).is_none());
    }
}
