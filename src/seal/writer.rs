//! Sealing (streaming encryption + signing) and KEK rewrap.
//!
//! `seal` streams: it holds one chunk of plaintext at a time (wiped after use), so memory stays
//! bounded by the chunk size whatever the model size. It writes to any `Write`; the caller writes
//! to a temporary file and renames it on success, since a failed seal leaves a partial output.

use std::io::{self, Read, Seek, Write};

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::keys::{is_valid_key_id, Dek, KeyProvider, PublisherKey, TrustedPublishers};

use super::chunk::{SegmentCipher, SegmentKey, SignedDigest};
use super::error::SealError;
use super::format::{
    encode_prefix, envelope_aad, Envelope, FileLayout, HeaderFields, PayloadKind, SealedHeader,
    Segment, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_MODEL_ID_LEN, MIN_CHUNK_SIZE,
    NONCE_PREFIX_LEN, SALT_LEN, TRAILER_MAGIC,
};
use super::reader::SealedFile;

/// What to seal: the public header fields chosen by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealParams {
    /// Model id written to the header (1..=256 bytes, no control characters).
    pub model_id: String,
    /// What the plaintext is.
    pub payload_kind: PayloadKind,
    /// Plaintext bytes per chunk, `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE` (4 KiB..=16 MiB).
    pub chunk_size: u32,
}

impl SealParams {
    /// Parameters with the default 1 MiB chunk size.
    pub fn new(model_id: impl Into<String>, payload_kind: PayloadKind) -> Self {
        SealParams {
            model_id: model_id.into(),
            payload_kind,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// What `seal` produced: the parsed header and envelope it wrote and the file's layout.
#[derive(Clone, Debug)]
pub struct SealSummary {
    /// The immutable header as written.
    pub header: SealedHeader,
    /// The key envelope as written.
    pub envelope: Envelope,
    /// Offsets of chunks, segments and trailer; `layout.file_len` bytes were written.
    pub layout: FileLayout,
}

/// Seals `total_len` plaintext bytes from `plaintext`, the first `meta_len` of which form the
/// `meta` segment, writing the sealed file to `out`.
///
/// A fresh DEK, salt and nonce prefix are drawn from `rng`; the DEK is wrapped by `keys`'
/// active KEK; the file is signed by `publisher`. `progress` is called after each chunk with the
/// number of plaintext bytes done so far. Fails with [`SealError::PlaintextLength`] if
/// `plaintext` holds fewer or more than `total_len` bytes (the output is then incomplete).
#[allow(clippy::too_many_arguments)] // mirrors the documented API; each input is distinct
pub fn seal<R: Read, W: Write>(
    mut plaintext: R,
    mut out: W,
    meta_len: u64,
    total_len: u64,
    params: &SealParams,
    keys: &dyn KeyProvider,
    publisher: &PublisherKey,
    rng: &mut (impl RngCore + CryptoRng),
    progress: &mut dyn FnMut(u64),
) -> Result<SealSummary, SealError> {
    check_params(params, publisher)?;
    let tensors_len = total_len
        .checked_sub(meta_len)
        .ok_or(SealError::InvalidParams("meta_len exceeds total_len"))?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut nonce_prefix);
    let header = SealedHeader::from_fields(&HeaderFields {
        model_id: &params.model_id,
        payload_kind: params.payload_kind,
        meta_len,
        tensors_len,
        chunk_size: params.chunk_size,
        salt,
        nonce_prefix,
        publisher_key_id: publisher.id(),
    })
    .map_err(|_| SealError::InvalidParams("payload too large for the chunk size"))?;

    let dek = Dek::generate(rng);
    let envelope = wrap_dek(&header, &dek, keys)?;
    let prefix = encode_prefix(&header, &envelope);
    let layout = FileLayout::new(&header, prefix.len() as u64)?;
    out.write_all(&prefix).map_err(SealError::Io)?;

    let mut digest = SignedDigest::new(header.hash());
    // The one plaintext buffer, wiped on drop whatever happens.
    let mut buf = Zeroizing::new(vec![0u8; params.chunk_size as usize]);
    let mut done = 0u64;
    for segment in Segment::ALL {
        let key = SegmentKey::derive(&dek, header.salt(), segment)?;
        let cipher = SegmentCipher::new(&key, header.nonce_prefix(), header.hash(), segment);
        for chunk in layout.segment(segment).chunks() {
            let data = buf
                .get_mut(..chunk.len)
                .ok_or(SealError::InvalidParams("chunk size"))?;
            plaintext.read_exact(data).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => SealError::PlaintextLength,
                _ => SealError::Io(e),
            })?;
            let tag = cipher.seal_in_place(chunk.index, chunk.is_last, data)?;
            out.write_all(data).map_err(SealError::Io)?;
            out.write_all(&tag).map_err(SealError::Io)?;
            digest.push_tag(&tag);
            done += chunk.len as u64;
            progress(done);
        }
    }
    if has_more(&mut plaintext)? {
        return Err(SealError::PlaintextLength);
    }
    let signature = publisher.sign(&digest.finish());
    out.write_all(&signature.to_bytes())
        .map_err(SealError::Io)?;
    out.write_all(&TRAILER_MAGIC).map_err(SealError::Io)?;
    out.flush().map_err(SealError::Io)?;
    Ok(SealSummary {
        header,
        envelope,
        layout,
    })
}

/// Re-wraps the DEK of the file with `header` from `old` (unwrapped by `from`) under `to`'s
/// active KEK. Needs no publisher key and touches no chunk: the envelope is covered by neither
/// chunk AADs nor the signature. An `old` envelope that `from` cannot unwrap is
/// [`SealError::Rejected`].
pub fn rewrap_envelope(
    header: &SealedHeader,
    old: &Envelope,
    from: &dyn KeyProvider,
    to: &dyn KeyProvider,
) -> Result<Envelope, SealError> {
    let aad = envelope_aad(header.hash(), old.kek());
    let dek = from
        .unwrap_dek(old.kek(), old.wrapped_dek(), &aad)
        .map_err(SealError::from_unwrap)?;
    wrap_dek(header, &dek, to)
}

/// Rewraps a whole sealed file: opens and verifies `sealed` (structure, signature, DEK unwrap
/// with `from`), then writes the new prefix (new envelope under `to`'s active KEK) followed by
/// the original chunk and trailer bytes, copied unchanged. Returns the new envelope.
///
/// Verifying first means a rewrap never launders a tampered file into a fresh-looking one.
/// Write to a temporary file and rename on success.
pub fn rewrap_file<R: Read + Seek, W: Write>(
    sealed: R,
    mut out: W,
    trusted: &TrustedPublishers,
    from: &dyn KeyProvider,
    to: &dyn KeyProvider,
) -> Result<Envelope, SealError> {
    let mut file = SealedFile::open(sealed, trusted, from)?;
    let envelope = rewrap_envelope(file.header(), file.envelope(), from, to)?;
    out.write_all(&encode_prefix(file.header(), &envelope))
        .map_err(SealError::Io)?;
    let layout = *file.layout();
    let body_len = layout.file_len - layout.chunks_offset;
    let copied = io::copy(
        &mut file.raw_range(layout.chunks_offset, body_len)?,
        &mut out,
    )
    .map_err(SealError::from_read)?;
    if copied != body_len {
        return Err(SealError::Rejected);
    }
    out.flush().map_err(SealError::Io)?;
    Ok(envelope)
}

/// Wraps `dek` under `keys`' active KEK with the AAD binding it to `header` and that KEK.
///
/// The AAD names the KEK version, which must be known before wrapping; if the provider rotated
/// between `active()` and `wrap_dek` (another thread), it retries with the new active version.
fn wrap_dek(
    header: &SealedHeader,
    dek: &Dek,
    keys: &dyn KeyProvider,
) -> Result<Envelope, SealError> {
    for _ in 0..3 {
        let active = keys.active();
        let aad = envelope_aad(header.hash(), &active);
        let (used, wrapped) = keys.wrap_dek(dek, &aad).map_err(SealError::Key)?;
        if used == active {
            return Envelope::new(used, wrapped);
        }
    }
    Err(SealError::Key(crate::keys::KeyError::Backend(
        "active KEK kept changing while wrapping".into(),
    )))
}

fn check_params(params: &SealParams, publisher: &PublisherKey) -> Result<(), SealError> {
    let id = &params.model_id;
    if id.is_empty() || id.len() > MAX_MODEL_ID_LEN || id.chars().any(char::is_control) {
        return Err(SealError::InvalidParams(
            "model id must be 1..=256 bytes without control characters",
        ));
    }
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&params.chunk_size) {
        return Err(SealError::InvalidParams(
            "chunk size must be 4 KiB..=16 MiB",
        ));
    }
    if !is_valid_key_id(publisher.id()) {
        return Err(SealError::InvalidParams("publisher key id"));
    }
    Ok(())
}

/// Whether `r` has at least one more byte.
fn has_more(r: &mut impl Read) -> Result<bool, SealError> {
    let mut probe = [0u8; 1];
    loop {
        match r.read(&mut probe) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SealError::Io(e)),
        }
    }
}
