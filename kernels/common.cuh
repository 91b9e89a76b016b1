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

// ---- FP8 E4M3 (shm.FP8E4M3: OCP's, as kernels/kvdtype.go's toE4M3 and
// e4m3): bias 7, subnormals in steps of 2^-9, ±448 the largest, 0x7f and
// 0xff NaN. An fp8 pool keeps four a 32-bit word, dim 4w+i in byte i of
// word w. Code built for sm_89 and later converts in hardware (cvt ...
// e4m3x2): with make kernels' targets, the sm_90 machine code; the sm_80
// code and the compute_80 PTX (what an sm_89 or newer card JITs) do the
// same by bit arithmetic.
typedef unsigned char fp8_t;

// An E4M3 byte's value: its seven bits placed as a float32's exponent and
// mantissa, scaled by 2^120 (exact: these kernels are built without flush
// to zero, so E4M3's subnormals land on float32 subnormals and scale back).
__device__ __forceinline__ float fp8_to_f32(unsigned b) {
    const float f = __uint_as_float(((b & 0x7fu) << 20) | ((b & 0x80u) << 24)) * __uint_as_float(0x7b800000u);
    return (b & 0x7fu) == 0x7fu ? __uint_as_float(0x7fffffffu) : f;
}

// A word's four E4M3 values, byte i to component i.
__device__ __forceinline__ float4 fp8x4_to_f32(unsigned w) {
#if __CUDA_ARCH__ >= 890
    unsigned lo, hi;  // f16x2: bytes 0, 1 and 2, 3, the lower byte in the lower half
    asm("{\n .reg .b16 a, b;\n mov.b32 {a, b}, %2;\n cvt.rn.f16x2.e4m3x2 %0, a;\n cvt.rn.f16x2.e4m3x2 %1, b;\n}"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
    float4 r;
    asm("{\n .reg .b16 a, b, c, d;\n mov.b32 {a, b}, %4;\n mov.b32 {c, d}, %5;\n cvt.f32.f16 %0, a;\n"
        " cvt.f32.f16 %1, b;\n cvt.f32.f16 %2, c;\n cvt.f32.f16 %3, d;\n}"
        : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w)
        : "r"(lo), "r"(hi));
    return r;
#else
    return make_float4(fp8_to_f32(w & 0xffu), fp8_to_f32((w >> 8) & 0xffu), fp8_to_f32((w >> 16) & 0xffu),
                       fp8_to_f32(w >> 24));
#endif
}

// f rounded to the nearest E4M3 value, ties to even, saturated at ±448
// (infinities too), NaN kept: toE4M3's bits.
__device__ __forceinline__ unsigned f32_to_fp8(float f) {
    const unsigned u = __float_as_uint(f), sign = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7fu;
    if (a >= 0x43e00000u) return sign | 0x7eu;  // 448 and up
    if (a < 0x3c800000u) return sign | (unsigned)__float2int_rn(__uint_as_float(a) * 512.f);  // subnormal steps
    int e = (int)(a >> 23) - 120;  // 1..15
    unsigned m = (a >> 20) & 7u;
    const unsigned rest = a & 0xfffffu;
    if (rest > 0x80000u || (rest == 0x80000u && (m & 1u))) {
        if (++m == 8u) m = 0, e++;
    }
    if (e > 15 || (e == 15 && m == 7u)) return sign | 0x7eu;  // rounded past 448
    return sign | ((unsigned)e << 3) | m;
}

// Four values rounded to E4M3 and packed as an fp8 pool keeps them: x in
// byte 0 (the lowest dim) to w in byte 3.
__device__ __forceinline__ unsigned pack_fp8x4(float x, float y, float z, float w) {
#if __CUDA_ARCH__ >= 890
    unsigned r;  // cvt puts its first source in the upper byte
    asm("{\n .reg .b16 lo, hi;\n cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
        " mov.b32 %0, {lo, hi};\n}"
        : "=r"(r)
        : "f"(x), "f"(y), "f"(z), "f"(w));
    return r;
#else
    return f32_to_fp8(x) | (f32_to_fp8(y) << 8) | (f32_to_fp8(z) << 16) | (f32_to_fp8(w) << 24);
#endif
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
// float32 pool, half of it for a bfloat16 one (two values a word), a
// quarter for an fp8 one.
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
