// Kernels that write and move tokens in the pool of layer-blocks
// (shm.Layout): reshape_and_cache, the scatter of a sparse prefill's kept
// tokens, and eviction's compaction. A slot is block*bs + offset.
#include "common.cuh"

// Stores k, v [T, kvh*hd] at slots[t] and zeroes their scores; a negative
// slot skips the token. grid (T, kvh), block hd.
extern "C" __global__ void write_kv(float *pool, int bs, int kvh, int hd, const float *k /*[T, kvh*hd]*/,
                                    const float *v /*[T, kvh*hd]*/, const int *slots /*[T]*/) {
    const PoolLayout L{bs, kvh, hd};
    const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const int s = slots[t];
    if (s < 0 || d >= L.hd) return;
    const int blk = s / L.bs, off = s % L.bs;
    const i64 src = ((i64)t * L.kvh + h) * L.hd + d;
    pool[L.k(blk, h, off) + d] = k[src];
    pool[L.v(blk, h, off) + d] = v[src];
    if (d == 0) pool[L.score(blk, h, off)] = 0.f;
}

// A sparse prefill's kept tokens: head h's i-th kept token is prompt token
// idx[h, i] (rows row0.. of k and v), written to slots[i] with score
// raw[h, idx[h, i]]. grid (keep, kvh), block hd.
extern "C" __global__ void scatter_kept(float *pool, int bs, int kvh, int hd, const float *k /*[T, kvh*hd]*/,
                                        const float *v /*[T, kvh*hd]*/, const float *raw /*[kvh, n]*/,
                                        const int *idx /*[kvh, keep]*/, const int *slots /*[keep]*/, int row0, int n,
                                        int keep) {
    const PoolLayout L{bs, kvh, hd};
    const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    if (d >= L.hd) return;
    const int j = idx[h * keep + i], s = slots[i];
    const int blk = s / L.bs, off = s % L.bs;
    const i64 src = ((i64)(row0 + j) * L.kvh + h) * L.hd + d;
    pool[L.k(blk, h, off) + d] = k[src];
    pool[L.v(blk, h, off) + d] = v[src];
    if (d == 0) pool[L.score(blk, h, off)] = raw[(i64)h * n + j];
}

// Every head's scores of one table's first tokens tokens. grid (tokens,
// kvh), block 1; tables are short enough that this is a copy.
extern "C" __global__ void table_scores(float *out /*[kvh, tokens]*/, const float *pool, int bs, int kvh, int hd,
                                        const int *blocks /*[ceil(tokens/bs)]*/, int tokens) {
    const PoolLayout L{bs, kvh, hd};
    const int i = blockIdx.x, h = blockIdx.y;
    out[(i64)h * tokens + i] = pool[L.score(blocks[i / L.bs], h, i % L.bs)];
}

// Compaction, first half: head h's i-th survivor, table token src[h, i],
// is copied (K, V, score) to tmp. grid (keep, kvh), block hd.
extern "C" __global__ void evict_gather(float *tmp /*[kvh, keep, 2*hd+1]*/, const float *pool, int bs, int kvh, int hd,
                                        const int *blocks /*[table]*/, const int *src /*[kvh, keep]*/, int keep) {
    const PoolLayout L{bs, kvh, hd};
    const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    if (d >= L.hd) return;
    const int s = src[h * keep + i];
    const int blk = blocks[s / L.bs], off = s % L.bs;
    float *t = tmp + ((i64)h * keep + i) * (2 * L.hd + 1);
    t[d] = pool[L.k(blk, h, off) + d];
    t[L.hd + d] = pool[L.v(blk, h, off) + d];
    if (d == 0) t[2 * L.hd] = pool[L.score(blk, h, off)];
}

// Compaction, second half: survivor i goes to table slot i. Two launches,
// because in place a survivor's destination can be another's source.
// grid (keep, kvh), block hd.
extern "C" __global__ void evict_scatter(float *pool, int bs, int kvh, int hd, const float *tmp /*[kvh, keep, 2*hd+1]*/,
                                         const int *blocks /*[table]*/, int keep) {
    const PoolLayout L{bs, kvh, hd};
    const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    if (d >= L.hd) return;
    const int blk = blocks[i / L.bs], off = i % L.bs;
    const float *t = tmp + ((i64)h * keep + i) * (2 * L.hd + 1);
    pool[L.k(blk, h, off) + d] = t[d];
    pool[L.v(blk, h, off) + d] = t[L.hd + d];
    if (d == 0) pool[L.score(blk, h, off)] = t[2 * L.hd];
}
