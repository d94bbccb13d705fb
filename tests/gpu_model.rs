//! The sealed demo model on a real GPU (feature `cuda`): weights decrypted only on the device,
//! greedy output against the llama.cpp reference, tenants' KV pools apart, and decode speed next
//! to the CPU engine in the same run. Skips (and says so) without a CUDA driver.
//!
//! Kernels come from NVRTC, or from PTX files in `$CLOISTER_KERNEL_PTX_DIR` (written by
//! `tests/nvrtc_compile.rs` via `CLOISTER_WRITE_PTX_DIR`). `benches/gpu-check.sh` runs this.
#![cfg(feature = "cuda")]

mod common;
#[path = "common/engine_jobs.rs"]
mod engine_jobs;
#[path = "kernel_shim/forward_checks.rs"]
mod forward_checks;
#[path = "common/gpu_kernels.rs"]
mod gpu_kernels;

use std::sync::Arc;
use std::time::Instant;

use cloister::engine::SeqCache;
use cloister::gpu::device::GpuKernels;
use cloister::gpu::forward::{DeviceOps, DeviceSeq, GpuLlama};
use cloister::gpu::model_load::{open_sealed_on_gpu, GpuLoadedModel};
use common::figure;
use common::fixture;

fn kernels() -> Option<Arc<GpuKernels>> {
    gpu_kernels::kernels().map(Arc::new)
}

fn load_on_gpu(kernels: Arc<GpuKernels>) -> GpuLoadedModel {
    let f = fixture();
    let (_, trusted) = cloister::model::load_key_material(&f.cfg).expect("key material");
    open_sealed_on_gpu(
        &f.cfg.sealed_model,
        &f.keyring(),
        &trusted,
        kernels,
        gpu_kernels::ptx("llama.ptx"),
    )
    .expect("load sealed model on the GPU")
}

#[test]
fn gpu_sealed_model_greedy_matches_reference() {
    let Some(k) = kernels() else { return };
    let t = Instant::now();
    let mut loaded = load_on_gpu(k);
    let load_s = t.elapsed().as_secs_f64();
    let cpu = fixture().open_demo_model();
    let worst = forward_checks::greedy_matches_reference(&mut loaded.model, &cpu.model);
    println!(
        "gpu model: sealed load {load_s:.2} s, {} MiB on the device; greedy = reference for every \
         prompt; max |logit - CPU engine logit| after prefill {worst:.2e}",
        loaded.tensors_len >> 20
    );
    figure("gpu.greedy_matches_reference", "yes");
    figure("gpu.max_logit_diff_vs_cpu", format!("{worst:.2e}"));
}

#[test]
fn gpu_tenant_pools_are_apart_and_zeroed() {
    let Some(k) = kernels() else { return };
    let mut loaded = load_on_gpu(k);
    forward_checks::tenants_apart_and_zeroed(&mut loaded.model);
    println!("gpu pools: tenants apart, released blocks zero, full pool refuses only its tenant");
}

/// Decode tokens per second of `seqs` sequences for `steps` steps after a short prefill.
fn gpu_decode_rate<D: DeviceOps>(gpu: &mut GpuLlama<D>, seqs: usize, steps: usize) -> f64 {
    let pool = gpu.new_pool(256 << 20).expect("pool");
    let mut caches: Vec<DeviceSeq> = (0..seqs).map(|_| DeviceSeq::new(pool.clone())).collect();
    let prompts: Vec<Vec<u32>> = (0..seqs)
        .map(|i| (1..17).map(|t| t + i as u32).collect())
        .collect();
    {
        let mut items: Vec<(&[u32], &mut DeviceSeq)> = prompts
            .iter()
            .map(Vec::as_slice)
            .zip(caches.iter_mut())
            .collect();
        gpu.forward_batch(&mut items).expect("prefill");
    }
    let tokens: Vec<[u32; 1]> = (0..seqs).map(|i| [100 + i as u32]).collect();
    let t = Instant::now();
    for _ in 0..steps {
        let mut items: Vec<(&[u32], &mut DeviceSeq)> = tokens
            .iter()
            .map(|x| x.as_slice())
            .zip(caches.iter_mut())
            .collect();
        gpu.forward_batch(&mut items).expect("decode");
    }
    let rate = (seqs * steps) as f64 / t.elapsed().as_secs_f64();
    for c in caches {
        c.release(gpu.device()).expect("release");
    }
    rate
}

#[test]
fn gpu_decode_speed_next_to_cpu_engine() {
    let Some(k) = kernels() else { return };
    let mut loaded = load_on_gpu(k);
    let gpu_1 = gpu_decode_rate(&mut loaded.model, 1, 64);
    let gpu_8 = gpu_decode_rate(&mut loaded.model, 8, 32);
    let cpu = fixture().open_demo_model();
    let mut cache = SeqCache::default();
    let prompt: Vec<u32> = (1..17).collect();
    cpu.model.forward(&prompt, &mut cache).expect("cpu prefill");
    let steps = 32;
    let t = Instant::now();
    for _ in 0..steps {
        cpu.model.forward(&[100], &mut cache).expect("cpu decode");
    }
    let cpu_1 = steps as f64 / t.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "gpu decode: {gpu_1:.1} tok/s (1 sequence), {gpu_8:.1} tok/s (8 sequences); CPU engine \
         {cpu_1:.1} tok/s (1 sequence, {threads} threads); ratio gpu/cpu (1 sequence) {:.2}",
        gpu_1 / cpu_1
    );
    figure("gpu.decode_tok_s_1", format!("{gpu_1:.1}"));
    figure("gpu.decode_tok_s_8", format!("{gpu_8:.1}"));
    figure("gpu.cpu_engine_tok_s_1", format!("{cpu_1:.1}"));
}

/// The engine thread on the CUDA backend serves what the CPU engine serves, for two tenants at
/// once, and reports the tenants' device blocks back to zero when they are done.
#[test]
fn gpu_engine_serves_what_the_cpu_engine_serves() {
    use cloister::engine::{CpuBackend, EngineHandle};
    use cloister::gpu::backend::GpuBackend;

    let Some(k) = kernels() else { return };
    let loaded = load_on_gpu(k);
    let cpu = fixture().open_demo_model();
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Water boils at",
    ];
    let run = |engine: &EngineHandle| {
        engine_jobs::run_concurrently(engine, &cpu.tokenizer, &prompts, 2, 24)
    };
    let cpu_engine = engine_jobs::start_engine(CpuBackend::new(cpu.model.clone()), &cpu.tokenizer);
    let gpu_engine = engine_jobs::start_engine(GpuBackend::new(loaded.model), &cpu.tokenizer);
    let want = run(&cpu_engine);
    let t = Instant::now();
    let got = run(&gpu_engine);
    println!(
        "gpu engine: 3 requests, 2 tenants, {} tokens in {:.2} s; same text as the CPU engine: {}",
        got.iter().map(|g| g.1).sum::<usize>(),
        t.elapsed().as_secs_f64(),
        got == want
    );
    assert_eq!(got, want);
    figure("gpu.engine_equals_cpu_engine", "yes");
}

/// `cloister serve` with `[model] device = "cuda"`: the server starts on the GPU and its
/// greedy completions over HTTPS equal the llama.cpp reference text.
#[test]
fn gpu_serve_answers_the_reference_over_https() {
    use cloister::auth::Scope;
    use serde_json::{json, Value};

    let Some(k) = kernels() else { return };
    drop(k);
    let f = fixture();
    let path = f.config_with_model_lines("gpu.toml", "device = \"cuda\"");
    let mut server = common::ServeProcess::start_with(&path, "info");
    let log = server.drain_log().join("\n");
    assert!(log.contains("GPU 0"), "not on the GPU:\n{log}");
    let client = common::https_client(&[&common::dev_ca()]);
    let token = f.token("demo", &[Scope::Inference]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let refs = common::reference("greedy.json");
    for case in refs["greedy"].as_array().expect("cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let body = json!({"model": common::MODEL_ID, "prompt": prompt, "max_tokens": 32,
                          "temperature": 0});
        let (status, reply) = rt.block_on(async {
            let resp = client
                .post(format!("{}/v1/completions", server.url()))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("send");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        });
        assert_eq!(status, 200, "{reply}");
        let v: Value = serde_json::from_str(&reply).expect("json");
        assert_eq!(
            v["choices"][0]["text"].as_str(),
            case["output_text"].as_str(),
            "prompt {prompt:?}"
        );
    }
    server.signal("TERM");
    let code = server.wait(std::time::Duration::from_secs(20));
    assert!(code.success(), "exit status {code}");
    println!("gpu serve: started on the GPU, greedy completions over HTTPS = reference text");
    figure("gpu.serve_matches_reference", "yes");
}
