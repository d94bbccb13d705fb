//! The sealed file's prefix (fixed part, immutable header, key envelope) and its layout.
//!
//! Parse, don't validate: [`SealedHeader`] and [`Envelope`] are only built by the parsers here,
//! which check every field bound and that every byte is consumed, so code holding one may rely on
//! its invariants (bounded ids, chunk size in range, chunk counts ≤ 2^32, file length fits u64).
//! Byte-level layout: see the [`crate::seal`] module docs.

use sha2::{Digest, Sha256};

use crate::keys::{is_valid_key_id, KekRef, MAX_KEY_ID_LEN};

use super::error::SealError;

/// File magic, first 8 bytes.
pub const MAGIC: [u8; 8] = *b"CLOISTER";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Trailer magic, last 8 bytes of the file.
pub const TRAILER_MAGIC: [u8; 8] = *b"CLSEALED";
/// magic (8) ‖ version (2) ‖ header length (4).
pub const FIXED_PREFIX_LEN: usize = 14;
/// Bound on the header length field (a valid v1 header is at most 383 bytes).
pub const MAX_HEADER_LEN: u32 = 1024;
/// Bound on the envelope length field.
pub const MAX_ENVELOPE_LEN: u32 = 2048;
/// Bound on a wrapped DEK (provider-specific bytes; the local keyring's are 60).
pub const MAX_WRAPPED_DEK_LEN: usize = 1024;
/// Longest model id in bytes.
pub const MAX_MODEL_ID_LEN: usize = 256;
/// Smallest allowed chunk size (plaintext bytes per chunk).
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
/// Largest allowed chunk size.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Default chunk size (as Tink's streaming AEAD).
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Per-file HKDF salt length.
pub const SALT_LEN: usize = 32;
/// Per-file nonce prefix length.
pub const NONCE_PREFIX_LEN: usize = 7;
/// AES-GCM tag length, stored after each chunk's ciphertext.
pub const TAG_LEN: usize = 16;
/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;
/// signature (64) ‖ trailer magic (8).
pub const TRAILER_LEN: usize = SIGNATURE_LEN + TRAILER_MAGIC.len();
/// Most chunks one segment may have: the nonce counter is a u32.
pub const MAX_CHUNKS_PER_SEGMENT: u64 = 1 << 32;

/// Whether `bytes` starts with the sealed-file magic. A cheap sniff for tools that want to say
/// "this is a plain model, seal it first"; opening a file never reports bad magic separately.
pub fn is_sealed_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// What the plaintext is, so the loader knows how to read the `meta` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// A GGUF file (meta = GGUF header, tensors = tensor data).
    Gguf,
    /// A safetensors file (meta = length + JSON header, tensors = data).
    Safetensors,
}

impl PayloadKind {
    fn code(self) -> u8 {
        match self {
            PayloadKind::Gguf => 1,
            PayloadKind::Safetensors => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(PayloadKind::Gguf),
            2 => Some(PayloadKind::Safetensors),
            _ => None,
        }
    }

    /// Lower-case name (`gguf` / `safetensors`).
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Gguf => "gguf",
            PayloadKind::Safetensors => "safetensors",
        }
    }
}

/// The two plaintext segments, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// The first `meta_len` plaintext bytes (decrypted on the host).
    Meta,
    /// The rest (decrypted on the device, or into the locked host region).
    Tensors,
}

impl Segment {
    /// Both segments in file order.
    pub const ALL: [Segment; 2] = [Segment::Meta, Segment::Tensors];

    /// The byte appended to every chunk's AAD.
    pub fn id(self) -> u8 {
        match self {
            Segment::Meta => 0x01,
            Segment::Tensors => 0x02,
        }
    }

    /// The name used in the HKDF info string.
    pub fn name(self) -> &'static str {
        match self {
            Segment::Meta => "meta",
            Segment::Tensors => "tensors",
        }
    }
}

/// The field values of a header to be written (input to [`SealedHeader::from_fields`]).
pub(crate) struct HeaderFields<'a> {
    pub model_id: &'a str,
    pub payload_kind: PayloadKind,
    pub meta_len: u64,
    pub tensors_len: u64,
    pub chunk_size: u32,
    pub salt: [u8; SALT_LEN],
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    pub publisher_key_id: &'a str,
}

/// The immutable, authenticated header of a sealed file.
///
/// Holds the exact bytes it was parsed from (fixed prefix ‖ header) and their SHA-256, the
/// "header hash" bound into every chunk's AAD, the DEK wrap AAD and the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    model_id: String,
    payload_kind: PayloadKind,
    meta_len: u64,
    tensors_len: u64,
    chunk_size: u32,
    salt: [u8; SALT_LEN],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    publisher_key_id: String,
    encoded: Vec<u8>,
    hash: [u8; 32],
}

impl SealedHeader {
    /// Checks the fixed prefix (magic, version, header length bound) and returns the header
    /// length. Any failure, bad magic included, is [`SealError::Rejected`].
    pub fn parse_fixed_prefix(fixed: &[u8; FIXED_PREFIX_LEN]) -> Result<u32, SealError> {
        let mut p = Parser::new(fixed);
        let magic = p.take(MAGIC.len())?;
        let version = p.u16()?;
        let header_len = p.u32()?;
        if magic != MAGIC || version != FORMAT_VERSION || header_len > MAX_HEADER_LEN {
            return Err(SealError::Rejected);
        }
        Ok(header_len)
    }

    /// Parses `bytes` = fixed prefix ‖ header (exactly), checking every field.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, SealError> {
        let fixed: &[u8; FIXED_PREFIX_LEN] = bytes
            .get(..FIXED_PREFIX_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(SealError::Rejected)?;
        let header_len = Self::parse_fixed_prefix(fixed)?;
        let mut p = Parser::new(bytes.get(FIXED_PREFIX_LEN..).ok_or(SealError::Rejected)?);
        if p.remaining() != header_len as usize {
            return Err(SealError::Rejected);
        }
        let model_id_len = p.u16()? as usize;
        let model_id = p.str(model_id_len)?;
        let payload_kind = PayloadKind::from_code(p.u8()?).ok_or(SealError::Rejected)?;
        let meta_len = p.u64()?;
        let tensors_len = p.u64()?;
        let chunk_size = p.u32()?;
        let salt = p.array::<SALT_LEN>()?;
        let nonce_prefix = p.array::<NONCE_PREFIX_LEN>()?;
        let key_id_len = p.u8()? as usize;
        let publisher_key_id = p.str(key_id_len)?;
        p.finish()?;

        if !valid_model_id(model_id)
            || !is_valid_key_id(publisher_key_id)
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(SealError::Rejected);
        }
        // The whole layout must be computable: ≤ 2^32 chunks per segment, length fits u64.
        let max_prefix = FIXED_PREFIX_LEN as u64 + u64::from(MAX_HEADER_LEN) + 4;
        layout_for(
            meta_len,
            tensors_len,
            chunk_size,
            max_prefix + u64::from(MAX_ENVELOPE_LEN),
        )?;

        let hash = Sha256::digest(&bytes).into();
        Ok(SealedHeader {
            model_id: model_id.to_owned(),
            payload_kind,
            meta_len,
            tensors_len,
            chunk_size,
            salt,
            nonce_prefix,
            publisher_key_id: publisher_key_id.to_owned(),
            encoded: bytes,
            hash,
        })
    }

    /// Encodes `fields` and parses the result, so a header that is written is exactly one the
    /// reader accepts (the writer has no other way to build a `SealedHeader`).
    pub(crate) fn from_fields(f: &HeaderFields<'_>) -> Result<Self, SealError> {
        let model_id_len =
            u16::try_from(f.model_id.len()).map_err(|_| SealError::InvalidParams("model id"))?;
        let key_id_len = u8::try_from(f.publisher_key_id.len())
            .map_err(|_| SealError::InvalidParams("publisher key id"))?;
        let mut body = Vec::with_capacity(400);
        body.extend_from_slice(&model_id_len.to_be_bytes());
        body.extend_from_slice(f.model_id.as_bytes());
        body.push(f.payload_kind.code());
        body.extend_from_slice(&f.meta_len.to_be_bytes());
        body.extend_from_slice(&f.tensors_len.to_be_bytes());
        body.extend_from_slice(&f.chunk_size.to_be_bytes());
        body.extend_from_slice(&f.salt);
        body.extend_from_slice(&f.nonce_prefix);
        body.push(key_id_len);
        body.extend_from_slice(f.publisher_key_id.as_bytes());
        let body_len =
            u32::try_from(body.len()).map_err(|_| SealError::InvalidParams("header too long"))?;

        let mut bytes = Vec::with_capacity(FIXED_PREFIX_LEN + body.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        bytes.extend_from_slice(&body_len.to_be_bytes());
        bytes.extend_from_slice(&body);
        Self::parse(bytes).map_err(|_| SealError::InvalidParams("header field out of range"))
    }

    /// Model id (1..=256 bytes of UTF-8 without control characters).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }
    /// Payload kind.
    pub fn payload_kind(&self) -> PayloadKind {
        self.payload_kind
    }
    /// Plaintext length of the `meta` segment.
    pub fn meta_len(&self) -> u64 {
        self.meta_len
    }
    /// Plaintext length of the `tensors` segment.
    pub fn tensors_len(&self) -> u64 {
        self.tensors_len
    }
    /// Plaintext bytes per chunk (last chunk of a segment may be shorter).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    /// Per-file HKDF salt.
    pub fn salt(&self) -> &[u8; SALT_LEN] {
        &self.salt
    }
    /// Per-file nonce prefix.
    pub fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }
    /// Key id of the publisher key that signed the file.
    pub fn publisher_key_id(&self) -> &str {
        &self.publisher_key_id
    }
    /// SHA-256 over fixed prefix ‖ header bytes.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
    /// The exact fixed prefix ‖ header bytes.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
    /// Plaintext length of `segment`.
    pub fn segment_len(&self, segment: Segment) -> u64 {
        match segment {
            Segment::Meta => self.meta_len,
            Segment::Tensors => self.tensors_len,
        }
    }
}

fn valid_model_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_MODEL_ID_LEN && !id.chars().any(char::is_control)
}

/// The key envelope: which KEK wrapped the file's DEK, and the wrapped bytes.
///
/// Not covered by chunk AADs nor by the signature (only the wrap's own AAD binds it to the
/// header), so rotating the KEK rewrites only this part of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    kek: KekRef,
    wrapped_dek: Vec<u8>,
}

impl Envelope {
    /// Builds an envelope, checking the same bounds as the parser.
    pub fn new(kek: KekRef, wrapped_dek: Vec<u8>) -> Result<Self, SealError> {
        if !is_valid_key_id(&kek.id)
            || wrapped_dek.is_empty()
            || wrapped_dek.len() > MAX_WRAPPED_DEK_LEN
        {
            return Err(SealError::InvalidParams("envelope field out of range"));
        }
        Ok(Envelope { kek, wrapped_dek })
    }

    /// Parses envelope bytes (without their length prefix), consuming all of them.
    pub fn parse(bytes: &[u8]) -> Result<Self, SealError> {
        let mut p = Parser::new(bytes);
        let id_len = p.u8()? as usize;
        let id = p.str(id_len)?;
        let version = p.u32()?;
        let wrapped_len = p.u16()? as usize;
        let wrapped = p.take(wrapped_len)?;
        p.finish()?;
        Self::new(
            KekRef {
                id: id.to_owned(),
                version,
            },
            wrapped.to_vec(),
        )
        .map_err(|_| SealError::Rejected)
    }

    /// Encodes the envelope (without its length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.kek.id.len() + 6 + self.wrapped_dek.len());
        // Lengths fit by construction (id ≤ 64, wrapped ≤ 1024).
        out.push(self.kek.id.len().min(MAX_KEY_ID_LEN) as u8);
        out.extend_from_slice(self.kek.id.as_bytes());
        out.extend_from_slice(&self.kek.version.to_be_bytes());
        out.extend_from_slice(
            &(self.wrapped_dek.len().min(MAX_WRAPPED_DEK_LEN) as u16).to_be_bytes(),
        );
        out.extend_from_slice(&self.wrapped_dek);
        out
    }

    /// Which KEK version wrapped the DEK.
    pub fn kek(&self) -> &KekRef {
        &self.kek
    }

    /// The provider-specific wrapped DEK bytes.
    pub fn wrapped_dek(&self) -> &[u8] {
        &self.wrapped_dek
    }
}

/// Domain string at the start of the DEK wrap AAD.
pub const WRAP_AAD_DOMAIN: &[u8] = b"cloister/v1/dek-wrap\0";

/// AAD for wrapping the DEK: domain ‖ header hash ‖ u8 len ‖ KEK id ‖ u32 BE KEK version.
/// Binds the wrapped key to this file and this KEK version, so it cannot be moved to another
/// file or relabelled as another version.
pub fn envelope_aad(header_hash: &[u8; 32], kek: &KekRef) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD_DOMAIN.len() + 32 + 1 + kek.id.len() + 4);
    aad.extend_from_slice(WRAP_AAD_DOMAIN);
    aad.extend_from_slice(header_hash);
    aad.push(kek.id.len().min(MAX_KEY_ID_LEN) as u8);
    aad.extend_from_slice(kek.id.as_bytes());
    aad.extend_from_slice(&kek.version.to_be_bytes());
    aad
}

/// Everything before the chunks: fixed prefix ‖ header ‖ u32 BE envelope length ‖ envelope.
/// Chunks start at `encode_prefix(..).len()`. A rewrap tool writes this with a new envelope,
/// followed by the original file's bytes from its old chunk offset on, unchanged.
pub fn encode_prefix(header: &SealedHeader, envelope: &Envelope) -> Vec<u8> {
    let env = envelope.encode();
    let mut out = Vec::with_capacity(header.encoded.len() + 4 + env.len());
    out.extend_from_slice(&header.encoded);
    out.extend_from_slice(&(env.len() as u32).to_be_bytes());
    out.extend_from_slice(&env);
    out
}

/// Where one segment's chunks lie in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    /// Which segment.
    pub segment: Segment,
    /// Byte offset of its first chunk, from the start of the sealed file.
    pub offset: u64,
    /// Plaintext length.
    pub plaintext_len: u64,
    /// Number of chunks (≥ 1, ≤ 2^32).
    pub chunk_count: u64,
    /// Plaintext bytes per full chunk.
    pub chunk_size: u32,
}

/// Where one chunk lies in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    /// Chunk counter within its segment (the nonce's counter field).
    pub index: u32,
    /// Whether this is the segment's final chunk (the nonce's last-chunk flag).
    pub is_last: bool,
    /// Byte offset of the ciphertext in the file; the 16-byte tag follows it.
    pub offset: u64,
    /// Ciphertext length (= plaintext length of this chunk; ≤ chunk size).
    pub len: usize,
    /// Offset of this chunk's plaintext within the segment's plaintext.
    pub plaintext_offset: u64,
}

impl SegmentLayout {
    /// Bytes this segment occupies on disk (ciphertext plus one tag per chunk).
    pub fn encrypted_len(&self) -> u64 {
        // Cannot overflow: checked when the header was parsed.
        self.plaintext_len
            .saturating_add(self.chunk_count.saturating_mul(TAG_LEN as u64))
    }

    /// The chunk with counter `index`, if the segment has it.
    pub fn chunk(&self, index: u64) -> Option<ChunkLayout> {
        if index >= self.chunk_count {
            return None;
        }
        let size = u64::from(self.chunk_size);
        let plaintext_offset = index.checked_mul(size)?;
        let len = self.plaintext_len.checked_sub(plaintext_offset)?.min(size);
        let offset = self
            .offset
            .checked_add(index.checked_mul(size + TAG_LEN as u64)?)?;
        Some(ChunkLayout {
            index: u32::try_from(index).ok()?,
            is_last: index.checked_add(1)? == self.chunk_count,
            offset,
            len: usize::try_from(len).ok()?,
            plaintext_offset,
        })
    }

    /// All chunks in order.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkLayout> + '_ {
        (0..self.chunk_count).map_while(|i| self.chunk(i))
    }
}

/// Where everything lies in a sealed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// Offset of the first chunk (= length of the prefix incl. envelope).
    pub chunks_offset: u64,
    /// The `meta` segment.
    pub meta: SegmentLayout,
    /// The `tensors` segment.
    pub tensors: SegmentLayout,
    /// Offset of the 64-byte signature.
    pub trailer_offset: u64,
    /// Exact total file length.
    pub file_len: u64,
}

impl FileLayout {
    /// Computes the layout of a file with `header` whose chunks start at `chunks_offset`.
    pub fn new(header: &SealedHeader, chunks_offset: u64) -> Result<Self, SealError> {
        layout_for(
            header.meta_len,
            header.tensors_len,
            header.chunk_size,
            chunks_offset,
        )
    }

    /// The layout of `segment`.
    pub fn segment(&self, segment: Segment) -> &SegmentLayout {
        match segment {
            Segment::Meta => &self.meta,
            Segment::Tensors => &self.tensors,
        }
    }
}

fn segment_layout(
    segment: Segment,
    offset: u64,
    plaintext_len: u64,
    chunk_size: u32,
) -> Result<SegmentLayout, SealError> {
    let size = u64::from(chunk_size);
    if size == 0 {
        return Err(SealError::Rejected);
    }
    // An empty segment still has one (empty, final) chunk, so truncating it away is detected.
    let chunk_count = plaintext_len.div_ceil(size).max(1);
    if chunk_count > MAX_CHUNKS_PER_SEGMENT {
        return Err(SealError::Rejected);
    }
    let layout = SegmentLayout {
        segment,
        offset,
        plaintext_len,
        chunk_count,
        chunk_size,
    };
    // Prove the end offset fits in u64 before anyone relies on it.
    chunk_count
        .checked_mul(TAG_LEN as u64)
        .and_then(|t| t.checked_add(plaintext_len))
        .and_then(|n| n.checked_add(offset))
        .ok_or(SealError::Rejected)?;
    Ok(layout)
}

fn layout_for(
    meta_len: u64,
    tensors_len: u64,
    chunk_size: u32,
    chunks_offset: u64,
) -> Result<FileLayout, SealError> {
    let meta = segment_layout(Segment::Meta, chunks_offset, meta_len, chunk_size)?;
    let tensors_offset = meta
        .offset
        .checked_add(meta.encrypted_len())
        .ok_or(SealError::Rejected)?;
    let tensors = segment_layout(Segment::Tensors, tensors_offset, tensors_len, chunk_size)?;
    let trailer_offset = tensors
        .offset
        .checked_add(tensors.encrypted_len())
        .ok_or(SealError::Rejected)?;
    let file_len = trailer_offset
        .checked_add(TRAILER_LEN as u64)
        .ok_or(SealError::Rejected)?;
    Ok(FileLayout {
        chunks_offset,
        meta,
        tensors,
        trailer_offset,
        file_len,
    })
}

/// A bounds-checked big-endian reader over a byte slice; every failure is `Rejected`.
struct Parser<'a> {
    buf: &'a [u8],
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf }
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SealError> {
        if n > self.buf.len() {
            return Err(SealError::Rejected);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SealError> {
        self.take(N)?.try_into().map_err(|_| SealError::Rejected)
    }
    fn u8(&mut self) -> Result<u8, SealError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SealError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SealError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SealError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn str(&mut self, n: usize) -> Result<&'a str, SealError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| SealError::Rejected)
    }
    fn finish(self) -> Result<(), SealError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(SealError::Rejected)
        }
    }
}
