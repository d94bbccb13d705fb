// aes_ctr_host.cpp — the CUDA kernels compiled as host C++ for the CPU tests (tests/kernels_host.rs).
// build.rs compiles this file with the `cc` crate into a static library; nothing here ships in
// the server. The kernel sources are #included, not copied, so the tests check the GPU code.
#include "cuda_host_emu.h"

#include "../aes_ctr.cu"
#include "../zero.cu"

// Runs aes256_ctr_decrypt over a grid of `grid` one-thread blocks.
extern "C" void aes256_ctr_host(const uint32_t* round_keys, const uint8_t* initial_block,
                                const uint8_t* in, uint8_t* out, uint64_t len,
                                uint64_t block_offset, uint32_t grid) {
    gridDim = {grid, 1, 1};
    blockDim = {1, 1, 1};
    threadIdx = {0, 0, 0};
    for (uint32_t b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        aes256_ctr_decrypt(round_keys, initial_block, in, out, len, block_offset);
    }
}

// Runs zero_fill over a grid of `grid` one-thread blocks.
extern "C" void zero_fill_host(uint8_t* p, uint64_t len, uint32_t grid) {
    gridDim = {grid, 1, 1};
    blockDim = {1, 1, 1};
    threadIdx = {0, 0, 0};
    for (uint32_t b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        zero_fill(p, len);
    }
}

// One raw AES-256 block encryption with the shared core (for the FIPS-197 C.3 vector).
extern "C" void aes256_encrypt_block_host(const uint32_t* round_keys, const uint8_t* in,
                                          uint8_t* out) {
    cl_aes_tables t;
    for (uint32_t i = 0; i < 256; ++i) cl_aes_tables_fill(&t, i);
    uint32_t s[4];
    for (int i = 0; i < 4; ++i) s[i] = cl_load_be32(in + 4 * i);
    cl_aes256_encrypt_words(&t, round_keys, s);
    for (int i = 0; i < 4; ++i) {
        out[4 * i] = (uint8_t)(s[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s[i] >> 8);
        out[4 * i + 3] = (uint8_t)s[i];
    }
}
