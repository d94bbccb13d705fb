// zero.cu — clears device memory, e.g. a KV-cache block when its sequence is released, so the next
// tenant's sequence can never read the previous one's activations (DESIGN.md §1, §6).
//
// Launch: any grid/block shape (grid-stride loops). The unaligned head (< 16 bytes up to the first
// 16-byte boundary) and the tail (< 16 bytes) are cleared byte by byte; everything between with
// one 128-bit store per thread per iteration.
#include "cl_compat.cuh"

extern "C" __global__ void zero_fill(uint8_t* p, uint64_t len) {
    const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;

    uint64_t head = (16u - ((cl_uintptr)p & 15u)) & 15u;
    if (head > len) head = len;
    const uint64_t vecs = (len - head) >> 4;
    const uint64_t tail_start = head + (vecs << 4);

    for (uint64_t i = tid; i < head; i += stride) p[i] = 0;
    cl_u32x4 z;
    z.w[0] = z.w[1] = z.w[2] = z.w[3] = 0;
    for (uint64_t i = tid; i < vecs; i += stride) cl_store16(p + head + (i << 4), z);
    for (uint64_t i = tail_start + tid; i < len; i += stride) p[i] = 0;
}
