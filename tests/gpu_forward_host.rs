//! The GPU forward pass (`cloister::gpu::forward`) on the CPU: its orchestration with the kernels of
//! `kernels/llama.cu` compiled as host C++ (`kernel_shim/host_ops.rs`), on the real demo model.
//! What the GPU runs must equal the CPU engine — which matches the llama.cpp reference — and keep
//! tenants' KV apart. `tests/gpu_device.rs` runs the same checks on a real GPU.

mod common;
#[path = "kernel_shim/host_ops.rs"]
mod host_ops;

use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use cloister::engine::{LlamaModel, SeqCache};
use cloister::gpu::forward::{DeviceOps, DeviceSeq, GpuLlama, GpuModelError};
use cloister::sampling::argmax;
use common::{fixture, reference};
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

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn gpu_forward_equals_cpu_engine_and_greedy_matches_reference() {
    let cpu = cpu_model();
    let mut gpu = gpu_model();
    let pool = gpu.new_pool(64 << 20).expect("pool");
    let refs = reference("greedy.json");
    for case in refs["greedy"].as_array().expect("cases") {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["output_ids"]);
        let mut cache = SeqCache::default();
        let cpu_logits = cpu.forward(&prompt, &mut cache).expect("cpu prefill");
        let mut seq = DeviceSeq::new(pool.clone());
        let mut logits = gpu
            .forward_batch(&mut [(&prompt, &mut seq)])
            .expect("gpu prefill")
            .remove(0);
        // Same kernels' arithmetic in the same order, same libm: bit for bit.
        assert_eq!(
            max_abs_diff(&cpu_logits, &logits),
            0.0,
            "prefill logits differ from the CPU engine"
        );
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let t = argmax(&logits);
            got.push(t);
            logits = gpu
                .forward_batch(&mut [(&[t], &mut seq)])
                .expect("gpu decode")
                .remove(0);
        }
        assert_eq!(got, want, "prompt {:?}", case["prompt"]);
        assert_eq!(seq.pos(), prompt.len() + want.len());
        seq.release(gpu.device()).expect("release");
        assert_eq!(pool.in_use(), 0);
    }
}

#[test]
fn gpu_batch_keeps_tenants_apart_and_zeroes_released_blocks() {
    let mut gpu = gpu_model();
    let block_bytes = gpu.kv_shape().block_bytes() as u64;
    let pool_a = gpu.new_pool(4 * block_bytes).expect("pool a");
    let pool_b = gpu.new_pool(4 * block_bytes).expect("pool b");
    let (pa, pb): (Vec<u32>, Vec<u32>) = ((1..20).collect(), (100..110).collect());

    // Alone, then together in one batch: the same logits.
    let alone: Vec<Vec<f32>> = [(&pa, &pool_a), (&pb, &pool_b)]
        .iter()
        .map(|(p, pool)| {
            let mut s = DeviceSeq::new((*pool).clone());
            let l = gpu.forward_batch(&mut [(p, &mut s)]).expect("alone");
            s.release(gpu.device()).expect("release");
            l.into_iter().next().expect("logits")
        })
        .collect();
    let mut a = DeviceSeq::new(pool_a.clone());
    let mut b = DeviceSeq::new(pool_b.clone());
    let together = gpu
        .forward_batch(&mut [(&pa, &mut a), (&pb, &mut b)])
        .expect("batch");
    assert_eq!(together[0], alone[0]);
    assert_eq!(together[1], alone[1]);

    // Each sequence's blocks lie in its own tenant's allocation.
    let within = |addr: u64, pool: &cloister::gpu::forward::DeviceKvPool| {
        let base = pool.block_addr(0);
        addr >= base && addr < base + pool.bytes() as u64
    };
    let a_blocks = a.block_addrs();
    assert_eq!(a_blocks.len(), 2, "19 positions take 2 blocks of 16");
    assert!(a_blocks.iter().all(|&x| within(x, &pool_a)));
    assert!(b.block_addrs().iter().all(|&x| within(x, &pool_b)));

    // Released blocks are zero on the device; before release they held the sequence's KV.
    let mut bytes = vec![0u8; block_bytes as usize];
    gpu.device()
        .download(a_blocks[0], &mut bytes)
        .expect("download");
    assert!(bytes.iter().any(|&x| x != 0), "KV was written");
    a.release(gpu.device()).expect("release");
    for &addr in &a_blocks {
        gpu.device().download(addr, &mut bytes).expect("download");
        assert!(bytes.iter().all(|&x| x == 0), "released block not zeroed");
    }
    assert_eq!(pool_a.in_use(), 0);

    // A tenant whose pool is full is refused; the other tenant's sequence carries on.
    let long: Vec<u32> = (1..=65).collect();
    let mut greedy = DeviceSeq::new(pool_a.clone());
    match gpu.forward_batch(&mut [(&long, &mut greedy)]) {
        Err(GpuModelError::KvExhausted { capacity }) => assert_eq!(capacity, 4),
        other => panic!("expected KvExhausted, got {:?}", other.map(|v| v.len())),
    }
    drop(greedy);
    let next = gpu
        .forward_batch(&mut [(&[7], &mut b)])
        .expect("other tenant unaffected");
    assert_eq!(next.len(), 1);
    // Blocks of a sequence dropped without release are zeroed before they are handed out again.
    let mut again = DeviceSeq::new(pool_a.clone());
    gpu.forward_batch(&mut [(&[1, 2], &mut again)])
        .expect("reuse after drop");
    assert_eq!(pool_a.in_use(), 1);
    let held = again.block_addrs();
    for i in 0..4 {
        let addr = pool_a.block_addr(i);
        if !held.contains(&addr) {
            gpu.device().download(addr, &mut bytes).expect("download");
            assert!(bytes.iter().all(|&x| x == 0), "block {i} reused unzeroed");
        }
    }
}
