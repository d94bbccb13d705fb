//! Loading and launching the kernels with cudarc (feature `cuda`).
//!
//! cudarc is built with `dynamic-loading`: libcuda and libnvrtc are opened at run time, so this
//! compiles without CUDA and [`GpuKernels::load`] returns [`GpuError::NoDriver`] /
//! [`GpuError::NoNvrtc`] instead of panicking on a machine without them (cudarc panics if a
//! function of a missing library is called, hence the presence checks first).

use std::fmt;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use super::aes_key_schedule::{Aes256RoundKeys, AES256_ROUND_KEY_WORDS};
use super::{flattened_source, KernelSource, AES_CTR_KERNEL, NVRTC_OPTIONS, ZERO_KERNEL};

/// Threads per block: 8 warps share one 4 KiB T-table copy; enough to hide shared-memory latency.
const THREADS: u32 = 256;
/// Grid cap; the kernels' grid-stride loops cover any length (H100/H200 have 132 SMs).
const MAX_BLOCKS: u32 = 132 * 16;

/// Why the GPU path is unavailable or failed.
#[derive(Debug)]
pub enum GpuError {
    /// libcuda (the driver) is not installed: run on the CPU path.
    NoDriver,
    /// libnvrtc is not on the loader path and no PTX was given.
    NoNvrtc,
    /// A kernel failed to compile (NVRTC log) or its source includes an unknown header.
    Compile(String),
    /// A CUDA driver call failed.
    Driver(DriverError),
    /// Input and output lengths differ.
    LengthMismatch,
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoDriver => f.write_str("no CUDA driver (libcuda.so) found"),
            GpuError::NoNvrtc => f.write_str(
                "libnvrtc.so.13 not found: pip install nvidia-cuda-nvrtc==13.0.88 and put \
                 <site-packages>/nvidia/cu13/lib on LD_LIBRARY_PATH",
            ),
            GpuError::Compile(log) => write!(f, "kernel compilation failed: {log}"),
            GpuError::Driver(e) => write!(f, "CUDA driver error: {e}"),
            GpuError::LengthMismatch => f.write_str("input and output lengths differ"),
        }
    }
}

impl std::error::Error for GpuError {}

impl From<DriverError> for GpuError {
    fn from(e: DriverError) -> Self {
        GpuError::Driver(e)
    }
}

/// PTX for both kernels, when it comes precompiled instead of from NVRTC.
#[derive(Debug, Clone)]
pub struct KernelPtx {
    /// PTX text of `kernels/aes_ctr.cu`.
    pub aes_ctr: String,
    /// PTX text of `kernels/zero.cu`.
    pub zero: String,
}

/// The loaded kernels on one device, with the stream they run on.
pub struct GpuKernels {
    stream: Arc<CudaStream>,
    aes_ctr: CudaFunction,
    zero: CudaFunction,
}

impl fmt::Debug for GpuKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GpuKernels")
    }
}

/// An AES-256 key schedule in device memory; overwritten with zeros on drop.
pub struct DeviceRoundKeys {
    words: CudaSlice<u32>,
    stream: Arc<CudaStream>,
}

impl fmt::Debug for DeviceRoundKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceRoundKeys(<redacted>)")
    }
}

impl Drop for DeviceRoundKeys {
    fn drop(&mut self) {
        // Freed device memory is handed to the next allocation unwiped: clear the key first.
        // A failure here means the context is already gone, and the memory with it.
        let _ = self.stream.memset_zeros(&mut self.words);
        let _ = self.stream.synchronize();
    }
}

fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda; calls nothing in it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen libnvrtc; calls nothing in it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn compile(kernel: &KernelSource) -> Result<Ptx, GpuError> {
    let src = flattened_source(kernel)
        .ok_or_else(|| GpuError::Compile(format!("{}: unknown #include", kernel.name)))?;
    let opts = CompileOptions {
        options: NVRTC_OPTIONS.iter().map(|o| (*o).to_owned()).collect(),
        name: Some(kernel.name.to_owned()),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts)
        .map_err(|e| GpuError::Compile(format!("{}: {e:?}", kernel.name)))
}

impl GpuKernels {
    /// Compiles the embedded kernels with NVRTC and loads them on device `ordinal`.
    pub fn load(ordinal: usize) -> Result<Self, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDriver);
        }
        if !nvrtc_present() {
            return Err(GpuError::NoNvrtc);
        }
        Self::load_ptx_inner(ordinal, compile(&AES_CTR_KERNEL)?, compile(&ZERO_KERNEL)?)
    }

    /// Loads precompiled PTX (e.g. written by `tests/nvrtc_compile.rs` with
    /// `CLOISTER_WRITE_PTX_DIR`) — for machines with a driver but without libnvrtc.
    pub fn load_ptx(ordinal: usize, ptx: &KernelPtx) -> Result<Self, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDriver);
        }
        Self::load_ptx_inner(
            ordinal,
            Ptx::from_src(ptx.aes_ctr.clone()),
            Ptx::from_src(ptx.zero.clone()),
        )
    }

    fn load_ptx_inner(ordinal: usize, aes_ctr: Ptx, zero: Ptx) -> Result<Self, GpuError> {
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let aes_ctr = ctx
            .load_module(aes_ctr)?
            .load_function("aes256_ctr_decrypt")?;
        let zero = ctx.load_module(zero)?.load_function("zero_fill")?;
        Ok(GpuKernels {
            stream,
            aes_ctr,
            zero,
        })
    }

    /// Loads `kernels/llama.cu` (from `ptx`, or compiled with NVRTC when `None`) and returns its
    /// entry points in the order of `names`.
    pub fn load_llama(
        &self,
        ptx: Option<String>,
        names: &[&str],
    ) -> Result<Vec<CudaFunction>, GpuError> {
        let ptx = match ptx {
            Some(text) => Ptx::from_src(text),
            None if !nvrtc_present() => return Err(GpuError::NoNvrtc),
            None => compile(&super::LLAMA_KERNEL)?,
        };
        let module = self.stream.context().load_module(ptx)?;
        names
            .iter()
            .map(|n| module.load_function(n).map_err(GpuError::from))
            .collect()
    }

    /// The stream every launch is queued on (for allocations and copies by the caller).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Uploads a key schedule (once per segment key).
    pub fn upload_round_keys(&self, keys: &Aes256RoundKeys) -> Result<DeviceRoundKeys, GpuError> {
        let words = self
            .stream
            .clone_htod(&keys.as_words()[..AES256_ROUND_KEY_WORDS])?;
        Ok(DeviceRoundKeys {
            words,
            stream: self.stream.clone(),
        })
    }

    /// Queues AES-256-CTR decryption of `input` (verified chunk ciphertext) into `out`, counter
    /// starting at `initial_block` (`ctr_initial_block(nonce)`) plus `block_offset` 16-byte
    /// blocks. For a chunk split over launches, every piece but the last must be a multiple of
    /// 16 bytes and `block_offset` is the piece's offset / 16.
    pub fn decrypt(
        &self,
        keys: &DeviceRoundKeys,
        initial_block: &[u8; 16],
        input: &CudaView<'_, u8>,
        out: &mut CudaViewMut<'_, u8>,
        block_offset: u64,
    ) -> Result<(), GpuError> {
        if input.len() != out.len() {
            return Err(GpuError::LengthMismatch);
        }
        let len = input.len() as u64;
        let block = self.stream.clone_htod(initial_block.as_slice())?;
        let cfg = launch_config(len.div_ceil(16));
        let mut args = self.stream.launch_builder(&self.aes_ctr);
        args.arg(&keys.words)
            .arg(&block)
            .arg(input)
            .arg(out)
            .arg(&len)
            .arg(&block_offset);
        // SAFETY: the argument list matches aes256_ctr_decrypt(const uint32_t*, const uint8_t*,
        // const uint8_t*, uint8_t*, uint64_t, uint64_t); the kernel touches 60 key words, 16
        // block bytes and `len` bytes of input/output, all within the passed buffers.
        unsafe { args.launch(cfg) }?;
        Ok(())
    }

    /// Queues zero-filling of `buf` (a released KV-cache block, a freed tensor).
    pub fn zero_fill(&self, buf: &mut CudaViewMut<'_, u8>) -> Result<(), GpuError> {
        let len = buf.len() as u64;
        let cfg = launch_config(len.div_ceil(16));
        let mut args = self.stream.launch_builder(&self.zero);
        args.arg(buf).arg(&len);
        // SAFETY: matches zero_fill(uint8_t*, uint64_t); it writes exactly `len` bytes of `buf`.
        unsafe { args.launch(cfg) }?;
        Ok(())
    }
}

fn launch_config(work_items: u64) -> LaunchConfig {
    let blocks = work_items
        .div_ceil(u64::from(THREADS))
        .clamp(1, u64::from(MAX_BLOCKS));
    LaunchConfig {
        grid_dim: (u32::try_from(blocks).unwrap_or(MAX_BLOCKS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
