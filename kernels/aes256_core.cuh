// aes256_core.cuh — AES-256 block encryption and one GCM-style CTR block, shared verbatim by the
// CUDA kernel (kernels/aes_ctr.cu, compiled by NVRTC) and the host C++ test shim.
//
// Design:
//   * Key expansion is done ON THE HOST (Rust, src/gpu/aes_key_schedule.rs, constant-time S-box)
//     and the 60 round-key words are uploaded to device memory; each thread block copies them
//     into shared memory once. The device never sees the raw key, and no thread repeats the
//     expansion.
//   * T-tables (Te0..Te3, 4 KiB) are BUILT per thread block in shared memory from the 256-byte
//     S-box in constant memory: constant memory serialises divergent addresses (every lane of a
//     warp looks up a different index), shared memory does not, and building them from the S-box
//     avoids 1024 hand-copied constants. The last round reuses the T-tables (OpenSSL's masking
//     trick), so no separate S-box copy is needed in shared memory.
//   * Side channels: table lookups are data-dependent. Shared-memory bank conflicts leak timing to
//     an attacker who can time this kernel on the same GPU (Jiang, Fei, Kaeli, HPCA 2016). The
//     server is the only tenant of its GPU, and the key schedule on the host is constant-time; a
//     bitsliced kernel is the upgrade if co-tenancy ever becomes part of the threat model.
//
// Word convention (FIPS-197 / OpenSSL): state and round-key words are big-endian, i.e.
// w = b0<<24 | b1<<16 | b2<<8 | b3 for bytes b0..b3 in memory order.
#pragma once

#include "cl_compat.cuh"

#define CL_AES256_ROUND_KEY_WORDS 60
#define CL_AES256_ROUNDS 14

// The AES S-box (FIPS-197 figure 7).
CL_CONSTANT uint8_t cl_aes_sbox[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
};

// Te0[x] = (2·S[x], S[x], S[x], 3·S[x]) as a big-endian word; Te1..Te3 are Te0 rotated right by
// 8, 16, 24 bits. One full round is then 16 lookups and XORs.
struct cl_aes_tables {
    uint32_t te[4][256];
};

CL_INLINE uint32_t cl_ror32(uint32_t x, uint32_t n) { return (x >> n) | (x << (32u - n)); }

// Fills entry `i` (0..255) of every table. The kernel spreads the 256 entries over the threads of
// a block; the host calls it for every i.
CL_INLINE void cl_aes_tables_fill(cl_aes_tables* t, uint32_t i) {
    uint32_t s = cl_aes_sbox[i];
    uint32_t s2 = ((s << 1) ^ ((s >> 7) * 0x1bu)) & 0xffu;
    uint32_t s3 = s2 ^ s;
    uint32_t w = (s2 << 24) | (s << 16) | (s << 8) | s3;
    t->te[0][i] = w;
    t->te[1][i] = cl_ror32(w, 8);
    t->te[2][i] = cl_ror32(w, 16);
    t->te[3][i] = cl_ror32(w, 24);
}

// Encrypts one block in place. `s` holds the four big-endian state words, `rk` the 60 expanded
// round-key words (FIPS-197 w[0..59]).
CL_INLINE void cl_aes256_encrypt_words(const cl_aes_tables* t, const uint32_t* rk, uint32_t s[4]) {
    const uint32_t* T0 = t->te[0];
    const uint32_t* T1 = t->te[1];
    const uint32_t* T2 = t->te[2];
    const uint32_t* T3 = t->te[3];
    uint32_t s0 = s[0] ^ rk[0];
    uint32_t s1 = s[1] ^ rk[1];
    uint32_t s2 = s[2] ^ rk[2];
    uint32_t s3 = s[3] ^ rk[3];
    uint32_t t0, t1, t2, t3;
    CL_UNROLL
    for (int r = 1; r < CL_AES256_ROUNDS; ++r) {
        const uint32_t* k = rk + 4 * r;
        t0 = T0[s0 >> 24] ^ T1[(s1 >> 16) & 0xff] ^ T2[(s2 >> 8) & 0xff] ^ T3[s3 & 0xff] ^ k[0];
        t1 = T0[s1 >> 24] ^ T1[(s2 >> 16) & 0xff] ^ T2[(s3 >> 8) & 0xff] ^ T3[s0 & 0xff] ^ k[1];
        t2 = T0[s2 >> 24] ^ T1[(s3 >> 16) & 0xff] ^ T2[(s0 >> 8) & 0xff] ^ T3[s1 & 0xff] ^ k[2];
        t3 = T0[s3 >> 24] ^ T1[(s0 >> 16) & 0xff] ^ T2[(s1 >> 8) & 0xff] ^ T3[s2 & 0xff] ^ k[3];
        s0 = t0;
        s1 = t1;
        s2 = t2;
        s3 = t3;
    }
    // Last round (SubBytes, ShiftRows, AddRoundKey; no MixColumns): the S-box value of x sits in
    // byte 3 of Te2[x], byte 2 of Te3[x], byte 1 of Te0[x] and byte 0 of Te1[x].
    const uint32_t* k = rk + 4 * CL_AES256_ROUNDS;
    s[0] = ((T2[s0 >> 24] & 0xff000000u) ^ (T3[(s1 >> 16) & 0xff] & 0x00ff0000u) ^
            (T0[(s2 >> 8) & 0xff] & 0x0000ff00u) ^ (T1[s3 & 0xff] & 0x000000ffu)) ^ k[0];
    s[1] = ((T2[s1 >> 24] & 0xff000000u) ^ (T3[(s2 >> 16) & 0xff] & 0x00ff0000u) ^
            (T0[(s3 >> 8) & 0xff] & 0x0000ff00u) ^ (T1[s0 & 0xff] & 0x000000ffu)) ^ k[1];
    s[2] = ((T2[s2 >> 24] & 0xff000000u) ^ (T3[(s3 >> 16) & 0xff] & 0x00ff0000u) ^
            (T0[(s0 >> 8) & 0xff] & 0x0000ff00u) ^ (T1[s1 & 0xff] & 0x000000ffu)) ^ k[2];
    s[3] = ((T2[s3 >> 24] & 0xff000000u) ^ (T3[(s0 >> 16) & 0xff] & 0x00ff0000u) ^
            (T0[(s1 >> 8) & 0xff] & 0x0000ff00u) ^ (T1[s2 & 0xff] & 0x000000ffu)) ^ k[3];
}

// One CTR block, GCM semantics: counter block = prefix (12 bytes, as 3 big-endian words) ‖ ctr
// (32-bit big-endian). The caller computes ctr = initial + block index mod 2^32 — GCM's inc32
// wraps the low 32 bits and never carries into the nonce. XORs the keystream into the `n` bytes
// (1..16) at `in`, writing `out` (`in == out` is allowed: each block is read before written).
CL_INLINE void cl_aes256_ctr_block(const cl_aes_tables* t, const uint32_t* rk, uint32_t p0,
                                   uint32_t p1, uint32_t p2, uint32_t ctr, const uint8_t* in,
                                   uint8_t* out, uint32_t n) {
    uint32_t ks[4] = {p0, p1, p2, ctr};
    cl_aes256_encrypt_words(t, rk, ks);
    if (n == 16 && ((((cl_uintptr)in) | ((cl_uintptr)out)) & 15u) == 0) {
        cl_u32x4 v = cl_load16(in);
    CL_UNROLL
        for (int i = 0; i < 4; ++i) v.w[i] ^= cl_bswap32(ks[i]);
        cl_store16(out, v);
    } else {
        // Partial or unaligned block: byte by byte. Fully unrolled so ks[] stays in registers
        // (a run-time index would put the keystream in local memory).
        CL_UNROLL
        for (uint32_t w = 0; w < 4; ++w) {
            CL_UNROLL
            for (uint32_t b = 0; b < 4; ++b) {
                const uint32_t i = 4 * w + b;
                if (i < n) out[i] = (uint8_t)(in[i] ^ (uint8_t)(ks[w] >> (24 - 8 * b)));
            }
        }
    }
}

// Reads 4 bytes big-endian (the counter-block prefix and counter).
CL_INLINE uint32_t cl_load_be32(const uint8_t* p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
