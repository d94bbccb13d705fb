//! Locked, non-dumpable, zeroize-on-drop memory for plaintext weights.
//!
//! Without a GPU the decrypted tensor data has to live in host memory. It lives in exactly one
//! place: an anonymous private mapping that is
//! - `mlock`ed, so it is never written to swap;
//! - marked `MADV_DONTDUMP`, so it never lands in a core file;
//! - `MADV_WIPEONFORK`, so a forked child never inherits it;
//! - overwritten with zeros (volatile, via `zeroize`) before it is unmapped.
//!
//! [`harden_process`] additionally makes the whole process non-dumpable (`PR_SET_DUMPABLE=0`:
//! no core dumps, no `ptrace` attach or `/proc/<pid>/mem` reads by other unprivileged users) and
//! sets `RLIMIT_CORE` to 0.
//!
//! This module and the GPU adapter are the only places with `unsafe`.

use std::io;
use std::ptr::NonNull;

use zeroize::Zeroize;

/// A page-aligned anonymous mapping holding secret bytes. See the module docs.
pub struct LockedRegion {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
    locked: bool,
}

// SAFETY: the region is plain owned memory (like a `Box<[u8]>`); access goes through `&`/`&mut`
// borrows of `self`, so Rust's aliasing rules apply as for any owned buffer.
unsafe impl Send for LockedRegion {}
// SAFETY: see above; shared access only hands out `&[u8]`.
unsafe impl Sync for LockedRegion {}

/// Whether a failed `mlock` is fatal. Production refuses to run with swappable weights; tests on
/// machines with a tiny `RLIMIT_MEMLOCK` may opt out explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockPolicy {
    Required,
    BestEffort,
}

impl LockedRegion {
    /// Maps `len` zeroed bytes, locks and hardens them.
    pub fn new(len: usize, policy: LockPolicy) -> io::Result<Self> {
        let page = page_size();
        let map_len = len.max(1).div_ceil(page) * page;
        // SAFETY: anonymous private mapping with no address hint; the result is checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(raw.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mut region = LockedRegion {
            ptr,
            len,
            map_len,
            locked: false,
        };
        // SAFETY: `raw..raw+map_len` is the mapping created above and owned by `region`.
        unsafe {
            // Advisory: a kernel without these flags still gives us a private mapping.
            libc::madvise(raw, map_len, libc::MADV_DONTDUMP);
            libc::madvise(raw, map_len, libc::MADV_WIPEONFORK);
        }
        // SAFETY: as above; mlock only pins the pages.
        if unsafe { libc::mlock(raw, map_len) } == 0 {
            region.locked = true;
        } else if policy == LockPolicy::Required {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "cannot mlock {map_len} bytes for model weights ({err}); raise RLIMIT_MEMLOCK \
                     (ulimit -l, or LimitMEMLOCK= in systemd) or grant CAP_IPC_LOCK"
                ),
            ));
        }
        Ok(region)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `mlock` succeeded (always true under [`LockPolicy::Required`]).
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Address range of the mapping, for the memory-scan tests.
    pub fn address_range(&self) -> std::ops::Range<usize> {
        let start = self.ptr.as_ptr() as usize;
        start..start + self.map_len
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len <= map_len` bytes for the lifetime of `self`, and
        // was initialised (zero pages) by mmap.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for LockedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedRegion")
            .field("len", &self.len)
            .field("locked", &self.locked)
            .finish_non_exhaustive()
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        let map_len = self.map_len;
        // SAFETY: the full mapping is ours; zeroize uses volatile writes so the wipe is not elided.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), map_len) };
        all.zeroize();
        // SAFETY: unlocking and unmapping exactly the mapping created in `new`; nothing borrows
        // it any more (we are in drop).
        unsafe {
            if self.locked {
                libc::munlock(self.ptr.as_ptr().cast(), map_len);
            }
            libc::munmap(self.ptr.as_ptr().cast(), map_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Makes the process non-dumpable and disables core files. Called once at start-up, before any
/// key or weight is loaded.
pub fn harden_process() -> io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the process is currently dumpable (for tests and `/readyz` diagnostics).
pub fn process_is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer arguments.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_zeroed_writable_and_reports_its_range() {
        let mut r = LockedRegion::new(10_000, LockPolicy::BestEffort).expect("map");
        assert_eq!(r.len(), 10_000);
        assert!(r.as_slice().iter().all(|&b| b == 0));
        r.as_mut_slice()[9_999] = 7;
        assert_eq!(r.as_slice()[9_999], 7);
        let range = r.address_range();
        assert!(range.end - range.start >= 10_000);
        assert_eq!(range.start % page_size(), 0);
    }

    #[test]
    fn required_lock_succeeds_for_a_small_region() {
        // A few pages fit in every default RLIMIT_MEMLOCK (64 KiB or more).
        let r = LockedRegion::new(8192, LockPolicy::Required).expect("mlock of 2 pages");
        assert!(r.is_locked());
    }
}
