//! One direction of a WebSocket byte stream into messages: the same decoder as
//! `collectors.websocket.FrameDecoder` (the reference, which documents the behaviour), step for
//! step, so it gives the same messages and problems in the same order. Inflating stays with
//! Python's zlib (the object and error class are handed in), so compressed messages, their
//! errors and their texts are the reference's own.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const DEFLATE_TAIL: &[u8] = b"\x00\x00\xff\xff";

/// A data message spread over several frames.
struct Partial {
    opcode: u8,
    compressed: bool,
    masked: bool,
    data: Vec<u8>,
    size: u64,
    wire: u64,
    oversized: bool,
}

/// Incremental decoder of one direction's WebSocket frames (see the module doc).
#[pyclass(module = "chargewatch_native")]
pub struct FrameDecoder {
    deflate: bool,
    no_takeover: bool,
    max_message: u64,
    plain_heads: [bool; 256],
    inflater: Option<Py<PyAny>>,
    new_inflater: Py<PyAny>,
    zlib_error: Py<PyAny>,
    message: Py<PyAny>,
    problem: Py<PyAny>,
    buf: Vec<u8>,
    need: u64,
    skip: u64,
    partial: Option<Partial>,
    #[pyo3(get, set)]
    desynced: bool,
    #[pyo3(get)]
    undecoded_bytes: u64,
    #[pyo3(get)]
    close_code: Option<u16>,
}

/// What `_check_header` finds wrong with a frame header, if anything.
fn check_header(b0: u8, length: u64, deflate: bool, in_message: bool) -> Option<(&'static str, String)> {
    let (opcode, fin, rsv) = (b0 & 0x0F, b0 & 0x80 != 0, b0 & 0x70);
    if (3..=7).contains(&opcode) || opcode > 10 {
        return Some(("ws_bad_opcode", format!("reserved opcode {opcode}")));
    }
    if rsv & 0x30 != 0 || (rsv & 0x40 != 0 && (!deflate || opcode == OP_CONT || opcode >= 8)) {
        return Some((
            "ws_bad_rsv",
            format!("unexpected RSV bits {:03b} on opcode {opcode}", rsv >> 4),
        ));
    }
    if opcode >= 8 && (!fin || length > 125) {
        let fin = if fin { "True" } else { "False" };
        return Some((
            "ws_bad_control_frame",
            format!("control frame opcode {opcode} fin={fin} len={length}"),
        ));
    }
    if opcode == OP_CONT && !in_message {
        return Some((
            "ws_orphan_continuation",
            "continuation frame without a started message".into(),
        ));
    }
    if (opcode == OP_TEXT || opcode == OP_BINARY) && in_message {
        return Some((
            "ws_unfinished_message",
            "new data message before the previous one finished".into(),
        ));
    }
    None
}

impl FrameDecoder {
    fn problem<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        detail: &str,
        fatal: bool,
        raw: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        self.problem
            .bind(py)
            .call1((kind, detail, fatal, PyBytes::new(py, raw)))
    }

    fn parse(&mut self, py: Python<'_>, data: &[u8], out: &Bound<'_, PyList>) -> PyResult<usize> {
        let size = data.len();
        let mut pos = self.skip.min(size as u64) as usize;
        self.skip -= pos as u64;
        while pos < size {
            let left = (size - pos) as u64;
            let mut hlen: u64 = 2;
            if left < hlen {
                return Ok(self.incomplete(pos, hlen));
            }
            let (b0, mut length) = (data[pos], u64::from(data[pos + 1] & 0x7F));
            if length == 126 {
                hlen = 4;
                if left < hlen {
                    return Ok(self.incomplete(pos, hlen));
                }
                length = u64::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
            } else if length == 127 {
                hlen = 10;
                if left < hlen {
                    return Ok(self.incomplete(pos, hlen));
                }
                length = u64::from_be_bytes(data[pos + 2..pos + 10].try_into().expect("8 bytes"));
                if length >> 63 != 0 {
                    return self.desync(
                        py,
                        data,
                        pos,
                        out,
                        "ws_bad_length",
                        "64-bit length with the top bit set",
                    );
                }
            }
            let masked = data[pos + 1] & 0x80 != 0;
            if masked {
                hlen += 4;
                if left < hlen {
                    return Ok(self.incomplete(pos, hlen));
                }
            }
            if !(self.plain_heads[usize::from(b0)] && self.partial.is_none()) {
                if let Some((kind, detail)) = check_header(b0, length, self.deflate, self.partial.is_some()) {
                    return self.desync(py, data, pos, out, kind, &detail);
                }
            }
            if length > self.max_message && (b0 & 0x0F) < 8 {
                pos += hlen as usize;
                self.skip = length;
                self.oversized(py, b0, length, hlen, out)?;
                if self.desynced {
                    self.undecoded_bytes += (size - pos) as u64;
                    return Ok(size);
                }
                let skipped = self.skip.min((size - pos) as u64);
                self.skip -= skipped;
                pos += skipped as usize;
                continue;
            }
            if hlen + length > left {
                return Ok(self.incomplete(pos, hlen + length));
            }
            let (start, end) = (pos + hlen as usize, pos + (hlen + length) as usize);
            let payload: Vec<u8> = if masked {
                let key = &data[start - 4..start];
                data[start..end]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[i & 3])
                    .collect()
            } else {
                data[start..end].to_vec()
            };
            pos = end;
            self.frame(py, b0, payload, hlen + length, masked, out)?;
            if self.desynced {
                self.undecoded_bytes += (size - pos) as u64;
                return Ok(size);
            }
        }
        Ok(pos)
    }

    fn incomplete(&mut self, pos: usize, need: u64) -> usize {
        self.need = need;
        pos
    }

    fn desync(
        &mut self,
        py: Python<'_>,
        data: &[u8],
        pos: usize,
        out: &Bound<'_, PyList>,
        kind: &str,
        detail: &str,
    ) -> PyResult<usize> {
        self.desynced = true;
        self.undecoded_bytes += (data.len() - pos) as u64;
        let raw = &data[pos..data.len().min(pos + 64)];
        out.append(self.problem(
            py,
            kind,
            &format!("{detail}; rest of this direction not decoded"),
            true,
            raw,
        )?)?;
        Ok(data.len())
    }

    fn frame(
        &mut self,
        py: Python<'_>,
        b0: u8,
        payload: Vec<u8>,
        wire: u64,
        masked: bool,
        out: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let (opcode, fin) = (b0 & 0x0F, b0 & 0x80 != 0);
        if opcode >= 8 {
            if opcode == OP_CLOSE && payload.len() >= 2 {
                self.close_code = Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
            return Ok(());
        }
        if fin && self.partial.is_none() {
            let compressed = b0 & 0x40 != 0;
            let data = if compressed {
                match self.inflate(py, &payload)? {
                    Ok(data) => data,
                    Err(problem) => return out.append(problem),
                }
            } else {
                PyBytes::new(py, &payload).into_any()
            };
            return out.append(self.message.bind(py).call1((opcode, data, wire, compressed, masked))?);
        }
        let max = self.max_message;
        let partial = self.partial.get_or_insert_with(|| Partial {
            opcode,
            compressed: b0 & 0x40 != 0,
            masked,
            data: Vec::new(),
            size: 0,
            wire: 0,
            oversized: false,
        });
        partial.size += payload.len() as u64;
        partial.wire += wire;
        if partial.size > max {
            partial.oversized = true;
            partial.data = Vec::new();
        } else {
            partial.data.extend_from_slice(&payload);
        }
        if fin {
            let partial = self.partial.take().expect("a message in progress");
            out.append(self.finish(py, partial)?)?;
        }
        Ok(())
    }

    fn oversized(&mut self, py: Python<'_>, b0: u8, length: u64, header: u64, out: &Bound<'_, PyList>) -> PyResult<()> {
        let opcode = b0 & 0x0F;
        if self.partial.is_none() && opcode != OP_CONT {
            self.partial = Some(Partial {
                opcode,
                compressed: b0 & 0x40 != 0,
                masked: true,
                data: Vec::new(),
                size: 0,
                wire: 0,
                oversized: false,
            });
        }
        let Some(partial) = self.partial.as_mut() else {
            return Err(pyo3::exceptions::PyAssertionError::new_err(
                "oversized continuation without a message",
            ));
        };
        partial.oversized = true;
        partial.wire += header + length;
        if b0 & 0x80 != 0 {
            let partial = self.partial.take().expect("a message in progress");
            out.append(self.finish(py, partial)?)?;
        }
        Ok(())
    }

    fn finish<'py>(&mut self, py: Python<'py>, partial: Partial) -> PyResult<Bound<'py, PyAny>> {
        if partial.oversized {
            if partial.compressed && self.deflate && !self.no_takeover {
                self.desynced = true;
            }
            let detail = format!("message of {} wire bytes exceeds {}", partial.wire, self.max_message);
            return self.problem(py, "oversized_message", &detail, false, b"");
        }
        let data = if partial.compressed {
            match self.inflate(py, &partial.data)? {
                Ok(data) => data,
                Err(problem) => return Ok(problem),
            }
        } else {
            PyBytes::new(py, &partial.data).into_any()
        };
        self.message
            .bind(py)
            .call1((partial.opcode, data, partial.wire, partial.compressed, partial.masked))
    }

    /// Ok(Ok(inflated bytes)) or Ok(Err(problem)); Err only for what the reference would raise.
    fn inflate<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Result<Bound<'py, PyAny>, Bound<'py, PyAny>>> {
        let fresh = match &self.inflater {
            None => true,
            Some(inflater) => self.no_takeover || inflater.bind(py).getattr("eof")?.is_truthy()?,
        };
        if fresh {
            self.inflater = Some(self.new_inflater.bind(py).call1((-15,))?.unbind());
        }
        let inflater = self.inflater.as_ref().expect("an inflater").bind(py).clone();
        let mut input = Vec::with_capacity(data.len() + DEFLATE_TAIL.len());
        input.extend_from_slice(data);
        input.extend_from_slice(DEFLATE_TAIL);
        let result = match inflater.call_method1("decompress", (PyBytes::new(py, &input), self.max_message + 1)) {
            Ok(result) => result,
            Err(err) if err.is_instance(py, self.zlib_error.bind(py)) => {
                self.inflater = Some(self.new_inflater.bind(py).call1((-15,))?.unbind());
                let detail = format!("permessage-deflate: {}", err.value(py).str()?);
                return Ok(Err(self.problem(py, "ws_inflate_error", &detail, false, data)?));
            }
            Err(err) => return Err(err),
        };
        if result.len()? as u64 > self.max_message || inflater.getattr("unconsumed_tail")?.is_truthy()? {
            self.inflater = Some(self.new_inflater.bind(py).call1((-15,))?.unbind());
            let detail = format!("message inflates beyond {} bytes", self.max_message);
            return Ok(Err(self.problem(py, "oversized_message", &detail, false, b"")?));
        }
        Ok(Ok(result))
    }
}

#[pymethods]
impl FrameDecoder {
    /// deflate: permessage-deflate was negotiated for this side (no_takeover: without context
    /// takeover); message and problem: the classes of what feed returns; new_inflater and
    /// zlib_error: `zlib.decompressobj` and `zlib.error`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        deflate: bool,
        no_takeover: bool,
        max_message: u64,
        message: Py<PyAny>,
        problem: Py<PyAny>,
        new_inflater: Py<PyAny>,
        zlib_error: Py<PyAny>,
    ) -> Self {
        let mut plain_heads = [false; 256];
        let heads: &[u8] = if deflate {
            &[0x81, 0x82, 0xC1, 0xC2]
        } else {
            &[0x81, 0x82]
        };
        for &head in heads {
            plain_heads[usize::from(head)] = true;
        }
        FrameDecoder {
            deflate,
            no_takeover: deflate && no_takeover,
            max_message,
            plain_heads,
            inflater: None,
            new_inflater,
            zlib_error,
            message,
            problem,
            buf: Vec::new(),
            need: 0,
            skip: 0,
            partial: None,
            desynced: false,
            undecoded_bytes: 0,
            close_code: None,
        }
    }

    /// Decode what data completes; returns messages and problems in stream order.
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        if self.desynced {
            self.undecoded_bytes += data.len() as u64;
            return Ok(out);
        }
        let owned;
        let data = if self.buf.is_empty() {
            data
        } else {
            self.buf.extend_from_slice(data);
            if (self.buf.len() as u64) < self.need {
                return Ok(out);
            }
            owned = std::mem::take(&mut self.buf);
            &owned[..]
        };
        let end = self.parse(py, data, &out)?;
        if end < data.len() && !self.desynced {
            self.buf.extend_from_slice(&data[end..]);
        }
        Ok(out)
    }

    /// Whether a data message is in progress (some of its frames seen, not its last).
    #[getter]
    fn in_message(&self) -> bool {
        self.partial.is_some()
    }
}
