//! Chunk cryptography: per-file segment keys, STREAM nonces, AES-256-GCM per chunk, the
//! plaintext-free tag check, and the signing digest over all tags.
//!
//! Why STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015): each chunk is its own AEAD message, so
//! a 100 GB model is processed in bounded memory, while the nonce's counter and last-chunk flag
//! make reordering, dropping or truncating chunks fail authentication.

use std::fmt;

use aes::cipher::BlockEncrypt;
use aes::Aes256;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use hkdf::Hkdf;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::keys::Dek;

use super::error::SealError;
use super::format::{Segment, NONCE_PREFIX_LEN, SALT_LEN, TAG_LEN};

/// Prefix of the HKDF info string; the segment name follows.
pub const KDF_INFO_PREFIX: &[u8] = b"cloister/v1/";
/// Domain string at the start of the signed digest.
pub const SIGNATURE_DOMAIN: &[u8] = b"cloister/v1/signature\0";
/// Length of a chunk AAD: header hash ‖ segment id.
pub const CHUNK_AAD_LEN: usize = 33;

/// A per-file, per-segment AES-256 key, wiped on drop.
///
/// Derived, not random, so one DEK (the only wrapped secret) serves both segments while the two
/// segments never share a key: a chunk moved from one segment to the other cannot authenticate.
pub struct SegmentKey(Zeroizing<[u8; 32]>);

impl SegmentKey {
    /// `HKDF-SHA256(ikm = DEK, salt = header salt, info = "cloister/v1/" ‖ segment name)`.
    pub fn derive(dek: &Dek, salt: &[u8; SALT_LEN], segment: Segment) -> Result<Self, SealError> {
        let mut info = Vec::with_capacity(KDF_INFO_PREFIX.len() + 8);
        info.extend_from_slice(KDF_INFO_PREFIX);
        info.extend_from_slice(segment.name().as_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt), dek.as_bytes())
            .expand(&info, okm.as_mut_slice())
            // Unreachable: 32 bytes is far below HKDF's 255 * 32 limit.
            .map_err(|_| SealError::Rejected)?;
        Ok(SegmentKey(okm))
    }

    /// The raw key bytes — for handing to the device-side AES-CTR decryptor only.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SegmentKey(<redacted>)")
    }
}

/// The 12-byte chunk nonce: prefix (7) ‖ counter (u32 BE) ‖ last-chunk flag (0x01 / 0x00).
pub fn chunk_nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u32, is_last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(is_last);
    nonce
}

/// The chunk AAD: header hash ‖ segment id byte. Binds every chunk to this exact header.
pub fn chunk_aad(header_hash: &[u8; 32], segment: Segment) -> [u8; CHUNK_AAD_LEN] {
    let mut aad = [0u8; CHUNK_AAD_LEN];
    aad[..32].copy_from_slice(header_hash);
    aad[32] = segment.id();
    aad
}

/// The first AES-CTR counter block GCM uses for the payload: nonce ‖ 0x00000002 (J0 + 1).
/// A device-side CTR decryptor starts here and increments the last 32 bits (big-endian).
pub fn ctr_initial_block(nonce: &[u8; 12]) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..12].copy_from_slice(nonce);
    block[15] = 2;
    block
}

/// Recomputes the AES-256-GCM tag of (`nonce`, `aad`, `ciphertext`) under `key` and compares it
/// with `tag` in constant time, without producing any plaintext.
///
/// GCM authenticates the *ciphertext*: tag = GHASH_H(aad, ct, lengths) ⊕ E_K(J0), with
/// H = E_K(0^128) and J0 = nonce ‖ 0x00000001. So the host can vouch for a chunk and then hand
/// only ciphertext to the GPU, which decrypts with AES-CTR — plaintext never exists on the host.
pub fn verify_tag_without_decrypting(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    let cipher = Aes256::new(key.into());
    verify_with(&cipher, nonce, aad, ciphertext, tag)
}

fn verify_with(
    cipher: &Aes256,
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    // GCM's limits: ct ≤ 2^36 - 32 bytes; lengths in bits must fit u64.
    let (Some(aad_bits), Some(ct_bits)) = (
        (aad.len() as u64).checked_mul(8),
        (ciphertext.len() as u64).checked_mul(8),
    ) else {
        return false;
    };
    if ciphertext.len() as u64 > (1u64 << 36) - 32 {
        return false;
    }
    // H = E_K(0^128) is the GHASH key: wipe our copy once GHash has taken it.
    let mut h = aes::Block::default();
    cipher.encrypt_block(&mut h);
    let mut ghash = GHash::new(&h);
    h.as_mut_slice().zeroize();
    ghash.update_padded(aad);
    ghash.update_padded(ciphertext);
    let mut lengths = ghash::Block::default();
    lengths[..8].copy_from_slice(&aad_bits.to_be_bytes());
    lengths[8..].copy_from_slice(&ct_bits.to_be_bytes());
    ghash.update(&[lengths]);
    let mut expected = ghash.finalize();

    let mut j0 = aes::Block::default();
    j0[..12].copy_from_slice(nonce);
    j0[15] = 1;
    cipher.encrypt_block(&mut j0);
    for (e, m) in expected.iter_mut().zip(j0.iter()) {
        *e ^= m;
    }
    j0.as_mut_slice().zeroize();
    expected.as_slice().ct_eq(tag).into()
}

/// AES-256-GCM over one chunk with an explicit nonce and AAD: the only place the container's
/// chunk AEAD happens. [`SegmentCipher`] adds the STREAM nonce and the header-bound AAD on top.
///
/// Why a separate type: the nonce and AAD a segment uses are fixed by the format, so known-answer
/// vectors (Wycheproof, NIST) with arbitrary nonces and AADs can only reach the AEAD code through
/// this layer — and they then test exactly the code the reader and writer run.
pub struct ChunkAead {
    gcm: Aes256Gcm,
    aes: Aes256,
}

impl ChunkAead {
    /// Prepares the key schedules for `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        ChunkAead {
            gcm: Aes256Gcm::new(key.into()),
            aes: Aes256::new(key.into()),
        }
    }

    /// Encrypts `buf` in place and returns its tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealError> {
        let tag = self
            .gcm
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            .map_err(|_| SealError::InvalidParams("chunk too long for AES-GCM"))?;
        Ok(tag.into())
    }

    /// Decrypts `buf` in place; on failure `buf` is left as ciphertext (aes-gcm does not
    /// decrypt unless the tag verifies) and the error is [`SealError::Rejected`].
    pub fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), SealError> {
        self.gcm
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
            .map_err(|_| SealError::Rejected)
    }

    /// Checks `tag` over `ciphertext` without decrypting (see [`verify_tag_without_decrypting`]).
    pub fn verify(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        verify_with(&self.aes, nonce, aad, ciphertext, tag)
    }
}

impl fmt::Debug for ChunkAead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkAead(<redacted>)")
    }
}

/// The AEAD state for one segment of one file: key schedule, nonce prefix and AAD.
pub struct SegmentCipher {
    aead: ChunkAead,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    aad: [u8; CHUNK_AAD_LEN],
}

impl SegmentCipher {
    /// Prepares `segment`'s cipher with `key` for the file whose header hash is `header_hash`.
    pub fn new(
        key: &SegmentKey,
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
        header_hash: &[u8; 32],
        segment: Segment,
    ) -> Self {
        SegmentCipher {
            aead: ChunkAead::new(key.as_bytes()),
            nonce_prefix: *nonce_prefix,
            aad: chunk_aad(header_hash, segment),
        }
    }

    /// Encrypts chunk `index` in place and returns its tag.
    pub fn seal_in_place(
        &self,
        index: u32,
        is_last: bool,
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealError> {
        let nonce = chunk_nonce(&self.nonce_prefix, index, is_last);
        self.aead.seal_in_place(&nonce, &self.aad, buf)
    }

    /// Decrypts chunk `index` in place; on failure `buf` is left as ciphertext and the error is
    /// [`SealError::Rejected`].
    pub fn open_in_place(
        &self,
        index: u32,
        is_last: bool,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), SealError> {
        let nonce = chunk_nonce(&self.nonce_prefix, index, is_last);
        self.aead.open_in_place(&nonce, &self.aad, buf, tag)
    }

    /// Checks chunk `index`'s tag over its ciphertext without decrypting.
    pub fn verify(
        &self,
        index: u32,
        is_last: bool,
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let nonce = chunk_nonce(&self.nonce_prefix, index, is_last);
        self.aead.verify(&nonce, &self.aad, ciphertext, tag)
    }
}

impl fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SegmentCipher(<redacted>)")
    }
}

/// Accumulates the digest the publisher signs:
/// `SHA-512(SIGNATURE_DOMAIN ‖ header hash ‖ tag_0 ‖ tag_1 ‖ …)`, tags in file order (meta then
/// tensors). Signing tags (not ciphertext) lets `open` check the signature by reading 16 bytes
/// per chunk; each tag in turn authenticates its chunk under the DEK.
pub struct SignedDigest(Sha512);

impl SignedDigest {
    /// Starts the digest for a file with header hash `header_hash`.
    pub fn new(header_hash: &[u8; 32]) -> Self {
        let mut h = Sha512::new();
        h.update(SIGNATURE_DOMAIN);
        h.update(header_hash);
        SignedDigest(h)
    }

    /// Adds the next chunk tag.
    pub fn push_tag(&mut self, tag: &[u8; TAG_LEN]) {
        self.0.update(tag);
    }

    /// The 64-byte message given to Ed25519.
    pub fn finish(self) -> [u8; 64] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn tag_check_matches_aes_gcm_on_random_inputs() {
        let mut rng = StdRng::seed_from_u64(42);
        let lens = [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 4096, 4099];
        for (i, &ct_len) in lens.iter().cycle().take(66).enumerate() {
            let aad_len = [0usize, 1, 13, 16, 33, 50][i % 6];
            let mut key = [0u8; 32];
            let mut nonce = [0u8; 12];
            rng.fill_bytes(&mut key);
            rng.fill_bytes(&mut nonce);
            let mut aad = vec![0u8; aad_len];
            rng.fill_bytes(&mut aad);
            let mut buf = vec![0u8; ct_len];
            rng.fill_bytes(&mut buf);
            let tag: [u8; 16] = Aes256Gcm::new(&key.into())
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut buf)
                .unwrap()
                .into();
            assert!(verify_tag_without_decrypting(
                &key, &nonce, &aad, &buf, &tag
            ));
            let mut bad_tag = tag;
            bad_tag[rng.gen_range(0..16)] ^= 1 << rng.gen_range(0..8);
            assert!(!verify_tag_without_decrypting(
                &key, &nonce, &aad, &buf, &bad_tag
            ));
            if !buf.is_empty() {
                let mut bad = buf.clone();
                let at = rng.gen_range(0..bad.len());
                bad[at] ^= 0x80;
                assert!(!verify_tag_without_decrypting(
                    &key, &nonce, &aad, &bad, &tag
                ));
            }
            if !aad.is_empty() {
                assert!(!verify_tag_without_decrypting(
                    &key,
                    &nonce,
                    &aad[1..],
                    &buf,
                    &tag
                ));
            }
            let mut other_nonce = nonce;
            other_nonce[11] ^= 1;
            assert!(!verify_tag_without_decrypting(
                &key,
                &other_nonce,
                &aad,
                &buf,
                &tag
            ));
        }
    }

    #[test]
    fn nonce_layout_and_ctr_start() {
        let n = chunk_nonce(&[1, 2, 3, 4, 5, 6, 7], 0x0a0b0c0d, true);
        assert_eq!(n, [1, 2, 3, 4, 5, 6, 7, 0x0a, 0x0b, 0x0c, 0x0d, 1]);
        assert_eq!(chunk_nonce(&[0; 7], 1, false)[11], 0);
        assert_eq!(ctr_initial_block(&n)[12..], [0, 0, 0, 2]);
    }

    #[test]
    fn segment_keys_differ_per_segment_and_salt() {
        let dek = Dek::generate(&mut StdRng::seed_from_u64(1));
        let a = SegmentKey::derive(&dek, &[0; 32], Segment::Meta).unwrap();
        let b = SegmentKey::derive(&dek, &[0; 32], Segment::Tensors).unwrap();
        let c = SegmentKey::derive(&dek, &[1; 32], Segment::Meta).unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_eq!(format!("{a:?}"), "SegmentKey(<redacted>)");
    }
}
