//! Llama forward pass over weights that live in the locked region, with the KV cache passed in
//! per sequence.
//!
//! candle's `quantized_llama::ModelWeights` keeps one KV cache inside the model and reads tensors
//! through temporary heap buffers it frees without wiping. Here the model is shared read-only by
//! every sequence and each sequence owns its [`SeqCache`], so tenants never share attention state.
//! Quantized matrices are built from slices of the locked region; the token embedding table is
//! never dequantized as a whole: rows are dequantized on lookup.

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::securemem::LockedRegion;

/// Hyper-parameters read from the GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("model compute: {0}")]
    Compute(#[from] candle_core::Error),
}

impl LlamaConfig {
    pub fn from_metadata(ct: &gguf_file::Content) -> Result<Self, ModelError> {
        let get = |k: &str| {
            ct.metadata
                .get(k)
                .ok_or_else(|| ModelError::Metadata(format!("missing {k}")))
        };
        let u = |k: &str| -> Result<usize, ModelError> {
            get(k)?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| ModelError::Metadata(format!("{k}: {e}")))
        };
        let arch = get("general.architecture")?
            .to_string()
            .map_err(|e| ModelError::Metadata(e.to_string()))?;
        if arch != "llama" {
            return Err(ModelError::Unsupported(format!("architecture {arch:?}")));
        }
        let n_embd = u("llama.embedding_length")?;
        let n_head = u("llama.attention.head_count")?;
        let n_kv_head = u("llama.attention.head_count_kv")?;
        if n_head == 0 || n_kv_head == 0 || n_embd % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(ModelError::Metadata("inconsistent head counts".into()));
        }
        let vocab = match ct.metadata.get("llama.vocab_size") {
            Some(v) => v
                .to_u32()
                .map_err(|e| ModelError::Metadata(e.to_string()))? as usize,
            None => get("tokenizer.ggml.tokens")?
                .to_vec()
                .map_err(|e| ModelError::Metadata(e.to_string()))?
                .len(),
        };
        let f = |k: &str, default: f32| -> Result<f32, ModelError> {
            match ct.metadata.get(k) {
                Some(v) => v
                    .to_f32()
                    .map_err(|e| ModelError::Metadata(format!("{k}: {e}"))),
                None => Ok(default),
            }
        };
        Ok(LlamaConfig {
            n_layer: u("llama.block_count")?,
            n_embd,
            n_head,
            n_kv_head,
            head_dim: n_embd / n_head,
            vocab,
            context_length: u("llama.context_length").unwrap_or(2048),
            rope_base: f("llama.rope.freq_base", 10_000.0)?,
            rms_eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        })
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
}

/// The token embedding table, kept quantized in the locked region.
struct Embedding {
    offset: usize,
    dtype: GgmlDType,
    row_bytes: usize,
}

/// Shared, read-only model weights.
pub struct LlamaModel {
    cfg: LlamaConfig,
    weights: Arc<LockedRegion>,
    embedding: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// One sequence's attention state: per layer the keys and values seen so far.
#[derive(Default)]
pub struct SeqCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pos: usize,
}

impl SeqCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

impl LlamaModel {
    /// Builds the model from parsed metadata and the tensor-data region.
    pub fn load(ct: &gguf_file::Content, weights: Arc<LockedRegion>) -> Result<Self, ModelError> {
        let cfg = LlamaConfig::from_metadata(ct)?;
        let device = Device::Cpu;
        let data = weights.as_slice();
        let tensor = |name: &str| -> Result<QTensor, ModelError> {
            let info = ct
                .tensor_infos
                .get(name)
                .ok_or_else(|| ModelError::Metadata(format!("missing tensor {name}")))?;
            let (start, len) = tensor_span(info, data.len(), name)?;
            let storage = QStorage::from_data(
                std::borrow::Cow::Borrowed(&data[start..start + len]),
                &device,
                info.ggml_dtype,
            )?;
            Ok(QTensor::new(storage, info.shape.clone())?)
        };
        let dense =
            |name: &str| -> Result<Tensor, ModelError> { Ok(tensor(name)?.dequantize(&device)?) };
        let matmul = |name: &str| -> Result<QMatMul, ModelError> {
            Ok(QMatMul::from_qtensor(tensor(name)?)?)
        };

        let emb_info = ct
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::Metadata("missing tensor token_embd.weight".into()))?;
        let (emb_start, emb_len) = tensor_span(emb_info, data.len(), "token_embd.weight")?;
        let (rows, cols) = emb_info.shape.dims2()?;
        if rows != cfg.vocab || cols != cfg.n_embd {
            return Err(ModelError::Metadata(
                "token_embd shape does not match config".into(),
            ));
        }
        if !matches!(
            emb_info.ggml_dtype,
            GgmlDType::Q8_0 | GgmlDType::F32 | GgmlDType::F16
        ) {
            return Err(ModelError::Unsupported(format!(
                "token embedding type {:?}",
                emb_info.ggml_dtype
            )));
        }
        let embedding = Embedding {
            offset: emb_start,
            dtype: emb_info.ggml_dtype,
            row_bytes: emb_len / rows,
        };

        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: dense(&format!("{p}.attn_norm.weight"))?,
                wq: matmul(&format!("{p}.attn_q.weight"))?,
                wk: matmul(&format!("{p}.attn_k.weight"))?,
                wv: matmul(&format!("{p}.attn_v.weight"))?,
                wo: matmul(&format!("{p}.attn_output.weight"))?,
                ffn_norm: dense(&format!("{p}.ffn_norm.weight"))?,
                w_gate: matmul(&format!("{p}.ffn_gate.weight"))?,
                w_up: matmul(&format!("{p}.ffn_up.weight"))?,
                w_down: matmul(&format!("{p}.ffn_down.weight"))?,
            });
        }
        // Tied embeddings: models without `output.weight` project with the embedding table.
        let output = if ct.tensor_infos.contains_key("output.weight") {
            matmul("output.weight")?
        } else {
            matmul("token_embd.weight")?
        };
        let (cos, sin) = rope_tables(&cfg, &device)?;
        Ok(LlamaModel {
            norm: dense("output_norm.weight")?,
            cfg,
            weights,
            embedding,
            layers,
            output,
            cos,
            sin,
            device,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Runs `tokens` through the model after the positions already in `cache`, appends their keys
    /// and values to it, and returns the logits of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut SeqCache) -> Result<Vec<f32>, ModelError> {
        let seq = tokens.len();
        let pos = cache.pos;
        if seq == 0 {
            return Err(ModelError::Metadata("empty input".into()));
        }
        if pos + seq > self.cfg.context_length {
            return Err(ModelError::Metadata("context window exceeded".into()));
        }
        if cache.layers.is_empty() {
            cache.layers = (0..self.cfg.n_layer).map(|_| None).collect();
        }
        let cfg = &self.cfg;
        let mut x = self.embed(tokens)?;
        let mask = if seq > 1 {
            let m = candle_transformers::utils::build_causal_mask(seq, pos, &self.device)?;
            Some(m)
        } else {
            None
        };
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps)?;
            let q = layer
                .wq
                .forward(&h)?
                .reshape((1, seq, cfg.n_head, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let k = layer
                .wk
                .forward(&h)?
                .reshape((1, seq, cfg.n_kv_head, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let v = layer
                .wv
                .forward(&h)?
                .reshape((1, seq, cfg.n_kv_head, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            // GGUF llama weights are permuted for the interleaved ("normal") rope layout.
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            // The cache holds f16 keys and values, as llama.cpp's does: greedy outputs then agree
            // with the reference implementation token for token.
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?
                .to_dtype(DType::F16)?
                .to_dtype(DType::F32)?;
            let v = v.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
            let (k, v) = match kv.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *kv = Some((k.clone(), v.clone()));
            let n_rep = cfg.n_head / cfg.n_kv_head;
            let k = candle_transformers::utils::repeat_kv(k, n_rep)?;
            let v = candle_transformers::utils::repeat_kv(v, n_rep)?.contiguous()?;
            let att = (q.matmul(&k.t()?)? / (cfg.head_dim as f64).sqrt())?;
            let att = match &mask {
                Some(m) => {
                    let m = m.broadcast_as(att.shape())?;
                    let neg =
                        Tensor::new(f32::NEG_INFINITY, &self.device)?.broadcast_as(att.shape())?;
                    m.where_cond(&neg, &att)?
                }
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((1, seq, cfg.n_embd))?;
            x = (layer.wo.forward(&y)? + x)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.rms_eps)?;
            let gate = candle_nn::ops::silu(&layer.w_gate.forward(&h)?)?;
            let up = layer.w_up.forward(&h)?;
            x = (layer.w_down.forward(&(gate * up)?)? + x)?;
        }
        cache.pos = pos + seq;
        let last = x.narrow(1, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, cfg.rms_eps)?;
        let logits = self.output.forward(&last)?;
        Ok(logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    /// Looks up embedding rows, dequantizing only the rows needed.
    fn embed(&self, tokens: &[u32]) -> Result<Tensor, ModelError> {
        let n = self.cfg.n_embd;
        let data = self.weights.as_slice();
        let mut out = Vec::with_capacity(tokens.len() * n);
        for &t in tokens {
            let t = t as usize;
            if t >= self.cfg.vocab {
                return Err(ModelError::Metadata(format!("token id {t} out of range")));
            }
            let start = self.embedding.offset + t * self.embedding.row_bytes;
            let row = &data[start..start + self.embedding.row_bytes];
            dequantize_row(self.embedding.dtype, row, &mut out);
        }
        Ok(Tensor::from_vec(out, (1, tokens.len(), n), &self.device)?)
    }
}

/// Byte span of a tensor inside the tensor-data segment, bounds-checked.
fn tensor_span(
    info: &gguf_file::TensorInfo,
    data_len: usize,
    name: &str,
) -> Result<(usize, usize), ModelError> {
    let elems = info.shape.elem_count();
    let block = info.ggml_dtype.block_size();
    if !elems.is_multiple_of(block) {
        return Err(ModelError::Metadata(format!(
            "{name}: size not a block multiple"
        )));
    }
    let len = elems / block * info.ggml_dtype.type_size();
    let start = usize::try_from(info.offset)
        .map_err(|_| ModelError::Metadata(format!("{name}: offset out of range")))?;
    match start.checked_add(len) {
        Some(end) if end <= data_len => Ok((start, len)),
        _ => Err(ModelError::Metadata(format!("{name}: data out of range"))),
    }
}

fn dequantize_row(dtype: GgmlDType, row: &[u8], out: &mut Vec<f32>) {
    match dtype {
        GgmlDType::Q8_0 => {
            // Block: f16 scale, then 32 signed bytes.
            for block in row.chunks_exact(34) {
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlDType::F16 => out.extend(
            row.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => out.extend(
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
    }
}

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor), ModelError> {
    let theta: Vec<f32> = (0..cfg.head_dim)
        .step_by(2)
        .map(|i| 1f32 / cfg.rope_base.powf(i as f32 / cfg.head_dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let positions = Tensor::arange(0, cfg.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.context_length, 1))?;
    let angles = positions.broadcast_mul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}
