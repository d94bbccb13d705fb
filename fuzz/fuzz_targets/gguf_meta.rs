//! The host-side GGUF path of `open_sealed` (`cloister::model::build_model`): candle's GGUF
//! reader, our tokenizer-spec extraction, tokenizer and chat-template construction, the llama
//! config and tensor bounds checks — and, when a model loads, one forward pass, which is what
//! the first request would run.
//!
//! Input: u32 LE split ‖ bytes; the first `split` bytes are the GGUF header (the sealed `meta`
//! segment), the rest the tensor data. Properties: no panic, no unbounded allocation.

#![no_main]

use std::sync::Arc;

use cloister::engine::{LlamaModel, SeqCache, TenantPool};
use cloister::model::build_model;
use cloister::securemem::{LockPolicy, LockedRegion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cloister_fuzz::write_seeds_if_asked();
    let Some((split, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let split = (u32::from_le_bytes(*split) as usize).min(rest.len());
    let (meta, tensors) = rest.split_at(split);
    let Ok(mut region) = LockedRegion::new(tensors.len(), LockPolicy::BestEffort) else {
        return;
    };
    region.as_mut_slice().copy_from_slice(tensors);
    let Ok(built) = build_model(meta, Arc::new(region), 1) else {
        return;
    };
    forward_once(&built.model);
});

fn forward_once(model: &LlamaModel) {
    let pool = TenantPool::new(model.kv_shape(), 64 << 20);
    let mut cache = SeqCache::new(pool);
    if let Ok(logits) = model.forward(&[0], &mut cache) {
        assert_eq!(logits.len(), model.config().vocab);
    }
}
