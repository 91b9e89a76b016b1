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
// attention into out; the rows from obs_from add their probabilities to
// hs [H, n] per query head. grid (n, kvh), block NT.
template <int G>
__device__ void attn_prompt(float *out /*[T, H*hd]*/, const float *q /*[T, H*hd]*/, const float *k /*[T, kvh*hd]*/,
                            const float *v /*[T, kvh*hd]*/, int kvh, int hd, int row0, int n, int obs_from,
                            float *hs /*[H, n]*/, float scale) {
    const int i = blockIdx.x, h = blockIdx.y;
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
    extern "C" __global__ void __launch_bounds__(NT) attn_prompt_g##G(float *out, const float *q, const float *k,    \
                                                                      const float *v, int kvh, int hd, int row0,     \
                                                                      int n, int obs_from, float *hs, float scale) { \
        attn_prompt<G>(out, q, k, v, kvh, hd, row0, n, obs_from, hs, scale);                                         \
    }
INSTANTIATE(1)
INSTANTIATE(2)
INSTANTIATE(3)
INSTANTIATE(4)
INSTANTIATE(5)
INSTANTIATE(6)
INSTANTIATE(7)
INSTANTIATE(8)
