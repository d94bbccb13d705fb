//! The kernels on a real GPU (feature `cuda`), against RustCrypto: many threads per block, real
//! shared memory and barriers — what `kernels_host.rs` cannot cover. Skips (and says so) without
//! a CUDA driver. Kernels come from NVRTC, or from PTX files in `$CLOISTER_KERNEL_PTX_DIR`
//! (`aes_ctr.ptx`, `zero.ptx`, written by `tests/nvrtc_compile.rs` via `CLOISTER_WRITE_PTX_DIR`)
//! on GPU machines without libnvrtc.
#![cfg(feature = "cuda")]

#[path = "common/gpu_kernels.rs"]
mod gpu_kernels;
#[path = "common/memscan.rs"]
mod memscan;

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use aes::cipher::{KeyIvInit, StreamCipher};
use cloister::gpu::aes_key_schedule::Aes256RoundKeys;
use cloister::gpu::device::GpuKernels;
use cloister::gpu::sealed_load::{upload_plain, upload_sealed_segment, DeviceLoadError};
use cloister::keys::{Keyring, PublisherKey, TrustedPublishers};
use cloister::seal::{seal, PayloadKind, SealError, SealParams, SealedFile, Segment};
use gpu_kernels::kernels;
use memscan::{MaskedCanary, CANARY_LEN};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use zeroize::Zeroize;

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

// ---- Sealed weights decrypted on the device (DESIGN.md §3: no host plaintext) ----

/// Seeds the keys of sealed test files, so a child process can rebuild the same keyring.
const SEALED_KEY_SEED: u64 = 7;
/// The canary child's sealed file (set by the parent only).
const CANARY_CHILD_FILE_ENV: &str = "CLOISTER_GPU_CANARY_CHILD_FILE";
/// The canary as [`MaskedCanary::to_hex`] (set by the parent only).
const CANARY_CHILD_CANARY_ENV: &str = "CLOISTER_GPU_CANARY_CHILD_CANARY";
/// Name of the child test, run by [`gpu_canary_not_in_host_memory`] in a fresh process.
const CANARY_CHILD_TEST: &str = "gpu_canary_child";

/// A keyring, a publisher and the publisher trusted, all from `seed` (test keys only).
fn sealing_keys(seed: u64) -> (Keyring, PublisherKey, TrustedPublishers) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ring = Keyring::generate("gpu-test", &mut rng).expect("keyring");
    let publisher = PublisherKey::generate("gpu-test-publisher", &mut rng).expect("publisher");
    let mut trusted = TrustedPublishers::new();
    trusted
        .insert("gpu-test-publisher", publisher.verifying_key())
        .expect("trusted publisher");
    (ring, publisher, trusted)
}

/// Seals `plain` (`meta_len` bytes of meta, the rest tensors) in memory, 1 MiB chunks.
fn seal_in_memory(
    plain: &[u8],
    meta_len: usize,
    ring: &Keyring,
    publisher: &PublisherKey,
) -> Vec<u8> {
    let mut out = Vec::new();
    seal(
        Cursor::new(plain),
        &mut out,
        meta_len as u64,
        plain.len() as u64,
        &SealParams::new("gpu-test-model", PayloadKind::Gguf),
        ring,
        publisher,
        &mut StdRng::seed_from_u64(99),
        &mut |_| {},
    )
    .expect("seal");
    out
}

/// Asserts `got == want` without printing megabytes on failure.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at} of {}", want.len());
    }
}

#[test]
fn gpu_sealed_load_decrypts_on_device() {
    let Some(k) = kernels() else { return };
    let s = k.stream().clone();
    let (ring, publisher, trusted) = sealing_keys(SEALED_KEY_SEED);
    // 2 meta chunks; 6 tensors chunks, the last one short and not a multiple of 16 bytes.
    let meta_len = (1 << 20) + 333;
    let mut plain = vec![0u8; meta_len + (5 << 20) + 12_345];
    StdRng::seed_from_u64(12).fill_bytes(&mut plain);
    let file = seal_in_memory(&plain, meta_len, &ring, &publisher);

    let mut sealed = SealedFile::open(Cursor::new(&file), &trusted, &ring).expect("open");
    let layout = *sealed.layout();
    assert_eq!(layout.tensors.chunk_count, 6);
    for (segment, want) in [
        (Segment::Tensors, &plain[meta_len..]),
        (Segment::Meta, &plain[..meta_len]),
    ] {
        let on_device = upload_sealed_segment(&k, &mut sealed, segment)
            .unwrap_or_else(|e| panic!("{segment:?}: sealed upload failed: {e}"));
        let back = s.clone_dtoh(&on_device).expect("download");
        assert_same_bytes(&back, want, &format!("{segment:?} decrypted on the device"));
    }

    // One flipped ciphertext bit (tag untouched, so `open` passes): refused, nothing returned.
    let chunk = layout.tensors.chunk(3).expect("chunk 3");
    let mut bad = file.clone();
    bad[chunk.offset as usize + 100] ^= 1;
    let mut sealed = SealedFile::open(Cursor::new(&bad), &trusted, &ring).expect("open");
    match upload_sealed_segment(&k, &mut sealed, Segment::Tensors) {
        Err(DeviceLoadError::Seal(SealError::Rejected)) => {}
        Err(e) => panic!("tampered file: wrong error: {e}"),
        Ok(_) => panic!("tampered file was uploaded"),
    }

    // An empty tensors segment (one empty chunk) gives an empty buffer.
    let file = seal_in_memory(&plain[..100], 100, &ring, &publisher);
    let mut sealed = SealedFile::open(Cursor::new(&file), &trusted, &ring).expect("open");
    let empty = upload_sealed_segment(&k, &mut sealed, Segment::Tensors).expect("empty segment");
    assert_eq!(empty.len(), 0);

    match std::env::var_os("CLOISTER_GPU_MODEL") {
        Some(gguf) => time_sealed_vs_plaintext_load(&k, Path::new(&gguf)),
        None => println!(
            "sealed_load_to_device: skipped: set CLOISTER_GPU_MODEL to a plaintext .gguf for the \
             timing figure"
        ),
    }
}

/// Seals `gguf` with fresh keys, then times (best of 3, page cache warm) the tensors segment
/// from the sealed file to device plaintext (open + verify + upload + decrypt + sync) against
/// the GGUF's tensor data read from the file and uploaded (read + upload + sync).
fn time_sealed_vs_plaintext_load(k: &GpuKernels, gguf: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ring, publisher, trusted) = sealing_keys(rand::random());
    let sealed_path = dir.path().join("model.sealed");
    cloister::model::seal_gguf_file(
        gguf,
        &sealed_path,
        "gpu-timing",
        &ring,
        &publisher,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("sealing {}: {e}", gguf.display()));
    let (tensors_at, total) = cloister::model::gguf_meta_len(gguf).expect("GGUF header");
    let tensors_len = usize::try_from(total - tensors_at).expect("tensor data size");
    // Warm the page cache: both loads then read from memory, as on a server's second start.
    drop(std::fs::read(gguf).expect("read GGUF"));
    drop(std::fs::read(&sealed_path).expect("read sealed file"));

    let plain_load = || {
        let t = Instant::now();
        let mut f = File::open(gguf).expect("open GGUF");
        f.seek(SeekFrom::Start(tensors_at)).expect("seek");
        let mut bytes = vec![0u8; tensors_len];
        f.read_exact(&mut bytes).expect("read tensor data");
        let on_device = upload_plain(k, &bytes).expect("plain upload");
        (t.elapsed(), on_device)
    };
    let sealed_load = || {
        let t = Instant::now();
        // Unbuffered: `open` seeks to every chunk tag and the segment is read a whole chunk at
        // a time, so a BufReader would only add copies.
        let f = File::open(&sealed_path).expect("open sealed file");
        let mut sealed = SealedFile::open(f, &trusted, &ring).expect("open sealed file");
        let opened = t.elapsed();
        let on_device =
            upload_sealed_segment(k, &mut sealed, Segment::Tensors).expect("sealed upload");
        (t.elapsed(), opened, on_device)
    };
    let (mut best_sealed, mut best_plain) = (Duration::MAX, Duration::MAX);
    let mut best_open = Duration::MAX;
    let mut last_sealed = None;
    for _ in 0..3 {
        let (t, opened, buf) = sealed_load();
        best_sealed = best_sealed.min(t);
        best_open = best_open.min(opened);
        drop(last_sealed.replace(buf));
        let (t, buf) = plain_load();
        best_plain = best_plain.min(t);
        drop(buf);
    }
    let on_device = last_sealed.expect("three rounds ran");
    let back = k.stream().clone_dtoh(&on_device).expect("download");
    let mut f = File::open(gguf).expect("open GGUF");
    f.seek(SeekFrom::Start(tensors_at)).expect("seek");
    let mut want = vec![0u8; tensors_len];
    f.read_exact(&mut want).expect("read tensor data");
    assert_same_bytes(&back, &want, "sealed load of the model's tensors");

    let (x, y) = (
        best_sealed.as_secs_f64() * 1e3,
        best_plain.as_secs_f64() * 1e3,
    );
    println!(
        "sealed_load_to_device: {x:.1} ms, plaintext_load_to_device: {y:.1} ms, ratio {:.2}, \
         tensors {} MiB",
        x / y,
        tensors_len >> 20
    );
    println!(
        "sealed_load_to_device: of which open (header, signature over all tags, DEK unwrap) \
         {:.1} ms",
        best_open.as_secs_f64() * 1e3
    );
}

/// Runs [`gpu_canary_child`] in a fresh process that never held the plaintext: it loads a
/// sealed file whose tensors hold a random 64-byte canary onto the GPU, then scans its own host
/// memory for the canary (expects none) and the device buffer (expects it once).
#[test]
fn gpu_canary_not_in_host_memory() {
    if kernels().is_none() {
        return;
    }
    let canary = MaskedCanary::random();
    let (ring, publisher, _) = sealing_keys(SEALED_KEY_SEED);
    // 3 tensors chunks; the canary straddles chunks 1 and 2 (two nonces, two launches).
    let meta_len = 4096;
    let mut plain = vec![0u8; meta_len + (3 << 20) + 777];
    rand::rngs::OsRng.fill_bytes(&mut plain);
    let at = meta_len + (2 << 20) - CANARY_LEN / 2;
    for i in 0..CANARY_LEN {
        plain[at + i] = canary.byte(i);
    }
    let file = seal_in_memory(&plain, meta_len, &ring, &publisher);
    plain.zeroize();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("canary.sealed");
    std::fs::write(&path, file).expect("write sealed file");

    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            CANARY_CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CANARY_CHILD_FILE_ENV, &path)
        .env(CANARY_CHILD_CANARY_ENV, canary.to_hex())
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "canary child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // libtest prints the child's lines after its own "test … ... " prefix.
    let Some(line) = stdout
        .lines()
        .find_map(|l| l.find("gpu canary:").map(|at| &l[at..]))
    else {
        panic!("the canary child printed no result:\n{stdout}\n{stderr}");
    };
    println!("{line}");
}

/// The child half of [`gpu_canary_not_in_host_memory`]; does nothing unless that test set its
/// environment.
#[test]
fn gpu_canary_child() {
    let (Some(path), Some(hex)) = (
        std::env::var_os(CANARY_CHILD_FILE_ENV),
        std::env::var_os(CANARY_CHILD_CANARY_ENV),
    ) else {
        return;
    };
    let canary = hex
        .to_str()
        .and_then(MaskedCanary::from_hex)
        .expect("canary from the parent");
    let Some(k) = kernels() else {
        println!("gpu canary: skipped: no GPU in the child");
        return;
    };
    let (ring, _, trusted) = sealing_keys(SEALED_KEY_SEED);
    let f = File::open(&path).expect("open sealed file");
    let mut sealed =
        SealedFile::open(BufReader::new(f), &trusted, &ring).expect("open sealed file");
    let on_device =
        upload_sealed_segment(&k, &mut sealed, Segment::Tensors).expect("sealed upload");
    k.stream().synchronize().expect("synchronize");
    drop(sealed);

    let host = match memscan::scan_process("self", &canary) {
        Ok(scan) => scan,
        Err(e) => {
            println!("gpu canary: skipped: cannot read /proc/self/mem ({e})");
            return;
        }
    };
    // Device apertures (/dev/nvidia*) cannot be read through /proc/self/mem and hold no host
    // memory; any other unreadable page would be a gap in the scan.
    let (aperture, gaps): (Vec<_>, Vec<_>) = host
        .unreadable
        .iter()
        .partition(|(_, _, name)| name.starts_with("/dev/"));
    assert!(
        host.hits.is_empty(),
        "plaintext canary in host memory at {:x?}",
        host.hits
    );
    assert!(gaps.is_empty(), "host memory not scanned: {gaps:x?}");
    assert!(
        host.bytes_read > 16 << 20,
        "scanned only {} bytes",
        host.bytes_read
    );

    // Positive control, only after the host scan: the plaintext is on the device, once.
    let mut back = k.stream().clone_dtoh(&on_device).expect("download");
    let device_hits = back
        .windows(CANARY_LEN)
        .filter(|w| canary.matches(w))
        .count();
    back.zeroize();
    assert_eq!(device_hits, 1, "canary copies in the device plaintext");
    println!(
        "gpu canary: host hits {}, device hits {device_hits}, scanned {} MiB ({} KiB of device \
         apertures unreadable)",
        host.hits.len(),
        host.bytes_read >> 20,
        aperture.iter().map(|(_, len, _)| len).sum::<usize>() >> 10
    );
}
