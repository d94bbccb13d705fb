//! Scanning a process's memory (or a file) for a 64-byte canary, without the scanner ever holding
//! the canary itself (tests/canary.rs for the CPU path, tests/gpu_device.rs for the GPU path).
//!
//! - The canary is never materialized: it is `masked ^ mask` of two independent random arrays,
//!   and matching tests `byte ^ mask[i] == masked[i]`, which never computes a canary byte. Whoever
//!   writes it somewhere does so one byte at a time ([`MaskedCanary::byte`]).
//! - A process is scanned through `/proc/<pid>/maps` + `/proc/<pid>/mem`, every readable mapping.
//!   When scanning itself, the scanner leaves its own buffer out (it holds what it just read) and
//!   wipes it after every scan.
#![allow(dead_code)] // Not every test binary uses every helper.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rand::RngCore;
use zeroize::Zeroize;

/// Canary length in bytes.
pub const CANARY_LEN: usize = 64;
/// Bytes read from a process or file per step.
const CHUNK: usize = 1 << 20;

/// A 64-byte canary, only ever held as `masked ^ mask` (see the module docs).
pub struct MaskedCanary {
    mask: [u8; CANARY_LEN],
    masked: [u8; CANARY_LEN],
}

impl MaskedCanary {
    /// A fresh random canary.
    pub fn random() -> Self {
        let mut c = MaskedCanary {
            mask: [0; CANARY_LEN],
            masked: [0; CANARY_LEN],
        };
        rand::rngs::OsRng.fill_bytes(&mut c.mask);
        rand::rngs::OsRng.fill_bytes(&mut c.masked);
        c
    }

    /// `mask ‖ masked` in hex, to hand the canary to a child process (neither half is it).
    pub fn to_hex(&self) -> String {
        hex::encode([self.mask, self.masked].concat())
    }

    /// The inverse of [`MaskedCanary::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        let (mask, masked) = bytes.split_at_checked(CANARY_LEN)?;
        Some(MaskedCanary {
            mask: mask.try_into().ok()?,
            masked: masked.try_into().ok()?,
        })
    }

    /// One canary byte (for writing it to the file byte by byte).
    pub fn byte(&self, i: usize) -> u8 {
        self.masked[i] ^ self.mask[i]
    }

    /// Whether `window` (at least 64 bytes) starts with the canary, without computing it.
    pub fn matches(&self, window: &[u8]) -> bool {
        window
            .iter()
            .zip(self.mask.iter().zip(&self.masked))
            .all(|(b, (m, x))| b ^ m == *x)
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Addresses (or file offsets) where the canary starts.
    pub hits: Vec<usize>,
    pub bytes_read: u64,
    /// Pages of readable mappings that could not be read: (address, length, mapping).
    pub unreadable: Vec<(usize, usize, String)>,
    /// Unreadable pages that were no longer mapped readable after the scan (freed meanwhile).
    pub vanished_bytes: usize,
}

/// Scans `ranges` (start, end, label) of a file-like object read with `read_at`. Adjacent ranges
/// are scanned as one stream, so a canary across a mapping boundary is found too. The buffer is
/// wiped before returning.
pub fn scan_ranges(
    canary: &MaskedCanary,
    buf: &mut [u8],
    ranges: &[(usize, usize, &str)],
    read_at: &mut dyn FnMut(&mut [u8], u64) -> io::Result<usize>,
) -> Scan {
    let page = 4096;
    let mut scan = Scan::default();
    // `buf[..carry]` holds the last bytes of the previous read, which started at `carry_addr`.
    let mut carry = 0usize;
    let mut carry_addr = 0usize;
    let mut next_addr = usize::MAX;
    for &(start, end, label) in ranges {
        if start != next_addr {
            carry = 0;
        }
        let mut addr = start;
        while addr < end {
            let want = (end - addr).min(CHUNK);
            let n = match read_at(&mut buf[carry..carry + want], addr as u64) {
                Ok(n) if n > 0 => n,
                _ => {
                    // Retry one page: most failures are a single unreadable page.
                    let want = (end - addr).min(page - addr % page);
                    match read_at(&mut buf[carry..carry + want], addr as u64) {
                        Ok(n) if n > 0 => n,
                        _ => {
                            scan.unreadable.push((addr, want, label.to_string()));
                            carry = 0;
                            addr += want;
                            continue;
                        }
                    }
                }
            };
            if carry == 0 {
                carry_addr = addr;
            }
            let filled = carry + n;
            for j in 0..filled.saturating_sub(CANARY_LEN - 1) {
                // Cheap first-byte filter, then the full masked comparison.
                if buf[j] ^ canary.mask[0] == canary.masked[0] && canary.matches(&buf[j..filled]) {
                    scan.hits.push(carry_addr + j);
                }
            }
            scan.bytes_read += n as u64;
            addr += n;
            let keep = filled.min(CANARY_LEN - 1);
            buf.copy_within(filled - keep..filled, 0);
            carry = keep;
            carry_addr = addr - keep;
        }
        next_addr = end;
    }
    buf.zeroize();
    scan
}

pub fn scan_file(path: &Path, canary: &MaskedCanary) -> Scan {
    let file = File::open(path).expect("open");
    let len = file.metadata().expect("metadata").len() as usize;
    let mut buf = vec![0u8; CHUNK + CANARY_LEN];
    let label = path.display().to_string();
    scan_ranges(canary, &mut buf, &[(0, len, &label)], &mut |b, off| {
        file.read_at(b, off)
    })
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    pub perms: String,
    pub name: String,
}

pub fn mappings(pid: &str) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    text.lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            let range = parts.next().expect("range");
            let perms = parts.next().expect("perms").to_string();
            let name = parts.nth(3).unwrap_or("").to_string();
            let (s, e) = range.split_once('-').expect("range");
            Mapping {
                start: usize::from_str_radix(s, 16).expect("start"),
                end: usize::from_str_radix(e, 16).expect("end"),
                perms,
                name,
            }
        })
        .collect()
}

/// Mappings the kernel does not let `/proc/<pid>/mem` read; none can hold heap or weight data.
pub fn is_special(name: &str) -> bool {
    matches!(name, "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
}

/// Scans every readable mapping of process `pid` ("self" for this process).
pub fn scan_process(pid: &str, canary: &MaskedCanary) -> io::Result<Scan> {
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; CHUNK + CANARY_LEN];
    // When scanning ourselves, the buffer holds whatever it just read: leave it out.
    let own = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let maps = mappings(pid);
    let mut ranges = Vec::new();
    for m in &maps {
        if !m.perms.starts_with('r') || is_special(&m.name) {
            continue;
        }
        let label = if m.name.is_empty() { "[anon]" } else { &m.name };
        if pid == "self" && m.start < own.end && own.start < m.end {
            if m.start < own.start {
                ranges.push((m.start, own.start, label));
            }
            if own.end < m.end {
                ranges.push((own.end, m.end, label));
            }
        } else {
            ranges.push((m.start, m.end, label));
        }
    }
    // The first read tells whether we may read this process at all.
    let mut probe = [0u8; 1];
    if let Some((start, _, _)) = ranges.first() {
        if let Err(e) = mem.read_at(&mut probe, *start as u64) {
            if matches!(e.kind(), io::ErrorKind::PermissionDenied) || e.raw_os_error() == Some(1) {
                return Err(e);
            }
        }
    }
    let mut scan = scan_ranges(canary, &mut buf, &ranges, &mut |b, off| mem.read_at(b, off));
    // A page can fail because the process unmapped it after we read its maps (a glibc arena
    // trimmed while we scanned): that is no gap in the scan. Pages still mapped readable are
    // read once more; only those that fail again stay unreadable.
    if !scan.unreadable.is_empty() {
        let now = mappings(pid);
        let still_mapped = |addr: usize| {
            now.iter()
                .any(|m| m.perms.starts_with('r') && (m.start..m.end).contains(&addr))
        };
        let retry: Vec<_> = std::mem::take(&mut scan.unreadable)
            .into_iter()
            .filter(|(addr, len, _)| {
                let mapped = still_mapped(*addr);
                if !mapped {
                    scan.vanished_bytes += len;
                }
                mapped
            })
            .collect();
        for (addr, len, label) in retry {
            let again = scan_ranges(
                canary,
                &mut buf,
                &[(addr, addr + len, &label)],
                &mut |b, off| mem.read_at(b, off),
            );
            scan.hits.extend(again.hits);
            scan.bytes_read += again.bytes_read;
            scan.unreadable.extend(again.unreadable);
        }
    }
    Ok(scan)
}
