//! Opening a sealed file: structure and signature checks first, plaintext only on request and
//! only into the caller's buffer.
//!
//! `open` reads the prefix, checks the exact file length, reads every chunk tag (16 bytes per
//! chunk, seeking over the ciphertext), verifies the publisher signature over them and unwraps
//! the DEK — before any plaintext exists. The `decrypt_*_into` methods then read ciphertext
//! straight into the caller's buffer and decrypt it in place, so the caller's (locked,
//! zeroize-on-drop) buffer is the only place plaintext ever lives; on any failure the buffer is
//! wiped. [`SealedFile::read_verified_segment`] does the same reading but only checks the tags:
//! the GPU path uploads that authenticated ciphertext and decrypts it on the device.
//!
//! A chunk whose ciphertext was altered (its tag left alone) passes `open`, because the signature
//! covers tags, and fails in `decrypt_*_into` / `verify_all_tags`. That is safe: a chunk is only
//! released after its own tag verified under the DEK, and the signature vouches for that tag. For
//! "the whole file is good before any plaintext", call [`SealedFile::verify_all_tags`] first
//! (no plaintext produced; the GPU path does this anyway).

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

use ed25519_dalek::Signature;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::keys::{KeyProvider, TrustedPublishers};

use super::chunk::{SegmentCipher, SegmentKey, SignedDigest};
use super::error::SealError;
use super::format::{
    envelope_aad, ChunkLayout, Envelope, FileLayout, SealedHeader, Segment, SegmentLayout,
    FIXED_PREFIX_LEN, MAX_ENVELOPE_LEN, SIGNATURE_LEN, TAG_LEN, TRAILER_LEN, TRAILER_MAGIC,
};

/// An opened, signature-checked sealed file with its unwrapped segment keys.
pub struct SealedFile<R> {
    inner: R,
    /// Stream position where the sealed file starts (usually 0).
    base: u64,
    header: SealedHeader,
    envelope: Envelope,
    layout: FileLayout,
    keys: [SegmentKey; 2],
    ciphers: [SegmentCipher; 2],
}

impl<R: Read + Seek> SealedFile<R> {
    /// Opens the sealed file starting at `r`'s current position. See the module docs for what
    /// is checked. Every integrity, signature or key failure is [`SealError::Rejected`]; other
    /// I/O errors are [`SealError::Io`]; a key-backend outage is [`SealError::Key`].
    pub fn open(
        mut r: R,
        trusted: &TrustedPublishers,
        keys: &dyn KeyProvider,
    ) -> Result<Self, SealError> {
        let base = r.stream_position().map_err(SealError::Io)?;

        let mut fixed = [0u8; FIXED_PREFIX_LEN];
        r.read_exact(&mut fixed).map_err(SealError::from_read)?;
        let header_len = SealedHeader::parse_fixed_prefix(&fixed)? as usize;
        let mut header_bytes = vec![0u8; FIXED_PREFIX_LEN + header_len];
        header_bytes[..FIXED_PREFIX_LEN].copy_from_slice(&fixed);
        r.read_exact(&mut header_bytes[FIXED_PREFIX_LEN..])
            .map_err(SealError::from_read)?;
        let header = SealedHeader::parse(header_bytes)?;

        let envelope_len = u32::from_be_bytes(read_array(&mut r)?);
        if envelope_len > MAX_ENVELOPE_LEN {
            return Err(SealError::Rejected);
        }
        let mut envelope_bytes = vec![0u8; envelope_len as usize];
        r.read_exact(&mut envelope_bytes)
            .map_err(SealError::from_read)?;
        let envelope = Envelope::parse(&envelope_bytes)?;
        let chunks_offset = (FIXED_PREFIX_LEN + header_len + 4) as u64 + u64::from(envelope_len);
        let layout = FileLayout::new(&header, chunks_offset)?;

        // Exact length: catches truncation and trailing bytes before reading further.
        let end = r.seek(SeekFrom::End(0)).map_err(SealError::Io)?;
        if end.checked_sub(base) != Some(layout.file_len) {
            return Err(SealError::Rejected);
        }

        let publisher = trusted
            .get(header.publisher_key_id())
            .ok_or(SealError::Rejected)?;
        let mut trailer = [0u8; TRAILER_LEN];
        seek_to(&mut r, base, layout.trailer_offset)?;
        r.read_exact(&mut trailer).map_err(SealError::from_read)?;
        let (sig_bytes, magic) = trailer.split_at(SIGNATURE_LEN);
        let sig_bytes: [u8; SIGNATURE_LEN] =
            sig_bytes.try_into().map_err(|_| SealError::Rejected)?;
        if !bool::from(magic.ct_eq(&TRAILER_MAGIC)) {
            return Err(SealError::Rejected);
        }

        let mut digest = SignedDigest::new(header.hash());
        for segment in Segment::ALL {
            for chunk in layout.segment(segment).chunks() {
                seek_to(&mut r, base, chunk.offset + chunk.len as u64)?;
                digest.push_tag(&read_array(&mut r)?);
            }
        }
        publisher
            .verify_strict(&digest.finish(), &Signature::from_bytes(&sig_bytes))
            .map_err(|_| SealError::Rejected)?;

        let aad = envelope_aad(header.hash(), envelope.kek());
        let dek = keys
            .unwrap_dek(envelope.kek(), envelope.wrapped_dek(), &aad)
            .map_err(SealError::from_unwrap)?;
        let meta_key = SegmentKey::derive(&dek, header.salt(), Segment::Meta)?;
        let tensors_key = SegmentKey::derive(&dek, header.salt(), Segment::Tensors)?;
        let ciphers = [
            SegmentCipher::new(
                &meta_key,
                header.nonce_prefix(),
                header.hash(),
                Segment::Meta,
            ),
            SegmentCipher::new(
                &tensors_key,
                header.nonce_prefix(),
                header.hash(),
                Segment::Tensors,
            ),
        ];
        Ok(SealedFile {
            inner: r,
            base,
            header,
            envelope,
            layout,
            keys: [meta_key, tensors_key],
            ciphers,
        })
    }

    /// Decrypts the `meta` segment into `out`, which must be exactly `meta_len` bytes.
    pub fn decrypt_meta_into(&mut self, out: &mut [u8]) -> Result<(), SealError> {
        self.decrypt_into(Segment::Meta, out)
    }

    /// Decrypts the `tensors` segment into `out`, which must be exactly `tensors_len` bytes.
    pub fn decrypt_tensors_into(&mut self, out: &mut [u8]) -> Result<(), SealError> {
        self.decrypt_into(Segment::Tensors, out)
    }

    /// Decrypts `segment` into `out` (exactly the segment's plaintext length): ciphertext is
    /// read into `out` and decrypted in place chunk by chunk. On any error `out` is zeroed.
    pub fn decrypt_into(&mut self, segment: Segment, out: &mut [u8]) -> Result<(), SealError> {
        self.read_segment_with(segment, out, |cipher, chunk, buf, tag| {
            cipher.open_in_place(chunk.index, chunk.is_last, buf, tag)
        })
    }

    /// Reads `segment`'s ciphertext into `out` (exactly the segment's plaintext length, chunk
    /// `i` at `i · chunk_size`, tags left out) and checks every chunk's tag over it, without
    /// decrypting: the GPU path uploads `out` as is and decrypts on the device. On any error
    /// `out` is zeroed, so nothing unauthenticated is ever handed on.
    pub fn read_verified_segment(
        &mut self,
        segment: Segment,
        out: &mut [u8],
    ) -> Result<(), SealError> {
        self.read_segment_with(segment, out, |cipher, chunk, ciphertext, tag| {
            if cipher.verify(chunk.index, chunk.is_last, ciphertext, tag) {
                Ok(())
            } else {
                Err(SealError::Rejected)
            }
        })
    }

    /// Reads `segment`'s chunks into `out`, then runs `per_chunk` (decrypt, or check the tag)
    /// on every chunk in place. On any error `out` is zeroed.
    fn read_segment_with<F>(
        &mut self,
        segment: Segment,
        out: &mut [u8],
        per_chunk: F,
    ) -> Result<(), SealError>
    where
        F: Fn(&SegmentCipher, &ChunkLayout, &mut [u8], &[u8; TAG_LEN]) -> Result<(), SealError>
            + Sync,
    {
        let layout = *self.layout.segment(segment);
        let result = (|| {
            let tags = self.read_chunks(&layout, out)?;
            let cipher = &self.ciphers[segment_index(segment)];
            for_each_chunk_parallel(&layout, out, tags, |chunk, buf, tag| {
                per_chunk(cipher, chunk, buf, tag)
            })
        })();
        if result.is_err() {
            out.zeroize();
        }
        result
    }

    /// Reads every chunk's ciphertext of `layout` straight into its place in `out` (which must
    /// be exactly the segment's plaintext length) and returns the chunk tags in order.
    fn read_chunks(
        &mut self,
        layout: &SegmentLayout,
        out: &mut [u8],
    ) -> Result<Vec<[u8; TAG_LEN]>, SealError> {
        if out.len() as u64 != layout.plaintext_len {
            return Err(SealError::BufferSize {
                expected: layout.plaintext_len,
                got: out.len(),
            });
        }
        seek_to(&mut self.inner, self.base, layout.offset)?;
        let mut tags = Vec::with_capacity(usize::try_from(layout.chunk_count).unwrap_or(0));
        for chunk in layout.chunks() {
            let dst = chunk_slice(out, &chunk)?;
            self.inner.read_exact(dst).map_err(SealError::from_read)?;
            tags.push(read_array(&mut self.inner)?);
        }
        Ok(tags)
    }

    /// Checks every chunk's tag over its ciphertext (GHASH, no plaintext produced). After this
    /// succeeds, every byte of the file has been authenticated.
    pub fn verify_all_tags(&mut self) -> Result<(), SealError> {
        let mut buf = vec![0u8; self.header.chunk_size() as usize];
        for segment in Segment::ALL {
            let layout = *self.layout.segment(segment);
            seek_to(&mut self.inner, self.base, layout.offset)?;
            for chunk in layout.chunks() {
                let ct = buf.get_mut(..chunk.len).ok_or(SealError::Rejected)?;
                self.inner.read_exact(ct).map_err(SealError::from_read)?;
                let tag = read_array(&mut self.inner)?;
                if !self.ciphers[segment_index(segment)].verify(
                    chunk.index,
                    chunk.is_last,
                    ct,
                    &tag,
                ) {
                    return Err(SealError::Rejected);
                }
            }
        }
        Ok(())
    }

    /// A reader over `len` raw file bytes starting at file offset `offset` (e.g. to copy the
    /// chunks unchanged during a rewrap).
    pub fn raw_range(&mut self, offset: u64, len: u64) -> Result<io::Take<&mut R>, SealError> {
        seek_to(&mut self.inner, self.base, offset)?;
        Ok((&mut self.inner).take(len))
    }
}

impl<R> SealedFile<R> {
    /// The authenticated header.
    pub fn header(&self) -> &SealedHeader {
        &self.header
    }

    /// The key envelope (which KEK version wrapped the DEK).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Offsets and lengths of segments and chunks (for uploading ciphertext to a device).
    pub fn layout(&self) -> &FileLayout {
        &self.layout
    }

    /// `segment`'s AES-256 key, for the device-side AES-CTR decryptor only. Chunk nonces come
    /// from [`super::chunk::chunk_nonce`] with the header's nonce prefix.
    pub fn segment_key(&self, segment: Segment) -> &SegmentKey {
        &self.keys[segment_index(segment)]
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R> fmt::Debug for SealedFile<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedFile")
            .field("header", &self.header)
            .field("envelope", &self.envelope.kek())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

fn segment_index(segment: Segment) -> usize {
    match segment {
        Segment::Meta => 0,
        Segment::Tensors => 1,
    }
}

/// Runs `per_chunk` on every chunk of `layout`, with its bytes in `buf` (chunk `i` at
/// `i · chunk_size`) and its tag, on all cores: chunks are independent, and this is what keeps a
/// sealed load close to a plaintext load.
fn for_each_chunk_parallel<F>(
    layout: &SegmentLayout,
    buf: &mut [u8],
    tags: Vec<[u8; TAG_LEN]>,
    per_chunk: F,
) -> Result<(), SealError>
where
    F: Fn(&ChunkLayout, &mut [u8], &[u8; TAG_LEN]) -> Result<(), SealError> + Sync,
{
    let size = layout.chunk_size as usize;
    // An empty segment is one empty chunk, for which `chunks_mut` yields no slice.
    let mut jobs: Vec<_> = layout
        .chunks()
        .zip(
            buf.chunks_mut(size.max(1))
                .chain(std::iter::repeat_with(|| &mut [][..])),
        )
        .zip(tags)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = jobs.len().div_ceil(threads).max(1);
    let per_chunk = &per_chunk;
    let results: Vec<Result<(), SealError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks_mut(per_thread)
            .map(|batch| {
                scope.spawn(move || {
                    for ((chunk, dst), tag) in batch.iter_mut() {
                        per_chunk(chunk, dst, tag)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(SealError::Rejected)))
            .collect()
    });
    results.into_iter().collect()
}

fn chunk_slice<'a>(out: &'a mut [u8], chunk: &ChunkLayout) -> Result<&'a mut [u8], SealError> {
    let start = usize::try_from(chunk.plaintext_offset).map_err(|_| SealError::Rejected)?;
    let end = start.checked_add(chunk.len).ok_or(SealError::Rejected)?;
    out.get_mut(start..end).ok_or(SealError::Rejected)
}

fn seek_to(r: &mut impl Seek, base: u64, offset: u64) -> Result<(), SealError> {
    let pos = base.checked_add(offset).ok_or(SealError::Rejected)?;
    r.seek(SeekFrom::Start(pos)).map_err(SealError::Io)?;
    Ok(())
}

fn read_array<const N: usize>(r: &mut impl Read) -> Result<[u8; N], SealError> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf).map_err(SealError::from_read)?;
    Ok(buf)
}
