//! End-to-end tests of the container: round trips, tampering, rewrap, GPU contract.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;
use std::sync::OnceLock;

use aes::cipher::{KeyIvInit, StreamCipher};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::chunk::SignedDigest;
use super::format::{SIGNATURE_LEN, TAG_LEN};
use super::*;
use crate::keys::{Keyring, PublisherKey, TrustedPublishers};

const CHUNK: u32 = 4096;
const REJECTED: &str = "sealed model rejected: integrity, signature or key check failed";

struct Fixture {
    ring: Keyring,
    publisher: PublisherKey,
    trusted: TrustedPublishers,
    plain: Vec<u8>,
    meta_len: usize,
    file: Vec<u8>,
    summary: SealSummary,
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn keys(seed: u64) -> (Keyring, PublisherKey, TrustedPublishers) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ring = Keyring::generate("main", &mut rng).unwrap();
    let publisher = PublisherKey::generate("pub-1", &mut rng).unwrap();
    let mut trusted = TrustedPublishers::new();
    trusted.insert("pub-1", publisher.verifying_key()).unwrap();
    (ring, publisher, trusted)
}

fn seal_vec(
    plain: &[u8],
    meta_len: usize,
    ring: &Keyring,
    publisher: &PublisherKey,
) -> (Vec<u8>, SealSummary) {
    seal_vec_seeded(plain, meta_len, ring, publisher, 99)
}

fn seal_vec_seeded(
    plain: &[u8],
    meta_len: usize,
    ring: &Keyring,
    publisher: &PublisherKey,
    seed: u64,
) -> (Vec<u8>, SealSummary) {
    let mut params = SealParams::new("smollm2-135m", PayloadKind::Gguf);
    params.chunk_size = CHUNK;
    let mut out = Vec::new();
    let summary = seal(
        Cursor::new(plain),
        &mut out,
        meta_len as u64,
        plain.len() as u64,
        &params,
        ring,
        publisher,
        &mut StdRng::seed_from_u64(seed),
        &mut |_| {},
    )
    .unwrap();
    (out, summary)
}

/// 1.25 meta chunks and 3.5 tensors chunks of 4 KiB: 2 + 4 chunks.
fn fixture() -> Fixture {
    let (ring, publisher, trusted) = keys(1);
    let meta_len = 5120;
    let plain = payload(meta_len + 14336, 2);
    let (file, summary) = seal_vec(&plain, meta_len, &ring, &publisher);
    Fixture {
        ring,
        publisher,
        trusted,
        plain,
        meta_len,
        file,
        summary,
    }
}

fn shared() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(fixture)
}

fn decrypt_all(
    file: &[u8],
    trusted: &TrustedPublishers,
    keys: &dyn crate::keys::KeyProvider,
) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let mut f = SealedFile::open(Cursor::new(file), trusted, keys)?;
    let mut meta = vec![0u8; f.header().meta_len() as usize];
    let mut tensors = vec![0u8; f.header().tensors_len() as usize];
    f.decrypt_meta_into(&mut meta)?;
    f.decrypt_tensors_into(&mut tensors)?;
    Ok((meta, tensors))
}

fn assert_is_rejected(e: &SealError) {
    assert!(matches!(e, SealError::Rejected), "not Rejected: {e:?}");
    assert_eq!(e.to_string(), REJECTED);
}

/// Asserts that `file` is refused: either `open` fails, or (for altered chunk bytes) every path
/// that would touch the bad chunk fails — decryption (leaving its pre-filled buffer zeroed) and
/// tag verification.
fn assert_refused(file: &[u8], trusted: &TrustedPublishers, keys: &dyn crate::keys::KeyProvider) {
    let mut f = match SealedFile::open(Cursor::new(file), trusted, keys) {
        Err(e) => return assert_is_rejected(&e),
        Ok(f) => f,
    };
    assert_is_rejected(&f.verify_all_tags().unwrap_err());
    let mut failures = 0;
    for segment in Segment::ALL {
        let len = f.header().segment_len(segment) as usize;
        let mut out = vec![0xAAu8; len];
        let decrypted = f.decrypt_into(segment, &mut out);
        // The GPU path's tag check must refuse exactly what decryption refuses.
        let mut ciphertext = vec![0xAAu8; len];
        let verified = f.read_verified_segment(segment, &mut ciphertext);
        assert_eq!(decrypted.is_ok(), verified.is_ok(), "{segment:?}");
        if let (Err(e), Err(v)) = (decrypted, verified) {
            assert_is_rejected(&e);
            assert_is_rejected(&v);
            assert!(out.iter().all(|&b| b == 0), "buffer not zeroed");
            assert!(ciphertext.iter().all(|&b| b == 0), "ciphertext not zeroed");
            failures += 1;
        }
    }
    assert!(failures > 0, "tampered file decrypted fully");
}

fn chunk_layouts(layout: &FileLayout) -> Vec<ChunkLayout> {
    Segment::ALL
        .iter()
        .flat_map(|s| layout.segment(*s).chunks().collect::<Vec<_>>())
        .collect()
}

/// Re-signs `file` (tags as they now are) so tests can show the chunk AEAD alone catches a
/// change, even if the signature were bypassed.
fn resign(file: &mut [u8], fx: &Fixture) {
    let layout = fx.summary.layout;
    let mut d = SignedDigest::new(fx.summary.header.hash());
    for c in chunk_layouts(&layout) {
        let at = (c.offset as usize) + c.len;
        d.push_tag(file[at..at + TAG_LEN].try_into().unwrap());
    }
    let sig = fx.publisher.sign(&d.finish()).to_bytes();
    let t = layout.trailer_offset as usize;
    file[t..t + SIGNATURE_LEN].copy_from_slice(&sig);
}

#[test]
fn round_trip_is_byte_exact_for_many_shapes() {
    let (ring, publisher, trusted) = keys(3);
    let c = CHUNK as usize;
    let shapes = [
        (0, 0),
        (0, 5000),
        (5000, 0),
        (c, 2 * c),
        (1, 1),
        (c - 1, c + 1),
        (2 * c + 7, 3 * c + c / 2),
    ];
    for (i, (meta_len, tensors_len)) in shapes.into_iter().enumerate() {
        let plain = payload(meta_len + tensors_len, i as u64);
        let (file, summary) = seal_vec(&plain, meta_len, &ring, &publisher);
        assert_eq!(summary.layout.file_len, file.len() as u64);
        let (meta, tensors) = decrypt_all(&file, &trusted, &ring).unwrap();
        assert_eq!(meta, plain[..meta_len]);
        assert_eq!(tensors, plain[meta_len..]);
        let expected_chunks = |n: usize| n.div_ceil(c).max(1) as u64;
        assert_eq!(summary.layout.meta.chunk_count, expected_chunks(meta_len));
        assert_eq!(
            summary.layout.tensors.chunk_count,
            expected_chunks(tensors_len)
        );
        let mut f = SealedFile::open(Cursor::new(&file), &trusted, &ring).unwrap();
        f.verify_all_tags().unwrap();
    }
}

#[test]
fn open_reads_from_a_nonzero_stream_offset() {
    let fx = shared();
    let mut data = b"junk before".to_vec();
    data.extend_from_slice(&fx.file);
    let mut cur = Cursor::new(&data);
    cur.set_position(11);
    let mut f = SealedFile::open(cur, &fx.trusted, &fx.ring).unwrap();
    let mut meta = vec![0; fx.meta_len];
    f.decrypt_meta_into(&mut meta).unwrap();
    assert_eq!(meta, fx.plain[..fx.meta_len]);
}

#[test]
fn seal_reports_progress_and_header_fields() {
    let (ring, publisher, _) = keys(4);
    let plain = payload(3 * CHUNK as usize + 10, 5);
    let mut params = SealParams::new("m", PayloadKind::Safetensors);
    params.chunk_size = CHUNK;
    let mut seen = Vec::new();
    let s = seal(
        Cursor::new(&plain),
        Vec::new(),
        10,
        plain.len() as u64,
        &params,
        &ring,
        &publisher,
        &mut StdRng::seed_from_u64(1),
        &mut |n| seen.push(n),
    )
    .unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(seen.last(), Some(&(plain.len() as u64)));
    assert_eq!(seen.len(), 1 + 3); // 1 meta chunk + 3 tensors chunks (3 * 4096 exactly)
    assert_eq!(s.header.model_id(), "m");
    assert_eq!(s.header.payload_kind(), PayloadKind::Safetensors);
    assert_eq!(s.header.publisher_key_id(), "pub-1");
    assert_eq!(s.envelope.kek().version, 1);
}

#[test]
fn seal_refuses_bad_parameters_and_wrong_lengths() {
    let (ring, publisher, _) = keys(5);
    let plain = payload(100, 1);
    let run = |meta: u64, total: u64, chunk: u32, id: &str| {
        let mut params = SealParams::new(id, PayloadKind::Gguf);
        params.chunk_size = chunk;
        seal(
            Cursor::new(&plain),
            Vec::new(),
            meta,
            total,
            &params,
            &ring,
            &publisher,
            &mut StdRng::seed_from_u64(1),
            &mut |_| {},
        )
    };
    assert!(run(10, 100, CHUNK, "m").is_ok());
    assert!(matches!(
        run(10, 101, CHUNK, "m"),
        Err(SealError::PlaintextLength)
    ));
    assert!(matches!(
        run(10, 99, CHUNK, "m"),
        Err(SealError::PlaintextLength)
    ));
    assert!(matches!(
        run(101, 100, CHUNK, "m"),
        Err(SealError::InvalidParams(_))
    ));
    assert!(matches!(
        run(10, 100, CHUNK - 1, "m"),
        Err(SealError::InvalidParams(_))
    ));
    assert!(matches!(
        run(10, 100, MAX_CHUNK_SIZE + 1, "m"),
        Err(SealError::InvalidParams(_))
    ));
    assert!(matches!(
        run(10, 100, CHUNK, ""),
        Err(SealError::InvalidParams(_))
    ));
    assert!(matches!(
        run(10, 100, CHUNK, &"x".repeat(257)),
        Err(SealError::InvalidParams(_))
    ));
    // More than 2^32 chunks per segment.
    assert!(matches!(
        run(0, (1u64 << 32) * u64::from(CHUNK) + 1, CHUNK, "m"),
        Err(SealError::InvalidParams(_))
    ));
}

#[test]
fn wrong_buffer_size_is_reported_and_buffer_zeroed() {
    let fx = shared();
    let mut f = SealedFile::open(Cursor::new(&fx.file), &fx.trusted, &fx.ring).unwrap();
    let mut out = vec![0xAA; fx.meta_len + 1];
    assert!(matches!(
        f.decrypt_meta_into(&mut out),
        Err(SealError::BufferSize { .. })
    ));
    assert!(out.iter().all(|&b| b == 0));
}

#[test]
fn a_flipped_bit_in_every_prefix_byte_is_rejected() {
    // Covers magic, version, header length, every header field and every envelope byte.
    let fx = shared();
    for at in 0..fx.summary.layout.chunks_offset as usize {
        let mut file = fx.file.clone();
        file[at] ^= 1 << (at % 8);
        assert_refused(&file, &fx.trusted, &fx.ring);
    }
}

#[test]
fn flipped_bits_in_chunks_tags_signature_and_trailer_are_rejected() {
    let fx = shared();
    let layout = fx.summary.layout;
    let mut spots = Vec::new();
    for c in chunk_layouts(&layout) {
        let o = c.offset as usize;
        spots.extend([
            o,
            o + c.len / 2,
            o + c.len - 1,
            o + c.len,
            o + c.len + TAG_LEN - 1,
        ]);
    }
    let t = layout.trailer_offset as usize;
    spots.extend([t, t + 31, t + 32, t + 63, t + 64, fx.file.len() - 1]);
    for at in spots {
        for bit in [0, 7] {
            let mut file = fx.file.clone();
            file[at] ^= 1 << bit;
            assert_refused(&file, &fx.trusted, &fx.ring);
        }
    }
}

#[test]
fn chunk_ciphertext_flip_is_caught_by_aead_even_if_resigned() {
    let fx = shared();
    for c in chunk_layouts(&fx.summary.layout) {
        let mut file = fx.file.clone();
        file[c.offset as usize] ^= 0x10;
        resign(&mut file, fx);
        assert_refused(&file, &fx.trusted, &fx.ring);
    }
}

#[test]
fn truncation_and_trailing_bytes_are_rejected() {
    let fx = shared();
    let mut cuts = vec![0, 7, 13, fx.summary.layout.chunks_offset as usize];
    for c in chunk_layouts(&fx.summary.layout) {
        cuts.push(c.offset as usize);
        cuts.push(c.offset as usize + c.len + TAG_LEN);
    }
    cuts.push(fx.file.len() - 72);
    cuts.push(fx.file.len() - 1);
    for cut in cuts {
        assert_refused(&fx.file[..cut], &fx.trusted, &fx.ring);
    }
    let mut longer = fx.file.clone();
    longer.push(0);
    assert_refused(&longer, &fx.trusted, &fx.ring);
}

fn swap_chunks(file: &mut [u8], a: &ChunkLayout, b: &ChunkLayout) {
    assert_eq!(a.len, b.len);
    let n = a.len + TAG_LEN;
    let (a, b) = (a.offset as usize, b.offset as usize);
    let tmp = file[a..a + n].to_vec();
    file.copy_within(b..b + n, a);
    file[b..b + n].copy_from_slice(&tmp);
}

#[test]
fn reordered_and_cross_segment_chunks_are_rejected_even_if_resigned() {
    let fx = shared();
    let l = fx.summary.layout;
    let t0 = l.tensors.chunk(0).unwrap();
    let t1 = l.tensors.chunk(1).unwrap();
    let m0 = l.meta.chunk(0).unwrap();
    for (a, b) in [(t0, t1), (m0, t0)] {
        let mut file = fx.file.clone();
        swap_chunks(&mut file, &a, &b);
        assert_refused(&file, &fx.trusted, &fx.ring);
        resign(&mut file, fx);
        assert_refused(&file, &fx.trusted, &fx.ring);
    }
}

#[test]
fn wrong_unknown_or_retired_keks_are_rejected() {
    let fx = shared();
    let mut rng = StdRng::seed_from_u64(77);
    // Same id and version, different key bytes.
    let other_same_id = Keyring::generate("main", &mut rng).unwrap();
    assert_refused(&fx.file, &fx.trusted, &other_same_id);
    // Different keyring id.
    let other_id = Keyring::generate("other", &mut rng).unwrap();
    assert_refused(&fx.file, &fx.trusted, &other_id);
    // Version 1 retired.
    let mut ring = Keyring::from_json(&fx.ring.to_json()).unwrap();
    ring.rotate(&mut rng).unwrap();
    assert!(decrypt_all(&fx.file, &fx.trusted, &ring).is_ok());
    ring.retire_below(2).unwrap();
    assert_refused(&fx.file, &fx.trusted, &ring);
}

#[test]
fn untrusted_or_impostor_publishers_are_rejected() {
    let fx = shared();
    assert_refused(&fx.file, &TrustedPublishers::new(), &fx.ring);
    let impostor = PublisherKey::generate("pub-1", &mut StdRng::seed_from_u64(8)).unwrap();
    let mut wrong_key = TrustedPublishers::new();
    wrong_key.insert("pub-1", impostor.verifying_key()).unwrap();
    assert_refused(&fx.file, &wrong_key, &fx.ring);
    let mut other_id = TrustedPublishers::new();
    other_id
        .insert("pub-2", fx.publisher.verifying_key())
        .unwrap();
    assert_refused(&fx.file, &other_id, &fx.ring);
    // A file sealed by the impostor is refused by a server trusting the real key.
    let (file, _) = seal_vec(&fx.plain, fx.meta_len, &fx.ring, &impostor);
    assert_refused(&file, &fx.trusted, &fx.ring);
}

#[test]
fn rewrap_changes_only_the_envelope() {
    let fx = shared();
    let mut ring = Keyring::from_json(&fx.ring.to_json()).unwrap();
    assert_eq!(ring.rotate(&mut StdRng::seed_from_u64(9)).unwrap(), 2);
    let f = SealedFile::open(Cursor::new(&fx.file), &fx.trusted, &ring).unwrap();
    let new_env = rewrap_envelope(f.header(), f.envelope(), &ring, &ring).unwrap();
    assert_eq!(new_env.kek().version, 2);
    let old_offset = f.layout().chunks_offset as usize;
    let mut rewrapped = encode_prefix(f.header(), &new_env);
    let new_offset = rewrapped.len();
    rewrapped.extend_from_slice(&fx.file[old_offset..]);

    let (meta, tensors) = decrypt_all(&rewrapped, &fx.trusted, &ring).unwrap();
    assert_eq!(meta, fx.plain[..fx.meta_len]);
    assert_eq!(tensors, fx.plain[fx.meta_len..]);
    assert_eq!(rewrapped[new_offset..], fx.file[old_offset..]);
    assert_eq!(
        rewrapped[..f.header().encoded().len()],
        fx.file[..f.header().encoded().len()]
    );
    let g = SealedFile::open(Cursor::new(&rewrapped), &fx.trusted, &ring).unwrap();
    assert_eq!(g.envelope().kek().version, 2);

    // Old file still opens with v1 until it is retired; the rewrapped one survives retirement.
    assert!(decrypt_all(&fx.file, &fx.trusted, &ring).is_ok());
    ring.retire_below(2).unwrap();
    assert_refused(&fx.file, &fx.trusted, &ring);
    assert!(decrypt_all(&rewrapped, &fx.trusted, &ring).is_ok());
    // The original (v1-only) keyring cannot open the rewrapped file.
    assert_refused(&rewrapped, &fx.trusted, &fx.ring);
    // An envelope cannot be moved onto another file (its AAD holds the header hash).
    let (other, _) = seal_vec_seeded(&fx.plain, fx.meta_len, &ring, &fx.publisher, 1234);
    let o = SealedFile::open(Cursor::new(&other), &fx.trusted, &ring).unwrap();
    let mut transplanted = encode_prefix(o.header(), &new_env);
    transplanted.extend_from_slice(&other[o.layout().chunks_offset as usize..]);
    assert_refused(&transplanted, &fx.trusted, &ring);
}

#[test]
fn rewrap_file_streams_new_prefix_and_identical_chunks() {
    let fx = shared();
    let mut ring = Keyring::from_json(&fx.ring.to_json()).unwrap();
    ring.rotate(&mut StdRng::seed_from_u64(10)).unwrap();
    let mut out = Vec::new();
    let env = rewrap_file(Cursor::new(&fx.file), &mut out, &fx.trusted, &ring, &ring).unwrap();
    assert_eq!(env.kek().version, 2);
    let old = fx.summary.layout.chunks_offset as usize;
    let new = out.len() - (fx.file.len() - old);
    assert_eq!(out[new..], fx.file[old..]);
    assert!(decrypt_all(&out, &fx.trusted, &ring).is_ok());
    // A tampered file is not laundered by rewrap.
    let mut bad = fx.file.clone();
    let t = fx.summary.layout.trailer_offset as usize;
    bad[t] ^= 1;
    let e = rewrap_file(Cursor::new(&bad), Vec::new(), &fx.trusted, &ring, &ring).unwrap_err();
    assert_is_rejected(&e);
}

/// The segment's chunk ciphertexts as stored in `file`, tags left out.
fn stored_ciphertext(file: &[u8], layout: &SegmentLayout) -> Vec<u8> {
    layout
        .chunks()
        .flat_map(|c| file[c.offset as usize..][..c.len].iter().copied())
        .collect()
}

#[test]
fn read_verified_segment_gives_stored_ciphertext_that_ctr_decrypts_to_plaintext() {
    // The whole-segment GPU contract: the host hands over exactly the stored ciphertext, and
    // AES-256-CTR (RustCrypto's `ctr`, low 32 bits big-endian) from each chunk's
    // ctr_initial_block yields the plaintext. Shapes include empty and one-byte segments.
    let (ring, publisher, trusted) = keys(6);
    let c = CHUNK as usize;
    for (i, (meta_len, tensors_len)) in [(5120, 14336), (0, 0), (1, 3 * c), (c + 1, 1)]
        .into_iter()
        .enumerate()
    {
        let plain = payload(meta_len + tensors_len, 10 + i as u64);
        let (file, _) = seal_vec(&plain, meta_len, &ring, &publisher);
        let mut f = SealedFile::open(Cursor::new(&file), &trusted, &ring).unwrap();
        let prefix = *f.header().nonce_prefix();
        for (segment, expected) in Segment::ALL
            .into_iter()
            .zip([&plain[..meta_len], &plain[meta_len..]])
        {
            let layout = *f.layout().segment(segment);
            let mut out = vec![0xAAu8; expected.len()];
            f.read_verified_segment(segment, &mut out).unwrap();
            assert_eq!(out, stored_ciphertext(&file, &layout), "{segment:?}");
            let key = f.segment_key(segment).as_bytes();
            for chunk in layout.chunks() {
                let block = ctr_initial_block(&chunk_nonce(&prefix, chunk.index, chunk.is_last));
                let at = chunk.plaintext_offset as usize;
                ctr::Ctr32BE::<aes::Aes256>::new(key.into(), &block.into())
                    .apply_keystream(&mut out[at..at + chunk.len]);
            }
            assert_eq!(out, expected, "{segment:?}, shape {i}");
        }
    }
}

#[test]
fn read_verified_segment_rejects_a_flipped_ciphertext_bit_and_wipes_the_buffer() {
    let fx = shared();
    let l = fx.summary.layout;
    let tensors_len = l.tensors.plaintext_len as usize;
    for chunk in [l.tensors.chunk(0).unwrap(), l.tensors.chunk(3).unwrap()] {
        let mut bad = fx.file.clone();
        bad[chunk.offset as usize + chunk.len / 2] ^= 0x20;
        // `open` passes: the signature covers tags, and the tag is untouched.
        let mut f = SealedFile::open(Cursor::new(&bad), &fx.trusted, &fx.ring).unwrap();
        let mut out = vec![0xAAu8; tensors_len];
        let e = f
            .read_verified_segment(Segment::Tensors, &mut out)
            .unwrap_err();
        assert_is_rejected(&e);
        assert!(out.iter().all(|&b| b == 0), "chunk {}", chunk.index);
        // The other segment is unaffected.
        let mut meta = vec![0u8; fx.meta_len];
        f.read_verified_segment(Segment::Meta, &mut meta).unwrap();
        assert_eq!(meta, stored_ciphertext(&bad, &l.meta));
    }
    let mut f = SealedFile::open(Cursor::new(&fx.file), &fx.trusted, &fx.ring).unwrap();
    let mut short = vec![0xAAu8; tensors_len - 1];
    assert!(matches!(
        f.read_verified_segment(Segment::Tensors, &mut short),
        Err(SealError::BufferSize { .. })
    ));
    assert!(short.iter().all(|&b| b == 0));
}

#[test]
fn debug_of_an_open_file_shows_no_key_material() {
    let fx = shared();
    let f = SealedFile::open(Cursor::new(&fx.file), &fx.trusted, &fx.ring).unwrap();
    let dbg = format!("{f:?}");
    for segment in Segment::ALL {
        let key = f.segment_key(segment).as_bytes();
        assert!(!dbg.contains(&hex::encode(key)));
        assert!(!dbg.contains(&format!("{:?}", &key[..8])));
    }
    assert!(is_sealed_magic(&fx.file) && !is_sealed_magic(b"GGUF\x03\0\0\0"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_single_bit_flip_is_refused(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let fx = shared();
        let mut file = fx.file.clone();
        let at = pos.index(file.len());
        file[at] ^= 1 << bit;
        assert_refused(&file, &fx.trusted, &fx.ring);
    }
}
