//! GPU path (DESIGN.md §10): weights are decrypted only in device memory by an AES-256-CTR kernel,
//! and released KV-cache blocks are zero-filled on the device.
//!
//! The kernel sources are embedded in the binary (the GPU machines get a copied binary, not the
//! source tree) and compiled at run time with NVRTC, so building needs no CUDA toolchain.

pub mod aes_key_schedule;
pub mod backend;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
#[cfg(feature = "cuda")]
pub mod device;
pub mod forward;
#[cfg(feature = "cuda")]
pub mod model_load;
#[cfg(feature = "cuda")]
pub mod sealed_load;

/// One CUDA source file as NVRTC needs it: a name (used in diagnostics and `#include`) and text.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name, as in `kernels/`.
    pub name: &'static str,
    /// Source text.
    pub source: &'static str,
}

/// Headers the kernels `#include "…"`. NVRTC gets them as in-memory headers (`nvrtcCreateProgram`'s
/// `headers`/`includeNames`), never from the file system.
pub const KERNEL_HEADERS: &[KernelSource] = &[
    KernelSource {
        name: "cl_compat.cuh",
        source: include_str!("../../kernels/cl_compat.cuh"),
    },
    KernelSource {
        name: "aes256_core.cuh",
        source: include_str!("../../kernels/aes256_core.cuh"),
    },
];

/// `kernels/aes_ctr.cu`: `aes256_ctr_decrypt(round_keys, initial_block, in, out, len, block_offset)`.
pub const AES_CTR_KERNEL: KernelSource = KernelSource {
    name: "aes_ctr.cu",
    source: include_str!("../../kernels/aes_ctr.cu"),
};

/// `kernels/zero.cu`: `zero_fill(p, len)`.
pub const ZERO_KERNEL: KernelSource = KernelSource {
    name: "zero.cu",
    source: include_str!("../../kernels/zero.cu"),
};

/// `kernels/llama.cu`: the forward pass's kernels (see [`forward::LlamaKernel`]).
pub const LLAMA_KERNEL: KernelSource = KernelSource {
    name: "llama.cu",
    source: include_str!("../../kernels/llama.cu"),
};

/// Every kernel translation unit, each with the entry points it defines.
pub const KERNELS: &[(KernelSource, &[&str])] = &[
    (AES_CTR_KERNEL, &["aes256_ctr_decrypt"]),
    (ZERO_KERNEL, &["zero_fill"]),
    (LLAMA_KERNEL, forward::LlamaKernel::NAMES),
];

/// NVRTC options for the GPU test machines (H100/H200, compute capability 9.0). PTX for
/// `compute_90` is JIT-compiled by the driver for newer GPUs as well.
///
/// `--fmad=false`: no contraction of `a * b + c` into one FMA, so the forward pass rounds like the
/// CPU engine it is checked against (explicit `fmaf` calls still fuse, as `mul_add` does there).
pub const NVRTC_OPTIONS: &[&str] = &[
    "--gpu-architecture=compute_90",
    "--std=c++17",
    "--fmad=false",
];

/// The kernel's source with every `#include "…"` of a [`KERNEL_HEADERS`] entry replaced by that
/// header's text (each header once; `#pragma once` dropped).
///
/// Why: cudarc's NVRTC wrapper passes no in-memory headers, and the GPU machines have no source
/// tree to put on an include path; a self-contained translation unit needs neither.
/// Returns `None` if the source includes a header that is not in [`KERNEL_HEADERS`].
pub fn flattened_source(kernel: &KernelSource) -> Option<String> {
    let mut out = String::with_capacity(kernel.source.len() * 2);
    let mut seen: Vec<&str> = Vec::new();
    inline_into(kernel.source, &mut out, &mut seen)?;
    Some(out)
}

fn inline_into<'a>(src: &str, out: &mut String, seen: &mut Vec<&'a str>) -> Option<()> {
    for line in src.lines() {
        let t = line.trim();
        if t == "#pragma once" {
            continue;
        }
        if let Some(rest) = t.strip_prefix("#include") {
            let rest = rest.trim();
            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                let header: &'a KernelSource = KERNEL_HEADERS.iter().find(|h| h.name == name)?;
                if !seen.contains(&header.name) {
                    seen.push(header.name);
                    inline_into(header.source, out, seen)?;
                }
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_sources_are_self_contained() {
        for (kernel, entries) in KERNELS {
            let flat = flattened_source(kernel).unwrap();
            assert!(!flat.contains("#include \""), "{}", kernel.name);
            assert!(!flat.contains("#pragma once"), "{}", kernel.name);
            for e in *entries {
                assert!(flat.contains(&format!("void {e}(")), "{}: {e}", kernel.name);
            }
        }
        // Each header is inlined once, however many times it is reached.
        let flat = flattened_source(&AES_CTR_KERNEL).unwrap();
        assert_eq!(flat.matches("struct CL_ALIGN16 cl_u32x4").count(), 1);
    }

    #[test]
    fn unknown_header_is_refused() {
        let k = KernelSource {
            name: "x.cu",
            source: "#include \"missing.cuh\"\n",
        };
        assert!(flattened_source(&k).is_none());
    }
}
