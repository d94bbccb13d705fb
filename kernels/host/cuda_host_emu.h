// cuda_host_emu.h — just enough of the CUDA execution model to run the kernels in kernels/*.cu as
// ordinary C++ functions in the CPU tests. Each call runs ONE thread block of ONE thread
// (blockDim.x == 1); the shim loops over blockIdx.x, so the grid-stride loops, the per-block
// shared-memory setup and the offsets are exercised exactly as written. Not emulated: several
// threads per block (which would need a real barrier for __syncthreads).
#pragma once

struct cl_dim3 {
    unsigned int x, y, z;
};

// thread_local: Rust runs tests on several threads at once.
static thread_local cl_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __shared__ static thread_local
#define __syncthreads() ((void)0)
