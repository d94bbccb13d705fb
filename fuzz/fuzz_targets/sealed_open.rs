//! Arbitrary bytes opened as a sealed file with the fixture keys: header and envelope parsing,
//! layout arithmetic, length/trailer checks, tag collection, signature and DEK unwrap; and, for
//! inputs that open, every decrypt/verify path.
//!
//! Properties: no panic, no hang, no allocation beyond the input's size (lengths are checked
//! against the exact file length before anything is read), and the decrypt paths agree with
//! `verify_all_tags`.

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
        match file.decrypt_into(segment, &mut out) {
            Ok(()) => {}
            Err(_) => {
                decrypted_ok = false;
                assert!(
                    out.iter().all(|&b| b == 0),
                    "failed decrypt left bytes behind"
                );
            }
        }
        let chunks: Vec<_> = file.layout().segment(segment).chunks().collect();
        for chunk in chunks {
            let mut ct = vec![0u8; chunk.len];
            if file
                .read_verified_ciphertext(segment, chunk.index.into(), &mut ct)
                .is_err()
            {
                assert!(ct.iter().all(|&b| b == 0));
            }
        }
    }
    assert_eq!(
        all_tags_ok, decrypted_ok,
        "tag check and decryption disagree"
    );
});
