//! The kernels on GPU 0 for the GPU test binaries: from PTX files in `$CLOISTER_KERNEL_PTX_DIR`
//! (written by `tests/nvrtc_compile.rs` via `CLOISTER_WRITE_PTX_DIR`) on machines without
//! libnvrtc, else compiled with NVRTC. `None` (and a printed "skipped") without a CUDA driver.
#![allow(dead_code)]

use cloister::gpu::device::{GpuError, GpuKernels, KernelPtx};

/// The text of PTX file `file` from `$CLOISTER_KERNEL_PTX_DIR`, when that is set.
pub fn ptx(file: &str) -> Option<String> {
    let dir = std::path::PathBuf::from(std::env::var_os("CLOISTER_KERNEL_PTX_DIR")?);
    Some(std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}")))
}

pub fn kernels() -> Option<GpuKernels> {
    let loaded = match (ptx("aes_ctr.ptx"), ptx("zero.ptx")) {
        (Some(aes_ctr), Some(zero)) => GpuKernels::load_ptx(0, &KernelPtx { aes_ctr, zero }),
        _ => GpuKernels::load(0),
    };
    match loaded {
        Ok(k) => Some(k),
        Err(e @ (GpuError::NoDriver | GpuError::NoNvrtc)) => {
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}
