// Attention over the pool (prefill and decode in one launch) and over a
// prompt's own K and V (a sparse layer's prefill), with the score
// accumulation that H2O and SnapKV select by.
//
// One CTA computes one query row for one KV head: the G query heads of
// that head's group share every key and value it reads (GQA). Keys go in
// tiles of TILE with an online softmax (flash-style, in float32 on the
// CUDA cores); a row that scores makes a second pass over its keys once
// the softmax's max and sum are known, adding each key's probability,
// summed over the group, to its score with atomics.
#include "common.cuh"

#define NT 128    // threads per CTA
#define TILE 64   // keys per tile
#define HDMAX 256 // largest head dim (two dims per thread)

// Paged keys: token j of a table is slot j % bs of block blocks[j / bs].
struct PagedKV {
    const float *pool;
    PoolLayout L;
    const int *blocks;
    int h;
    __device__ const float *key(int j) const { return pool + L.k(blocks[j / L.bs], h, j % L.bs); }
    __device__ const float *val(int j) const { return pool + L.v(blocks[j / L.bs], h, j % L.bs); }
};

// Dense keys: token j is row row0 + j of k, v [T, kvh*hd].
struct DenseKV {
    const float *k, *v;
    int kvh, hd, row0, h;
    __device__ const float *key(int j) const { return k + ((i64)(row0 + j) * kvh + h) * hd; }
    __device__ const float *val(int j) const { return v + ((i64)(row0 + j) * kvh + h) * hd; }
};

// A pool score: the group's probabilities summed, added to token j's score.
template <int G> struct PoolScore {
    float *pool;
    PoolLayout L;
    const int *blocks;
    int h;
    __device__ void add(int j, const float (&p)[G]) const {
        float s = 0;
#pragma unroll
        for (int g = 0; g < G; g++) s += p[g];
        atomicAdd(pool + L.score(blocks[j / L.bs], h, j % L.bs), s);
    }
};

// A prompt's per-query-head sums, hs [H, n]: SnapKV votes by head.
template <int G> struct HeadScore {
    float *hs;
    int n, h;
    __device__ void add(int j, const float (&p)[G]) const {
#pragma unroll
        for (int g = 0; g < G; g++) atomicAdd(hs + (i64)(h * G + g) * n + j, p[g]);
    }
};

// sc[g][j] = scale · q_g · key(t0 + j) for j < tn; one warp per key.
template <int G, class KV>
__device__ __forceinline__ void logits(float (&sc)[G][TILE], const float (&qs)[G][HDMAX], const KV &kv, int hd, int t0,
                                       int tn, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int j = warp; j < tn; j += NT / 32) {
        const float *kr = kv.key(t0 + j);
        float dot[G];
#pragma unroll
        for (int g = 0; g < G; g++) dot[g] = 0;
        for (int d = lane; d < hd; d += 32) {
            const float kk = kr[d];
#pragma unroll
            for (int g = 0; g < G; g++) dot[g] += qs[g][d] * kk;
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            const float s = warp_sum(dot[g]);
            if (lane == 0) sc[g][j] = s * scale;
        }
    }
}

// One query row of one KV head's group: q and out point at the group's
// first head, [G, hd] consecutive. The row sees keys 0..nvis-1.
template <int G, class KV, class Sink>
__device__ void attend(float *out, const float *q, int hd, int nvis, const KV &kv, bool score, const Sink &sink,
                       float scale) {
    __shared__ float qs[G][HDMAX];
    __shared__ float sc[G][TILE];
    __shared__ float red[G];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int i = tid; i < G * hd; i += NT) qs[i / hd][i % hd] = q[i];
    float m[G], l[G], acc[G][2];
#pragma unroll
    for (int g = 0; g < G; g++) m[g] = -INFINITY, l[g] = 0, acc[g][0] = acc[g][1] = 0;
    __syncthreads();
    for (int t0 = 0; t0 < nvis; t0 += TILE) {
        const int tn = min(TILE, nvis - t0);
        logits<G>(sc, qs, kv, hd, t0, tn, scale);
        __syncthreads();
        for (int g = warp; g < G; g += NT / 32) {
            float v = -INFINITY;
            for (int j = lane; j < tn; j += 32) v = fmaxf(v, sc[g][j]);
            v = warp_max(v);
            if (lane == 0) red[g] = v;
        }
        __syncthreads();
        float alpha[G];
#pragma unroll
        for (int g = 0; g < G; g++) {
            const float mn = fmaxf(m[g], red[g]);
            alpha[g] = expf(m[g] - mn);  // 0 on the first tile
            m[g] = mn;
        }
        for (int i = tid; i < G * TILE; i += NT) {
            const int g = i / TILE, j = i % TILE;
            sc[g][j] = j < tn ? expf(sc[g][j] - m[g]) : 0.f;
        }
        __syncthreads();
        for (int g = warp; g < G; g += NT / 32) {
            float v = 0;
            for (int j = lane; j < tn; j += 32) v += sc[g][j];
            v = warp_sum(v);
            if (lane == 0) red[g] = v;
        }
        __syncthreads();
#pragma unroll
        for (int g = 0; g < G; g++) l[g] = l[g] * alpha[g] + red[g];
#pragma unroll
        for (int c = 0; c < 2; c++) {
            const int d = tid + c * NT;
            if (d >= hd) continue;
            float a[G];
#pragma unroll
            for (int g = 0; g < G; g++) a[g] = acc[g][c] * alpha[g];
            for (int j = 0; j < tn; j++) {
                const float vv = kv.val(t0 + j)[d];
#pragma unroll
                for (int g = 0; g < G; g++) a[g] += sc[g][j] * vv;
            }
#pragma unroll
            for (int g = 0; g < G; g++) acc[g][c] = a[g];
        }
        __syncthreads();  // sc and red are rewritten by the next tile
    }
#pragma unroll
    for (int c = 0; c < 2; c++) {
        const int d = tid + c * NT;
        if (d >= hd) continue;
#pragma unroll
        for (int g = 0; g < G; g++) out[g * hd + d] = acc[g][c] / l[g];
    }
    if (!score) return;
    for (int t0 = 0; t0 < nvis; t0 += TILE) {
        const int tn = min(TILE, nvis - t0);
        logits<G>(sc, qs, kv, hd, t0, tn, scale);
        __syncthreads();
        for (int j = tid; j < tn; j += NT) {
            float p[G];
#pragma unroll
            for (int g = 0; g < G; g++) p[g] = expf(sc[g][j] - m[g]) / l[g];
            sink.add(t0 + j, p);
        }
        __syncthreads();
    }
}

// Attention over the pool for R query rows: row i is q's row rows[i], it
// sees the first nvis[i] tokens of the table blocks[table[i]...], and adds
// to their scores when score[i] is set. grid (R, kvh), block NT.
template <int G>
__device__ void attn_paged(float *out /*[T, H*hd]*/, const float *q /*[T, H*hd]*/, float *pool, int bs, int kvh, int hd,
                           const int *rows /*[R]*/, const int *nvis /*[R]*/, const int *table /*[R]*/,
                           const int *blocks, const int *score /*[R]*/, float scale) {
    const int i = blockIdx.x, h = blockIdx.y;
    const PoolLayout L{bs, kvh, hd};
    const int *bl = blocks + table[i];
    const i64 off = ((i64)rows[i] * kvh * G + (i64)h * G) * hd;
    attend<G>(out + off, q + off, hd, nvis[i], PagedKV{pool, L, bl, h}, score[i] != 0, PoolScore<G>{pool, L, bl, h},
              scale);
}

// A sparse layer's prompt, rows row0..row0+n of q, k, v: exact causal
// attention into out for its rows from first on; the rows from obs_from
// add their probabilities to hs [H, n] per query head. grid (n - first,
// kvh), block NT.
template <int G>
__device__ void attn_prompt(float *out /*[T, H*hd]*/, const float *q /*[T, H*hd]*/, const float *k /*[T, kvh*hd]*/,
                            const float *v /*[T, kvh*hd]*/, int kvh, int hd, int row0, int n, int obs_from, int first,
                            float *hs /*[H, n]*/, float scale) {
    const int i = first + blockIdx.x, h = blockIdx.y;
    const i64 off = ((i64)(row0 + i) * kvh * G + (i64)h * G) * hd;
    attend<G>(out + off, q + off, hd, i + 1, DenseKV{k, v, kvh, hd, row0, h}, i >= obs_from, HeadScore<G>{hs, n, h},
              scale);
}

// The group sizes instantiated: 1 to 8 query heads per KV head.
#define INSTANTIATE(G)                                                                                                \
    extern "C" __global__ void __launch_bounds__(NT) attn_paged_g##G(                                                 \
        float *out, const float *q, float *pool, int bs, int kvh, int hd, const int *rows, const int *nvis,         \
        const int *table, const int *blocks, const int *score, float scale) {                                       \
        attn_paged<G>(out, q, pool, bs, kvh, hd, rows, nvis, table, blocks, score, scale);                           \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(NT)                                                                 \
        attn_prompt_g##G(float *out, const float *q, const float *k, const float *v, int kvh, int hd, int row0, int n, \
                         int obs_from, int first, float *hs, float scale) {                                          \
        attn_prompt<G>(out, q, k, v, kvh, hd, row0, n, obs_from, first, hs, scale);                                  \
    }
INSTANTIATE(1)
INSTANTIATE(2)
INSTANTIATE(3)
INSTANTIATE(4)
INSTANTIATE(5)
INSTANTIATE(6)
INSTANTIATE(7)
INSTANTIATE(8)

// ---------------------------------------------------------------------------
// Flash-style prefill on the tensor cores: a CTA takes FLASH_BM query rows
// of one query head, four warps of 16 rows, and walks the keys they see in
// tiles of FLASH_BN, with TF32 mma.sync (m16n8k8, float32 accumulate) for
// Q·Kᵀ and P·V and the online softmax in registers. The rows that score
// (an observation window, H2O decode) stay on the kernels above, which know
// the final probabilities; these rows only produce outputs.

#define FLASH_BM 64
#define FLASH_BN 32

__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// d += a·b for one m16n8k8 TF32 tile.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One tile: query rows row0..row0+nrows of q [T, H*HD] (head h), the first
// at position qpos0 of its sequence, so row i sees keys 0..qpos0+i.
template <int HD, class KV>
__device__ void flash(float *out, const float *q, int H, int h, int row0, int nrows, int qpos0, const KV &kv,
                      float scale) {
    constexpr int KS = HD + 4;       // padded smem rows: conflict-free fragments
    constexpr int PS = FLASH_BN + 4;
    __shared__ __align__(16) float Ks[FLASH_BN][KS];
    __shared__ __align__(16) float Vs[FLASH_BN][KS];
    __shared__ float Ps[4][16][PS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;  // exp(x·scale) = exp2(x·scale·log2 e)
    // Q fragments, scaled, for rows wr+g and wr+g+8 of this warp.
    const int wr = warp * 16;
    unsigned qa[HD / 8][4];
#pragma unroll
    for (int kk = 0; kk < HD / 8; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = wr + g + (i & 1) * 8, c = kk * 8 + t + (i >> 1) * 4;
            const float v = r < nrows ? q[((i64)(row0 + r) * H + h) * HD + c] * sl2 : 0.f;
            qa[kk][i] = to_tf32(v);
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const int kv_end = qpos0 + nrows;                   // keys the last row sees
    const int warp_last = qpos0 + min(wr + 15, nrows - 1);  // this warp's last row's position
    for (int kb = 0; kb < kv_end; kb += FLASH_BN) {
        __syncthreads();  // the last tile's readers are done
        for (int i = tid; i < FLASH_BN * HD / 4; i += blockDim.x) {
            const int key = i / (HD / 4), c = (i % (HD / 4)) * 4;
            float4 kx = make_float4(0.f, 0.f, 0.f, 0.f), vx = kx;
            if (kb + key < kv_end) {
                kx = *reinterpret_cast<const float4 *>(kv.key(kb + key) + c);
                vx = *reinterpret_cast<const float4 *>(kv.val(kb + key) + c);
            }
            Ks[key][c] = __uint_as_float(to_tf32(kx.x)), Ks[key][c + 1] = __uint_as_float(to_tf32(kx.y));
            Ks[key][c + 2] = __uint_as_float(to_tf32(kx.z)), Ks[key][c + 3] = __uint_as_float(to_tf32(kx.w));
            Vs[key][c] = __uint_as_float(to_tf32(vx.x)), Vs[key][c + 1] = __uint_as_float(to_tf32(vx.y));
            Vs[key][c + 2] = __uint_as_float(to_tf32(vx.z)), Vs[key][c + 3] = __uint_as_float(to_tf32(vx.w));
        }
        __syncthreads();
        if (wr >= nrows || kb > warp_last) continue;  // no row of this warp sees this tile
        float s[FLASH_BN / 8][4];
#pragma unroll
        for (int n = 0; n < FLASH_BN / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 8; kk++)
                mma_tf32(s[n], qa[kk], __float_as_uint(Ks[n * 8 + g][kk * 8 + t]),
                         __float_as_uint(Ks[n * 8 + g][kk * 8 + t + 4]));
        }
        // Causal mask, then the online softmax for rows g (i = 0) and g+8.
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < FLASH_BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = wr + g + (e >> 1) * 8, key = kb + n * 8 + 2 * t + (e & 1);
                if (r >= nrows || key > qpos0 + r) s[n][e] = -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
            }
        float alpha[2], mu[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float mn = fmaxf(m[i], mx[i]);
            mu[i] = mn == -INFINITY ? 0.f : mn;  // a row that has seen nothing yet
            alpha[i] = exp2f(m[i] - mu[i]);
            m[i] = mn;
        }
        float sum[2] = {0.f, 0.f};
#pragma unroll
        for (int n = 0; n < FLASH_BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = exp2f(s[n][e] - mu[e >> 1]);
                sum[e >> 1] += p;
                Ps[warp][g + (e >> 1) * 8][n * 8 + 2 * t + (e & 1)] = __uint_as_float(to_tf32(p));
            }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
            l[i] = l[i] * alpha[i] + sum[i];
        }
#pragma unroll
        for (int n = 0; n < HD / 8; n++) o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        __syncwarp();
        unsigned pa[FLASH_BN / 8][4];
#pragma unroll
        for (int kk = 0; kk < FLASH_BN / 8; kk++) {
            pa[kk][0] = __float_as_uint(Ps[warp][g][kk * 8 + t]);
            pa[kk][1] = __float_as_uint(Ps[warp][g + 8][kk * 8 + t]);
            pa[kk][2] = __float_as_uint(Ps[warp][g][kk * 8 + t + 4]);
            pa[kk][3] = __float_as_uint(Ps[warp][g + 8][kk * 8 + t + 4]);
        }
        __syncwarp();  // Ps is rewritten by the next tile
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int kk = 0; kk < FLASH_BN / 8; kk++)
                mma_tf32(o[n], pa[kk], __float_as_uint(Vs[kk * 8 + t][n * 8 + g]),
                         __float_as_uint(Vs[kk * 8 + t + 4][n * 8 + g]));
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = wr + g + i * 8;
        if (r >= nrows) continue;
        const float inv = 1.f / l[i];
        float *dst = out + ((i64)(row0 + r) * H + h) * HD;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            dst[n * 8 + 2 * t] = o[n][2 * i] * inv;
            dst[n * 8 + 2 * t + 1] = o[n][2 * i + 1] * inv;
        }
    }
}

// Prefill rows over the pool. tiles [ntiles, 4]: first row, rows, the first
// row's position, and where its sequence's table starts in blocks.
// grid (ntiles, H), block 128.
template <int HD>
__device__ void flash_paged(float *out, const float *q, const float *pool, int bs, int kvh, int H,
                            const int *tiles /*[ntiles, 4]*/, const int *blocks, float scale) {
    const int *tl = tiles + 4 * blockIdx.x;
    const int h = blockIdx.y, group = H / kvh;
    const PagedKV kv{pool, PoolLayout{bs, kvh, HD}, blocks + tl[3], h / group};
    flash<HD>(out, q, H, h, tl[0], tl[1], tl[2], kv, scale);
}

// A sparse layer's prompt rows 0..nrows of row0..row0+n (those before the
// observation window) over the prompt's own K and V. grid (ceil(nrows /
// FLASH_BM), H), block 128.
template <int HD>
__device__ void flash_prompt(float *out, const float *q, const float *k, const float *v, int kvh, int H, int row0,
                             int nrows, float scale) {
    const int h = blockIdx.y, group = H / kvh, r0 = blockIdx.x * FLASH_BM;
    const DenseKV kv{k, v, kvh, HD, row0, h / group};
    flash<HD>(out, q, H, h, row0 + r0, min(FLASH_BM, nrows - r0), r0, kv, scale);
}

#define INSTANTIATE_FLASH(HD)                                                                                         \
    extern "C" __global__ void __launch_bounds__(128) flash_paged_hd##HD(float *out, const float *q,                 \
                                                                         const float *pool, int bs, int kvh, int H,  \
                                                                         const int *tiles, const int *blocks,        \
                                                                         float scale) {                              \
        flash_paged<HD>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                                             \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) flash_prompt_hd##HD(float *out, const float *q, const float *k, \
                                                                          const float *v, int kvh, int H, int row0,  \
                                                                          int nrows, float scale) {                  \
        flash_prompt<HD>(out, q, k, v, kvh, H, row0, nrows, scale);                                                  \
    }
INSTANTIATE_FLASH(64)
INSTANTIATE_FLASH(128)
