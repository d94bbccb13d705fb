//! Llama forward pass over weights that live in the locked region, with the KV cache passed in
//! per sequence.
//!
//! Every matrix product runs on the [`super::qk`] kernels, which read the GGUF blocks in place
//! from the locked, zeroize-on-drop region: no weight is copied, repacked or dequantized into
//! ordinary heap memory (norm weights are read from the region too; embedding rows are
//! dequantized one token at a time). The model is shared read-only by every sequence; each
//! sequence owns its [`SeqCache`] of paged KV blocks, so tenants never share attention state.
//!
//! [`LlamaModel::forward_batch`] runs any mix of prefills and decode steps as one batch: the rows
//! of all sequences go through each weight matrix together (each weight row is read once per
//! step), while attention stays per sequence. The kernels are batch-invariant, and everything
//! else is computed per row, so a sequence's logits do not depend on what else is in the batch.
//!
//! Numerics follow llama.cpp's CPU path where it matters for greedy agreement: activations are
//! quantized to Q8_1/Q8_0 like llama.cpp's, keys and values are rounded through f16 like its
//! f16 KV cache, and the attention probabilities are rounded through f16 before they weight the
//! values (llama.cpp converts them to the f16 value cache's type). With these, greedy output
//! equals the llama.cpp reference for all 32 tokens of both reference prompts.

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType};

use super::expf::exp_f32;
use super::kv::{KvError, KvShape, SeqCache, BLOCK_POSITIONS};
use super::layout::{Embedding, Layer, ModelLayout, VecRef, WFormat, WeightRef};
use super::qk::{
    self, ActFormat, Kernel, Pool, Q4_1Matrix, Q8_0Matrix, QWeight, QkError, QuantizedActs,
};
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
    #[error("invalid input: {0}")]
    Input(String),
    #[error("model compute: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("kernel: {0}")]
    Kernel(#[from] QkError),
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// Largest context window a model may declare. The rotary tables are precomputed for every
/// position (context × head_dim × 4 bytes: 64 MiB at 128 Ki positions and head_dim 128), so an
/// unbounded `llama.context_length` would be an allocation of any size the file asks for.
pub const MAX_CONTEXT_LENGTH: usize = 128 * 1024;

impl LlamaConfig {
    /// Geometry of one KV block for this model.
    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            n_layer: self.n_layer,
            kv_dim: self.n_kv_head * self.head_dim,
        }
    }

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
        // The embedding table has `vocab` rows; an empty one would divide by zero at load.
        if vocab == 0 {
            return Err(ModelError::Metadata("vocab_size is 0".into()));
        }
        let context_length = u("llama.context_length").unwrap_or(2048);
        if context_length > MAX_CONTEXT_LENGTH {
            return Err(ModelError::Unsupported(format!(
                "context_length {context_length} above {MAX_CONTEXT_LENGTH}"
            )));
        }
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
            context_length,
            rope_base: f("llama.rope.freq_base", 10_000.0)?,
            rms_eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        })
    }
}

impl WeightRef {
    fn view<'a>(&self, data: &'a [u8]) -> Result<QWeight<'a>, ModelError> {
        let bytes = data
            .get(self.offset..self.offset + self.len)
            .ok_or_else(|| ModelError::Metadata("weight out of range".into()))?;
        Ok(match self.format {
            WFormat::Q4_1 => Q4_1Matrix::new(bytes, self.rows, self.cols)?.into(),
            WFormat::Q8_0 => Q8_0Matrix::new(bytes, self.rows, self.cols)?.into(),
        })
    }

    fn act_format(&self) -> ActFormat {
        match self.format {
            WFormat::Q4_1 => ActFormat::Q8_1,
            WFormat::Q8_0 => ActFormat::Q8_0,
        }
    }
}

/// Shared, read-only model weights.
pub struct LlamaModel {
    cfg: LlamaConfig,
    weights: Arc<LockedRegion>,
    embedding: Embedding,
    layers: Vec<Layer>,
    norm: VecRef,
    output: WeightRef,
    /// `[position][head_dim / 2]` rotation tables.
    cos: Vec<f32>,
    sin: Vec<f32>,
    pool: Pool,
    kernel: Kernel,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("cfg", &self.cfg)
            .field("kernel", &self.kernel)
            .field("threads", &self.pool.threads())
            .finish_non_exhaustive()
    }
}

/// Attention work (score terms: cached positions × heads, summed over the batch) below which a
/// batch's attention runs on the current thread. 1 Ki is one decode row about 110 tokens into
/// the demo model's context (9 heads). Set with the per-head split, once forks had become cheap
/// (the forward pass runs inside the pool), and not tuned on its own since; any value gives
/// identical results, only speed.
const PARALLEL_ATTENTION_MIN: usize = 1024;

/// Reusable per-call buffers.
#[derive(Default)]
struct Buffers {
    acts: QuantizedActs,
    acts_of: Option<(ActFormat, usize)>,
    tmp: Vec<f32>,
}

impl LlamaModel {
    /// Builds the model from parsed metadata and the tensor-data region, with one kernel thread
    /// per available core.
    pub fn load(ct: &gguf_file::Content, weights: Arc<LockedRegion>) -> Result<Self, ModelError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::load_with_threads(ct, weights, threads)
    }

    /// [`Self::load`] with an explicit kernel thread count.
    pub fn load_with_threads(
        ct: &gguf_file::Content,
        weights: Arc<LockedRegion>,
        threads: usize,
    ) -> Result<Self, ModelError> {
        let cfg = LlamaConfig::from_metadata(ct)?;
        let layout = ModelLayout::from_gguf(ct, &cfg, weights.as_slice().len())?;
        // The kernels' own shape checks, once, before the first forward pass.
        let data = weights.as_slice();
        for w in layout.matrices() {
            w.view(data)?;
        }
        let ModelLayout {
            embedding,
            layers,
            norm,
            output,
        } = layout;
        let (cos, sin) = rope_tables(&cfg);
        Ok(LlamaModel {
            norm,
            cfg,
            weights,
            embedding,
            layers,
            output,
            cos,
            sin,
            pool: Pool::new(threads)?,
            kernel: Kernel::best(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Geometry of this model's KV blocks.
    pub fn kv_shape(&self) -> KvShape {
        self.cfg.kv_shape()
    }

    /// Runs `tokens` through the model after the positions already in `cache`, appends their keys
    /// and values to it, and returns the logits of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut SeqCache) -> Result<Vec<f32>, ModelError> {
        let mut logits = self.forward_batch(&mut [(tokens, cache)])?;
        logits
            .pop()
            .ok_or_else(|| ModelError::Input("empty batch".into()))
    }

    /// Runs several sequences as one batch (any mix of prompts and single decode tokens) and
    /// returns each one's last-token logits, in order. Each sequence's result is bit-for-bit what
    /// [`Self::forward`] gives it alone. On error no cache advances (blocks may have been
    /// reserved).
    pub fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut SeqCache)],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        // The whole pass runs on a pool worker: each parallel kernel inside then forks from a
        // worker (the others are usually still in rayon's short search rounds after the previous
        // kernel, not yet parked) instead of the caller blocking on a latch and being woken ~250
        // times per decode step.
        self.pool.install(|| self.forward_batch_on_pool(items))
    }

    fn forward_batch_on_pool(
        &self,
        items: &mut [(&[u32], &mut SeqCache)],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let cfg = &self.cfg;
        let shape = self.kv_shape();
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for (tokens, cache) in items.iter_mut() {
            if tokens.is_empty() {
                return Err(ModelError::Input("empty input".into()));
            }
            if cache.pos + tokens.len() > cfg.context_length {
                return Err(ModelError::Input("context window exceeded".into()));
            }
            cache.reserve(shape, cache.pos + tokens.len())?;
        }
        // Row r of the batch is token `rows[r].1` of item `rows[r].0` at position `rows[r].2`.
        let mut rows = Vec::new();
        let mut last_rows = Vec::with_capacity(items.len());
        for (i, (tokens, cache)) in items.iter().enumerate() {
            for (j, &t) in tokens.iter().enumerate() {
                rows.push((i, t, cache.pos + j));
            }
            last_rows.push(rows.len() - 1);
        }
        let n = rows.len();
        let d = cfg.n_embd;
        let kvd = shape.kv_dim;
        let ff = self.layers.first().map_or(0, |l| l.w_gate.rows);

        let mut x = Vec::with_capacity(n * d);
        for &(_, t, _) in &rows {
            self.embed(t, &mut x)?;
        }
        let mut h = vec![0.0f32; n * d];
        let mut q = vec![0.0f32; n * d];
        let mut k = vec![0.0f32; n * kvd];
        let mut v = vec![0.0f32; n * kvd];
        let mut att = vec![0.0f32; n * d];
        let mut proj = vec![0.0f32; n * d];
        let mut gate = vec![0.0f32; n * ff];
        let mut up = vec![0.0f32; n * ff];
        let mut buf = Buffers::default();

        for (l, layer) in self.layers.iter().enumerate() {
            self.rms_norm(&x, layer.attn_norm, &mut h);
            buf.acts_of = None;
            self.project_many(
                &[layer.wq, layer.wk, layer.wv],
                &h,
                &mut [&mut q, &mut k, &mut v],
                &mut buf,
            )?;
            for (r, &(i, _, pos)) in rows.iter().enumerate() {
                self.rope(&mut q[r * d..(r + 1) * d], pos);
                let kr = &mut k[r * kvd..(r + 1) * kvd];
                self.rope(kr, pos);
                // The cache holds f16-rounded keys and values, as llama.cpp's f16 cache does:
                // greedy outputs then agree with the reference token for token.
                round_f16(kr);
                let vr = &mut v[r * kvd..(r + 1) * kvd];
                round_f16(vr);
                let cache = &mut items[i].1;
                let (b, slot) = (pos / BLOCK_POSITIONS, pos % BLOCK_POSITIONS);
                let block = cache
                    .blocks
                    .get_mut(b)
                    .ok_or_else(|| ModelError::Input("KV block missing".into()))?
                    .data_mut();
                let ko = shape.offset(l, false, slot);
                block[ko..ko + kvd].copy_from_slice(kr);
                let vo = shape.offset(l, true, slot);
                block[vo..vo + kvd].copy_from_slice(vr);
            }
            self.attention(l, items, &rows, &q, &mut att)?;
            buf.acts_of = None;
            self.project(layer.wo, &att, &mut proj, &mut buf)?;
            add_assign(&mut x, &proj);

            self.rms_norm(&x, layer.ffn_norm, &mut h);
            buf.acts_of = None;
            self.project_many(
                &[layer.w_gate, layer.w_up],
                &h,
                &mut [&mut gate, &mut up],
                &mut buf,
            )?;
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = silu(*g) * u;
            }
            buf.acts_of = None;
            self.project(layer.w_down, &gate, &mut proj, &mut buf)?;
            add_assign(&mut x, &proj);
        }
        for (tokens, cache) in items.iter_mut() {
            cache.pos += tokens.len();
        }
        let mut last = Vec::with_capacity(last_rows.len() * d);
        for &r in &last_rows {
            last.extend_from_slice(&x[r * d..(r + 1) * d]);
        }
        let mut normed = vec![0.0f32; last.len()];
        self.rms_norm(&last, self.norm, &mut normed);
        let mut logits = vec![0.0f32; last_rows.len() * cfg.vocab];
        buf.acts_of = None;
        self.project(self.output, &normed, &mut logits, &mut buf)?;
        Ok(logits
            .chunks_exact(cfg.vocab)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// `out = xs · Wᵀ`, quantizing `xs` only when the previous call did not already.
    fn project(
        &self,
        w: WeightRef,
        xs: &[f32],
        out: &mut [f32],
        buf: &mut Buffers,
    ) -> Result<(), ModelError> {
        self.project_many(&[w], xs, &mut [out], buf)
    }

    /// `outs[i] = xs · ws[i]ᵀ` for matrices that read the same input (Q/K/V, gate/up): one
    /// quantization of `xs` and one parallel region when their formats agree.
    fn project_many(
        &self,
        ws: &[WeightRef],
        xs: &[f32],
        outs: &mut [&mut [f32]],
        buf: &mut Buffers,
    ) -> Result<(), ModelError> {
        let Some(first) = ws.first() else {
            return Ok(());
        };
        let key = (first.act_format(), first.cols);
        if ws.iter().any(|w| (w.act_format(), w.cols) != key) {
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                self.project(*w, xs, out, buf)?;
            }
            return Ok(());
        }
        if buf.acts_of != Some(key) {
            buf.acts.quantize(key.0, xs, key.1)?;
            buf.acts_of = Some(key);
        }
        let data = self.weights.as_slice();
        let views = ws
            .iter()
            .map(|w| w.view(data))
            .collect::<Result<Vec<_>, _>>()?;
        qk::matmul_quantized_many(
            &views,
            &buf.acts,
            outs,
            &self.pool,
            self.kernel,
            &mut buf.tmp,
        )?;
        Ok(())
    }

    /// Causal attention of every batch row over its own sequence's cache.
    fn attention(
        &self,
        layer: usize,
        items: &[(&[u32], &mut SeqCache)],
        rows: &[(usize, u32, usize)],
        q: &[f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let (d, hd, n_head) = (self.cfg.n_embd, self.cfg.head_dim, self.cfg.n_head);
        let work: usize = rows.iter().map(|&(_, _, p)| p + 1).sum::<usize>() * n_head;
        // Output chunk `j` is head `j % n_head` of batch row `j / n_head`: heads are independent,
        // so even one decode row splits across the pool.
        let head = |j: usize, o: &mut [f32]| {
            let (r, h) = (j / n_head, j % n_head);
            let (i, _, pos) = rows[r];
            let qh = &q[r * d + h * hd..r * d + (h + 1) * hd];
            self.attend_head(layer, &items[i].1.blocks, pos, h, qh, o);
        };
        if work >= PARALLEL_ATTENTION_MIN && self.pool.threads() > 1 {
            use rayon::prelude::*;
            self.pool.install(|| {
                out.par_chunks_mut(hd)
                    .enumerate()
                    .for_each(|(j, o)| head(j, o))
            });
        } else {
            for (j, o) in out.chunks_exact_mut(hd).enumerate() {
                head(j, o);
            }
        }
        Ok(())
    }

    /// Head `h` of one row's attention over positions `0..=pos` of `blocks`, into `out`
    /// (`head_dim` values).
    fn attend_head(
        &self,
        layer: usize,
        blocks: &[super::kv::KvBlock],
        pos: usize,
        h: usize,
        qh: &[f32],
        out: &mut [f32],
    ) {
        let cfg = &self.cfg;
        let shape = self.kv_shape();
        let hd = cfg.head_dim;
        let kvh = h / (cfg.n_head / cfg.n_kv_head);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0.0f32; pos + 1];
        for (t, s) in scores.iter_mut().enumerate() {
            let o = shape.offset(layer, false, t % BLOCK_POSITIONS) + kvh * hd;
            let kt = &blocks[t / BLOCK_POSITIONS].data()[o..o + hd];
            *s = dot(qh, kt) * scale;
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0.0f64;
        for s in scores.iter_mut() {
            *s = exp_f32(*s - max);
            sum += f64::from(*s);
        }
        let inv = (1.0 / sum) as f32;
        out.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let o = shape.offset(layer, true, t % BLOCK_POSITIONS) + kvh * hd;
            let vt = &blocks[t / BLOCK_POSITIONS].data()[o..o + hd];
            // llama.cpp multiplies the f16 value cache by the probabilities converted to
            // f16; doing the same keeps greedy outputs on the reference.
            let p = half::f16::from_f32(p * inv).to_f32();
            for (a, &b) in out.iter_mut().zip(vt) {
                *a += p * b;
            }
        }
    }

    /// Interleaved ("normal") rotary embedding, as GGUF llama weights expect.
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(self.cfg.head_dim) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos[i] - b * sin[i];
                pair[1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Row-wise RMS norm of `x` (rows of `n_embd`) times the weight `w`, into `out`.
    fn rms_norm(&self, x: &[f32], w: VecRef, out: &mut [f32]) {
        let d = self.cfg.n_embd;
        let data = self.weights.as_slice();
        let wb = &data[w.offset..w.offset + w.len * 4];
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let sum: f64 = xr.iter().map(|&v| f64::from(v * v)).sum();
            let mean = (sum / d as f64) as f32;
            let scale = 1.0 / (mean + self.cfg.rms_eps).sqrt();
            for ((o, &v), b) in or.iter_mut().zip(xr).zip(wb.chunks_exact(4)) {
                *o = v * scale * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }

    /// Appends the embedding row of `token`, dequantizing only that row.
    fn embed(&self, token: u32, out: &mut Vec<f32>) -> Result<(), ModelError> {
        let t = token as usize;
        if t >= self.cfg.vocab {
            return Err(ModelError::Input(format!("token id {t} out of range")));
        }
        let start = self.embedding.offset + t * self.embedding.row_bytes;
        let row = self
            .weights
            .as_slice()
            .get(start..start + self.embedding.row_bytes)
            .ok_or_else(|| ModelError::Metadata("embedding out of range".into()))?;
        dequantize_row(self.embedding.dtype, row, out);
        Ok(())
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent lanes (vectorizes), then a fixed reduction: same order for every call.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn silu(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn round_f16(x: &mut [f32]) {
    for v in x {
        *v = half::f16::from_f32(*v).to_f32();
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

/// `[position][head_dim / 2]` cos/sin tables, computed as candle's were (f32 throughout).
pub(crate) fn rope_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let theta: Vec<f32> = (0..cfg.head_dim)
        .step_by(2)
        .map(|i| 1f32 / cfg.rope_base.powf(i as f32 / cfg.head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(cfg.context_length * theta.len());
    let mut sin = Vec::with_capacity(cfg.context_length * theta.len());
    for p in 0..cfg.context_length {
        for &t in &theta {
            let a = p as f32 * t;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}
