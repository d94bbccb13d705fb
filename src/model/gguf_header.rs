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

/// Parses a whole GGUF header held in memory (metadata and tensor infos).
pub(crate) fn read_header(meta: &[u8]) -> Result<gguf_file::Content, String> {
    if declares_zero_alignment(meta) {
        return Err("GGUF general.alignment is 0".into());
    }
    gguf_file::Content::read(&mut std::io::Cursor::new(meta)).map_err(|e| e.to_string())
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
/// by. Scans the bytes for the key with its length prefix (u64 in GGUF v2/v3, u32 in v1), then
/// checks the value type (the integer types candle reads as an alignment: u8, i8, u16, i16, u32,
/// i32) and the value. A match inside some other string can only refuse a header, never let a
/// zero alignment through, since a real key always appears in the bytes like this.
fn declares_zero_alignment(meta: &[u8]) -> bool {
    let len = ALIGNMENT_KEY.len() as u64;
    let mut v3_key = len.to_le_bytes().to_vec();
    v3_key.extend_from_slice(ALIGNMENT_KEY);
    let mut v1_key = (len as u32).to_le_bytes().to_vec();
    v1_key.extend_from_slice(ALIGNMENT_KEY);
    [v3_key, v1_key].iter().any(|key| {
        meta.windows(key.len())
            .enumerate()
            .filter(|(_, w)| w == key)
            .any(|(at, _)| zero_integer_at(&meta[at + key.len()..]))
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
