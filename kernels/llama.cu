// llama.cu — the Llama forward pass on the GPU, over weights that the AES-CTR kernel decrypted
// into device memory (DESIGN.md §6, §10). The host side is src/gpu/forward.rs.
//
// Every kernel is "one thread per work item, grid-stride loop, no shared memory, no barrier",
// and each item repeats the CPU engine's arithmetic in the CPU engine's order (src/engine/llama.rs,
// src/engine/qk): the same 8-lane accumulators, the same f16 roundings, the same Q8_1/Q8_0
// activation quantization. Why: (1) greedy output then follows the CPU engine, which matches the
// llama.cpp reference, up to the last bit of sqrtf (exp is our own, cl_exp); (2) a kernel with no cooperation between
// threads runs unchanged as host C++ (kernels/host/), so the CPU tests run this exact code
// against the CPU engine on machines without a GPU. Speed is secondary for a 135M-parameter model.
//
// Layouts (all little-endian, row-major, f32 unless stated):
//   weights   GGUF blocks: Q4_1 = f16 d, f16 m, 16 bytes of nibbles (20 B / 32 values);
//             Q8_0 = f16 d, 32 int8 (34 B / 32 values).
//   acts      quantized activations, 40 B per 32 values: f32 d (rounded through f16),
//             f32 s (Q8_1 only: f16(d_unrounded * Σq)), 32 int8.
//   KV block  [layer][k|v][16 positions][kv_dim] f32 (values rounded through f16), one device
//             allocation per tenant pool; rows find their block through a table of addresses.
// Compiled with --fmad=false (NVRTC_OPTIONS): the CPU engine does not contract a*b+c either,
// except where it calls mul_add, which is fmaf here.
#include "cl_compat.cuh"

#if !CL_DEVICE_BUILD
#include <math.h>
#endif

#define CL_QK 32
#define CL_Q4_1_BYTES 20
#define CL_Q8_0_BYTES 34
#define CL_ACT_BYTES 40
#define CL_KV_BLOCK_POSITIONS 16
// Largest head_dim the attention kernel holds per thread (checked by the host at load).
#define CL_MAX_HEAD_DIM 256

#define CL_GRID_STRIDE(i, count)                                                         \
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count);     \
         i += (uint64_t)gridDim.x * blockDim.x)

// ---- f16 and unaligned loads --------------------------------------------------------------

#if CL_DEVICE_BUILD
CL_INLINE float cl_f16_to_f32(uint32_t bits) {
    float r;
    unsigned short h = (unsigned short)bits;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}
// Round to the nearest f16 (ties to even), back as f32: what `half::f16::from_f32` does.
CL_INLINE float cl_round_f16(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return cl_f16_to_f32(h);
}
CL_INLINE float cl_load_f32(const uint8_t* p) { return *reinterpret_cast<const float*>(p); }
CL_INLINE void cl_store_f32(uint8_t* p, float v) { *reinterpret_cast<float*>(p) = v; }
CL_INLINE float cl_rint(float x) { return rintf(x); }
CL_INLINE double cl_rint_d(double x) { return rint(x); }
// 2^k for an integral k in [-1022, 1023].
CL_INLINE double cl_pow2(double k) { return __longlong_as_double((long long)(k + 1023.0) << 52); }
#define CL_NEG_INF __int_as_float(0xff800000)
#else
CL_INLINE float cl_f16_to_f32(uint32_t h) {
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        // Zero or subnormal: man * 2^-24, exact in f32.
        const float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    uint32_t x = exp == 0x1f ? (sign | 0x7f800000u | (man << 13))
                             : (sign | ((exp + 112u) << 23) | (man << 13));
    float f;
    memcpy(&f, &x, 4);
    return f;
}
CL_INLINE float cl_round_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xff;
    uint32_t man = x & 0x7fffffu, h;
    const int32_t e = (int32_t)exp - 112;  // f16 exponent field
    if (exp == 0xff) {
        h = sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u);
    } else if (e >= 0x1f) {
        h = sign | 0x7c00u;
    } else if (e <= 0) {
        if (e < -10) {
            h = sign;
        } else {
            man |= 0x800000u;
            const uint32_t shift = (uint32_t)(14 - e), halfway = 1u << (shift - 1);
            uint32_t m = man >> shift;
            const uint32_t rem = man & ((1u << shift) - 1);
            if (rem > halfway || (rem == halfway && (m & 1))) ++m;
            h = sign | m;
        }
    } else {
        h = sign | ((uint32_t)e << 10) | (man >> 13);
        const uint32_t rem = man & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;  // may carry into inf: correct
    }
    return cl_f16_to_f32(h);
}
CL_INLINE float cl_load_f32(const uint8_t* p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}
CL_INLINE void cl_store_f32(uint8_t* p, float v) { memcpy(p, &v, 4); }
CL_INLINE float cl_rint(float x) { return nearbyintf(x); }
CL_INLINE double cl_rint_d(double x) { return nearbyint(x); }
CL_INLINE double cl_pow2(double k) {
    const uint64_t bits = (uint64_t)((int64_t)k + 1023) << 52;
    double d;
    memcpy(&d, &bits, 8);
    return d;
}
#define CL_NEG_INF (-INFINITY)
#endif

// e^x as src/engine/expf.rs `exp_f32` computes it, operation for operation (f64 + - *, rint, an
// exact 2^k), so the GPU and the CPU engine get the same bits; CUDA's expf and libm's expf differ
// in the last ulp, enough to flip a greedy near-tie.
CL_INLINE float cl_exp(float x) {
    if (x != x) return x;
    if (x > 89.0f) return -CL_NEG_INF;
    if (x < -104.0f) return 0.0f;
    const double xd = (double)x;
    const double k = cl_rint_d(xd * 0x1.71547652b82fep+0);
    const double r = (xd - k * 0x1.62e42fee00000p-1) - k * 0x1.a39ef35793c76p-33;
    double p = 0x1.27e4fb7789f5cp-22;
    p = p * r + 0x1.71de3a556c734p-19;
    p = p * r + 0x1.a01a01a01a01ap-16;
    p = p * r + 0x1.a01a01a01a01ap-13;
    p = p * r + 0x1.6c16c16c16c17p-10;
    p = p * r + 0x1.1111111111111p-7;
    p = p * r + 0x1.5555555555555p-5;
    p = p * r + 0x1.5555555555555p-3;
    p = p * r + 0x1.0000000000000p-1;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return (float)(p * cl_pow2(k));
}

CL_INLINE float cl_f16_at(const uint8_t* p) { return cl_f16_to_f32((uint32_t)p[0] | ((uint32_t)p[1] << 8)); }

// The CPU engine's horizontal sum of eight lanes (qk/dot.rs `hsum8`).
CL_INLINE float cl_hsum8(const float* a) {
    const float r0 = a[4] + a[0], r1 = a[5] + a[1], r2 = a[6] + a[2], r3 = a[7] + a[3];
    return (r0 + r2) + (r1 + r3);
}

// llama.rs `dot`: eight lanes over chunks of eight, fixed reduction, then the remainder.
CL_INLINE float cl_dot8(const float* a, const float* b, uint32_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const uint32_t whole = n & ~7u;
    for (uint32_t i = 0; i < whole; i += 8) {
        for (uint32_t l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
    }
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (uint32_t i = whole; i < n; ++i) s += a[i] * b[i];
    return s;
}

// ---- kernels ------------------------------------------------------------------------------

// x[r][c] = dequantized row tokens[r] of a Q8_0 embedding table with d columns.
extern "C" __global__ void embed_q8_0(const uint8_t* table, const uint32_t* tokens, float* x,
                                      uint32_t n, uint32_t d) {
    const uint64_t row_bytes = (uint64_t)(d / CL_QK) * CL_Q8_0_BYTES;
    CL_GRID_STRIDE(e, (uint64_t)n * d) {
        const uint32_t r = (uint32_t)(e / d), c = (uint32_t)(e % d);
        const uint8_t* blk = table + tokens[r] * row_bytes + (uint64_t)(c / CL_QK) * CL_Q8_0_BYTES;
        x[e] = (float)(int8_t)blk[2 + c % CL_QK] * cl_f16_at(blk);
    }
}

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, one thread per row (f64 sum, in order).
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, uint32_t n,
                                    uint32_t d, float eps) {
    CL_GRID_STRIDE(r, n) {
        const float* xr = x + r * d;
        double sum = 0.0;
        for (uint32_t i = 0; i < d; ++i) sum += (double)(xr[i] * xr[i]);
        const float mean = (float)(sum / (double)d);
        const float scale = 1.0f / sqrtf(mean + eps);
        for (uint32_t i = 0; i < d; ++i) y[r * d + i] = xr[i] * scale * w[i];
    }
}

// Quantizes `nblocks` consecutive 32-value blocks of x (rows are whole blocks) to acts.
// with_sum != 0: Q8_1 (also stores s), else Q8_0.
extern "C" __global__ void quantize_q8(const float* x, uint8_t* acts, uint32_t nblocks,
                                       uint32_t with_sum) {
    CL_GRID_STRIDE(b, nblocks) {
        const float* xb = x + b * CL_QK;
        uint8_t* out = acts + b * CL_ACT_BYTES;
        float amax = 0.0f;
        for (uint32_t i = 0; i < CL_QK; ++i) amax = fmaxf(amax, fabsf(xb[i]));
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (uint32_t i = 0; i < CL_QK; ++i) {
            const float v = cl_rint(xb[i] * id);
            // Rust's `as i8` saturates and maps NaN to 0.
            const int32_t q = v != v ? 0 : v > 127.0f ? 127 : v < -128.0f ? -128 : (int32_t)v;
            out[8 + i] = (uint8_t)(int8_t)q;
            sum += q;
        }
        cl_store_f32(out, cl_round_f16(d));
        cl_store_f32(out + 4, with_sum ? cl_round_f16(d * (float)sum) : 0.0f);
    }
}

// y[r][o] = W[o] · acts[r] for Q4_1 weights (rows × nb blocks) and Q8_1 activations (n rows).
extern "C" __global__ void matmul_q4_1(const uint8_t* w, const uint8_t* acts, float* y,
                                       uint32_t rows, uint32_t nb, uint32_t n) {
    CL_GRID_STRIDE(item, (uint64_t)n * rows) {
        const uint64_t r = item / rows, o = item % rows;
        const uint8_t* wr = w + o * nb * CL_Q4_1_BYTES;
        const uint8_t* ar = acts + r * nb * CL_ACT_BYTES;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        float summs = 0.0f;
        for (uint32_t ib = 0; ib < nb; ++ib) {
            const uint8_t* wb = wr + ib * CL_Q4_1_BYTES;
            const uint8_t* ab = ar + ib * CL_ACT_BYTES;
            const int8_t* qy = (const int8_t*)(ab + 8);
            summs += cl_f16_at(wb + 2) * cl_load_f32(ab + 4);
            const float dd = cl_f16_at(wb) * cl_load_f32(ab);
            for (uint32_t lane = 0; lane < 8; ++lane) {
                int32_t sum = 0;
                for (uint32_t j = lane * 4; j < lane * 4 + 4; ++j) {
                    const uint32_t nib = wb[4 + (j % 16)];
                    const int32_t qx = (int32_t)(j < 16 ? (nib & 0x0f) : (nib >> 4));
                    sum += qx * (int32_t)qy[j];
                }
                acc[lane] = fmaf(dd, (float)sum, acc[lane]);
            }
        }
        y[item] = cl_hsum8(acc) + summs;
    }
}

// y[r][o] = W[o] · acts[r] for Q8_0 weights and Q8_0 activations.
extern "C" __global__ void matmul_q8_0(const uint8_t* w, const uint8_t* acts, float* y,
                                       uint32_t rows, uint32_t nb, uint32_t n) {
    CL_GRID_STRIDE(item, (uint64_t)n * rows) {
        const uint64_t r = item / rows, o = item % rows;
        const uint8_t* wr = w + o * nb * CL_Q8_0_BYTES;
        const uint8_t* ar = acts + r * nb * CL_ACT_BYTES;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (uint32_t ib = 0; ib < nb; ++ib) {
            const uint8_t* wb = wr + ib * CL_Q8_0_BYTES;
            const uint8_t* ab = ar + ib * CL_ACT_BYTES;
            const int8_t* qy = (const int8_t*)(ab + 8);
            const float dd = cl_f16_at(wb) * cl_load_f32(ab);
            for (uint32_t lane = 0; lane < 8; ++lane) {
                int32_t sum = 0;
                for (uint32_t j = lane * 4; j < lane * 4 + 4; ++j) {
                    sum += (int32_t)(int8_t)wb[2 + j] * (int32_t)qy[j];
                }
                acc[lane] = fmaf(dd, (float)sum, acc[lane]);
            }
        }
        y[item] = cl_hsum8(acc);
    }
}

// Rotary embedding of q (n_head heads) and k (n_kv_head heads) at each row's position; k and v
// are rounded through f16 and stored into the row's KV block (address row_block[r], slot
// pos % 16) for `layer`. One thread per row.
extern "C" __global__ void rope_store_kv(float* q, float* k, float* v, const float* cos_t,
                                         const float* sin_t, const uint32_t* pos,
                                         const uint64_t* row_block, uint32_t n, uint32_t n_head,
                                         uint32_t n_kv_head, uint32_t hd, uint32_t layer) {
    const uint32_t half = hd / 2, d = n_head * hd, kvd = n_kv_head * hd;
    CL_GRID_STRIDE(r, n) {
        const float* c = cos_t + (uint64_t)pos[r] * half;
        const float* s = sin_t + (uint64_t)pos[r] * half;
        float* qr = q + r * d;
        for (uint32_t h = 0; h < n_head; ++h) {
            for (uint32_t i = 0; i < half; ++i) {
                float* p = qr + h * hd + 2 * i;
                const float a = p[0], b = p[1];
                p[0] = a * c[i] - b * s[i];
                p[1] = a * s[i] + b * c[i];
            }
        }
        float* kr = k + r * kvd;
        for (uint32_t h = 0; h < n_kv_head; ++h) {
            for (uint32_t i = 0; i < half; ++i) {
                float* p = kr + h * hd + 2 * i;
                const float a = p[0], b = p[1];
                p[0] = a * c[i] - b * s[i];
                p[1] = a * s[i] + b * c[i];
            }
        }
        float* block = (float*)(cl_uintptr)row_block[r];
        const uint32_t slot = pos[r] % CL_KV_BLOCK_POSITIONS;
        float* kdst = block + ((uint64_t)(layer * 2) * CL_KV_BLOCK_POSITIONS + slot) * kvd;
        float* vdst = block + ((uint64_t)(layer * 2 + 1) * CL_KV_BLOCK_POSITIONS + slot) * kvd;
        float* vr = v + r * kvd;
        for (uint32_t i = 0; i < kvd; ++i) {
            kr[i] = cl_round_f16(kr[i]);
            vr[i] = cl_round_f16(vr[i]);
            kdst[i] = kr[i];
            vdst[i] = vr[i];
        }
    }
}

// Attention of row r, head h over positions 0..=pos[r] of the row's sequence: the sequence's
// block addresses are tables[row_table[r] ..]. Softmax as llama.rs `attend_head`: f64 sum,
// probabilities rounded through f16 before weighting the values. One thread per (row, head);
// the scores are recomputed per pass instead of stored (same values, no scratch buffer).
extern "C" __global__ void attention(const float* q, const uint64_t* tables,
                                     const uint32_t* row_table, const uint32_t* pos, float* out,
                                     uint32_t n, uint32_t n_head, uint32_t n_kv_head, uint32_t hd,
                                     uint32_t layer, float scale) {
    const uint32_t kvd = n_kv_head * hd, group = n_head / n_kv_head;
    CL_GRID_STRIDE(item, (uint64_t)n * n_head) {
        const uint32_t r = (uint32_t)(item / n_head), h = (uint32_t)(item % n_head);
        const uint32_t p = pos[r], kvh = h / group;
        const float* qh = q + (uint64_t)r * n_head * hd + h * hd;
        const uint64_t* tab = tables + row_table[r];
        const uint64_t k_off = (uint64_t)layer * 2 * CL_KV_BLOCK_POSITIONS * kvd + kvh * hd;
        const uint64_t v_off = k_off + (uint64_t)CL_KV_BLOCK_POSITIONS * kvd;
#define CL_KEY(t) ((const float*)(cl_uintptr)tab[(t) / CL_KV_BLOCK_POSITIONS] + k_off + \
                   (uint64_t)((t) % CL_KV_BLOCK_POSITIONS) * kvd)
        float max = CL_NEG_INF;
        for (uint32_t t = 0; t <= p; ++t) max = fmaxf(max, cl_dot8(qh, CL_KEY(t), hd) * scale);
        double sum = 0.0;
        for (uint32_t t = 0; t <= p; ++t) sum += (double)cl_exp(cl_dot8(qh, CL_KEY(t), hd) * scale - max);
        const float inv = (float)(1.0 / sum);
        float acc[CL_MAX_HEAD_DIM];
        for (uint32_t i = 0; i < hd; ++i) acc[i] = 0.0f;
        for (uint32_t t = 0; t <= p; ++t) {
            const float e = cl_exp(cl_dot8(qh, CL_KEY(t), hd) * scale - max);
            const float pr = cl_round_f16(e * inv);
            const float* vt = (const float*)(cl_uintptr)tab[t / CL_KV_BLOCK_POSITIONS] + v_off +
                              (uint64_t)(t % CL_KV_BLOCK_POSITIONS) * kvd;
            for (uint32_t i = 0; i < hd; ++i) acc[i] += pr * vt[i];
        }
#undef CL_KEY
        float* o = out + (uint64_t)r * n_head * hd + h * hd;
        for (uint32_t i = 0; i < hd; ++i) o[i] = acc[i];
    }
}

// g = silu(g) * u, elementwise.
extern "C" __global__ void silu_mul(float* g, const float* u, uint32_t len) {
    CL_GRID_STRIDE(i, len) {
        const float x = g[i];
        g[i] = x / (1.0f + cl_exp(-x)) * u[i];
    }
}

// x += y, elementwise.
extern "C" __global__ void add_assign(float* x, const float* y, uint32_t len) {
    CL_GRID_STRIDE(i, len) x[i] += y[i];
}

// out[j] = x[idx[j]] (rows of d values), e.g. the last row of each sequence before the head.
extern "C" __global__ void gather_rows(const float* x, const uint32_t* idx, float* out,
                                       uint32_t m, uint32_t d) {
    CL_GRID_STRIDE(e, (uint64_t)m * d) out[e] = x[(uint64_t)idx[e / d] * d + e % d];
}
