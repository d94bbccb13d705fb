//! Loading a sealed segment into device memory without plaintext on the host (DESIGN.md §3).
//!
//! The host reads every chunk's ciphertext of the segment into one pinned buffer and checks each
//! chunk's GCM tag over it ([`SealedFile::read_verified_segment`]: GHASH, no plaintext), copies
//! the buffer to the device in one transfer, and the AES-256-CTR kernel writes the plaintext
//! into a separate device buffer, one launch per chunk (each chunk has its own nonce). Nothing is
//! uploaded unless every tag verified, so the device never decrypts unauthenticated bytes.
//!
//! Why one pinned buffer: a copy from pageable memory goes through the driver's own staging
//! buffers in pieces; from page-locked memory it is one DMA transfer at full link speed. It holds
//! ciphertext only, so locking it down exposes nothing. The cost is host memory of the segment's
//! size for the duration of the load.

use std::fmt;
use std::io::{Read, Seek};

use cudarc::driver::CudaSlice;

use crate::seal::{chunk_nonce, ctr_initial_block, SealError, SealedFile, Segment};

use super::aes_key_schedule::Aes256RoundKeys;
use super::device::{GpuError, GpuKernels};

/// Why loading a sealed segment to the device failed.
#[derive(Debug)]
pub enum DeviceLoadError {
    /// The sealed file was rejected or could not be read (nothing was uploaded).
    Seal(SealError),
    /// A CUDA allocation, copy or launch failed.
    Gpu(GpuError),
}

impl fmt::Display for DeviceLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither inner error carries key or plaintext bytes.
        match self {
            DeviceLoadError::Seal(e) => write!(f, "loading sealed weights: {e}"),
            DeviceLoadError::Gpu(e) => write!(f, "uploading weights to the GPU: {e}"),
        }
    }
}

impl std::error::Error for DeviceLoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeviceLoadError::Seal(e) => Some(e),
            DeviceLoadError::Gpu(e) => Some(e),
        }
    }
}

impl From<SealError> for DeviceLoadError {
    fn from(e: SealError) -> Self {
        DeviceLoadError::Seal(e)
    }
}

impl From<GpuError> for DeviceLoadError {
    fn from(e: GpuError) -> Self {
        DeviceLoadError::Gpu(e)
    }
}

impl From<cudarc::driver::DriverError> for DeviceLoadError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        DeviceLoadError::Gpu(GpuError::Driver(e))
    }
}

/// Loads `segment` of `sealed` into a new device buffer of its plaintext length, decrypted on
/// the device; returns once the plaintext is complete (the stream is synchronized).
pub fn upload_sealed_segment<R: Read + Seek>(
    kernels: &GpuKernels,
    sealed: &mut SealedFile<R>,
    segment: Segment,
) -> Result<CudaSlice<u8>, DeviceLoadError> {
    let layout = *sealed.layout().segment(segment);
    let len = usize::try_from(layout.plaintext_len).map_err(|_| SealError::Rejected)?;
    let stream = kernels.stream();
    if len == 0 {
        // An empty segment is still one authenticated (empty) chunk; the driver refuses a
        // zero-byte pinned allocation, so check it without one.
        sealed.read_verified_segment(segment, &mut [])?;
        return Ok(stream.alloc_zeros::<u8>(0)?);
    }

    // Flags 0, not cudarc's default write-combined memory: the CPU reads this buffer back to
    // compute the tags, and reads from write-combined memory are uncached.
    // SAFETY: the buffer starts uninitialized; `read_verified_segment` writes every byte of it
    // (file contents, or zeros on failure) before anything reads it.
    let mut staging = unsafe { stream.context().alloc_pinned_with_flags::<u8>(len, 0) }?;
    sealed.read_verified_segment(segment, staging.as_mut_slice()?)?;
    let ciphertext = stream.clone_htod(&staging)?;

    let keys = kernels.upload_round_keys(&Aes256RoundKeys::expand(
        sealed.segment_key(segment).as_bytes(),
    ))?;
    let prefix = *sealed.header().nonce_prefix();
    let mut plaintext = stream.alloc_zeros::<u8>(len)?;
    for chunk in layout.chunks() {
        // Chunks tile the segment exactly, so these ranges are always in bounds.
        let range = usize::try_from(chunk.plaintext_offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(chunk.len)?))
            .ok_or(SealError::Rejected)?;
        let input = ciphertext
            .try_slice(range.clone())
            .ok_or(SealError::Rejected)?;
        let mut output = plaintext.try_slice_mut(range).ok_or(SealError::Rejected)?;
        let block = ctr_initial_block(&chunk_nonce(&prefix, chunk.index, chunk.is_last));
        kernels.decrypt(&keys, &block, &input, &mut output, 0)?;
    }
    stream.synchronize()?;
    // Dropping `staging` waits for the copy; `keys` wipes the schedule on the device.
    drop((staging, ciphertext, keys));
    Ok(plaintext)
}

/// Copies `bytes` to a new device buffer and waits for it: the plaintext baseline that
/// [`upload_sealed_segment`] is measured against.
pub fn upload_plain(kernels: &GpuKernels, bytes: &[u8]) -> Result<CudaSlice<u8>, DeviceLoadError> {
    let stream = kernels.stream();
    let buf = stream.clone_htod(bytes)?;
    stream.synchronize()?;
    Ok(buf)
}
