// Shared helpers for kvd's CUDA kernels. No CUDA headers beyond what nvcc
// brings itself: bf16 is handled as raw bits, so the sources build with any
// nvcc from 11.8 on.
#pragma once

typedef unsigned short bf16_t;  // bfloat16 bits: the top half of a float32
typedef long long i64;

__device__ __forceinline__ float bf16_to_f32(bf16_t x) {
    return __uint_as_float(((unsigned)x) << 16);
}

// Round to nearest even, as torch's .to(torch.bfloat16); NaN stays NaN.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// Two values rounded to bf16 and packed as a bf16 pool keeps them: lo in
// the low half (the lower dim), hi in the high half.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Offsets into the pool, in 32-bit words, as shm.Layout computes them
// (kernels take bs, kvh and hd as three int parameters and build this):
// a layer-block is K [kvh, bs, hd], V [kvh, bs, hd], scores [kvh, bs].
// hd is a row's length in words, shm.Layout.RowElems: the head dim for a
// float32 pool, half of it for a bfloat16 one (two values a word).
struct PoolLayout {
    int bs, kvh, hd;
    __device__ __forceinline__ i64 block_elems() const { return 2LL * kvh * bs * hd + (i64)kvh * bs; }
    __device__ __forceinline__ i64 k(int block, int head, int slot) const {
        return block * block_elems() + ((i64)head * bs + slot) * hd;
    }
    __device__ __forceinline__ i64 v(int block, int head, int slot) const {
        return k(block, head, slot) + (i64)kvh * bs * hd;
    }
    __device__ __forceinline__ i64 score(int block, int head, int slot) const {
        return block * block_elems() + 2LL * kvh * bs * hd + (i64)head * bs + slot;
    }
};
