//! pcapng files: a strict check that a file is plain (so the native reader gives exactly what
//! the Python reference, scapy's `RawPcapNgReader` read block by block, gives), and the block
//! reading both share.
//!
//! Plain means: one section, every block whole with matching lengths that are multiples of 4,
//! only block types whose meaning is simple (interface descriptions, enhanced packets, and
//! blocks that carry no packet), every packet on a described interface with its captured bytes
//! inside its block, and no option whose handling differs in the reference (an `if_tsresol` of
//! another size than one byte or beyond 64 bits, `epb_flags` of another size than 4, process
//! information). Anything else is read by the Python reference path, which reports the
//! problems it finds as before.

use std::fs::File;
use std::io::{BufReader, Read};

pub const SHB: u32 = 0x0A0D_0D0A;
pub const IDB: u32 = 1;
pub const EPB: u32 = 6;
/// Block types the reference reads with semantics of their own: left to it.
const DIFFICULT: [u32; 4] = [2, 3, 10, 0x8000_0001];
/// Microseconds: the resolution of an interface without `if_tsresol`.
pub const DEFAULT_TSRESOL: u64 = 1_000_000;

/// One described interface: link type and time stamp units per second.
#[derive(Clone, Copy)]
pub struct Interface {
    pub linktype: u32,
    pub tsresol: u64,
}

pub fn u16_at(b: &[u8], at: usize, big: bool) -> u16 {
    let word = [b[at], b[at + 1]];
    if big {
        u16::from_be_bytes(word)
    } else {
        u16::from_le_bytes(word)
    }
}

pub fn u32_at(b: &[u8], at: usize, big: bool) -> u32 {
    let word = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if big {
        u32::from_be_bytes(word)
    } else {
        u32::from_le_bytes(word)
    }
}

/// The options of a block as the reference reads them: (code, value) in order, stopping at
/// the end-of-options code or when fewer than 4 bytes are left; values that run past the end
/// are skipped.
fn options(raw: &[u8], big: bool) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    while raw.len() - offset.min(raw.len()) >= 4 {
        let code = u16_at(raw, offset, big);
        let length = usize::from(u16_at(raw, offset + 2, big));
        let value = offset + 4;
        if code == 0 {
            break;
        }
        if value + length <= raw.len() {
            out.push((code, &raw[value..value + length]));
        }
        offset = value + length + (4 - length % 4) % 4;
    }
    out
}

/// The interface an IDB body describes, or None when the reference would treat it differently.
pub fn interface(body: &[u8], big: bool) -> Option<Interface> {
    if body.len() < 8 {
        return None;
    }
    let mut tsresol = DEFAULT_TSRESOL;
    // The reference keeps the last occurrence of a single-valued option.
    if let Some((_, value)) = options(&body[8..], big).into_iter().rev().find(|(code, _)| *code == 9) {
        let [raw] = value else { return None };
        let (base, exponent) = if raw & 0x80 != 0 {
            (2u64, raw & 0x7F)
        } else {
            (10u64, *raw)
        };
        tsresol = base.checked_pow(u32::from(exponent))?;
    }
    Some(Interface {
        linktype: u32::from(u16_at(body, 0, big)),
        tsresol,
    })
}

/// (interface id, time stamp, captured bytes) of an EPB body, or None when the reference would
/// treat it differently (interfaces: those described so far).
pub fn packet(body: &[u8], big: bool, interfaces: usize, max_record: u64) -> Option<(usize, u64, &[u8])> {
    if body.len() < 20 {
        return None;
    }
    let intid = u32_at(body, 0, big) as usize;
    let ts = u64::from(u32_at(body, 4, big)) << 32 | u64::from(u32_at(body, 8, big));
    let caplen = u32_at(body, 12, big) as usize;
    if intid >= interfaces || caplen > body.len() - 20 || caplen as u64 > max_record {
        return None;
    }
    let padded = 20 + caplen + (4 - caplen % 4) % 4;
    let found = options(body.get(padded..).unwrap_or(&[]), big);
    let flags = found.iter().rev().find(|(code, _)| *code == 2);
    if matches!(flags, Some((_, value)) if value.len() != 4) || found.iter().any(|(c, _)| *c == 0x8001 || *c == 0x8003)
    {
        return None;
    }
    Some((intid, ts, &body[20..20 + caplen]))
}

/// Reads one block at the reader's position: (type, total length, body); None when the file
/// does not hold a whole, consistent block there.
pub fn block(file: &mut BufReader<File>, big: bool, remaining: u64) -> Option<(u32, u64, Vec<u8>)> {
    if remaining < 12 {
        return None;
    }
    let mut head = [0u8; 8];
    file.read_exact(&mut head).ok()?;
    let (kind, length) = (u32_at(&head, 0, big), u64::from(u32_at(&head, 4, big)));
    if length < 12 || length % 4 != 0 || length > remaining {
        return None;
    }
    let mut body = vec![0u8; (length - 12) as usize];
    file.read_exact(&mut body).ok()?;
    let mut tail = [0u8; 4];
    file.read_exact(&mut tail).ok()?;
    (u64::from(u32_at(&tail, 0, big)) == length).then_some((kind, length, body))
}

/// (big endian?, length) of the plain section header block a file starts with, or None. The
/// reader is left after that block.
pub fn section(file: &mut BufReader<File>, size: u64) -> Option<(bool, u64)> {
    let mut head = [0u8; 12];
    if size < 28 {
        return None;
    }
    file.read_exact(&mut head).ok()?;
    let big = match head[8..12] {
        [0x1a, 0x2b, 0x3c, 0x4d] => true,
        [0x4d, 0x3c, 0x2b, 0x1a] => false,
        _ => return None,
    };
    let (kind, length) = (u32_at(&head, 0, big), u64::from(u32_at(&head, 4, big)));
    if kind != SHB || !(28..=size).contains(&length) || length % 4 != 0 {
        return None;
    }
    let mut rest = vec![0u8; (length - 12) as usize];
    file.read_exact(&mut rest).ok()?;
    let major = u16_at(&rest, 0, big);
    let tail = u64::from(u32_at(&rest, rest.len() - 4, big));
    (major == 1 && tail == length).then_some((big, length))
}

/// Whether the whole file is plain (see the module doc), reading it once.
pub fn is_plain(path: &str, size: u64, max_record: u64) -> bool {
    let Ok(handle) = File::open(path) else { return false };
    let mut file = BufReader::with_capacity(1 << 20, handle);
    let Some((big, mut offset)) = section(&mut file, size) else {
        return false;
    };
    let mut interfaces = 0usize;
    while offset < size {
        let Some((kind, length, body)) = block(&mut file, big, size - offset) else {
            return false;
        };
        offset += length;
        let plain = match kind {
            SHB => false, // a second section: its interfaces mix with the first ones in the reference
            IDB => interface(&body, big).is_some(),
            EPB => packet(&body, big, interfaces, max_record).is_some(),
            other => !DIFFICULT.contains(&other),
        };
        if !plain {
            return false;
        }
        if kind == IDB {
            interfaces += 1;
        }
    }
    offset == size
}
