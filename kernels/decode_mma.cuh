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
// bfloat16's bytes, ran only 10% faster. Here a warp's 32 keys are 4 + 2
// mma a k-step of 16: the queries live in registers as A fragments (16
// registers a lane, and ptxas gives each mma's zero rows registers of
// their own), K and V are loaded straight from global memory into
// B fragments, and the probabilities go from the logits' accumulators to
// the values' A fragments without leaving the registers.
//
// Layout (flash_mma.cuh's fragment table; lane = 4g + t): the A rows are
// the group's query heads (g < G; rows G..15 are zeros, so only c[0] and
// c[1] of an accumulator are kept). A dot product does not care in which
// order its dims are summed, nor P·V in which order its keys are, so the
// k index of each mma is permuted to make each lane's loads contiguous:
//   Q·Kᵀ, k-step kk: the A/B k index 2t+e and 2t+8+e (e < 2) are the row's
//     dims 32t+4kk+e and 32t+4kk+2+e, so lane (g, t) of an 8-key n-tile
//     reads dims 32t..32t+31 of key g: 32 bytes of an fp8 row (two 16-byte
//     loads), 64 of a bfloat16 one (four), and kk picks word kk (fp8) or
//     words 2kk, 2kk+1 (bf16) of them.
//   P·V, k-step m (keys 16m..16m+15): A is the logits' n-tiles 2m and 2m+1
//     as they lie in the accumulators (k index 2t+e is key 16m+2t+e, 2t+8+e
//     is key 16m+8+2t+e); the B column g of n-tile j is the row's dim
//     16g+j, so lane (g, t) reads dims 16g..16g+15 of its four keys (16
//     bytes of an fp8 row, 32 of a bfloat16 one) and pairs the two keys of
//     each B register with byte or halfword permutes (prmt).
// The output accumulator of n-tile j, c[0] and c[1], is then head g's dims
// 16(2t)+j and 16(2t+1)+j.
//
// Precision: over fp8 the mma is f16 (E4M3 widens to f16 exactly: one
// cvt a pair on sm_89 and later, bit arithmetic on sm_80), the queries scaled by scale·log2(e) and rounded to f16 (11
// bits of mantissa), the probabilities to f16; over bfloat16 it is bf16,
// queries and probabilities rounded to bf16, as the prompt's tensor-core
// kernels and vLLM's and HF's bf16 attention do. Accumulation, the
// softmax and the partials are float32.
#pragma once

// One m16n8k16 mma whose A rows 8..15 are zero: c0, c1 (row g) accumulate,
// rows g+8's results are dropped. F16 picks f16 inputs, else bf16.
template <bool F16>
__device__ __forceinline__ void mma_top(float &c0, float &c1, unsigned a0, unsigned a2, unsigned b0, unsigned b1) {
    float d2, d3;
    if constexpr (F16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%5}, {%7,%8}, "
            "{%0,%1,%9,%9};\n"
            : "+f"(c0), "+f"(c1), "=f"(d2), "=f"(d3)
            : "r"(a0), "r"(0u), "r"(a2), "r"(b0), "r"(b1), "f"(0.f));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%5}, {%7,%8}, "
            "{%0,%1,%9,%9};\n"
            : "+f"(c0), "+f"(c1), "=f"(d2), "=f"(d3)
            : "r"(a0), "r"(0u), "r"(a2), "r"(b0), "r"(b1), "f"(0.f));
    // d2, d3: rows 8..15, zeros, dropped (nvcc warns that they are unused).
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
// as an A register, and the B registers made of those words.
template <class T> struct DecodeMma;
template <> struct DecodeMma<fp8_t> {
    static constexpr int KW = 8, VW = 4;
    static constexpr bool F16 = true;
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return f16x2(lo, hi); }
    // K's k-step kk: word kk holds dims 32t+4kk..+3.
    static __device__ __forceinline__ void kfrag(const unsigned (&k)[KW], int kk, unsigned &b0, unsigned &b1) {
        b0 = e4m3x2_f16x2(k[kk]);
        b1 = e4m3x2_f16x2(k[kk] >> 16);
    }
    // V's n-tiles j = 4w..4w+3 (dims 16g+4w..+3) for keys a (low halves)
    // and b: b[i] pairs dim 4w+i of a and of b.
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
    static __device__ __forceinline__ void kfrag(const unsigned (&k)[KW], int kk, unsigned &b0, unsigned &b1) {
        b0 = k[2 * kk];
        b1 = k[2 * kk + 1];
    }
    // n-tiles 4w..4w+3: words 2w and 2w+1 hold dims 16g+4w..+3.
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

// DMMA_KSECTOR (a variant, off: -DDMMA_KSECTOR=1 builds it to time with
// KVD_CUDABIN_DIR) reads K so that each 16-byte load of a warp covers whole
// 32-byte sectors: lane t's i-th load is the row's 16 bytes t + 4i (the
// four lanes of a key read 64 contiguous bytes a load) instead of 4t + i
// (each lane half of a sector, the other half read by its next load), and
// the queries' k order is permuted to match. A reviewer's idea after run
// 13: the same bytes in half the L1 wavefronts. Not yet run on a card.
#ifndef DMMA_KSECTOR
#define DMMA_KSECTOR 0
#endif

// n words of a row for lane t, as DMMA_KSECTOR reads them: its i-th
// 16-byte load is the row's (t + 4i)-th.
template <int N>
__device__ __forceinline__ void ldrow_sectors(unsigned (&r)[N], const float *row, int t) {
    const uint4 *p = reinterpret_cast<const uint4 *>(row);
#pragma unroll
    for (int i = 0; i < N / 4; i++) {
        const uint4 v = __ldg(p + t + 4 * i);
        r[4 * i] = v.x, r[4 * i + 1] = v.y, r[4 * i + 2] = v.z, r[4 * i + 3] = v.w;
    }
}

// Under DMMA_KSECTOR, the query's float4 (dims 4j..4j+3) that k-step kk
// of lane t pairs with K's words as ldrow_sectors reads them (KW words a
// lane, KW / 8 words a k-step: 4 dims a word over fp8, 2 over bfloat16).
template <int KW>
__device__ __forceinline__ int q_float4(int t, int kk) {
    constexpr int WPK = KW / 8, DPW = 4 / WPK;
    const int w0 = kk * WPK;
    return DPW * (t + 4 * (w0 / 4)) + (w0 % 4) * DPW / 4;
}

// The partial of keys k0..k1 for one KV head's G query heads, as
// partial_v2 leaves it in ws: max and sum (natural log units, the logits
// scaled by scale), then the G weighted sums of V. lg as partial_v2's.
template <int G, class T, bool SCORE>
__device__ void partial_mma(float *ws, const float *q, int k0, int k1, const PagedKV<T> &kv, float scale, float *lg) {
    static_assert(G <= 8, "a group's heads are the A rows 0..7");
    typedef DecodeMma<T> D;
    constexpr int KW = D::KW, VW = D::VW;
    constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
    __shared__ float wm[V2_WARPS][G], wl[V2_WARPS][G];
    __shared__ __align__(16) float wacc[V2_WARPS][G][V2_HD + V2_HD / 32];  // dim d at d + d/32: no bank conflict
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    // A fragments of the queries, scaled to log2 units: qa[kk][0] = dims
    // 32t+4kk, +1 of head g, qa[kk][1] = dims 32t+4kk+2, +3 (under
    // DMMA_KSECTOR the dims q_float4 gives).
    unsigned qa[8][2];
    {
        const float qs = scale * LOG2E;
#if DMMA_KSECTOR
        const float4 *qrow = reinterpret_cast<const float4 *>(q + min(g, G - 1) * V2_HD);
#else
        const float4 *qrow = reinterpret_cast<const float4 *>(q + min(g, G - 1) * V2_HD + 32 * t);
#endif
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
#if DMMA_KSECTOR
            float4 v = __ldg(qrow + q_float4<KW>(t, kk));
#else
            float4 v = __ldg(qrow + kk);
#endif
            if (g >= G) v = make_float4(0, 0, 0, 0);
            qa[kk][0] = D::pack(v.x * qs, v.y * qs), qa[kk][1] = D::pack(v.z * qs, v.w * qs);
        }
    }
    float m = -INFINITY, l = 0;  // head g's max (log2 units) and this lane's part of its sum
    float o[16][2];              // head g's dims 16(2t)+j and 16(2t+1)+j
#pragma unroll
    for (int j = 0; j < 16; j++) o[j][0] = o[j][1] = 0;
    const i64 vdelta = (i64)kv.L.kvh * kv.L.bs * kv.L.hd;  // a block's V after its K, in words
    for (int c0 = k0 + warp * V2_CHUNK; c0 < k1; c0 += V2_WARPS * V2_CHUNK) {
        const int tn = min(V2_CHUNK, k1 - c0);
        // Lane i finds key c0+i's row (past tn: the chunk's last, whose
        // probability is 0); the others get it by shuffle.
        const int mine = c0 + min(lane, tn - 1);
        const i64 koff = kv.L.k(kv.blocks[mine / kv.L.bs], kv.h, mine % kv.L.bs);
        // Every load of the chunk first: K of n-tile n (key 8n+g), V of
        // k-step m's keys 16m+2t, +1, 16m+8+2t, +1.
        unsigned kr[4][KW], vr[2][4][VW];
#pragma unroll
#if DMMA_KSECTOR
        for (int n = 0; n < 4; n++) ldrow_sectors(kr[n], kv.pool + __shfl_sync(0xffffffffu, koff, 8 * n + g), t);
#else
        for (int n = 0; n < 4; n++) ldrow(kr[n], kv.pool + __shfl_sync(0xffffffffu, koff, 8 * n + g), KW * t);
#endif
#pragma unroll
        for (int mm = 0; mm < 2; mm++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = 16 * mm + 8 * (i / 2) + 2 * t + i % 2;
                ldrow(vr[mm][i], kv.pool + __shfl_sync(0xffffffffu, koff, key) + vdelta, VW * g);
            }
        // Logits: s[n] = keys 8n+2t, 8n+2t+1 of head g, log2 units.
        float s[4][2];
#pragma unroll
        for (int n = 0; n < 4; n++) {
            s[n][0] = s[n][1] = 0;
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                unsigned b0, b1;
                D::kfrag(kr[n], kk, b0, b1);
                mma_top<D::F16>(s[n][0], s[n][1], qa[kk][0], qa[kk][1], b0, b1);
            }
        }
        if (tn < V2_CHUNK) {
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                    if (8 * n + 2 * t + e >= tn) s[n][e] = -INFINITY;
        }
        if (SCORE && lg != nullptr && g < G) {
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int j = 8 * n + 2 * t + e;
                    if (j < tn) lg[(c0 + j) * G + g] = s[n][e] * LN2;
                }
        }
        // The chunk's softmax: head g's max over its four lanes (key 0 is
        // real, so it is finite), the probabilities as P·V's A fragments.
        float mx = m;
#pragma unroll
        for (int n = 0; n < 4; n++) mx = fmaxf(mx, fmaxf(s[n][0], s[n][1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float alpha = exp2f(m - mx);  // 0 on the warp's first chunk
        m = mx;
        unsigned pa[2][2];
        float ps = 0;
#pragma unroll
        for (int n = 0; n < 4; n++) {
            const float p0 = exp2f(s[n][0] - mx), p1 = exp2f(s[n][1] - mx);
            ps += p0 + p1;
            pa[n / 2][n % 2] = D::pack(p0, p1);
        }
        l = l * alpha + ps;
#pragma unroll
        for (int j = 0; j < 16; j++) o[j][0] *= alpha, o[j][1] *= alpha;
#pragma unroll
        for (int mm = 0; mm < 2; mm++)
#pragma unroll
            for (int w = 0; w < 16 / 4; w++) {
                unsigned lo[4], hi[4];  // keys 16m+2t, +1 and 16m+8+2t, +1
                D::vfrag4(vr[mm][0], vr[mm][1], w, lo);
                D::vfrag4(vr[mm][2], vr[mm][3], w, hi);
#pragma unroll
                for (int i = 0; i < 4; i++) mma_top<D::F16>(o[4 * w + i][0], o[4 * w + i][1], pa[mm][0], pa[mm][1], lo[i], hi[i]);
            }
    }
    // Merge the warps' partials as partial_v2 does (v2_merge_warps).
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (g < G) {
        if (t == 0) wm[warp][g] = m * LN2, wl[warp][g] = l;
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = 16 * (2 * t + e) + j;
                wacc[warp][g][d + d / 32] = o[j][e];
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
// 428 bytes and ran slower (call Q): it stays uncapped.
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
