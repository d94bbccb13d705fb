//! [`DeviceOps`] on a CUDA device: the GPU forward pass's allocations, copies and launches.
//!
//! Allocations are cudarc `CudaSlice`s kept in a map by address, so the forward pass can do its
//! pointer arithmetic on plain addresses while every allocation is still freed by cudarc (on
//! [`DeviceOps::free`] or when this is dropped). Everything runs on the one stream of
//! [`GpuKernels`], so launches and copies are ordered without events.

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

use super::device::{GpuError, GpuKernels};
use super::forward::{DevPtr, DeviceOps, GpuModelError, KernelArg, LlamaKernel};

/// Threads per block for the one-thread-per-item kernels.
const THREADS: u32 = 128;
/// Grid cap; the kernels' grid-stride loops cover the rest.
const MAX_BLOCKS: u64 = 65_535;

// The engine thread owns the GPU backend: everything in it must be `Send`.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<CudaOps>();
};

pub struct CudaOps {
    kernels: Arc<GpuKernels>,
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
    allocs: BTreeMap<DevPtr, CudaSlice<u8>>,
}

impl std::fmt::Debug for CudaOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaOps")
            .field("allocations", &self.allocs.len())
            .finish_non_exhaustive()
    }
}

fn gpu(e: impl std::fmt::Display) -> GpuModelError {
    GpuModelError::Device(e.to_string())
}

impl CudaOps {
    /// Loads `kernels/llama.cu` (precompiled `ptx`, or NVRTC when `None`) beside `kernels`.
    pub fn new(kernels: Arc<GpuKernels>, ptx: Option<String>) -> Result<Self, GpuError> {
        let functions = kernels.load_llama(ptx, LlamaKernel::NAMES)?;
        Ok(CudaOps {
            stream: kernels.stream().clone(),
            kernels,
            functions,
            allocs: BTreeMap::new(),
        })
    }

    /// Takes ownership of a device buffer (e.g. the decrypted weights) and returns its address.
    pub fn adopt(&mut self, buf: CudaSlice<u8>) -> DevPtr {
        // The event guard `device_ptr` returns ends with this statement, before `buf` moves.
        let ptr = buf.device_ptr(&self.stream).0;
        self.allocs.insert(ptr, buf);
        ptr
    }

    /// Bytes held in device allocations right now (weights, pools, scratch).
    pub fn allocated_bytes(&self) -> usize {
        self.allocs.values().map(CudaSlice::len).sum()
    }

    /// The allocation holding `[ptr, ptr + len)`, with `ptr`'s offset in it.
    fn find(
        &mut self,
        ptr: DevPtr,
        len: usize,
    ) -> Result<(&mut CudaSlice<u8>, usize), GpuModelError> {
        let (&base, buf) = self
            .allocs
            .range_mut(..=ptr)
            .next_back()
            .ok_or_else(|| gpu("address outside every allocation"))?;
        let off = usize::try_from(ptr - base).map_err(gpu)?;
        if off.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err(gpu("range outside its allocation"));
        }
        Ok((buf, off))
    }
}

impl DeviceOps for CudaOps {
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr, GpuModelError> {
        let buf = self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(gpu)?;
        Ok(self.adopt(buf))
    }

    fn free(&mut self, ptr: DevPtr) {
        self.allocs.remove(&ptr);
    }

    fn upload(&mut self, dst: DevPtr, src: &[u8]) -> Result<(), GpuModelError> {
        let stream = self.stream.clone();
        let (buf, off) = self.find(dst, src.len())?;
        let mut view = buf.slice_mut(off..off + src.len());
        stream.memcpy_htod(src, &mut view).map_err(gpu)
    }

    fn download(&mut self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuModelError> {
        let stream = self.stream.clone();
        let (buf, off) = self.find(src, dst.len())?;
        let view = buf.slice(off..off + dst.len());
        stream.memcpy_dtoh(&view, dst).map_err(gpu)?;
        stream.synchronize().map_err(gpu)
    }

    fn launch(
        &mut self,
        kernel: LlamaKernel,
        items: u64,
        args: &[KernelArg],
    ) -> Result<(), GpuModelError> {
        if items == 0 {
            return Ok(());
        }
        let f = &self.functions[kernel.id() as usize];
        let blocks = items.div_ceil(u64::from(THREADS)).clamp(1, MAX_BLOCKS);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                KernelArg::Ptr(p) => b.arg(p),
                KernelArg::U32(v) => b.arg(v),
                KernelArg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: `forward.rs` passes each kernel exactly the arguments of its C signature in
        // `kernels/llama.cu` (the host test build checks the arity); every address it passes
        // lies in an allocation of this device (weights, pools, or the pass's scratch) sized
        // for the items launched.
        unsafe { b.launch(cfg) }.map_err(gpu)?;
        Ok(())
    }

    fn zero(&mut self, ptr: DevPtr, bytes: usize) -> Result<(), GpuModelError> {
        let kernels = self.kernels.clone();
        let (buf, off) = self.find(ptr, bytes)?;
        kernels
            .zero_fill(&mut buf.slice_mut(off..off + bytes))
            .map_err(gpu)
    }
}
