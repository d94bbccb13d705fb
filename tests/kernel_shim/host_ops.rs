//! [`DeviceOps`] over the host C++ build of `kernels/llama.cu`: "device" memory is host memory,
//! each launch runs the kernel over a small grid of one-thread blocks. Lets the CPU tests run the
//! GPU forward pass (`cloister::gpu::forward`) with the GPU's arithmetic.

use std::collections::BTreeMap;

use cloister::gpu::forward::{DevPtr, DeviceOps, GpuModelError, KernelArg, LlamaKernel};

extern "C" {
    fn llama_launch_host(kernel: u32, args: *const u64, nargs: u32, grid: u32) -> i32;
    fn zero_fill_host(p: *mut u8, len: u64, grid: u32);
}

/// Emulated blocks per launch: more than one, so the kernels' grid-stride loops are exercised.
const GRID: u32 = 3;

#[derive(Default)]
pub struct HostOps {
    /// Allocations by address; u64 words so every allocation is 8-byte aligned, as device memory.
    allocs: BTreeMap<DevPtr, Vec<u64>>,
    pub launches: usize,
}

impl HostOps {
    /// The allocation holding `[ptr, ptr + len)` as bytes, from `ptr` on.
    fn bytes(&mut self, ptr: DevPtr, len: usize) -> &mut [u8] {
        let (&base, words) = self
            .allocs
            .range_mut(..=ptr)
            .next_back()
            .expect("address outside every allocation");
        let off = (ptr - base) as usize;
        let total = words.len() * 8;
        assert!(off + len <= total, "range outside its allocation");
        // SAFETY: `words` is a live allocation of `total` bytes; u8 has no alignment or validity
        // requirements, and the returned borrow keeps `self` (and so the Vec) borrowed.
        let all = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), total) };
        &mut all[off..off + len]
    }
}

impl DeviceOps for HostOps {
    fn alloc(&mut self, bytes: usize) -> Result<DevPtr, GpuModelError> {
        let words = vec![0u64; bytes.div_ceil(8).max(1)];
        let ptr = words.as_ptr() as DevPtr;
        self.allocs.insert(ptr, words);
        Ok(ptr)
    }

    fn free(&mut self, ptr: DevPtr) {
        self.allocs.remove(&ptr);
    }

    fn upload(&mut self, dst: DevPtr, src: &[u8]) -> Result<(), GpuModelError> {
        self.bytes(dst, src.len()).copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuModelError> {
        let n = dst.len();
        dst.copy_from_slice(self.bytes(src, n));
        Ok(())
    }

    fn launch(
        &mut self,
        kernel: LlamaKernel,
        _items: u64,
        args: &[KernelArg],
    ) -> Result<(), GpuModelError> {
        let words: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) => p,
                KernelArg::U32(v) => u64::from(v),
                KernelArg::F32(v) => u64::from(v.to_bits()),
            })
            .collect();
        self.launches += 1;
        // SAFETY: the addresses in `words` come from this HostOps' live allocations (the forward
        // pass only passes those), sized for the launched work; the shim checks the argument
        // count per kernel and returns -1 instead of calling with a wrong one.
        let rc =
            unsafe { llama_launch_host(kernel.id(), words.as_ptr(), words.len() as u32, GRID) };
        if rc != 0 {
            return Err(GpuModelError::Device(format!(
                "{}: wrong argument count {}",
                kernel.name(),
                words.len()
            )));
        }
        Ok(())
    }

    fn zero(&mut self, ptr: DevPtr, bytes: usize) -> Result<(), GpuModelError> {
        let buf = self.bytes(ptr, bytes);
        // SAFETY: the shim writes exactly `bytes` bytes from buf's start, inside the allocation.
        unsafe { zero_fill_host(buf.as_mut_ptr(), bytes as u64, GRID) };
        Ok(())
    }
}
