//! The CUDA kernels in `kernels/`, compiled as host C++ by `build.rs`, checked against RustCrypto.
//!
//! What this proves without a GPU: the device arithmetic (T-table AES-256, GCM's inc32 counter,
//! partial last block, block offsets for multi-launch chunks, the aligned 128-bit path and the
//! grid-stride loops) produces exactly GCM's keystream. What it cannot prove: several threads per
//! block, real shared memory and barriers — those run in the GPU check.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

#[path = "kernel_shim/mod.rs"]
mod kernel_shim;

use kernel_shim::{ctr as kernel_ctr, ctr_in_place as kernel_ctr_in_place, zero as kernel_zero};

type Ctr32 = ctr::Ctr32BE<aes::Aes256>;

/// RustCrypto reference: CTR with a 32-bit big-endian wrapping counter, exactly GCM's payload
/// keystream when `block` = nonce ‖ 2.
fn reference_ctr(key: &[u8; 32], block: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    Ctr32::new(key.into(), block.into()).apply_keystream(&mut out);
    out
}

/// `ctr_initial_block` from /work/main/src/seal/chunk.rs: nonce ‖ 0x00000002 (J0 + 1).
fn ctr_initial_block(nonce: &[u8; 12]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(nonce);
    b[15] = 2;
    b
}

fn with_counter(nonce: &[u8; 12], ctr: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(nonce);
    b[12..].copy_from_slice(&ctr.to_be_bytes());
    b
}

/// A `len`-byte window of a fresh buffer whose start is `misalign` bytes past a 16-byte boundary.
fn window(len: usize, misalign: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + 32];
    let start = (16 - (buf.as_ptr() as usize % 16)) % 16 + misalign;
    (buf, start)
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

const LENGTHS: [usize; 7] = [0, 1, 15, 16, 17, 4096, (1 << 20) + 5];

#[test]
fn core_matches_fips197_appendix_c3() {
    let key: [u8; 32] = core::array::from_fn(|i| i as u8);
    let pt: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
    let ct = kernel_shim::encrypt_block(&key, &pt);
    let expected = [
        0x8e, 0xa2, 0xb7, 0xca, 0x51, 0x67, 0x45, 0xbf, 0xea, 0xfc, 0x49, 0x90, 0x4b, 0x49, 0x60,
        0x89,
    ];
    assert_eq!(ct, expected);
}

#[test]
fn core_matches_rustcrypto_on_random_blocks() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..200 {
        let key: [u8; 32] = rng.gen();
        let pt: [u8; 16] = rng.gen();
        let ct = kernel_shim::encrypt_block(&key, &pt);
        let mut expected = aes::Block::from(pt);
        aes::Aes256::new(&key.into()).encrypt_block(&mut expected);
        assert_eq!(ct, expected.as_slice());
    }
}

#[test]
fn ctr_matches_rustcrypto_on_random_keys_nonces_lengths_and_alignments() {
    let mut rng = StdRng::seed_from_u64(2);
    for (i, &len) in LENGTHS.iter().enumerate() {
        for misalign in [0usize, 1, 8] {
            let key: [u8; 32] = rng.gen();
            let nonce: [u8; 12] = rng.gen();
            let block = ctr_initial_block(&nonce);
            let data = random_bytes(&mut rng, len);
            let (mut src, s) = window(len, misalign);
            src[s..s + len].copy_from_slice(&data);
            let (mut dst, d) = window(len, misalign);
            let grid = [1u32, 3, 7][(i + misalign) % 3];
            kernel_ctr(
                &key,
                &block,
                &src[s..s + len],
                &mut dst[d..d + len],
                0,
                grid,
            );
            assert_eq!(
                dst[d..d + len],
                reference_ctr(&key, &block, &data)[..],
                "len {len} misalign {misalign}"
            );
            // Nothing outside the window is written.
            assert!(dst[..d].iter().chain(&dst[d + len..]).all(|&b| b == 0));
        }
    }
}

#[test]
fn ctr_random_lengths() {
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..100 {
        let len = rng.gen_range(0..5000);
        let key: [u8; 32] = rng.gen();
        let nonce: [u8; 12] = rng.gen();
        let block = with_counter(&nonce, rng.gen());
        let data = random_bytes(&mut rng, len);
        let mut out = vec![0u8; len];
        kernel_ctr(&key, &block, &data, &mut out, 0, rng.gen_range(1..9));
        assert_eq!(out, reference_ctr(&key, &block, &data));
    }
}

#[test]
fn counter_wraps_mod_2_32_without_touching_the_nonce() {
    let mut rng = StdRng::seed_from_u64(4);
    let key: [u8; 32] = rng.gen();
    let nonce: [u8; 12] = rng.gen();
    for start in [0xFFFF_FFFFu32, 0xFFFF_FFFE, 0xFFFF_FFF0] {
        let block = with_counter(&nonce, start);
        for len in [17usize, 64, 16 * 20 + 3, 4096] {
            let data = random_bytes(&mut rng, len);
            let mut out = vec![0u8; len];
            kernel_ctr(&key, &block, &data, &mut out, 0, 2);
            assert_eq!(
                out,
                reference_ctr(&key, &block, &data),
                "start {start:#x} len {len}"
            );
        }
    }
    // Independent of the ctr crate: block 1 from 0xFFFFFFFF uses nonce ‖ 00000000 (inc32).
    let data = [0u8; 32];
    let mut out = [0u8; 32];
    kernel_ctr(
        &key,
        &with_counter(&nonce, 0xFFFF_FFFF),
        &data,
        &mut out,
        0,
        1,
    );
    let mut ks = aes::Block::from(with_counter(&nonce, 0));
    aes::Aes256::new(&key.into()).encrypt_block(&mut ks);
    assert_eq!(out[16..], ks[..]);
}

#[test]
fn chunk_split_over_launches_with_block_offsets_matches_one_shot() {
    let mut rng = StdRng::seed_from_u64(5);
    for start in [2u32, 0xFFFF_FFF8] {
        let key: [u8; 32] = rng.gen();
        let nonce: [u8; 12] = rng.gen();
        let block = with_counter(&nonce, start);
        let len = 16 * 37 + 9;
        let data = random_bytes(&mut rng, len);
        let expected = reference_ctr(&key, &block, &data);
        // Pieces start at 16-byte boundaries; the last one carries the partial block.
        let cuts = [0usize, 16, 16 * 5, 16 * 6, 16 * 20, 16 * 37, len];
        let mut out = vec![0u8; len];
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            kernel_ctr(
                &key,
                &block,
                &data[a..b],
                &mut out[a..b],
                (a / 16) as u64,
                3,
            );
        }
        assert_eq!(out, expected, "start {start:#x}");
    }
}

#[test]
fn block_offset_counts_mod_2_32() {
    let mut rng = StdRng::seed_from_u64(6);
    let key: [u8; 32] = rng.gen();
    let block = with_counter(&rng.gen(), rng.gen());
    let data = random_bytes(&mut rng, 100);
    let (mut a, mut b) = (vec![0u8; 100], vec![0u8; 100]);
    kernel_ctr(&key, &block, &data, &mut a, 5, 1);
    kernel_ctr(&key, &block, &data, &mut b, 5 + (1u64 << 32), 1);
    assert_eq!(a, b);
}

#[test]
fn in_place_decryption_matches() {
    let mut rng = StdRng::seed_from_u64(7);
    for len in [1usize, 33, 4096 + 7] {
        let key: [u8; 32] = rng.gen();
        let block = ctr_initial_block(&rng.gen());
        let data = random_bytes(&mut rng, len);
        let mut buf = data.clone();
        kernel_ctr_in_place(&key, &block, &mut buf, 0, 4);
        assert_eq!(buf, reference_ctr(&key, &block, &data));
    }
}

/// The GPU contract of seal/chunk.rs end to end: ciphertext produced by AES-256-GCM, decrypted by
/// the kernel starting at `ctr_initial_block(nonce)`, is the plaintext.
#[test]
fn kernel_decrypts_real_aes256_gcm_ciphertext() {
    let mut rng = StdRng::seed_from_u64(8);
    for len in [0usize, 5, 16, 1000, (1 << 20) + 5] {
        let key: [u8; 32] = rng.gen();
        let nonce: [u8; 12] = rng.gen();
        let plain = random_bytes(&mut rng, len);
        let mut ct = plain.clone();
        Aes256Gcm::new(&key.into())
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"aad", &mut ct)
            .unwrap();
        let mut out = vec![0u8; len];
        kernel_ctr(&key, &ctr_initial_block(&nonce), &ct, &mut out, 0, 5);
        assert_eq!(out, plain, "len {len}");
    }
}

#[test]
fn zero_fill_clears_exactly_the_range() {
    let mut rng = StdRng::seed_from_u64(9);
    for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 4096, (1 << 20) + 5] {
        for misalign in [0usize, 1, 7, 15] {
            for grid in [1u32, 3] {
                let (mut buf, s) = window(len, misalign);
                rng.fill_bytes(&mut buf);
                buf.iter_mut().for_each(|b| *b |= 1); // no zero bytes before the fill
                let before = buf.clone();
                kernel_zero(&mut buf[s..s + len], grid);
                assert!(
                    buf[s..s + len].iter().all(|&b| b == 0),
                    "len {len} misalign {misalign}"
                );
                assert_eq!(buf[..s], before[..s]);
                assert_eq!(buf[s + len..], before[s + len..]);
            }
        }
    }
}
