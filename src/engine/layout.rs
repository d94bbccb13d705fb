//! Where each tensor of a Llama GGUF lives inside the tensor data, checked once: shapes against
//! the config, byte spans against the data length. The CPU engine reads the weights in place
//! from its locked region, the GPU forward pass from the device buffer the decrypt kernel filled;
//! both use the same layout.

use candle_core::quantized::{gguf_file, GgmlDType};

use super::llama::{LlamaConfig, ModelError};

/// Block format of a weight matrix (the ones the kernels handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WFormat {
    Q4_1,
    Q8_0,
}

/// A quantized matrix inside the tensor data (offsets are bounds-checked at load).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightRef {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) format: WFormat,
}

/// An f32 vector (a norm weight) inside the tensor data, read in place.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VecRef {
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: VecRef,
    pub(crate) wq: WeightRef,
    pub(crate) wk: WeightRef,
    pub(crate) wv: WeightRef,
    pub(crate) wo: WeightRef,
    pub(crate) ffn_norm: VecRef,
    pub(crate) w_gate: WeightRef,
    pub(crate) w_up: WeightRef,
    pub(crate) w_down: WeightRef,
}

/// The token embedding table, kept quantized in the tensor data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Embedding {
    pub(crate) offset: usize,
    pub(crate) dtype: GgmlDType,
    pub(crate) row_bytes: usize,
}

/// Every tensor the forward pass reads.
#[derive(Clone, Debug)]
pub(crate) struct ModelLayout {
    pub(crate) embedding: Embedding,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: VecRef,
    pub(crate) output: WeightRef,
}

impl ModelLayout {
    /// Reads the tensor table of `ct` for a model with `cfg`, over `data_len` bytes of tensor
    /// data.
    pub(crate) fn from_gguf(
        ct: &gguf_file::Content,
        cfg: &LlamaConfig,
        data_len: usize,
    ) -> Result<Self, ModelError> {
        let info = |name: &str| {
            ct.tensor_infos
                .get(name)
                .ok_or_else(|| ModelError::Metadata(format!("missing tensor {name}")))
        };
        let matrix = |name: &str| -> Result<WeightRef, ModelError> {
            let i = info(name)?;
            let format = match i.ggml_dtype {
                GgmlDType::Q4_1 => WFormat::Q4_1,
                GgmlDType::Q8_0 => WFormat::Q8_0,
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "{name}: tensor type {other:?}"
                    )))
                }
            };
            let (rows, cols) = i.shape.dims2()?;
            let (offset, len) = tensor_span(i, data_len, name)?;
            let w = WeightRef {
                offset,
                len,
                rows,
                cols,
                format,
            };
            // Validates the shape against the byte length once, here.
            if cols % 32 != 0 {
                return Err(ModelError::Unsupported(format!("{name}: {cols} columns")));
            }
            Ok(w)
        };
        let vector = |name: &str, n: usize| -> Result<VecRef, ModelError> {
            let i = info(name)?;
            if i.ggml_dtype != GgmlDType::F32 || elem_count(i, name)? != n {
                return Err(ModelError::Unsupported(format!(
                    "{name}: expected {n} f32 values"
                )));
            }
            let (offset, len) = tensor_span(i, data_len, name)?;
            Ok(VecRef {
                offset,
                len: len / 4,
            })
        };

        let emb_info = info("token_embd.weight")?;
        let (emb_start, emb_len) = tensor_span(emb_info, data_len, "token_embd.weight")?;
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

        let d = cfg.n_embd;
        let kvd = cfg.n_kv_head * cfg.head_dim;
        // `block_count` comes from the file: reserve no more layers than there are tensors, so a
        // huge count fails on the first missing tensor instead of allocating for all of them.
        let mut layers = Vec::with_capacity(cfg.n_layer.min(ct.tensor_infos.len()));
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let layer = Layer {
                attn_norm: vector(&format!("{p}.attn_norm.weight"), d)?,
                wq: matrix(&format!("{p}.attn_q.weight"))?,
                wk: matrix(&format!("{p}.attn_k.weight"))?,
                wv: matrix(&format!("{p}.attn_v.weight"))?,
                wo: matrix(&format!("{p}.attn_output.weight"))?,
                ffn_norm: vector(&format!("{p}.ffn_norm.weight"), d)?,
                w_gate: matrix(&format!("{p}.ffn_gate.weight"))?,
                w_up: matrix(&format!("{p}.ffn_up.weight"))?,
                w_down: matrix(&format!("{p}.ffn_down.weight"))?,
            };
            let ff = layer.w_gate.rows;
            let dims_ok = [
                (layer.wq, d, d),
                (layer.wk, kvd, d),
                (layer.wv, kvd, d),
                (layer.wo, d, d),
                (layer.w_gate, ff, d),
                (layer.w_up, ff, d),
                (layer.w_down, d, ff),
            ]
            .iter()
            .all(|(w, r, c)| w.rows == *r && w.cols == *c);
            if !dims_ok {
                return Err(ModelError::Metadata(format!("{p}: unexpected shapes")));
            }
            layers.push(layer);
        }
        // Tied embeddings: models without `output.weight` project with the embedding table.
        let output = if ct.tensor_infos.contains_key("output.weight") {
            matrix("output.weight")?
        } else {
            matrix("token_embd.weight")?
        };
        if output.rows != cfg.vocab || output.cols != d {
            return Err(ModelError::Metadata("output shape does not match".into()));
        }
        Ok(ModelLayout {
            embedding,
            layers,
            norm: vector("output_norm.weight", d)?,
            output,
        })
    }

    /// Every weight matrix.
    pub(crate) fn matrices(&self) -> impl Iterator<Item = WeightRef> + '_ {
        self.layers
            .iter()
            .flat_map(|l| [l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down])
            .chain(std::iter::once(self.output))
    }
}

/// Number of elements of a tensor, refusing shapes whose product overflows: candle's
/// `Shape::elem_count` multiplies unchecked, and GGUF dimensions are arbitrary u64s.
fn elem_count(info: &gguf_file::TensorInfo, name: &str) -> Result<usize, ModelError> {
    info.shape
        .dims()
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ModelError::Metadata(format!("{name}: shape too large")))
}

/// Byte span of a tensor inside the tensor-data segment, bounds-checked.
fn tensor_span(
    info: &gguf_file::TensorInfo,
    data_len: usize,
    name: &str,
) -> Result<(usize, usize), ModelError> {
    let elems = elem_count(info, name)?;
    let block = info.ggml_dtype.block_size();
    if !elems.is_multiple_of(block) {
        return Err(ModelError::Metadata(format!(
            "{name}: size not a block multiple"
        )));
    }
    // Checked: a GGUF may declare a shape whose element count fits but whose byte size does
    // not (found by fuzzing: an f32 tensor of 2^62 elements).
    let len = (elems / block)
        .checked_mul(info.ggml_dtype.type_size())
        .ok_or_else(|| ModelError::Metadata(format!("{name}: size in bytes too large")))?;
    let start = usize::try_from(info.offset)
        .map_err(|_| ModelError::Metadata(format!("{name}: offset out of range")))?;
    match start.checked_add(len) {
        Some(end) if end <= data_len => Ok((start, len)),
        _ => Err(ModelError::Metadata(format!("{name}: data out of range"))),
    }
}
