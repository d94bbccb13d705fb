//! Loading a sealed model onto the GPU (DESIGN.md §3, §10): the `meta` segment (GGUF header,
//! tokenizer) is decrypted on the host as on the CPU path; the `tensors` segment is verified on
//! the host over its ciphertext and decrypted only on the device, straight into the buffer the
//! forward pass reads. The host never holds a plaintext weight.

use std::path::Path;
use std::sync::Arc;

use super::cuda_ops::CudaOps;
use super::device::GpuKernels;
use super::forward::GpuLlama;
use super::sealed_load::{upload_sealed_segment, DeviceLoadError};
use crate::keys::{KekRef, KeyProvider, TrustedPublishers};
use crate::model::load::open_with_meta;
use crate::model::{read_meta, LoadError};
use crate::seal::format::Segment;
use crate::tokenizer::{ChatTemplate, ModelTokenizer};

/// A sealed model loaded onto the GPU, ready to serve.
pub struct GpuLoadedModel {
    pub model: GpuLlama<CudaOps>,
    pub tokenizer: ModelTokenizer,
    pub chat: ChatTemplate,
    /// The KEK that unwrapped the DEK.
    pub kek_ref: KekRef,
    pub publisher: String,
    /// Bytes of decrypted tensor data on the device.
    pub tensors_len: usize,
}

impl std::fmt::Debug for GpuLoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuLoadedModel")
            .field("publisher", &self.publisher)
            .field("tensors_len", &self.tensors_len)
            .finish_non_exhaustive()
    }
}

/// Opens the sealed model at `path` onto the device of `kernels`. `llama_ptx` is the PTX of
/// `kernels/llama.cu` for machines without NVRTC (`None`: compile it now).
pub fn open_sealed_on_gpu(
    path: &Path,
    keys: &dyn KeyProvider,
    trusted: &TrustedPublishers,
    kernels: Arc<GpuKernels>,
    llama_ptx: Option<String>,
) -> Result<GpuLoadedModel, LoadError> {
    let p = path.display().to_string();
    let rejected = || LoadError::Rejected { path: p.clone() };
    let (mut sealed, meta) = open_with_meta(path, keys, trusted)?;
    let header = sealed.header().clone();
    let (ct, tokenizer, chat) = read_meta(&meta).map_err(|reason| LoadError::Model {
        path: p.clone(),
        reason,
    })?;
    let tensors =
        upload_sealed_segment(&kernels, &mut sealed, Segment::Tensors).map_err(|e| match e {
            DeviceLoadError::Seal(_) => rejected(),
            DeviceLoadError::Gpu(g) => LoadError::Gpu(g.to_string()),
        })?;
    let tensors_len = tensors.len();
    let mut ops = CudaOps::new(kernels, llama_ptx).map_err(|e| LoadError::Gpu(e.to_string()))?;
    let weights = ops.adopt(tensors);
    let model = GpuLlama::new(ops, &ct, weights, tensors_len).map_err(|e| LoadError::Model {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    Ok(GpuLoadedModel {
        model,
        tokenizer,
        chat,
        kek_ref: sealed.envelope().kek().clone(),
        publisher: header.publisher_key_id().to_string(),
        tensors_len,
    })
}
