//! AES-256 key expansion (FIPS-197 §5.2) on the host, for the device CTR kernel.
//!
//! Why on the host: the host holds the segment key anyway (it verifies GCM tags), expansion is
//! 13 S-box words per key — trivial on the CPU — and the device then only ever receives the
//! expanded schedule, once per segment, instead of every thread block redoing it.
//!
//! Why a computed S-box: a table-lookup S-box indexed by key bytes leaks the key through cache
//! timing on the host. Here S(x) is computed as the affine map of x^254 in GF(2^8) with
//! branch-free, index-free arithmetic, so the expansion is constant-time.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Number of 32-bit round-key words of AES-256: 4 × (14 rounds + 1).
pub const AES256_ROUND_KEY_WORDS: usize = 60;

/// The expanded AES-256 key: FIPS-197 words `w[0..60]`, big-endian convention
/// (`w = b0<<24 | b1<<16 | b2<<8 | b3`). Uploaded as 60 native-endian `u32`s, which is the layout
/// `aes256_ctr_decrypt` reads. Wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Aes256RoundKeys([u32; AES256_ROUND_KEY_WORDS]);

impl Aes256RoundKeys {
    /// Expands a 256-bit key.
    pub fn expand(key: &[u8; 32]) -> Self {
        let mut w = [0u32; AES256_ROUND_KEY_WORDS];
        for (word, bytes) in w.iter_mut().zip(key.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let mut rcon: u8 = 1;
        for i in 8..AES256_ROUND_KEY_WORDS {
            let mut temp = w[i - 1];
            if i % 8 == 0 {
                temp = sub_word(temp.rotate_left(8)) ^ (u32::from(rcon) << 24);
                rcon = xtime(rcon);
            } else if i % 8 == 4 {
                temp = sub_word(temp);
            }
            w[i] = w[i - 8] ^ temp;
        }
        let keys = Aes256RoundKeys(w);
        w.zeroize();
        keys
    }

    /// The 60 words, for the upload to device memory.
    pub fn as_words(&self) -> &[u32; AES256_ROUND_KEY_WORDS] {
        &self.0
    }
}

impl fmt::Debug for Aes256RoundKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aes256RoundKeys(<redacted>)")
    }
}

/// Multiplication by x in GF(2^8) mod x^8 + x^4 + x^3 + x + 1, without branches.
fn xtime(a: u8) -> u8 {
    (a << 1) ^ (0x1b & 0u8.wrapping_sub(a >> 7))
}

/// Constant-time multiplication in GF(2^8): fixed 8 iterations, masks instead of branches.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    for _ in 0..8 {
        r ^= a & 0u8.wrapping_sub(b & 1);
        a = xtime(a);
        b >>= 1;
    }
    r
}

/// The AES S-box, computed: affine transform of the multiplicative inverse (x^254; 0 maps to 0).
fn sbox(x: u8) -> u8 {
    // x^254 = x^(2+4+8+16+32+64+128): square-and-multiply with a public exponent.
    let mut sq = x;
    let mut inv = 1u8;
    for _ in 0..7 {
        sq = gf_mul(sq, sq);
        inv = gf_mul(inv, sq);
    }
    inv ^ inv.rotate_left(1) ^ inv.rotate_left(2) ^ inv.rotate_left(3) ^ inv.rotate_left(4) ^ 0x63
}

fn sub_word(w: u32) -> u32 {
    let b = w.to_be_bytes();
    u32::from_be_bytes([sbox(b[0]), sbox(b[1]), sbox(b[2]), sbox(b[3])])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_key(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    #[test]
    fn sbox_matches_known_entries_and_is_a_permutation() {
        assert_eq!(sbox(0x00), 0x63);
        assert_eq!(sbox(0x01), 0x7c);
        assert_eq!(sbox(0x53), 0xed);
        assert_eq!(sbox(0xff), 0x16);
        let mut seen = [false; 256];
        for x in 0..=255u8 {
            seen[usize::from(sbox(x))] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    /// FIPS-197 Appendix A.3: expansion of a 256-bit cipher key, all 60 words.
    #[test]
    fn expansion_matches_fips197_appendix_a3() {
        let key = hex_key("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        #[rustfmt::skip]
        let expected: [u32; 60] = [
            0x603deb10, 0x15ca71be, 0x2b73aef0, 0x857d7781, 0x1f352c07, 0x3b6108d7, 0x2d9810a3, 0x0914dff4,
            0x9ba35411, 0x8e6925af, 0xa51a8b5f, 0x2067fcde, 0xa8b09c1a, 0x93d194cd, 0xbe49846e, 0xb75d5b9a,
            0xd59aecb8, 0x5bf3c917, 0xfee94248, 0xde8ebe96, 0xb5a9328a, 0x2678a647, 0x98312229, 0x2f6c79b3,
            0x812c81ad, 0xdadf48ba, 0x24360af2, 0xfab8b464, 0x98c5bfc9, 0xbebd198e, 0x268c3ba7, 0x09e04214,
            0x68007bac, 0xb2df3316, 0x96e939e4, 0x6c518d80, 0xc814e204, 0x76a9fb8a, 0x5025c02d, 0x59c58239,
            0xde136967, 0x6ccc5a71, 0xfa256395, 0x9674ee15, 0x5886ca5d, 0x2e2f31d7, 0x7e0af1fa, 0x27cf73c3,
            0x749c47ab, 0x18501dda, 0xe2757e4f, 0x7401905a, 0xcafaaae3, 0xe4d59b34, 0x9adf6ace, 0xbd10190d,
            0xfe4890d1, 0xe6188d0b, 0x046df344, 0x706c631e,
        ];
        assert_eq!(Aes256RoundKeys::expand(&key).as_words(), &expected);
    }

    /// FIPS-197 Appendix C.3: first and last round keys of the example (key 00 01 … 1f).
    #[test]
    fn expansion_matches_fips197_appendix_c3_round_keys() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let w = Aes256RoundKeys::expand(&key);
        assert_eq!(
            w.as_words()[..4],
            [0x00010203, 0x04050607, 0x08090a0b, 0x0c0d0e0f]
        );
        // round[14].k_sch = 24fc79ccbf0979e9371ac23c6d68de36
        assert_eq!(
            w.as_words()[56..],
            [0x24fc79cc, 0xbf0979e9, 0x371ac23c, 0x6d68de36]
        );
    }

    #[test]
    fn debug_is_redacted() {
        let w = Aes256RoundKeys::expand(&[7u8; 32]);
        assert_eq!(format!("{w:?}"), "Aes256RoundKeys(<redacted>)");
    }
}
