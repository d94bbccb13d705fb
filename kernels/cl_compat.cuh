// cl_compat.cuh — lets the same kernel source compile three ways:
//   * NVRTC at run time (__CUDACC_RTC__): no system headers exist there (the NVRTC wheel ships
//     none), so the fixed-width integer types are declared here;
//   * nvcc (__CUDACC__), should anyone build offline: <stdint.h> is available;
//   * host C++ (g++/clang++) for the CPU tests: the CUDA qualifiers are defined away, and
//     kernels/host/cuda_host_emu.h supplies threadIdx/blockIdx/__shared__/__syncthreads.
// Why: the arithmetic that runs on the GPU is the arithmetic the CPU tests check against
// RustCrypto — one source, not a transliteration.
#pragma once

#if defined(__CUDACC_RTC__)
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef unsigned long long cl_uintptr;
#else
#include <stdint.h>
#include <string.h>
typedef uintptr_t cl_uintptr;
#endif

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define CL_DEVICE_BUILD 1
#define CL_INLINE __device__ __forceinline__
#define CL_ALIGN16 __align__(16)
// Read-only tables live in constant memory and are copied to shared memory per thread block.
#define CL_CONSTANT static __constant__ const
#define CL_UNROLL _Pragma("unroll")
#else
#define CL_DEVICE_BUILD 0
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define CL_INLINE static inline
#define CL_ALIGN16 alignas(16)
#define CL_CONSTANT static const
#define CL_UNROLL _Pragma("GCC unroll 16")
#endif

// 16 bytes as four 32-bit words in memory order; 16-byte aligned so the device does one
// 128-bit load/store (ld.global.v4.u32) instead of sixteen byte accesses.
struct CL_ALIGN16 cl_u32x4 {
    uint32_t w[4];
};

// Byte-swap a 32-bit word: AES state words are big-endian by convention, memory loads on both
// x86-64 and NVIDIA GPUs are little-endian.
CL_INLINE uint32_t cl_bswap32(uint32_t x) {
#if CL_DEVICE_BUILD
    return __byte_perm(x, 0, 0x0123);
#else
    return __builtin_bswap32(x);
#endif
}

// Aligned 16-byte load/store. On the host the bytes are copied (memcpy), so the C++ build has no
// strict-aliasing undefined behaviour on buffers that Rust hands over as bytes.
CL_INLINE cl_u32x4 cl_load16(const uint8_t* p) {
#if CL_DEVICE_BUILD
    return *reinterpret_cast<const cl_u32x4*>(p);
#else
    cl_u32x4 v;
    memcpy(&v, p, 16);
    return v;
#endif
}

CL_INLINE void cl_store16(uint8_t* p, cl_u32x4 v) {
#if CL_DEVICE_BUILD
    *reinterpret_cast<cl_u32x4*>(p) = v;
#else
    memcpy(p, &v, 16);
#endif
}
