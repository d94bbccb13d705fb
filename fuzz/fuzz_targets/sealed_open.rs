//! Arbitrary bytes opened as a sealed file with the fixture keys: header and envelope parsing,
//! layout arithmetic, length/trailer checks, tag collection, signature and DEK unwrap; and, for
//! inputs that open, every decrypt/verify path.
//!
//! Properties: no panic, no hang, no allocation beyond the input's size (lengths are checked
//! against the exact file length before anything is read), and the decrypt paths agree with
//! `verify_all_tags` and, per segment, with the verify-only reader the GPU path uses.

#![no_main]

use std::io::Cursor;

use cloister::seal::{SealedFile, Segment};
use cloister_fuzz::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cloister_fuzz::write_seeds_if_asked();
    let k = keys();
    let Ok(mut file) = SealedFile::open(Cursor::new(data), &k.trusted, &k.ring) else {
        return;
    };
    // Opened: the layout fits inside `data` (exact length check), so these sizes are bounded.
    let all_tags_ok = file.verify_all_tags().is_ok();
    let mut decrypted_ok = true;
    for segment in Segment::ALL {
        let len = usize::try_from(file.header().segment_len(segment)).expect("segment fits");
        assert!(len <= data.len());
        let mut out = vec![0xA5u8; len];
        let segment_decrypts = file.decrypt_into(segment, &mut out).is_ok();
        if !segment_decrypts {
            decrypted_ok = false;
            assert!(
                out.iter().all(|&b| b == 0),
                "failed decrypt left bytes behind"
            );
        }
        // The GPU path's reader: ciphertext checked against every tag, never decrypted here.
        let mut ct = vec![0xA5u8; len];
        let segment_verifies = file.read_verified_segment(segment, &mut ct).is_ok();
        if !segment_verifies {
            assert!(
                ct.iter().all(|&b| b == 0),
                "failed verify left ciphertext behind"
            );
        }
        assert_eq!(
            segment_decrypts, segment_verifies,
            "verify-only and decrypt disagree on {segment:?}"
        );
    }
    assert_eq!(
        all_tags_ok, decrypted_ok,
        "tag check and decryption disagree"
    );
});
