//! Safe wrappers over the CUDA kernels' host C++ build (`kernels/host/`, compiled by `build.rs`),
//! shared by `tests/kernels_host.rs` and `tests/vectors.rs`. Only these wrappers touch the FFI.
#![allow(dead_code)]

use cloister::gpu::aes_key_schedule::Aes256RoundKeys;

extern "C" {
    fn aes256_ctr_host(
        round_keys: *const u32,
        initial_block: *const u8,
        input: *const u8,
        out: *mut u8,
        len: u64,
        block_offset: u64,
        grid: u32,
    );
    fn zero_fill_host(p: *mut u8, len: u64, grid: u32);
    fn aes256_encrypt_block_host(round_keys: *const u32, input: *const u8, out: *mut u8);
}

/// Runs the CTR kernel from `input` into `out` (same length), starting `offset` blocks after
/// `block`, on `grid` emulated blocks.
pub fn ctr(key: &[u8; 32], block: &[u8; 16], input: &[u8], out: &mut [u8], offset: u64, grid: u32) {
    assert_eq!(input.len(), out.len());
    let rk = Aes256RoundKeys::expand(key);
    // SAFETY: rk has 60 words, block 16 bytes, input/out are valid for len bytes each and do not
    // overlap (distinct borrows); the shim reads/writes only within those bounds.
    unsafe {
        aes256_ctr_host(
            rk.as_words().as_ptr(),
            block.as_ptr(),
            input.as_ptr(),
            out.as_mut_ptr(),
            input.len() as u64,
            offset,
            grid,
        );
    }
}

/// Runs the CTR kernel in place (in == out), as a decrypt into the upload buffer would.
pub fn ctr_in_place(key: &[u8; 32], block: &[u8; 16], buf: &mut [u8], offset: u64, grid: u32) {
    let rk = Aes256RoundKeys::expand(key);
    let p = buf.as_mut_ptr();
    // SAFETY: as above; the kernel allows in == out exactly (each 16-byte block is read before it
    // is written, by the same thread).
    unsafe {
        aes256_ctr_host(
            rk.as_words().as_ptr(),
            block.as_ptr(),
            p,
            p,
            buf.len() as u64,
            offset,
            grid,
        );
    }
}

/// The zero-fill kernel over `buf`.
pub fn zero(buf: &mut [u8], grid: u32) {
    // SAFETY: the shim writes exactly buf.len() bytes starting at buf's pointer.
    unsafe { zero_fill_host(buf.as_mut_ptr(), buf.len() as u64, grid) }
}

/// The kernel's single-block AES-256 core.
pub fn encrypt_block(key: &[u8; 32], block: &[u8; 16]) -> [u8; 16] {
    let rk = Aes256RoundKeys::expand(key);
    let mut out = [0u8; 16];
    // SAFETY: 60 round-key words, 16-byte input and output.
    unsafe { aes256_encrypt_block_host(rk.as_words().as_ptr(), block.as_ptr(), out.as_mut_ptr()) };
    out
}
