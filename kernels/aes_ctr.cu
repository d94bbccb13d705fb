// aes_ctr.cu — AES-256-CTR decryption of verified sealed-chunk ciphertext straight into device
// memory (DESIGN.md §3 "GPU decryption without host plaintext").
//
// The host has already checked the chunk's GCM tag over the ciphertext; this kernel only applies
// the CTR keystream GCM would have used, so plaintext exists only in the destination buffer.
//
// Launch contract:
//   round_keys     60 words, AES-256 key schedule expanded on the host (device memory).
//   initial_block  16 bytes: nonce ‖ 0x00000002 (J0 + 1, `ctr_initial_block` in seal/chunk.rs).
//   in, out        `len` bytes; in == out (in-place) is allowed, partial overlap is not.
//   block_offset   index, counted in 16-byte blocks from the start of the chunk, of the block at
//                  in[0]. A chunk split over several launches passes in + 16k, out + 16k,
//                  block_offset = k; the counter used is low32(initial_block) + block_offset + j
//                  mod 2^32 (GCM's inc32), the 96-bit prefix is never touched.
//   grid/block     any shape (grid-stride loop over 16-byte blocks, the last one may be partial);
//                  256 threads per block and enough blocks to fill the SMs is a good default.
//   shared memory  4 KiB T-tables + 240 B round keys, static.
#include "aes256_core.cuh"

extern "C" __global__ void aes256_ctr_decrypt(const uint32_t* round_keys,
                                              const uint8_t* initial_block, const uint8_t* in,
                                              uint8_t* out, uint64_t len, uint64_t block_offset) {
    __shared__ cl_aes_tables tables;
    __shared__ uint32_t rk[CL_AES256_ROUND_KEY_WORDS];

    // Every thread reaches both barriers: no early return before the second one.
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) cl_aes_tables_fill(&tables, i);
    for (uint32_t i = threadIdx.x; i < CL_AES256_ROUND_KEY_WORDS; i += blockDim.x) {
        rk[i] = round_keys[i];
    }
    __syncthreads();

    const uint32_t p0 = cl_load_be32(initial_block);
    const uint32_t p1 = cl_load_be32(initial_block + 4);
    const uint32_t p2 = cl_load_be32(initial_block + 8);
    // Only the low 32 bits of the offset matter: the counter wraps mod 2^32.
    const uint32_t ctr0 = cl_load_be32(initial_block + 12) + (uint32_t)block_offset;

    const uint64_t nblocks = (len >> 4) + ((len & 15) != 0);
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < nblocks; j += stride) {
        const uint64_t off = j << 4;
        const uint64_t left = len - off;
        const uint32_t n = left < 16 ? (uint32_t)left : 16u;
        cl_aes256_ctr_block(&tables, rk, p0, p1, p2, ctr0 + (uint32_t)j, in + off, out + off, n);
    }

    // Shared memory is not guaranteed to be cleared before the next kernel on this SM runs:
    // wipe the round keys once every thread of the block is done with them.
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < CL_AES256_ROUND_KEY_WORDS; i += blockDim.x) rk[i] = 0;
}
