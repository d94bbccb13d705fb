// llama_host.cpp — kernels/llama.cu compiled as host C++ for the CPU tests: one entry point that
// launches any of its kernels by number over a grid of one-thread blocks, so the tests can run
// the GPU forward pass (src/gpu/forward.rs) on the CPU. Nothing here ships in the server.
#include "cuda_host_emu.h"

#include "../llama.cu"

namespace {
uint32_t u32(uint64_t a) { return (uint32_t)a; }
float f32(uint64_t a) {
    uint32_t bits = (uint32_t)a;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
template <typename T>
T* ptr(uint64_t a) {
    return reinterpret_cast<T*>((uintptr_t)a);
}
}  // namespace

// Kernel numbers follow `LlamaKernel` in src/gpu/forward.rs; arguments are 64-bit words
// (addresses, u32 in the low half, f32 bits in the low half). Returns 0, or -1 for an unknown
// kernel or a wrong argument count.
extern "C" int llama_launch_host(uint32_t kernel, const uint64_t* a, uint32_t nargs,
                                 uint32_t grid) {
    static const uint32_t arity[] = {5, 6, 4, 6, 6, 12, 11, 3, 3, 5};
    if (kernel >= sizeof(arity) / sizeof(arity[0]) || nargs != arity[kernel]) return -1;
    gridDim = {grid, 1, 1};
    blockDim = {1, 1, 1};
    threadIdx = {0, 0, 0};
    for (uint32_t b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        switch (kernel) {
            case 0:
                embed_q8_0(ptr<const uint8_t>(a[0]), ptr<const uint32_t>(a[1]), ptr<float>(a[2]),
                           u32(a[3]), u32(a[4]));
                break;
            case 1:
                rms_norm(ptr<const float>(a[0]), ptr<const float>(a[1]), ptr<float>(a[2]),
                         u32(a[3]), u32(a[4]), f32(a[5]));
                break;
            case 2:
                quantize_q8(ptr<const float>(a[0]), ptr<uint8_t>(a[1]), u32(a[2]), u32(a[3]));
                break;
            case 3:
                matmul_q4_1(ptr<const uint8_t>(a[0]), ptr<const uint8_t>(a[1]), ptr<float>(a[2]),
                            u32(a[3]), u32(a[4]), u32(a[5]));
                break;
            case 4:
                matmul_q8_0(ptr<const uint8_t>(a[0]), ptr<const uint8_t>(a[1]), ptr<float>(a[2]),
                            u32(a[3]), u32(a[4]), u32(a[5]));
                break;
            case 5:
                rope_store_kv(ptr<float>(a[0]), ptr<float>(a[1]), ptr<float>(a[2]),
                              ptr<const float>(a[3]), ptr<const float>(a[4]),
                              ptr<const uint32_t>(a[5]), ptr<const uint64_t>(a[6]), u32(a[7]),
                              u32(a[8]), u32(a[9]), u32(a[10]), u32(a[11]));
                break;
            case 6:
                attention(ptr<const float>(a[0]), ptr<const uint64_t>(a[1]),
                          ptr<const uint32_t>(a[2]), ptr<const uint32_t>(a[3]), ptr<float>(a[4]),
                          u32(a[5]), u32(a[6]), u32(a[7]), u32(a[8]), u32(a[9]), f32(a[10]));
                break;
            case 7:
                silu_mul(ptr<float>(a[0]), ptr<const float>(a[1]), u32(a[2]));
                break;
            case 8:
                add_assign(ptr<float>(a[0]), ptr<const float>(a[1]), u32(a[2]));
                break;
            case 9:
                gather_rows(ptr<const float>(a[0]), ptr<const uint32_t>(a[1]), ptr<float>(a[2]),
                            u32(a[3]), u32(a[4]));
                break;
        }
    }
    return 0;
}
