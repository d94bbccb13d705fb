//! Compiles `kernels/host/aes_ctr_host.cpp` — the CUDA kernels built as ordinary C++ — into a
//! static library, so `tests/kernels_host.rs` can check the exact GPU arithmetic against RustCrypto
//! on machines without a GPU or nvcc. The library exports only `*_host` test entry points and is
//! not called by the crate's code; production builds compile the kernels at run time with NVRTC.
//! Why a build script: the kernels are C++, and `cc` (with the system `c++`) is the smallest way
//! to link C++ into Rust tests.

fn main() {
    for f in [
        "kernels/cl_compat.cuh",
        "kernels/aes256_core.cuh",
        "kernels/aes_ctr.cu",
        "kernels/zero.cu",
        "kernels/llama.cu",
        "kernels/host/llama_host.cpp",
        "kernels/host/cuda_host_emu.h",
        "kernels/host/aes_ctr_host.cpp",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .cpp(true)
        .file("kernels/host/aes_ctr_host.cpp")
        .file("kernels/host/llama_host.cpp")
        .std("c++17")
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("cloister_kernels_host");
}
