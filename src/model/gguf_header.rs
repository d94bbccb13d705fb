//! Reading a GGUF header with candle's parser, guarded against the inputs that make it panic.
//!
//! candle 0.11's `Content::read` divides the tensor-data offset by the `general.alignment`
//! metadata value without checking it, so a header declaring an alignment of 0 panics (found by
//! the `gguf_meta` fuzz campaign). A header comes out of a sealed file or an operator's GGUF, so
//! it must give an error, never a panic.

use std::io::{Read, Seek};
use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::quantized::gguf_file;

const ALIGNMENT_KEY: &[u8] = b"general.alignment";

/// Parses a whole GGUF header held in memory (metadata and tensor infos). A zero alignment is
/// named in the error; any other panic in candle's parser is caught like in [`read_header_from`].
pub(crate) fn read_header(meta: &[u8]) -> Result<gguf_file::Content, String> {
    if declares_zero_alignment(meta) {
        return Err("GGUF general.alignment is 0".into());
    }
    read_header_from(&mut std::io::Cursor::new(meta))
}

/// Parses the GGUF header at the start of `reader` (a file too large to hold in memory). The
/// alignment cannot be checked before candle reads it here, so a panic in its parser is caught
/// and reported as a malformed header.
pub(crate) fn read_header_from<R: Read + Seek>(
    reader: &mut R,
) -> Result<gguf_file::Content, String> {
    match catch_unwind(AssertUnwindSafe(|| gguf_file::Content::read(reader))) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(_) => Err("malformed GGUF header (the parser gave up)".into()),
    }
}

/// Whether some `general.alignment` key in `meta` holds an integer 0, the value candle divides
/// by. Finds the key's bytes, then checks what a real key there would look like: candle drops
/// trailing NULs from keys, so the key may be followed by NULs, and its length prefix (u64 in
/// GGUF v2/v3, u32 in v1) counts them. Then the value type must be one candle reads as an
/// alignment (u8, i8, u16, i16, u32, i32) and the value 0. A match inside some other string can
/// only refuse a header, never let a zero alignment through.
fn declares_zero_alignment(meta: &[u8]) -> bool {
    meta.windows(ALIGNMENT_KEY.len())
        .enumerate()
        .filter(|(_, w)| *w == ALIGNMENT_KEY)
        .any(|(at, _)| {
            let after_key = &meta[at + ALIGNMENT_KEY.len()..];
            let before = &meta[..at];
            // NULs after the key may be padding (counted by the length prefix) or the start of
            // the value type: try every split.
            let nuls = after_key.iter().take_while(|&&b| b == 0).count();
            (0..=nuls).any(|padding| {
                let len = (ALIGNMENT_KEY.len() + padding) as u64;
                let v3 = before.ends_with(&len.to_le_bytes());
                let v1 = u32::try_from(len).is_ok_and(|l| before.ends_with(&l.to_le_bytes()));
                (v3 || v1) && zero_integer_at(&after_key[padding..])
            })
        })
}

/// Whether `rest` starts with a value type of 0..=5 (u8, i8, u16, i16, u32, i32) and a zero value.
fn zero_integer_at(rest: &[u8]) -> bool {
    let Some((ty, value)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    let width = match u32::from_le_bytes(*ty) {
        0 | 1 => 1,
        2 | 3 => 2,
        4 | 5 => 4,
        _ => return false,
    };
    value.len() >= width && value[..width].iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(len_prefix: &[u8], ty: u32, value: &[u8]) -> Vec<u8> {
        let mut v = b"GGUF....".to_vec();
        v.extend_from_slice(len_prefix);
        v.extend_from_slice(ALIGNMENT_KEY);
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn zero_alignment_is_found_in_every_integer_type_and_version() {
        let v3 = 17u64.to_le_bytes();
        let v1 = 17u32.to_le_bytes();
        for (ty, width) in [(0u32, 1), (1, 1), (2, 2), (3, 2), (4, 4), (5, 4)] {
            for prefix in [&v3[..], &v1[..]] {
                assert!(
                    declares_zero_alignment(&kv(prefix, ty, &vec![0; width])),
                    "{ty}"
                );
                let mut nonzero = vec![0; width];
                nonzero[0] = 32;
                assert!(!declares_zero_alignment(&kv(prefix, ty, &nonzero)), "{ty}");
            }
        }
        // candle drops NULs after a key, so "general.alignment\0\0" is the same key.
        for (ty, width) in [(0u32, 1), (4, 4)] {
            let mut padded = kv(&19u64.to_le_bytes(), ty, &vec![0; width]);
            let key_end = padded.len() - 4 - width;
            padded.splice(key_end..key_end, [0, 0]);
            assert!(declares_zero_alignment(&padded), "{ty}");
        }
        // Other types are not read as an alignment by candle.
        assert!(!declares_zero_alignment(&kv(&v3, 10, &[0; 8])));
        assert!(
            !declares_zero_alignment(&kv(&v3, 4, &[0; 2])),
            "truncated value"
        );
    }

    #[test]
    fn a_header_with_zero_alignment_is_an_error_not_a_panic() {
        // A minimal GGUF v3 header: no tensors, one metadata entry.
        let mut meta = b"GGUF".to_vec();
        meta.extend_from_slice(&3u32.to_le_bytes());
        meta.extend_from_slice(&0u64.to_le_bytes());
        meta.extend_from_slice(&1u64.to_le_bytes());
        meta.extend_from_slice(&17u64.to_le_bytes());
        meta.extend_from_slice(ALIGNMENT_KEY);
        meta.extend_from_slice(&4u32.to_le_bytes());
        meta.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            read_header(&meta).unwrap_err(),
            "GGUF general.alignment is 0"
        );
        let err = read_header_from(&mut std::io::Cursor::new(&meta)).unwrap_err();
        assert!(err.contains("malformed GGUF header"), "{err}");
        // With alignment 32 the same header parses.
        let n = meta.len();
        meta[n - 4..].copy_from_slice(&32u32.to_le_bytes());
        assert!(read_header(&meta).is_ok());
    }
}
