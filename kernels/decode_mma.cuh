// Decode and other row work over a bfloat16 or fp8 pool at head dim 128
// on the tensor cores (split_paged_mma{_bf16,_fp8}_g*, and _score_ for
// rows that leave H2O's logits): the work items, partials and merge of
// split_paged_v2, with a warp's chunk of 32 keys run as mma.sync
// m16n8k16 tiles instead of float32 dot products on the CUDA cores.
//
// Why: split_paged_v2 spends per key and query head 128 multiply-adds for
// the logit and 128 for the values, plus a conversion per value read, and
// (over fp8, whose queries stay in shared memory) a 2 KB read of the
// group's queries a key at G = 4: ncu found it bound by L1 and the issue
// slots, not DRAM (run 10: L1/TEX 82%, DRAM 51%), and fp8 K and V, half of
// bfloat16's bytes, ran only 10% faster. Here a warp's 32 keys are 16 + 16
// mma (Sᵀ: 2 key tiles by 8 k-steps of dims; Oᵀ: 8 dim tiles by 2 k-steps
// of keys): K and V are loaded straight from global memory into
// A fragments, the queries live in registers as B fragments, and the
// probabilities go from the logits' accumulators to P·V's B fragments
// without leaving the registers.
//
// The tiles are the transpose of attention's usual ones: Sᵀ = K·Qᵀ and
// Oᵀ = Vᵀ·Pᵀ, keys and dims as the 16 A rows and the group's heads as the
// 8 B columns (G of them real). Until run 17 the queries were the A rows,
// G = 4 of 16 real, so three quarters of every mma ran on zero rows: this
// layout does the same chunk in half the mma and fewer registers (sm_90's
// build: 156 against 168 with spills over fp8), and at 256 x 5000 over fp8 ran 674
// against 749 us (run 17, call B; bfloat16 at 128 x 5000 630 against 640).
//
// Layout (flash_mma.cuh's fragment table; lane = 4g + t): A holds rows g
// and g+8, B column g, C rows g and g+8 of columns 2t, 2t+1. A dot product
// does not care in which order its dims are summed, so Sᵀ's k index is
// permuted to make each lane's K loads contiguous; Oᵀ's rows are dims in
// an order of our choosing (C row r comes from A row r, both in lane
// group g), picked so that each lane's V loads are contiguous:
//   Sᵀ = K·Qᵀ, m-tile mt (keys 16mt..16mt+15), k-step kk: A rows g and g+8
//     are keys 16mt+g and 16mt+8+g, and the k index 2t+e and 2t+8+e (e < 2)
//     the row's dims 32t+4kk+e and 32t+4kk+2+e, so lane (g, t) reads dims
//     32t..32t+31 of keys g, 8+g, 16+g, 24+g: 32 bytes of an fp8 row (two
//     16-byte loads), 64 of a bfloat16 one (four), and kk picks word kk
//     (fp8) or words 2kk, 2kk+1 (bf16) of them. B column g is head g's
//     query with the same dims. Lane (g, t)'s logits are then heads 2t and
//     2t+1 of keys g, 8+g, 16+g, 24+g: a head's max and sum run over g.
//   Oᵀ = Vᵀ·Pᵀ, k-step m (keys 16m..16m+15), m-tile j (of 8): the k index
//     2t+e is key 16m+2t+e and 2t+8+e key 16m+8+2t+e; A row g is dim
//     16g+2j and row g+8 dim 16g+2j+1, so lane (g, t) reads dims
//     16g..16g+15 of its four keys (16 bytes of an fp8 row, 32 of a
//     bfloat16 one) and pairs the two keys of each A register with byte or
//     halfword permutes (prmt). B is the probabilities as (head g, keys 2t
//     and 2t+1): the logits' C layout transposed by movmatrix, 8 keys at a
//     time. The output accumulator of m-tile j holds dims 16g+2j (c0, c1)
//     and 16g+2j+1 (c2, c3) of heads 2t and 2t+1.
//
// Precision: over fp8 the mma is f16 (E4M3 widens to f16 exactly: one
// cvt a pair in the sm_90 build, bit arithmetic in the sm_80 one and the
// PTX, as common.cuh says), the queries scaled by scale·log2(e) and
// rounded to f16 (11 bits of mantissa), the probabilities to f16; over bfloat16 it is bf16,
// queries and probabilities rounded to bf16, as the prompt's tensor-core
// kernels and vLLM's and HF's bf16 attention do. Accumulation, the
// softmax and the partials are float32.
#pragma once

// A full m16n8k16 mma (f16 or bf16 inputs, float32 accumulators).
template <bool F16>
__device__ __forceinline__ void mma_full(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                         unsigned b1) {
    if constexpr (F16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// lo and hi rounded to f16 (nearest even), lo in the low half.
__device__ __forceinline__ unsigned f16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Two E4M3 values (the low 16 bits of w, the lower byte first) as an f16
// pair, exactly. On sm_80 (no e4m3 cvt) by way of float32.
__device__ __forceinline__ unsigned e4m3x2_f16x2(unsigned w) {
#if __CUDA_ARCH__ >= 890
    unsigned r;
    asm("{\n .reg .b16 a;\n cvt.u16.u32 a, %1;\n cvt.rn.f16x2.e4m3x2 %0, a;\n}" : "=r"(r) : "r"(w));
    return r;
#else
    return f16x2(fp8_to_f32(w & 0xffu), fp8_to_f32((w >> 8) & 0xffu));
#endif
}

__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel) {
    unsigned r;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// What the kernel needs of a pool dtype: words a lane reads of a key's K
// (KW) and V (VW) rows, the mma's input type, a query or probability pair
// as a B register, and the A registers made of those words.
template <class T> struct DecodeMma;
template <> struct DecodeMma<fp8_t> {
    static constexpr int KW = 8, VW = 4;
    static constexpr bool F16 = true;
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return f16x2(lo, hi); }
    // K's k-step kk: word kk holds dims 32t+4kk..+3; lo pairs dims +0, +1
    // (k index 2t, 2t+1), hi +2, +3 (2t+8, 2t+9).
    static __device__ __forceinline__ void kfrag(const unsigned (&k)[KW], int kk, unsigned &lo, unsigned &hi) {
        lo = e4m3x2_f16x2(k[kk]);
        hi = e4m3x2_f16x2(k[kk] >> 16);
    }
    // V's dims 16g+4w..+3 for keys a (low halves) and b: r[i] pairs dim
    // 16g+4w+i of a and of b.
    static __device__ __forceinline__ void vfrag4(const unsigned (&a)[VW], const unsigned (&b)[VW], int w,
                                                  unsigned (&r)[4]) {
        const unsigned lo = prmt(a[w], b[w], 0x5140), hi = prmt(a[w], b[w], 0x7362);  // a0 b0 a1 b1, a2 b2 a3 b3
        r[0] = e4m3x2_f16x2(lo), r[1] = e4m3x2_f16x2(lo >> 16);
        r[2] = e4m3x2_f16x2(hi), r[3] = e4m3x2_f16x2(hi >> 16);
    }
};
template <> struct DecodeMma<bf16_t> {
    static constexpr int KW = 16, VW = 8;
    static constexpr bool F16 = false;
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return bf16x2(lo, hi); }
    // K's k-step kk: words 2kk (dims 32t+4kk, +1) and 2kk+1.
    static __device__ __forceinline__ void kfrag(const unsigned (&k)[KW], int kk, unsigned &lo, unsigned &hi) {
        lo = k[2 * kk];
        hi = k[2 * kk + 1];
    }
    // Words 2w and 2w+1 hold dims 16g+4w..+3.
    static __device__ __forceinline__ void vfrag4(const unsigned (&a)[VW], const unsigned (&b)[VW], int w,
                                                  unsigned (&r)[4]) {
        r[0] = prmt(a[2 * w], b[2 * w], 0x5410), r[1] = prmt(a[2 * w], b[2 * w], 0x7632);
        r[2] = prmt(a[2 * w + 1], b[2 * w + 1], 0x5410), r[3] = prmt(a[2 * w + 1], b[2 * w + 1], 0x7632);
    }
};

// n words of row (16-byte aligned) from word w0 on, into r, 16 bytes a load.
template <int N>
__device__ __forceinline__ void ldrow(unsigned (&r)[N], const float *row, int w0) {
    const uint4 *p = reinterpret_cast<const uint4 *>(row + w0);
#pragma unroll
    for (int i = 0; i < N / 4; i++) {
        const uint4 v = __ldg(p + i);
        r[4 * i] = v.x, r[4 * i + 1] = v.y, r[4 * i + 2] = v.z, r[4 * i + 3] = v.w;
    }
}

// movmatrix's transpose of an 8x8 matrix of 16-bit values, each lane
// 4g+t holding row g's columns 2t and 2t+1 as a pair: lane 4g+t gets
// elements (2t, g) and (2t+1, g) of its input.
__device__ __forceinline__ unsigned movtrans(unsigned x) {
    unsigned r;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(r) : "r"(x));
    return r;
}

// The partial of keys k0..k1 for one KV head's G query heads, as
// partial_v2 leaves it in ws: max and sum (natural log units, the logits
// scaled by scale), then the G weighted sums of V. lg as partial_v2's.
template <int G, class T, bool SCORE>
__device__ void partial_mma(float *ws, const float *q, int k0, int k1, const PagedKV<T> &kv, float scale, float *lg) {
    static_assert(G <= 8, "a group's heads are the B columns 0..7");
    typedef DecodeMma<T> D;
    constexpr int KW = D::KW, VW = D::VW;
    constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
    __shared__ float wm[V2_WARPS][G], wl[V2_WARPS][G];
    __shared__ __align__(16) float wacc[V2_WARPS][G][V2_HD + V2_HD / 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    // B fragments of the queries (head g), scaled to log2 units: qb[kk][0]
    // = dims 32t+4kk, +1, qb[kk][1] = dims 32t+4kk+2, +3.
    unsigned qb[8][2];
    {
        const float qs = scale * LOG2E;
        const float4 *qrow = reinterpret_cast<const float4 *>(q + min(g, G - 1) * V2_HD + 32 * t);
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            float4 v = __ldg(qrow + kk);
            if (g >= G) v = make_float4(0, 0, 0, 0);
            qb[kk][0] = D::pack(v.x * qs, v.y * qs), qb[kk][1] = D::pack(v.z * qs, v.w * qs);
        }
    }
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};  // heads 2t and 2t+1 (log2 units; this lane's keys' sum)
    float o[8][4];  // m-tile j: dims 16g+2j (c0, c1: heads 2t, 2t+1) and 16g+2j+1 (c2, c3)
#pragma unroll
    for (int j = 0; j < 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0;
    const i64 vdelta = (i64)kv.L.kvh * kv.L.bs * kv.L.hd;  // a block's V after its K, in words
    for (int c0 = k0 + warp * V2_CHUNK; c0 < k1; c0 += V2_WARPS * V2_CHUNK) {
        const int tn = min(V2_CHUNK, k1 - c0);
        // Lane i finds key c0+i's row (past tn, key tn-1's: masked below,
        // it weighs 0); the others get it by shuffle.
        const int mine = c0 + min(lane, tn - 1);
        const i64 koff = kv.L.k(kv.blocks[mine / kv.L.bs], kv.h, mine % kv.L.bs);
        // Every load of the chunk first: K of keys 8n+g, V of k-step m's
        // keys 16m+2t, +1, 16m+8+2t, +1.
        unsigned kr[4][KW], vr[2][4][VW];
#pragma unroll
        for (int n = 0; n < 4; n++) ldrow(kr[n], kv.pool + __shfl_sync(0xffffffffu, koff, 8 * n + g), KW * t);
#pragma unroll
        for (int mm = 0; mm < 2; mm++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = 16 * mm + 8 * (i / 2) + 2 * t + i % 2;
                ldrow(vr[mm][i], kv.pool + __shfl_sync(0xffffffffu, koff, key) + vdelta, VW * g);
            }
        // Logits: s[mt] = keys 16mt+g (0, 1: heads 2t, 2t+1) and 16mt+8+g (2, 3).
        float s[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0;
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                unsigned a0, a1, a2, a3;
                D::kfrag(kr[2 * mt], kk, a0, a2);
                D::kfrag(kr[2 * mt + 1], kk, a1, a3);
                mma_full<D::F16>(s[mt], a0, a1, a2, a3, qb[kk][0], qb[kk][1]);
            }
        }
        if (tn < V2_CHUNK) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (16 * mt + 8 * (e / 2) + g >= tn) s[mt][e] = -INFINITY;
        }
        if (SCORE && lg != nullptr) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = 16 * mt + 8 * (e / 2) + g, hh = 2 * t + e % 2;
                    if (j < tn && hh < G) lg[(c0 + j) * G + hh] = s[mt][e] * LN2;
                }
        }
        // Each head's max over the chunk: this lane's four keys, then the
        // eight lanes that share t (g = 0..7).
        float alpha[2];
        unsigned pk[4];  // keys 8i+g: heads 2t, 2t+1 as an f16 or bf16 pair
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float mx = fmaxf(m[e], fmaxf(fmaxf(s[0][e], s[0][e + 2]), fmaxf(s[1][e], s[1][e + 2])));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            alpha[e] = exp2f(m[e] - mx);  // 0 on the warp's first chunk
            m[e] = mx;
#pragma unroll
            for (int mt = 0; mt < 2; mt++) s[mt][e] = exp2f(s[mt][e] - mx), s[mt][e + 2] = exp2f(s[mt][e + 2] - mx);
            l[e] = l[e] * alpha[e] + (s[0][e] + s[0][e + 2]) + (s[1][e] + s[1][e + 2]);
        }
#pragma unroll
        for (int mt = 0; mt < 2; mt++) pk[2 * mt] = D::pack(s[mt][0], s[mt][1]), pk[2 * mt + 1] = D::pack(s[mt][2], s[mt][3]);
        // Transposed: pb[i] = keys 8i+2t, 8i+2t+1 of head g.
        unsigned pb[4];
#pragma unroll
        for (int i = 0; i < 4; i++) pb[i] = movtrans(pk[i]);
#pragma unroll
        for (int j = 0; j < 8; j++) o[j][0] *= alpha[0], o[j][2] *= alpha[0], o[j][1] *= alpha[1], o[j][3] *= alpha[1];
#pragma unroll
        for (int mm = 0; mm < 2; mm++)
#pragma unroll
            for (int w = 0; w < 4; w++) {
                // Dims 16g+4w+i of keys 16m+2t, +1 (lo) and 16m+8+2t, +1 (hi):
                // m-tile 2w's rows g and g+8 are dims 16g+4w and +1, 2w+1's +2, +3.
                unsigned lo[4], hi[4];
                D::vfrag4(vr[mm][0], vr[mm][1], w, lo);
                D::vfrag4(vr[mm][2], vr[mm][3], w, hi);
                mma_full<D::F16>(o[2 * w], lo[0], lo[1], hi[0], hi[1], pb[2 * mm], pb[2 * mm + 1]);
                mma_full<D::F16>(o[2 * w + 1], lo[2], lo[3], hi[2], hi[3], pb[2 * mm], pb[2 * mm + 1]);
            }
    }
    // Heads 2t and 2t+1's sums over the eight lanes of column t, then the
    // warps' partials merged as partial_v2's are (v2_merge_warps).
#pragma unroll
    for (int e = 0; e < 2; e++) {
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 4);
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 8);
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 16);
    }
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const int hh = 2 * t + e;
        if (hh < G) {
            if (g == 0) wm[warp][hh] = m[e] * LN2, wl[warp][hh] = l[e];
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int d = 16 * g + 2 * j + r;
                    wacc[warp][hh][d + d / 32] = o[j][2 * r + e];
                }
        }
    }
    __syncthreads();
    v2_merge_warps<G, V2_HD + V2_HD / 32, 32>(ws, wm, wl, wacc, tid);
}

// Launch bounds over fp8: registers capped for DMMA_FP8_MINB CTAs an SM
// (-D overrides it to time variants with KVD_CUDABIN_DIR). ptxas gives
// the fp8 kernel 178 registers uncapped (two CTAs an SM); capped at three
// (168) it spills 32 bytes and still ran faster on an H200 (run 11, call
// R, nvcc 11.8's build): decode over fp8 at 128 × 5000 408.3 against
// 446.6 us a layer, 32 × 5000 127.4 against 152.0, a scoring layer at 32 ×
// 1100 69.9 against 78.1. Over bfloat16 (238 registers) the cap spilled
// 428 bytes and ran slower (call Q): it stays uncapped. Since run 17's
// transposed tiles sm_90's fp8 kernel fits three CTAs in 156 registers
// with no spills (bfloat16: 220, two CTAs; sm_80's fp8 scoring kernels
// spill 4-8 bytes at some group sizes); capped at four CTAs (128 registers,
// 56 bytes spilled) it ran slower: 696.3 against 674.3 us at 256 x 5000
// (run 17, call B).
#ifndef DMMA_FP8_MINB
#define DMMA_FP8_MINB 3
#endif
#if DMMA_FP8_MINB > 0
#define DMMA_FP8_BOUNDS __launch_bounds__(NT, DMMA_FP8_MINB)
#else
#define DMMA_FP8_BOUNDS __launch_bounds__(NT)
#endif

// Entry points, named as gpu.go's splitRows launches them: split_paged_mma
// takes split_paged_v2's parameters, split_paged_mma_score those of
// split_paged_v2_score.
#define INSTANTIATE_DECODE_MMA(G, SFX, T, B)                                                                           \
    extern "C" __global__ void B split_paged_mma##SFX##_g##G(                                                          \
        float *ws, const float *q, const float *pool, int bs, int kvh, int hd, const int *rowinfo, const int *items,   \
        const int *blocks, float scale, float *out, float *fin, const int *rowsplit, int *count, int H,                \
        const int *cta) {                                                                                              \
        split_paged_item<G, T, false, true>(ws, nullptr, 0, q, pool, bs, kvh, rowinfo, items, blocks, scale,           \
                                     V2Combine{out, fin, rowsplit, count, H}, cta);                                    \
    }                                                                                                                  \
    extern "C" __global__ void B split_paged_mma_score##SFX##_g##G(                                                    \
        float *ws, float *lg, int lgs, const float *q, const float *pool, int bs, int kvh, const int *rowinfo,         \
        const int *items, const int *blocks, float scale, float *out, float *fin, const int *rowsplit, int *count,     \
        int H, const int *cta) {                                                                                       \
        split_paged_item<G, T, true, true>(ws, lg, lgs, q, pool, bs, kvh, rowinfo, items, blocks, scale,               \
                                    V2Combine{out, fin, rowsplit, count, H}, cta);                                     \
    }
#define INSTANTIATE_DECODE_MMA_G(G)                                                                                    \
    INSTANTIATE_DECODE_MMA(G, _bf16, bf16_t, __launch_bounds__(NT))                                                    \
    INSTANTIATE_DECODE_MMA(G, _fp8, fp8_t, DMMA_FP8_BOUNDS)
INSTANTIATE_DECODE_MMA_G(1)
INSTANTIATE_DECODE_MMA_G(2)
INSTANTIATE_DECODE_MMA_G(3)
INSTANTIATE_DECODE_MMA_G(4)
INSTANTIATE_DECODE_MMA_G(5)
INSTANTIATE_DECODE_MMA_G(6)
INSTANTIATE_DECODE_MMA_G(7)
INSTANTIATE_DECODE_MMA_G(8)
