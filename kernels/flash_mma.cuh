// Flash-style prefill on the bf16 tensor cores: flash_mma<HD, KV> does
// what attention.cu's flash<HD, KV> does (same tiles of FLASH_BM query
// rows of one head, four warps of 16 rows, same causal masking, outputs
// and online softmax in float32) with mma.sync m16n8k16 bf16 (float32
// accumulate) instead of TF32 m16n8k8: half the mma instructions for the
// same work, and P never leaves the registers. Q (scaled), K, V and P are
// rounded to bf16 (nearest even) as they become fragments; exact for a
// bfloat16 pool's K and V. Over flash.cuh's cp.async helpers, PagedKV,
// DenseKV, row_words, FLASH_BM, online softmax (flash_max, flash_sum,
// flash_store) and entry wrappers (flash_paged, flash_prompt); the kernels
// are instantiated at the end of attention.cu. On
// an H200 (BenchmarkGPUAttention, a 5000-token prompt, 32 heads of 128):
// 104 TFLOP/s over a float32 pool and 167 over a bfloat16 one, against
// flash's 54 and 57.
//
// Fragments (PTX ISA, mma.m16n8k16 .bf16; lane = 4g + t, g < 8, t < 4; a
// register holds two bf16s, the lower index in the low half):
//   A (16×16, row-major): a[0] = row g, k 2t,2t+1; a[1] = row g+8, k 2t,2t+1;
//                         a[2] = row g, k 2t+8,2t+9; a[3] = row g+8, k 2t+8,2t+9.
//   B (16×8, "col"):      b0 = k 2t,2t+1 of column g; b1 = k 2t+8,2t+9 of column g.
//   C/D (16×8, float):    c[0], c[1] = row g, columns 2t, 2t+1; c[2], c[3] = row g+8.
// Q·Kᵀ: A is Q (k = a dim of the k-step), B column n is key n of an 8-key
// n-tile. P·V: A is P (k = a key of the 16-key k-step), B is V (k = key,
// column = dim). The C layout of n-tiles 2kk and 2kk+1 of S (keys 16kk +
// 0..7 and 8..15) is the A layout of P's k-step kk: a[0] = {s[2kk][0],
// s[2kk][1]}, a[1] = {s[2kk][2], s[2kk][3]}, a[2] = {s[2kk+1][0],
// s[2kk+1][1]}, a[3] = {s[2kk+1][2], s[2kk+1][3]}, so P goes from the S
// accumulators straight to the P·V mma.
#pragma once

// d += a·b for one m16n8k16 tile: bf16 a and b, float32 d.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8×8 matrices of 16-bit values from shared memory, matrix i to r[i]:
// lane l gives the address of row l % 8 of matrix l / 8 (16 bytes, on 16
// bytes). Lane 4g + t gets row g, columns 2t (low half) and 2t+1 of each
// matrix; with .trans, column g, rows 2t (low half) and 2t+1. The "memory"
// clobber keeps them after the barrier that publishes the tile.
__device__ __forceinline__ void ldsm4(unsigned (&r)[4], const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}
__device__ __forceinline__ void ldsm4t(unsigned (&r)[4], const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

// Queues keys kb..kb+BN of kv into K [BN][KS] and V [BN][VS] (one buffer,
// rows of T), 16 bytes a copy: 4 float32s or 8 bfloat16s. Keys from kv_end
// on are zero-filled: masked, their p is 0, and 0 times a zero V row adds
// nothing (garbage could be NaN). 128 threads. Unrolled by two, not fully: unrolled whole, ptxas hoisted the
// passes' addressing out of the key loop and took 222-227 registers at
// head dim 128 (two CTAs an SM) where 160-170 do.
template <int BN, int HD, int KS, int VS, class T, class KV>
__device__ __forceinline__ void mma_load(T *K, T *V, const KV &kv, int kb, int kv_end) {
    constexpr int VPC = 16 / sizeof(T), CPR = HD / VPC;  // values a copy, copies a row
    static_assert(BN * CPR % 256 == 0, "whole pairs of passes of the CTA");
#pragma unroll 2
    for (int p = 0; p < BN * CPR / 128; p++) {
        const int i = threadIdx.x + p * 128, key = i / CPR, c = (i % CPR) * VPC;
        const bool ok = kb + key < kv_end;
        const int j = ok ? kb + key : 0;
        cp_async16(K + key * KS + c, kv.key(j) + c, ok);
        cp_async16(V + key * VS + c, kv.val(j) + c, ok);
    }
    cp_async_commit();
}

// How flash_mma keeps K and V tiles of type T in shared memory (two
// buffers each) and reads bf16 B fragments from them: kfrag gives keys
// n0..n0+15 at k-step kk of Q·Kᵀ (f[0], f[1]: b0, b1 of the n-tile of keys
// n0..n0+7; f[2], f[3]: of keys n0+8..n0+15), vfrag keys k0..k0+15 of
// P·V's k-step for dims d0..d0+15 (f[0], f[1]: b0, b1 of the n-tile of dims
// d0..d0+7; f[2], f[3]: of dims d0+8..d0+15). qdim(kk, t, hi) is the first
// of the two dims that lane t's A register (hi: the upper k half, a[2] and
// a[3]) holds at k-step kk; kfrag reads K by the same map, so any
// permutation of the dims within a k-step gives the same dot products. BN
// keys a tile: the float32 and bf16 kinds stage 512·HD bytes of K and V
// before padding (two buffers), 70 KB at head dim 128: three CTAs an SM
// on sm_90 (the fp8 kind, below, 66 KiB).
template <int HD, class T> struct FlashMmaTiles;

// bfloat16 K and V, staged as the pool has them: BN = 64 keys a tile (half
// the barriers and softmax rescales a key of 32). Fragments come by
// ldmatrix, one instruction for two mma's B operands: K's 8×8 matrices
// (rows = keys, columns = dims) as they are, V's (rows = keys, columns =
// dims) transposed. Rows of HD + 8 values are 16 bytes apart modulo 128,
// so a matrix's eight rows fall in distinct banks.
template <int HD> struct FlashMmaTiles<HD, bf16_t> {
    static constexpr int BN = 64;
    static constexpr int KS = HD + 8;                 // a padded row, in bf16s
    static constexpr int BYTES = 2 * 2 * BN * KS * 2;  // K and V, two buffers each
    static constexpr bool STAGED = false;              // fragments come from the tiles as they land
    __device__ void stage(int) const {}
    bf16_t *K, *V;                                    // [2][BN][KS] each
    int koff, voff;                                   // this lane's ldmatrix row
    __device__ FlashMmaTiles(float *smem, int lane)
        : K(reinterpret_cast<bf16_t *>(smem)), V(reinterpret_cast<bf16_t *>(smem) + 2 * BN * KS) {
        // K: matrix i = lane / 8 is keys +8·(i / 2), dims +8·(i % 2): b0, b1 of
        // the first n-tile, then of the second. V: matrix i is keys +8·(i % 2),
        // dims +8·(i / 2): b0, b1 of the first dim n-tile, then of the second.
        koff = ((lane >> 4) * 8 + (lane & 7)) * KS + ((lane >> 3) & 1) * 8;
        voff = (((lane >> 3) & 1) * 8 + (lane & 7)) * KS + (lane >> 4) * 8;
    }
    template <class KV> __device__ void load(const KV &kv, int kb, int kv_end, int b) const {
        mma_load<BN, HD, KS, KS>(K + b * BN * KS, V + b * BN * KS, kv, kb, kv_end);
    }
    static __device__ __forceinline__ int qdim(int kk, int t, int hi) { return kk * 16 + 2 * t + hi * 8; }
    __device__ __forceinline__ void kfrag(unsigned (&f)[4], int b, int n0, int kk) const {
        ldsm4(f, K + (b * BN + n0) * KS + kk * 16 + koff);  // row g of matrix i: key g, dims 2t, 2t+1
    }
    __device__ __forceinline__ void vfrag(unsigned (&f)[4], int b, int k0, int d0) const {
        ldsm4t(f, V + (b * BN + k0) * KS + d0 + voff);  // column g of matrix i: keys 2t, 2t+1 of dim g
    }
};

// float32 K and V (a float32 pool, a prompt's K and V), staged as they are
// and rounded to bf16 as fragments are read: BN = 32 keys a tile (64 would
// need 140 KB, one CTA an SM). A key's fragment is one 16-byte load: lane t
// takes dims 4t..4t+3 of the k-step (qdim: b0 = dims 4t, 4t+1, b1 = 4t+2,
// 4t+3), and K rows of HD + 16 words put a quarter warp's eight loads (keys
// g, g+1) in distinct banks. V's b registers pair two keys of one dim,
// two 4-byte loads a register; rows of HD + 4 words put the warp's 32
// loads (keys 2t, dims g) in distinct banks.
template <int HD> struct FlashMmaTiles<HD, float> {
    static constexpr int BN = 32;
    static constexpr int KS = HD + 16, VS = HD + 4;      // padded rows, in words
    static constexpr int BYTES = 2 * BN * (KS + VS) * 4;  // K and V, two buffers each
    static constexpr bool STAGED = false;
    __device__ void stage(int) const {}
    float *K, *V;                                        // [2][BN][KS], [2][BN][VS]
    int koff, voff;                                      // this lane's key and dim
    __device__ FlashMmaTiles(float *smem, int lane) : K(smem), V(smem + 2 * BN * KS) {
        const int g = lane >> 2, t = lane & 3;
        koff = g * KS + 4 * t;  // key g, dims 4t..4t+3
        voff = 2 * t * VS + g;  // key 2t, dim g
    }
    template <class KV> __device__ void load(const KV &kv, int kb, int kv_end, int b) const {
        mma_load<BN, HD, KS, VS>(K + b * BN * KS, V + b * BN * VS, kv, kb, kv_end);
    }
    static __device__ __forceinline__ int qdim(int kk, int t, int hi) { return kk * 16 + 4 * t + hi * 2; }
    __device__ __forceinline__ void kfrag(unsigned (&f)[4], int b, int n0, int kk) const {
        const float *p = K + (b * BN + n0) * KS + kk * 16 + koff;
        const float4 x = *reinterpret_cast<const float4 *>(p), y = *reinterpret_cast<const float4 *>(p + 8 * KS);
        f[0] = bf16x2(x.x, x.y), f[1] = bf16x2(x.z, x.w);  // key n0+g
        f[2] = bf16x2(y.x, y.y), f[3] = bf16x2(y.z, y.w);  // key n0+8+g
    }
    __device__ __forceinline__ void vfrag(unsigned (&f)[4], int b, int k0, int d0) const {
        const float *p = V + (b * BN + k0) * VS + d0 + voff;                        // key k0+2t, dim d0+g
        f[0] = bf16x2(p[0], p[VS]), f[1] = bf16x2(p[8 * VS], p[9 * VS]);            // dim d0+g
        f[2] = bf16x2(p[8], p[VS + 8]), f[3] = bf16x2(p[8 * VS + 8], p[9 * VS + 8]);  // dim d0+8+g
    }
};

// fp8 K and V (an fp8 pool, four E4M3 values a word): the raw tile
// streams in by cp.async as the other kinds' do (two buffers, BN = 64 keys
// of HD bytes), and once it has landed stage() widens it to bf16 (exact:
// E4M3's values are all bf16 values) in one buffer laid out as the bf16
// kind's, whose fragments then come by the same ldmatrix. The widening
// costs a pass over the tile and a barrier; 66 KiB at head dim 128:
// three CTAs an SM on sm_90, as the bf16 kind.
template <int HD> struct FlashMmaTiles<HD, fp8_t> {
    static constexpr int BN = 64;
    static constexpr int KS = HD + 8;                                 // a padded bf16 row
    static constexpr int BYTES = 2 * BN * KS * 2 + 2 * 2 * BN * HD;  // bf16 K and V, raw K and V two buffers each
    static constexpr bool STAGED = true;
    bf16_t *K, *V;  // [BN][KS] each
    fp8_t *RK, *RV;  // [2][BN][HD] each
    int koff, voff;
    __device__ FlashMmaTiles(float *smem, int lane)
        : K(reinterpret_cast<bf16_t *>(smem)),
          V(reinterpret_cast<bf16_t *>(smem) + BN * KS),
          RK(reinterpret_cast<fp8_t *>(smem) + 2 * BN * KS * 2),
          RV(reinterpret_cast<fp8_t *>(smem) + 2 * BN * KS * 2 + 2 * BN * HD) {
        koff = ((lane >> 4) * 8 + (lane & 7)) * KS + ((lane >> 3) & 1) * 8;
        voff = (((lane >> 3) & 1) * 8 + (lane & 7)) * KS + (lane >> 4) * 8;
    }
    template <class KV> __device__ void load(const KV &kv, int kb, int kv_end, int b) const {
        mma_load<BN, HD, HD, HD>(RK + b * BN * HD, RV + b * BN * HD, kv, kb, kv_end);
    }
    // Raw buffer b, landed and published by a barrier, widened into the
    // bf16 tiles: 16 values a thread a pass. The caller's barrier after it
    // publishes the tiles.
    __device__ void stage(int b) const {
        constexpr int CPR = HD / 16;  // 16-byte pieces a row
        for (int i = threadIdx.x; i < 2 * BN * CPR; i += 128) {
            const bool isv = i >= BN * CPR;
            const int j = isv ? i - BN * CPR : i, key = j / CPR, c = (j % CPR) * 16;
            const uint4 w = *reinterpret_cast<const uint4 *>((isv ? RV : RK) + (b * BN + key) * HD + c);
            uint4 lo, hi;
            fp8x4_bf16(lo.x, lo.y, w.x);
            fp8x4_bf16(lo.z, lo.w, w.y);
            fp8x4_bf16(hi.x, hi.y, w.z);
            fp8x4_bf16(hi.z, hi.w, w.w);
            uint4 *dst = reinterpret_cast<uint4 *>((isv ? V : K) + key * KS + c);
            dst[0] = lo, dst[1] = hi;
        }
    }
    // Four E4M3 values as two words of bf16 pairs, the lower dim in the low half.
    static __device__ __forceinline__ void fp8x4_bf16(unsigned &a, unsigned &b, unsigned w) {
        const float4 f = fp8x4_to_f32(w);
        a = (__float_as_uint(f.x) >> 16) | (__float_as_uint(f.y) & 0xffff0000u);
        b = (__float_as_uint(f.z) >> 16) | (__float_as_uint(f.w) & 0xffff0000u);
    }
    static __device__ __forceinline__ int qdim(int kk, int t, int hi) { return kk * 16 + 2 * t + hi * 8; }
    __device__ __forceinline__ void kfrag(unsigned (&f)[4], int, int n0, int kk) const {
        ldsm4(f, K + n0 * KS + kk * 16 + koff);
    }
    __device__ __forceinline__ void vfrag(unsigned (&f)[4], int, int k0, int d0) const {
        ldsm4t(f, V + k0 * KS + d0 + voff);
    }
};

// The dynamic shared memory flash_mma<HD> uses over K and V of type T.
template <int HD, class T> constexpr int flash_mma_smem_bytes() { return FlashMmaTiles<HD, T>::BYTES; }

// One tile, as flash: query rows row0..row0+nrows of q [T, H*HD] (head h),
// the first at position qpos0 of its sequence, so row i sees keys
// 0..qpos0+i. The next K/V tile streams into shared memory (cp.async)
// while this one is used.
template <int HD, class KV>
__device__ void flash_mma(float *out, const float *q, int H, int h, int row0, int nrows, int qpos0, const KV &kv,
                          float scale) {
    typedef FlashMmaTiles<HD, typename KV::elem> Tiles;
    constexpr int BN = Tiles::BN;
    extern __shared__ __align__(16) float smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const Tiles tiles(smem, lane);
    const float sl2 = scale * 1.4426950408889634f;  // exp(x·scale) = exp2(x·scale·log2 e)
    const int kv_end = qpos0 + nrows;                       // keys the last row sees
    const int wr = warp * 16;
    const int warp_last = qpos0 + min(wr + 15, nrows - 1);  // this warp's last row's position
    auto load = [&](int kb, int b) { tiles.load(kv, kb, kv_end, b); };
    load(0, 0);
    // Q fragments, scaled, for rows wr+g (i even) and wr+g+8 (i odd) of
    // this warp: a[i] holds dims qdim(kk, t, i / 2) and the next.
    unsigned qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = wr + g + (i & 1) * 8, c = Tiles::qdim(kk, t, i >> 1);
            const float *qr = q + ((i64)(row0 + r) * H + h) * HD + c;
            qa[kk][i] = r < nrows ? bf16x2(qr[0] * sl2, qr[1] * sl2) : 0u;
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    for (int kb = 0, b = 0; kb < kv_end; kb += BN, b ^= 1) {
        if (kb + BN < kv_end) {
            load(kb + BN, b ^ 1);  // the buffer the last iteration finished with
            cp_async_wait<1>();   // this tile's group is done, the next may fly
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (Tiles::STAGED) {  // fp8: widen the landed tile to bf16 first
            tiles.stage(b);
            __syncthreads();
        }
        if (wr < nrows && kb <= warp_last) {  // else no row of this warp sees this tile
            // s[n]: rows g, g+8 by keys kb+8n+2t, +1 (the C layout).
            float s[BN / 8][4];
#pragma unroll
            for (int n = 0; n < BN / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
                for (int n = 0; n < BN / 16; n++) {
                    unsigned f[4];
                    tiles.kfrag(f, b, n * 16, kk);
                    mma_bf16(s[2 * n], qa[kk], f[0], f[1]);
                    mma_bf16(s[2 * n + 1], qa[kk], f[2], f[3]);
                }
            // Causal mask, where a key of the tile is past this warp's first
            // row or a row is past nrows (else it changes nothing).
            if (kb + BN - 1 > qpos0 + wr || wr + 16 > nrows) {
#pragma unroll
                for (int n = 0; n < BN / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int r = wr + g + (e >> 1) * 8, key = kb + n * 8 + 2 * t + (e & 1);
                        if (r >= nrows || key > qpos0 + r) s[n][e] = -INFINITY;
                    }
            }
            // The online softmax for rows g (i = 0) and g+8.
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < BN / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
            float alpha[2], mu[2];
            flash_max(mx, m, mu, alpha);
            float sum[2] = {0.f, 0.f};
#pragma unroll
            for (int n = 0; n < BN / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    s[n][e] = flash_exp2(s[n][e] - mu[e >> 1]);
                    sum[e >> 1] += s[n][e];
                }
            flash_sum(sum, alpha, l, o);
            // P's A fragments for its k-steps of 16 keys, from S's C layout.
            unsigned pa[BN / 16][4];
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                pa[kk][0] = bf16x2(s[2 * kk][0], s[2 * kk][1]);          // row g, keys 2t, 2t+1
                pa[kk][1] = bf16x2(s[2 * kk][2], s[2 * kk][3]);          // row g+8
                pa[kk][2] = bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);  // row g, keys 8+2t, 8+2t+1
                pa[kk][3] = bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);  // row g+8
            }
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
                for (int n = 0; n < HD / 16; n++) {
                    unsigned f[4];
                    tiles.vfrag(f, b, kk * 16, n * 16);
                    mma_bf16(o[2 * n], pa[kk], f[0], f[1]);
                    mma_bf16(o[2 * n + 1], pa[kk], f[2], f[3]);
                }
        }
        __syncthreads();  // buffer b is refilled two tiles on
    }
    flash_store<HD>(out, o, l, H, h, row0, nrows, wr, g, t);
}

// The core that flash.cuh's flash_paged and flash_prompt run for the
// entry points below: the same tiles and grids as flash's.
struct FlashMMA {
    template <int HD, class KV>
    static __device__ __forceinline__ void run(float *out, const float *q, int H, int h, int row0, int nrows, int qpos0,
                                               const KV &kv, float scale) {
        flash_mma<HD>(out, q, H, h, row0, nrows, qpos0, kv, scale);
    }
};
