//! The Llama forward pass on a device (DESIGN.md §6, §10): weights stay where the decrypt kernel
//! wrote them, each sequence's KV blocks come from its tenant's own device pool, and only the
//! logits of each sequence's last position come back to the host (for sampling, as on the CPU).
//!
//! The orchestration here is written once against [`DeviceOps`] — allocate, copy, launch a
//! kernel of `kernels/llama.cu` — and has two implementations: CUDA (`super::cuda_ops`, feature
//! `cuda`) and, in the tests, the same kernels compiled as host C++. So the CPU test suite runs
//! this code, with the GPU's arithmetic, against the CPU engine on machines without a GPU.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::quantized::{gguf_file, GgmlDType};

use crate::engine::layout::{ModelLayout, VecRef, WFormat, WeightRef};
use crate::engine::{KvShape, LlamaConfig, ModelError, BLOCK_POSITIONS};

/// A device address (CUdeviceptr; in the host test build, a host address).
pub type DevPtr = u64;

/// Bytes of one 32-value block of quantized activations (`kernels/llama.cu`, "acts").
const ACT_BLOCK_BYTES: usize = 40;
/// `CL_MAX_HEAD_DIM` in `kernels/llama.cu`: the attention kernel's per-thread accumulator.
const MAX_HEAD_DIM: usize = 256;

/// The kernels of `kernels/llama.cu`, numbered as `kernels/host/llama_host.cpp` expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaKernel {
    EmbedQ8_0,
    RmsNorm,
    QuantizeQ8,
    MatmulQ4_1,
    MatmulQ8_0,
    RopeStoreKv,
    Attention,
    SiluMul,
    AddAssign,
    GatherRows,
}

impl LlamaKernel {
    /// Entry points, indexed by [`Self::id`].
    pub const NAMES: &'static [&'static str] = &[
        "embed_q8_0",
        "rms_norm",
        "quantize_q8",
        "matmul_q4_1",
        "matmul_q8_0",
        "rope_store_kv",
        "attention",
        "silu_mul",
        "add_assign",
        "gather_rows",
    ];

    pub const ALL: [LlamaKernel; 10] = [
        LlamaKernel::EmbedQ8_0,
        LlamaKernel::RmsNorm,
        LlamaKernel::QuantizeQ8,
        LlamaKernel::MatmulQ4_1,
        LlamaKernel::MatmulQ8_0,
        LlamaKernel::RopeStoreKv,
        LlamaKernel::Attention,
        LlamaKernel::SiluMul,
        LlamaKernel::AddAssign,
        LlamaKernel::GatherRows,
    ];

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One kernel argument, as the kernel's C signature takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    Ptr(DevPtr),
    U32(u32),
    F32(f32),
}

#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the tenant's device KV pool is exhausted ({capacity} blocks in use)")]
    KvExhausted { capacity: usize },
}

/// What the forward pass needs from a device. Every kernel is one thread per work item with a
/// grid-stride loop, so a launch needs only the number of items.
pub trait DeviceOps {
    /// Allocates `bytes` of zeroed device memory, owned by the device until [`Self::free`].
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr, GpuModelError>;
    /// Frees an allocation made by [`Self::alloc`] (unknown addresses are ignored).
    fn free(&mut self, ptr: DevPtr);
    fn upload(&mut self, dst: DevPtr, src: &[u8]) -> Result<(), GpuModelError>;
    /// Copies device memory back; returns once the bytes are in `dst`.
    fn download(&mut self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuModelError>;
    fn launch(
        &mut self,
        kernel: LlamaKernel,
        items: u64,
        args: &[KernelArg],
    ) -> Result<(), GpuModelError>;
    /// Zero-fills `bytes` at `ptr` with `kernels/zero.cu`.
    fn zero(&mut self, ptr: DevPtr, bytes: usize) -> Result<(), GpuModelError>;
}

/// One tenant's KV memory: a single device allocation of whole blocks, never shared with another
/// tenant. Released blocks are zero-filled before anyone can draw them again.
#[derive(Debug)]
pub struct DeviceKvPool {
    base: DevPtr,
    block_bytes: usize,
    capacity: usize,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Zeroed blocks, ready to hand out.
    free: Vec<u32>,
    /// Blocks of sequences dropped without [`DeviceSeq::release`]: zeroed before reuse.
    dirty: Vec<u32>,
}

impl DeviceKvPool {
    /// Allocates `budget_bytes` (rounded down to whole blocks, as the CPU pool counts them: a
    /// budget under one block holds none) of device memory for one tenant.
    pub fn new(
        dev: &mut impl DeviceOps,
        budget_bytes: u64,
        shape: KvShape,
    ) -> Result<Arc<Self>, GpuModelError> {
        let block_bytes = shape.block_bytes();
        let capacity = usize::try_from(budget_bytes / block_bytes.max(1) as u64)
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize);
        let bytes = capacity
            .checked_mul(block_bytes)
            .ok_or_else(|| GpuModelError::Device("KV pool size overflows".into()))?;
        let base = dev.alloc(bytes)?;
        Ok(Arc::new(DeviceKvPool {
            base,
            block_bytes,
            capacity,
            state: Mutex::new(PoolState {
                free: (0..capacity as u32).rev().collect(),
                dirty: Vec::new(),
            }),
        }))
    }

    /// Blocks held by sequences right now.
    pub fn in_use(&self) -> usize {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.capacity - s.free.len() - s.dirty.len()
    }

    /// Bytes of the pool's device allocation.
    pub fn bytes(&self) -> usize {
        self.capacity * self.block_bytes
    }

    /// Device address of block `index`.
    pub fn block_addr(&self, index: u32) -> DevPtr {
        self.base + index as u64 * self.block_bytes as u64
    }

    fn take(&self, dev: &mut impl DeviceOps) -> Result<u32, GpuModelError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.free.is_empty() {
            while let Some(b) = s.dirty.pop() {
                if let Err(e) = dev.zero(self.block_addr(b), self.block_bytes) {
                    s.dirty.push(b);
                    return Err(e);
                }
                s.free.push(b);
            }
        }
        s.free.pop().ok_or(GpuModelError::KvExhausted {
            capacity: self.capacity,
        })
    }
}

/// One sequence's KV cache: blocks of its tenant's pool and the number of positions filled.
#[derive(Debug)]
pub struct DeviceSeq {
    pool: Arc<DeviceKvPool>,
    blocks: Vec<u32>,
    pos: usize,
}

impl DeviceSeq {
    pub fn new(pool: Arc<DeviceKvPool>) -> Self {
        DeviceSeq {
            pool,
            blocks: Vec::new(),
            pos: 0,
        }
    }

    /// Positions already in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Device addresses of the sequence's blocks, in position order.
    pub fn block_addrs(&self) -> Vec<DevPtr> {
        self.blocks
            .iter()
            .map(|&b| self.pool.block_addr(b))
            .collect()
    }

    fn reserve(&mut self, dev: &mut impl DeviceOps, positions: usize) -> Result<(), GpuModelError> {
        while self.blocks.len() * BLOCK_POSITIONS < positions {
            let b = self.pool.take(dev)?;
            self.blocks.push(b);
        }
        Ok(())
    }

    /// Ends the sequence: its blocks are zero-filled on the device now and go back to the pool.
    pub fn release(mut self, dev: &mut impl DeviceOps) -> Result<(), GpuModelError> {
        let blocks = std::mem::take(&mut self.blocks);
        let mut result = Ok(());
        let mut cleared = Vec::with_capacity(blocks.len());
        let mut dirty = Vec::new();
        for b in blocks {
            match dev.zero(self.pool.block_addr(b), self.pool.block_bytes) {
                Ok(()) => cleared.push(b),
                Err(e) => {
                    dirty.push(b);
                    result = Err(e);
                }
            }
        }
        let mut s = self
            .pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.free.extend(cleared);
        s.dirty.extend(dirty);
        result
    }
}

impl Drop for DeviceSeq {
    fn drop(&mut self) {
        if !self.blocks.is_empty() {
            let mut s = self
                .pool
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            s.dirty.append(&mut self.blocks);
        }
    }
}

/// The model on a device: weights, rotary tables, and the device that runs the kernels.
pub struct GpuLlama<D: DeviceOps> {
    dev: D,
    cfg: LlamaConfig,
    layout: ModelLayout,
    weights: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
}

impl<D: DeviceOps> std::fmt::Debug for GpuLlama<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuLlama")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u64_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn to_u32(n: usize) -> Result<u32, GpuModelError> {
    u32::try_from(n).map_err(|_| GpuModelError::Device(format!("{n} exceeds a kernel's u32")))
}

/// Device allocations of one forward pass, freed together however the pass ends.
struct Scratch<'a, D: DeviceOps> {
    dev: &'a mut D,
    owned: Vec<DevPtr>,
}

impl<D: DeviceOps> Scratch<'_, D> {
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr, GpuModelError> {
        let p = self.dev.alloc(bytes.max(4))?;
        self.owned.push(p);
        Ok(p)
    }

    fn upload(&mut self, bytes: &[u8]) -> Result<DevPtr, GpuModelError> {
        let p = self.alloc(bytes.len())?;
        self.dev.upload(p, bytes)?;
        Ok(p)
    }
}

impl<D: DeviceOps> Drop for Scratch<'_, D> {
    fn drop(&mut self) {
        for p in self.owned.drain(..) {
            self.dev.free(p);
        }
    }
}

use KernelArg::{Ptr, F32, U32};

impl<D: DeviceOps> GpuLlama<D> {
    /// The model of GGUF header `ct` over `weights_len` bytes of tensor data already on the
    /// device at `weights` (the decrypted `tensors` segment). The allocation must outlive `dev`'s
    /// use by this model.
    pub fn new(
        mut dev: D,
        ct: &gguf_file::Content,
        weights: DevPtr,
        weights_len: usize,
    ) -> Result<Self, GpuModelError> {
        let cfg = LlamaConfig::from_metadata(ct)?;
        let layout = ModelLayout::from_gguf(ct, &cfg, weights_len)?;
        if layout.embedding.dtype != GgmlDType::Q8_0 {
            return Err(ModelError::Unsupported(format!(
                "token embedding type {:?} on the GPU (Q8_0 only)",
                layout.embedding.dtype
            ))
            .into());
        }
        if cfg.head_dim > MAX_HEAD_DIM || cfg.head_dim % 2 != 0 || cfg.n_embd % 32 != 0 {
            return Err(ModelError::Unsupported(format!(
                "head_dim {} / n_embd {} on the GPU",
                cfg.head_dim, cfg.n_embd
            ))
            .into());
        }
        let (cos, sin) = crate::engine::rope_tables(&cfg);
        let cos_d = dev.alloc(cos.len() * 4)?;
        dev.upload(cos_d, &f32_bytes(&cos))?;
        let sin_d = dev.alloc(sin.len() * 4)?;
        dev.upload(sin_d, &f32_bytes(&sin))?;
        Ok(GpuLlama {
            dev,
            cfg,
            layout,
            weights,
            cos: cos_d,
            sin: sin_d,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn kv_shape(&self) -> KvShape {
        self.cfg.kv_shape()
    }

    /// The device, e.g. to create pools or release sequences.
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Makes room for `positions` positions in `seq` (blocks from its tenant's pool).
    pub fn reserve(&mut self, seq: &mut DeviceSeq, positions: usize) -> Result<(), GpuModelError> {
        seq.reserve(&mut self.dev, positions)
    }

    /// A new KV pool of `budget_bytes` for one tenant.
    pub fn new_pool(&mut self, budget_bytes: u64) -> Result<Arc<DeviceKvPool>, GpuModelError> {
        let shape = self.kv_shape();
        DeviceKvPool::new(&mut self.dev, budget_bytes, shape)
    }

    /// Runs `tokens` of every sequence (prefill chunks and decode steps alike) as one batch and
    /// returns each sequence's logits for its last token — the CPU engine's `forward_batch`.
    pub fn forward_batch(
        &mut self,
        items: &mut [(&[u32], &mut DeviceSeq)],
    ) -> Result<Vec<Vec<f32>>, GpuModelError> {
        // Disjoint borrows: the scratch below holds the device, the kernels read the rest.
        let GpuLlama {
            dev,
            cfg,
            layout,
            weights,
            cos,
            sin,
        } = self;
        let (weights, cos, sin) = (*weights, *cos, *sin);
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for (tokens, seq) in items.iter_mut() {
            if tokens.is_empty() {
                return Err(ModelError::Input("empty input".into()).into());
            }
            if let Some(&t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
                return Err(ModelError::Input(format!("token id {t} out of range")).into());
            }
            if seq.pos + tokens.len() > cfg.context_length {
                return Err(ModelError::Input("context window exceeded".into()).into());
            }
            seq.reserve(&mut *dev, seq.pos + tokens.len())?;
        }
        // Per row: token, position, its block's address, and where its sequence's block table
        // starts in `tables`.
        let (mut tokens, mut pos, mut row_block, mut row_table) = (vec![], vec![], vec![], vec![]);
        let mut tables: Vec<u64> = Vec::new();
        let mut last_rows = Vec::with_capacity(items.len());
        for (toks, seq) in items.iter() {
            let addrs = seq.block_addrs();
            let table_at = to_u32(tables.len())?;
            for (j, &t) in toks.iter().enumerate() {
                let p = seq.pos + j;
                tokens.push(t);
                pos.push(to_u32(p)?);
                row_block.push(addrs[p / BLOCK_POSITIONS]);
                row_table.push(table_at);
            }
            tables.extend(addrs);
            last_rows.push(to_u32(tokens.len() - 1)?);
        }
        let n = tokens.len();
        let (d, kvd, hd) = (cfg.n_embd, cfg.kv_shape().kv_dim, cfg.head_dim);
        let ff = layout.layers.first().map_or(0, |l| l.w_gate.rows);
        let nu = to_u32(n)?;

        let mut s = Scratch {
            dev,
            owned: Vec::new(),
        };
        let tokens_d = s.upload(&u32_bytes(&tokens))?;
        let pos_d = s.upload(&u32_bytes(&pos))?;
        let row_block_d = s.upload(&u64_bytes(&row_block))?;
        let row_table_d = s.upload(&u32_bytes(&row_table))?;
        let tables_d = s.upload(&u64_bytes(&tables))?;
        let x = s.alloc(n * d * 4)?;
        let h = s.alloc(n * d * 4)?;
        let q = s.alloc(n * d * 4)?;
        let k = s.alloc(n * kvd * 4)?;
        let v = s.alloc(n * kvd * 4)?;
        let att = s.alloc(n * d * 4)?;
        let proj = s.alloc(n * d * 4)?;
        let gate = s.alloc(n * ff * 4)?;
        let up = s.alloc(n * ff * 4)?;
        let acts = s.alloc(n * d.max(ff) / 32 * ACT_BLOCK_BYTES)?;
        let dev = &mut *s.dev;

        dev.launch(
            LlamaKernel::EmbedQ8_0,
            (n * d) as u64,
            &[
                Ptr(weights + layout.embedding.offset as u64),
                Ptr(tokens_d),
                Ptr(x),
                U32(nu),
                U32(to_u32(d)?),
            ],
        )?;
        let norm = |dev: &mut D, input: DevPtr, w: VecRef, out: DevPtr, rows: usize| {
            dev.launch(
                LlamaKernel::RmsNorm,
                rows as u64,
                &[
                    Ptr(input),
                    Ptr(weights + w.offset as u64),
                    Ptr(out),
                    U32(to_u32(rows)?),
                    U32(to_u32(d)?),
                    F32(cfg.rms_eps),
                ],
            )
        };
        let project = |dev: &mut D, w: WeightRef, input: DevPtr, out: DevPtr, rows: usize| {
            let nb = w.cols / 32;
            dev.launch(
                LlamaKernel::QuantizeQ8,
                (rows * nb) as u64,
                &[
                    Ptr(input),
                    Ptr(acts),
                    U32(to_u32(rows * nb)?),
                    U32(u32::from(w.format == WFormat::Q4_1)),
                ],
            )?;
            let kernel = match w.format {
                WFormat::Q4_1 => LlamaKernel::MatmulQ4_1,
                WFormat::Q8_0 => LlamaKernel::MatmulQ8_0,
            };
            dev.launch(
                kernel,
                (rows * w.rows) as u64,
                &[
                    Ptr(weights + w.offset as u64),
                    Ptr(acts),
                    Ptr(out),
                    U32(to_u32(w.rows)?),
                    U32(to_u32(nb)?),
                    U32(to_u32(rows)?),
                ],
            )
        };
        let add = |dev: &mut D, dst: DevPtr, src: DevPtr, len: usize| {
            dev.launch(
                LlamaKernel::AddAssign,
                len as u64,
                &[Ptr(dst), Ptr(src), U32(to_u32(len)?)],
            )
        };
        let heads = [
            U32(to_u32(cfg.n_head)?),
            U32(to_u32(cfg.n_kv_head)?),
            U32(to_u32(hd)?),
        ];
        for (l, layer) in layout.layers.iter().enumerate() {
            norm(dev, x, layer.attn_norm, h, n)?;
            project(dev, layer.wq, h, q, n)?;
            project(dev, layer.wk, h, k, n)?;
            project(dev, layer.wv, h, v, n)?;
            let mut args = vec![
                Ptr(q),
                Ptr(k),
                Ptr(v),
                Ptr(cos),
                Ptr(sin),
                Ptr(pos_d),
                Ptr(row_block_d),
                U32(nu),
            ];
            args.extend(heads);
            args.push(U32(to_u32(l)?));
            dev.launch(LlamaKernel::RopeStoreKv, n as u64, &args)?;
            let mut args = vec![
                Ptr(q),
                Ptr(tables_d),
                Ptr(row_table_d),
                Ptr(pos_d),
                Ptr(att),
                U32(nu),
            ];
            args.extend(heads);
            args.push(U32(to_u32(l)?));
            args.push(F32(1.0 / (hd as f32).sqrt()));
            dev.launch(LlamaKernel::Attention, (n * cfg.n_head) as u64, &args)?;
            project(dev, layer.wo, att, proj, n)?;
            add(dev, x, proj, n * d)?;

            norm(dev, x, layer.ffn_norm, h, n)?;
            project(dev, layer.w_gate, h, gate, n)?;
            project(dev, layer.w_up, h, up, n)?;
            dev.launch(
                LlamaKernel::SiluMul,
                (n * ff) as u64,
                &[Ptr(gate), Ptr(up), U32(to_u32(n * ff)?)],
            )?;
            project(dev, layer.w_down, gate, proj, n)?;
            add(dev, x, proj, n * d)?;
        }
        let m = last_rows.len();
        let last_d = s.upload(&u32_bytes(&last_rows))?;
        let last = s.alloc(m * d * 4)?;
        let logits_d = s.alloc(m * cfg.vocab * 4)?;
        let dev = &mut *s.dev;
        dev.launch(
            LlamaKernel::GatherRows,
            (m * d) as u64,
            &[
                Ptr(x),
                Ptr(last_d),
                Ptr(last),
                U32(to_u32(m)?),
                U32(to_u32(d)?),
            ],
        )?;
        norm(dev, last, layout.norm, h, m)?;
        project(dev, layout.output, h, logits_d, m)?;
        let mut bytes = vec![0u8; m * cfg.vocab * 4];
        dev.download(logits_d, &mut bytes)?;
        drop(s);
        for (toks, seq) in items.iter_mut() {
            seq.pos += toks.len();
        }
        Ok(bytes
            .chunks_exact(cfg.vocab * 4)
            .map(|row| {
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect())
    }
}
