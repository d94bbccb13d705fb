//! The sealed-model container (`.sealed`): streaming AES-256-GCM encryption of model weights,
//! an Ed25519 publisher signature, and a separately rewrappable key envelope.
//!
//! # Why this shape
//! - **Streaming AEAD (STREAM / Tink AES-GCM-HKDF-Streaming)**: models are hundreds of MB to
//!   hundreds of GB, so each fixed-size chunk is its own AES-GCM message, processed in bounded
//!   memory. The nonce carries the chunk counter and a last-chunk flag, so reordering, dropping
//!   or truncating chunks fails authentication.
//! - **Two segments**: `meta` (e.g. the GGUF header, needed on the host) and `tensors` (decrypted
//!   only on the GPU, or into one locked host region) use different derived keys, so the loader
//!   can decrypt them to different places and chunks cannot move between them.
//! - **Tag check without decryption**: GCM authenticates ciphertext, so the host verifies each
//!   chunk ([`chunk::verify_tag_without_decrypting`]) and hands ciphertext to the GPU, which
//!   decrypts with AES-CTR starting at [`chunk::ctr_initial_block`]. No host plaintext.
//! - **Signature over tags**: the publisher signs the header hash and every chunk tag; `open`
//!   checks it by reading 16 bytes per chunk, before any plaintext exists.
//! - **Envelope outside the signature**: rotating the KEK ([`writer::rewrap_envelope`],
//!   [`writer::rewrap_file`]) rewrites only the envelope; it needs the KEK, not the publisher's
//!   signing key, and never touches chunk bytes.
//! - **One opaque error** ([`SealError::Rejected`]) for every integrity failure: no oracle.
//!
//! # File format, version 1
//! All integers are unsigned big-endian. `‖` is concatenation. Offsets are from the start of the
//! sealed file.
//!
//! ```text
//! file      = fixed ‖ header ‖ env_len ‖ envelope ‖ meta_chunks ‖ tensors_chunks ‖ trailer
//! fixed     = "CLOISTER" (8 bytes) ‖ version: u16 = 1 ‖ header_len: u32 (≤ 1024)
//! header    = model_id_len: u16 ‖ model_id: UTF-8, 1..=256 bytes, no control chars
//!           ‖ payload_kind: u8 (1 = gguf, 2 = safetensors)
//!           ‖ meta_len: u64 ‖ tensors_len: u64          (plaintext sizes)
//!           ‖ chunk_size: u32 (4096..=16777216; default 1048576)
//!           ‖ salt: 32 bytes ‖ nonce_prefix: 7 bytes
//!           ‖ publisher_key_id_len: u8 ‖ publisher_key_id: 1..=64 bytes of [A-Za-z0-9._:@+-]
//!           (header_len must equal exactly the length of these fields)
//! env_len   = u32 (≤ 2048), length of `envelope`
//! envelope  = kek_id_len: u8 ‖ kek_id: 1..=64 bytes of [A-Za-z0-9._:@+-] ‖ kek_version: u32
//!           ‖ wrapped_len: u16 (1..=1024) ‖ wrapped_dek: wrapped_len bytes
//!           (env_len must equal exactly the length of these fields)
//! chunks    = for each chunk: ciphertext (same length as its plaintext) ‖ tag (16 bytes)
//! trailer   = signature: 64 bytes (Ed25519) ‖ "CLSEALED" (8 bytes)
//! ```
//!
//! **Header hash** `HH = SHA-256(fixed ‖ header)` (the exact bytes on disk).
//!
//! **DEK wrap.** The 32-byte random data key (DEK, one per file, never reused) is wrapped by the
//! KEK named in the envelope with AAD
//! `"cloister/v1/dek-wrap\0" ‖ HH ‖ u8 len(kek_id) ‖ kek_id ‖ u32 kek_version`. The wrapped
//! bytes are provider-defined; the local keyring's are
//! `nonce (12, random) ‖ AES-256-GCM(KEK, nonce, DEK, AAD) ciphertext (32) ‖ tag (16)`.
//!
//! **Segments.** `meta` is the first `meta_len` plaintext bytes, `tensors` the next
//! `tensors_len`. A segment of length `L` has `n = max(1, ceil(L / chunk_size))` chunks
//! (n ≤ 2^32); chunk `i` holds plaintext bytes `[i·chunk_size, min((i+1)·chunk_size, L))`, so
//! only the last may be shorter, and an empty segment is one empty chunk. `meta` chunks start
//! right after the envelope; `tensors` chunks right after the last `meta` chunk; the trailer
//! right after the last `tensors` chunk; the file ends right after the trailer (exact length
//! `chunks_offset + meta_len + tensors_len + 16·(n_meta + n_tensors) + 72`).
//!
//! **Chunk encryption.** Per segment `s` (name `meta` / `tensors`, id byte `0x01` / `0x02`):
//! - key `K_s = HKDF-SHA256(ikm = DEK, salt = header salt, info = "cloister/v1/" ‖ name)`,
//!   32 bytes;
//! - nonce of chunk `i` = `nonce_prefix (7) ‖ u32 i ‖ (0x01 if i = n-1 else 0x00)`;
//! - AAD = `HH ‖ id byte` (33 bytes);
//! - stored `AES-256-GCM(K_s, nonce, plaintext, AAD)` as ciphertext ‖ 16-byte tag.
//!
//! **Signature.** `D = SHA-512("cloister/v1/signature\0" ‖ HH ‖ tag_0 ‖ … )` over all chunk tags
//! in file order (meta chunks, then tensors chunks); signature = Ed25519 (RFC 8032, pure) of the
//! 64-byte `D` by the key named by `publisher_key_id`; verified with `verify_strict`.
//!
//! **Reading** rejects (one opaque error) unless: magic and version match; every length is in
//! bounds and every byte of header and envelope is consumed; the file length is exact; the
//! trailer magic matches; the publisher key id is trusted and the signature verifies; the DEK
//! unwraps; and each chunk's tag verifies when that chunk is decrypted or checked.
//!
//! # Layout
//! - [`format`](mod@format) — constants, [`SealedHeader`], [`Envelope`], layout types, [`encode_prefix`];
//! - [`chunk`] — segment keys, nonces, AAD, chunk AEAD, [`verify_tag_without_decrypting`],
//!   the signing digest;
//! - [`writer`] — [`seal`], [`rewrap_envelope`], [`rewrap_file`];
//! - [`reader`] — [`SealedFile`];
//! - [`error`] — [`SealError`].

pub mod chunk;
pub mod error;
pub mod format;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod tests;

pub use chunk::{
    chunk_aad, chunk_nonce, ctr_initial_block, verify_tag_without_decrypting, ChunkAead, SegmentKey,
};
pub use error::SealError;
pub use format::{
    encode_prefix, is_sealed_magic, ChunkLayout, Envelope, FileLayout, PayloadKind, SealedHeader,
    Segment, SegmentLayout, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
pub use reader::SealedFile;
pub use writer::{rewrap_envelope, rewrap_file, seal, SealParams, SealSummary};
