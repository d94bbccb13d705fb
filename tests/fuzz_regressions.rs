//! Inputs the fuzz targets in `fuzz/` found crashing, replayed through the same entry points so
//! each fix stays fixed. Files live in `tests/data/fuzz/<target>/` and use the target's input
//! format (see the target's doc comment).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use cloister::model::{build_model, BuiltModel};
use cloister::securemem::{LockPolicy, LockedRegion};

fn input(target: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `fuzz/fuzz_targets/gguf_meta.rs` does with an input: `u32 LE split ‖ meta ‖ tensors`.
fn gguf_meta(name: &str) -> Result<BuiltModel, String> {
    let data = input("gguf_meta", name);
    let (split, rest) = data.split_first_chunk::<4>().expect("split prefix");
    let split = (u32::from_le_bytes(*split) as usize).min(rest.len());
    let (meta, tensors) = rest.split_at(split);
    let mut region = LockedRegion::new(tensors.len(), LockPolicy::BestEffort).unwrap();
    region.as_mut_slice().copy_from_slice(tensors);
    build_model(meta, Arc::new(region), 1)
}

/// A tensor whose dimensions multiply past `usize::MAX` overflowed candle's unchecked
/// `Shape::elem_count` inside our bounds check (a panic with overflow checks on, a wrapped and
/// wrong size without).
#[test]
fn gguf_tensor_shape_overflow_is_refused() {
    let err = gguf_meta("tensor-shape-overflow").unwrap_err();
    assert!(err.contains("shape too large"), "{err}");
}

/// `general.alignment = 0` made candle's GGUF reader divide by zero (a panic in the dependency,
/// found by the 10M-run campaign): our reader refuses the header first.
#[test]
fn gguf_zero_alignment_is_refused() {
    let err = gguf_meta("alignment-zero").unwrap_err();
    assert!(err.contains("alignment is 0"), "{err}");
}

/// The same with the key written `general.alignment\0` (length 18): candle drops trailing NULs
/// from keys, so it is the same key (found in review; the first scan matched only length 17).
#[test]
fn gguf_zero_alignment_behind_a_nul_padded_key_is_refused() {
    let err = gguf_meta("alignment-zero-nul-padded-key").unwrap_err();
    assert!(err.contains("alignment is 0"), "{err}");
}

/// A tensor whose element count fits in `usize` but whose size in bytes (elements / block size
/// × block bytes) does not: the byte length overflowed in `tensor_span` (found by the 10M-run
/// campaign, 580k executions in).
#[test]
fn gguf_tensor_byte_size_overflow_is_refused() {
    let err = gguf_meta("tensor-bytes-overflow").unwrap_err();
    assert!(err.contains("size in bytes too large"), "{err}");
}

// The next three inputs are the `tiny-llama` seed (fuzz/corpus/gguf_meta/, also copied here)
// with one metadata field patched, written after reading the load path; the gguf_meta target
// crashed on each (a division by zero, aborts on allocations of 137 GB and 1.3 TB). The fuzzer
// also found the block-count case on its own after about 420k executions.

/// The seed itself loads: the cases below fail because of their one patched field.
#[test]
fn gguf_tiny_llama_seed_loads() {
    let built = gguf_meta("tiny-llama").unwrap();
    assert_eq!(built.model.config().context_length, 64);
}

/// `llama.vocab_size = 0` with a 0-row embedding table divided by zero computing the row size.
#[test]
fn gguf_vocab_size_zero_is_refused() {
    let err = gguf_meta("vocab-size-zero").unwrap_err();
    assert!(err.contains("vocab_size is 0"), "{err}");
}

/// `llama.context_length = u32::MAX` sized the rotary tables for four billion positions.
#[test]
fn gguf_huge_context_length_is_refused() {
    let err = gguf_meta("context-length-u32-max").unwrap_err();
    assert!(err.contains("context_length 4294967295 above"), "{err}");
}

/// `llama.block_count = u32::MAX` reserved four billion layers before reading any tensor.
#[test]
fn gguf_huge_block_count_fails_on_the_first_missing_layer() {
    let err = gguf_meta("block-count-u32-max").unwrap_err();
    assert!(err.contains("missing tensor blk.1."), "{err}");
}
