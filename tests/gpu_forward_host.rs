//! The GPU forward pass (`cloister::gpu::forward`) on the CPU: its orchestration with the kernels of
//! `kernels/llama.cu` compiled as host C++ (`kernel_shim/host_ops.rs`), on the real demo model.
//! What the GPU runs must equal the CPU engine — which matches the llama.cpp reference — and keep
//! tenants' KV apart. `tests/gpu_device.rs` runs the same checks on a real GPU.

mod common;
#[path = "common/engine_jobs.rs"]
mod engine_jobs;
#[path = "kernel_shim/forward_checks.rs"]
mod forward_checks;
#[path = "kernel_shim/host_ops.rs"]
mod host_ops;

use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use cloister::engine::LlamaModel;
use cloister::gpu::forward::{DeviceOps, GpuLlama};
use common::fixture;
use host_ops::HostOps;

/// The plaintext GGUF header and tensor bytes of the demo model.
fn demo() -> &'static (gguf_file::Content, Vec<u8>) {
    static D: OnceLock<(gguf_file::Content, Vec<u8>)> = OnceLock::new();
    D.get_or_init(|| {
        let f = fixture();
        let mut file = std::fs::File::open(&f.gguf).expect("open gguf");
        let ct = gguf_file::Content::read(&mut file).expect("gguf header");
        let bytes = std::fs::read(&f.gguf).expect("read gguf");
        let tensors = bytes[ct.tensor_data_offset as usize..].to_vec();
        (ct, tensors)
    })
}

fn gpu_model() -> GpuLlama<HostOps> {
    let (ct, tensors) = demo();
    let mut ops = HostOps::default();
    let w = ops.alloc(tensors.len()).expect("alloc");
    ops.upload(w, tensors).expect("upload");
    GpuLlama::new(ops, ct, w, tensors.len()).expect("gpu model")
}

fn cpu_model() -> LlamaModel {
    let (ct, tensors) = demo();
    let mut region = cloister::securemem::LockedRegion::new(
        tensors.len(),
        cloister::securemem::LockPolicy::BestEffort,
    )
    .expect("region");
    region.as_mut_slice().copy_from_slice(tensors);
    LlamaModel::load_with_threads(ct, std::sync::Arc::new(region), 2).expect("cpu model")
}

#[test]
fn gpu_forward_equals_cpu_engine_and_greedy_matches_reference() {
    let cpu = cpu_model();
    let mut gpu = gpu_model();
    let worst = forward_checks::greedy_matches_reference(&mut gpu, &cpu);
    // Same arithmetic in the same order, same libm: bit for bit.
    assert_eq!(worst, 0.0, "prefill logits differ from the CPU engine");
}

#[test]
fn gpu_batch_keeps_tenants_apart_and_zeroes_released_blocks() {
    forward_checks::tenants_apart_and_zeroed(&mut gpu_model());
}

/// The engine thread on the GPU backend: the same scheduler, sampling and accounting as on the
/// CPU, so the same requests produce the same text, from any mix of tenants.
#[test]
fn engine_on_the_gpu_backend_serves_what_the_cpu_engine_serves() {
    use cloister::engine::{CpuBackend, EngineHandle};
    use cloister::gpu::backend::GpuBackend;

    let loaded = fixture().open_demo_model();
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let run = |engine: &EngineHandle| {
        engine_jobs::run_concurrently(engine, &loaded.tokenizer, &prompts, prompts.len(), 8)
    };
    let cpu = engine_jobs::start_engine(CpuBackend::new(loaded.model.clone()), &loaded.tokenizer);
    let gpu = engine_jobs::start_engine(GpuBackend::new(gpu_model()), &loaded.tokenizer);
    let want = run(&cpu);
    assert_eq!(want.iter().map(|w| w.1).collect::<Vec<_>>(), [8, 8]);
    assert_eq!(run(&gpu), want);
}
