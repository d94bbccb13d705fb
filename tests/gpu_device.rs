//! The kernels on a real GPU (feature `cuda`), against RustCrypto: many threads per block, real
//! shared memory and barriers — what `kernels_host.rs` cannot cover. Skips (and says so) without
//! a CUDA driver. Kernels come from NVRTC, or from PTX files in `$CLOISTER_KERNEL_PTX_DIR`
//! (`aes_ctr.ptx`, `zero.ptx`, written by `tests/nvrtc_compile.rs` via `CLOISTER_WRITE_PTX_DIR`)
//! on GPU machines without libnvrtc.
#![cfg(feature = "cuda")]

use std::time::Instant;

use aes::cipher::{KeyIvInit, StreamCipher};
use cloister::gpu::aes_key_schedule::Aes256RoundKeys;
use cloister::gpu::device::{GpuError, GpuKernels, KernelPtx};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn kernels() -> Option<GpuKernels> {
    let loaded = match std::env::var_os("CLOISTER_KERNEL_PTX_DIR") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
            };
            let ptx = KernelPtx {
                aes_ctr: read("aes_ctr.ptx"),
                zero: read("zero.ptx"),
            };
            GpuKernels::load_ptx(0, &ptx)
        }
        None => GpuKernels::load(0),
    };
    match loaded {
        Ok(k) => Some(k),
        Err(e @ (GpuError::NoDriver | GpuError::NoNvrtc)) => {
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn reference(key: &[u8; 32], block: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    ctr::Ctr32BE::<aes::Aes256>::new(key.into(), block.into()).apply_keystream(&mut out);
    out
}

#[test]
fn gpu_ctr_and_zero_fill_match_reference() {
    let Some(k) = kernels() else { return };
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(11);
    for len in [0usize, 1, 15, 16, 17, 4096, (1 << 20) + 5, (16 << 20) + 9] {
        for (misalign, start) in [(0usize, 2u32), (1, 0xFFFF_FFF0), (8, rng.gen())] {
            let key: [u8; 32] = rng.gen();
            let mut block = [0u8; 16];
            rng.fill_bytes(&mut block[..12]);
            block[12..].copy_from_slice(&start.to_be_bytes());
            let mut data = vec![0u8; len + misalign];
            rng.fill_bytes(&mut data);
            let expected = reference(&key, &block, &data[misalign..]);
            let rk = k.upload_round_keys(&Aes256RoundKeys::expand(&key)).unwrap();
            let d_in = s.clone_htod(&data).unwrap();
            let mut d_out = s.alloc_zeros::<u8>(len + misalign).unwrap();
            // One launch, then the same chunk as three launches with block offsets.
            k.decrypt(
                &rk,
                &block,
                &d_in.slice(misalign..),
                &mut d_out.slice_mut(misalign..),
                0,
            )
            .unwrap();
            assert_eq!(
                s.clone_dtoh(&d_out).unwrap()[misalign..],
                expected[..],
                "len {len}"
            );
            let cut1 = (len / 3) & !15;
            let cut2 = (2 * len / 3) & !15;
            for (a, b) in [(0, cut1), (cut1, cut2), (cut2, len)] {
                let (a2, b2) = (a + misalign, b + misalign);
                k.decrypt(
                    &rk,
                    &block,
                    &d_in.slice(a2..b2),
                    &mut d_out.slice_mut(a2..b2),
                    (a / 16) as u64,
                )
                .unwrap();
            }
            assert_eq!(
                s.clone_dtoh(&d_out).unwrap()[misalign..],
                expected[..],
                "split len {len}"
            );
            // Zero-fill all but one guard byte at each end.
            if len >= 2 {
                k.zero_fill(&mut d_out.slice_mut(misalign + 1..misalign + len - 1))
                    .unwrap();
                let z = s.clone_dtoh(&d_out).unwrap();
                assert_eq!(z[misalign], expected[0]);
                assert_eq!(z[misalign + len - 1], expected[len - 1]);
                assert!(z[misalign + 1..misalign + len - 1].iter().all(|&b| b == 0));
            }
        }
    }
}

#[test]
fn gpu_throughput() {
    let Some(k) = kernels() else { return };
    let s = k.stream().clone();
    let len = 1usize << 30;
    let rk = k
        .upload_round_keys(&Aes256RoundKeys::expand(&[3u8; 32]))
        .unwrap();
    let d_in = s.alloc_zeros::<u8>(len).unwrap();
    let mut d_out = s.alloc_zeros::<u8>(len).unwrap();
    let block = [0u8; 16];
    k.decrypt(&rk, &block, &d_in.slice(..), &mut d_out.slice_mut(..), 0)
        .unwrap();
    s.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..5 {
        k.decrypt(&rk, &block, &d_in.slice(..), &mut d_out.slice_mut(..), 0)
            .unwrap();
    }
    s.synchronize().unwrap();
    let ctr_gbs = 5.0 * len as f64 / t.elapsed().as_secs_f64() / 1e9;
    let t = Instant::now();
    for _ in 0..5 {
        k.zero_fill(&mut d_out.slice_mut(..)).unwrap();
    }
    s.synchronize().unwrap();
    let zero_gbs = 5.0 * len as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!(
        "aes256_ctr_decrypt: {ctr_gbs:.1} GB/s; zero_fill: {zero_gbs:.1} GB/s (1 GiB buffers)"
    );
}
