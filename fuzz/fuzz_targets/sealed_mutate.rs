//! Structure-aware: starts from a valid sealed file (2 meta + 4 tensors chunks) and applies a
//! short list of byte edits chosen by the input (flip, truncate, insert, delete).
//!
//! Properties: the unmodified file opens and decrypts; an edited file either is rejected or
//! yields exactly the original plaintext (no edit may change what is released); never a panic.

#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use cloister::seal::{SealedFile, Segment};
use cloister_fuzz::{keys, seal_fixture, SealedFixture};
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static SealedFixture {
    static F: OnceLock<SealedFixture> = OnceLock::new();
    F.get_or_init(|| seal_fixture(4096 + 100, 3 * 4096 + 7, 1))
}

/// Applies up to 8 edits; each is 4 input bytes: kind, position (u16 BE, mod length), value.
fn mutate(file: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut out = file.to_vec();
    for op in ops.chunks_exact(4).take(8) {
        let pos = usize::from(u16::from_be_bytes([op[1], op[2]]));
        let at = if out.is_empty() { 0 } else { pos % out.len() };
        match op[0] % 4 {
            0 if !out.is_empty() => out[at] ^= op[3] | 1,
            1 => out.truncate(at),
            2 => out.insert(at, op[3]),
            3 if !out.is_empty() => {
                out.remove(at);
            }
            _ => {}
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    cloister_fuzz::write_seeds_if_asked();
    let fx = fixture();
    let k = keys();
    let file = mutate(&fx.file, data);
    let unchanged = file == fx.file;
    let opened = SealedFile::open(Cursor::new(&file[..]), &k.trusted, &k.ring);
    let mut sealed = match opened {
        Ok(s) => s,
        Err(e) => {
            assert!(!unchanged, "the valid fixture was rejected: {e}");
            return;
        }
    };
    let mut plain = vec![0u8; fx.plain.len()];
    let (meta, tensors) = plain.split_at_mut(fx.meta_len);
    let ok = sealed.decrypt_into(Segment::Meta, meta).is_ok()
        && sealed.decrypt_into(Segment::Tensors, tensors).is_ok();
    if unchanged {
        assert!(ok, "the valid fixture did not decrypt");
    }
    if ok {
        assert_eq!(
            plain, fx.plain,
            "an edited file released different plaintext"
        );
    }
});
