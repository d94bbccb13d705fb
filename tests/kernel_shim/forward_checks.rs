//! Checks of the GPU forward pass that run on any [`DeviceOps`]: the host C++ build of the
//! kernels (`tests/gpu_forward_host.rs`) and a real GPU (`tests/gpu_model.rs`).
#![allow(dead_code)]

use cloister::engine::{LlamaModel, SeqCache};
use cloister::gpu::forward::{DeviceKvPool, DeviceOps, DeviceSeq, GpuLlama, GpuModelError};
use cloister::sampling::argmax;

use crate::common::reference;

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy decoding of the reference prompts on `gpu` equals the llama.cpp reference, token for
/// token; returns the largest |logit difference| from the CPU engine `cpu` after each prefill.
pub fn greedy_matches_reference<D: DeviceOps>(gpu: &mut GpuLlama<D>, cpu: &LlamaModel) -> f32 {
    let mut worst = 0.0f32;
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
        worst = worst.max(max_abs_diff(&cpu_logits, &logits));
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
    worst
}

/// Two tenants' sequences batched together: same logits as alone, blocks from their own pools,
/// released blocks zero on the device, a full pool refuses only its tenant, dropped sequences'
/// blocks are scrubbed before reuse.
pub fn tenants_apart_and_zeroed<D: DeviceOps>(gpu: &mut GpuLlama<D>) {
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
    let within = |addr: u64, pool: &DeviceKvPool| {
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

    // A budget under one block holds no block (as on the CPU): the tenant is refused at once.
    let tiny = gpu.new_pool(block_bytes - 1).expect("tiny pool");
    let mut refused = DeviceSeq::new(tiny);
    match gpu.forward_batch(&mut [(&[1], &mut refused)]) {
        Err(GpuModelError::KvExhausted { capacity }) => assert_eq!(capacity, 0),
        other => panic!("expected KvExhausted, got {:?}", other.map(|v| v.len())),
    }
}
