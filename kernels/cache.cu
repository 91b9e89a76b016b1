// Kernels that write and move tokens in the pool of layer-blocks
// (shm.Layout): reshape_and_cache, the scatter of a sparse prefill's kept
// tokens, and eviction's compaction. A slot is block*bs + offset.
//
// The writers (write_kv, scatter_kept) take the head dim and have a
// variant for each pool dtype, one template each: float32, bfloat16
// (_bf16, hd/2 words a row) and fp8 (_fp8, hd/4). What moves rows or
// reads scores (table_scores_many, evict_*) takes hd as the row's length
// in words (shm.Layout.RowElems) and serves every dtype: packed values
// move as words, never as numbers.
#include "common.cuh"

// Word w of a row whose values are x (x[0] the row's dim VPW·w), as a
// pool of VPW values a word keeps it: a float32's bits, two bfloat16s
// (pack_bf16) or four E4M3s (pack_fp8x4).
template <int VPW> __device__ __forceinline__ unsigned pack_word(const float *x);
template <> __device__ __forceinline__ unsigned pack_word<1>(const float *x) { return __float_as_uint(x[0]); }
template <> __device__ __forceinline__ unsigned pack_word<2>(const float *x) { return pack_bf16(x[0], x[1]); }
template <> __device__ __forceinline__ unsigned pack_word<4>(const float *x) {
    return pack_fp8x4(x[0], x[1], x[2], x[3]);
}

// Stores k, v [T, kvh*hd] at slots[t] and zeroes their scores; a negative
// slot skips the token. Thread w writes the row's word w, VPW values of a
// pool of that dtype. grid (T, kvh), block hd/VPW.
template <int VPW>
__device__ void write_kv_t(float *pool, int bs, int kvh, int hd, const float *k, const float *v, const int *slots) {
    const PoolLayout L{bs, kvh, hd / VPW};
    const int t = blockIdx.x, h = blockIdx.y, w = threadIdx.x;
    const int s = slots[t];
    if (s < 0 || w >= L.hd) return;
    const int blk = s / L.bs, off = s % L.bs;
    const i64 src = ((i64)t * L.kvh + h) * hd + VPW * w;
    unsigned *words = reinterpret_cast<unsigned *>(pool);
    words[L.k(blk, h, off) + w] = pack_word<VPW>(k + src);
    words[L.v(blk, h, off) + w] = pack_word<VPW>(v + src);
    if (w == 0) pool[L.score(blk, h, off)] = 0.f;
}

// A sparse prefill's kept tokens: head h's i-th kept token is prompt token
// idx[h, i] (rows row0.. of k and v), written to slots[i] with score
// raw[h, idx[h, i]], a word a thread as write_kv_t. grid (keep, kvh),
// block hd/VPW.
template <int VPW>
__device__ void scatter_kept_t(float *pool, int bs, int kvh, int hd, const float *k, const float *v, const float *raw,
                               const int *idx, const int *slots, int row0, int n, int keep) {
    const PoolLayout L{bs, kvh, hd / VPW};
    const int i = blockIdx.x, h = blockIdx.y, w = threadIdx.x;
    if (w >= L.hd) return;
    const int j = idx[h * keep + i], s = slots[i];
    const int blk = s / L.bs, off = s % L.bs;
    const i64 src = ((i64)(row0 + j) * L.kvh + h) * hd + VPW * w;
    unsigned *words = reinterpret_cast<unsigned *>(pool);
    words[L.k(blk, h, off) + w] = pack_word<VPW>(k + src);
    words[L.v(blk, h, off) + w] = pack_word<VPW>(v + src);
    if (w == 0) pool[L.score(blk, h, off)] = raw[(i64)h * n + j];
}

// The entry points: float32 (a value a word), bfloat16 (_bf16, two) and
// fp8 (_fp8, four) pools.
#define INSTANTIATE_WRITERS(SFX, VPW)                                                                                 \
    extern "C" __global__ void write_kv##SFX(float *pool, int bs, int kvh, int hd, const float *k /*[T, kvh*hd]*/,    \
                                             const float *v /*[T, kvh*hd]*/, const int *slots /*[T]*/) {            \
        write_kv_t<VPW>(pool, bs, kvh, hd, k, v, slots);                                                             \
    }                                                                                                                 \
    extern "C" __global__ void scatter_kept##SFX(float *pool, int bs, int kvh, int hd, const float *k,                \
                                                 const float *v, const float *raw /*[kvh, n]*/,                       \
                                                 const int *idx /*[kvh, keep]*/, const int *slots /*[keep]*/,        \
                                                 int row0, int n, int keep) {                                        \
        scatter_kept_t<VPW>(pool, bs, kvh, hd, k, v, raw, idx, slots, row0, n, keep);                                \
    }
INSTANTIATE_WRITERS(, 1)
INSTANTIATE_WRITERS(_bf16, 2)
INSTANTIATE_WRITERS(_fp8, 4)

// ---- An fp8 pool's blocks widened to bfloat16 -----------------------------
// The prompt attention of a chunk over an fp8 pool: the kernels that read
// fp8 tiles widen each tile for every query tile and head that reads it
// (a 2000-row chunk's 31 row tiles × 4 query heads each widen the same
// keys), which made them 1.4-1.6x as slow as over bfloat16 (run 13).
// Widened here once, into a scratch pool of bfloat16 blocks (the layout
// of a bfloat16 pool of the same block size and heads; scores not
// written), the bfloat16 kernel runs over them. E4M3 values are exact in
// bfloat16, so the logits are those of the fp8 kernels. dst's block b is
// src's block srcb[b]; hd in values. grid (n or fewer), block 256.
extern "C" __global__ void widen_fp8(float *dst, const float *src, int bs, int kvh, int hd, const int *srcb, int n) {
    const PoolLayout s{bs, kvh, hd / 4}, d{bs, kvh, hd / 2};
    const i64 words = 2LL * kvh * bs * hd / 4;  // K then V, the same order of values in both layouts
    for (int b = blockIdx.x; b < n; b += gridDim.x) {
        const unsigned *in = reinterpret_cast<const unsigned *>(src + s.k(srcb[b], 0, 0));
        uint2 *out = reinterpret_cast<uint2 *>(dst + d.k(b, 0, 0));
        for (i64 w = threadIdx.x; w < words; w += blockDim.x) {
            const float4 f = fp8x4_to_f32(__ldg(in + w));
            out[w] = make_uint2(pack_bf16(f.x, f.y), pack_bf16(f.z, f.w));
        }
    }
}

// ---- Eviction of many tables in one go ------------------------------------
// A decode step evicts from tens of tables; these kernels take them all in
// one launch each, with blocks of many threads (a launch per table of
// one-thread blocks cost an H200 ~0.05 ms a table). Table t's blocks are
// blocks[job[3t]..], its token count job[3t+1], and its scores go to
// out[job[3t+2] + h*tokens ..]. hd is a row's length in words.

// Every table's scores. grid (ceil(max tokens / 256), kvh, tables), block 256.
extern "C" __global__ void table_scores_many(float *out, const float *pool, int bs, int kvh, int hd,
                                             const int *blocks, const int *job /*[tables, 3]*/) {
    const PoolLayout L{bs, kvh, hd};
    const int t = blockIdx.z, h = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    const int *b = blocks + job[3 * t], tokens = job[3 * t + 1];
    if (i >= tokens) return;
    out[job[3 * t + 2] + (i64)h * tokens + i] = pool[L.score(b[i / L.bs], h, i % L.bs)];
}

// Compaction of many tables: move m is (table, head, dst, src) in moves
// [m, 4] (the survivors that change slot; table offsets into blocks in
// job as above). Gather copies each source entry (K, V, score) to tmp [m,
// 2*hd+1]; scatter, a second launch, writes tmp to the destinations (in
// place, one move's destination can be another's source). A warp per
// move. grid ceil(moves / 8), block 256.
extern "C" __global__ void evict_gather_many(float *tmp, const float *pool, int bs, int kvh, int hd, const int *blocks,
                                             const int *job, const int4 *moves, int n) {
    const PoolLayout L{bs, kvh, hd};
    const int m = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (m >= n) return;
    const int4 mv = moves[m];
    const int *b = blocks + job[3 * mv.x];
    const int blk = b[mv.w / L.bs], off = mv.w % L.bs;
    float *t = tmp + (i64)m * (2 * L.hd + 1);
    const float *k = pool + L.k(blk, mv.y, off), *v = pool + L.v(blk, mv.y, off);
    for (int d = lane; d < L.hd; d += 32) {
        t[d] = k[d];
        t[L.hd + d] = v[d];
    }
    if (lane == 0) t[2 * L.hd] = pool[L.score(blk, mv.y, off)];
}

extern "C" __global__ void evict_scatter_many(float *pool, int bs, int kvh, int hd, const float *tmp, const int *blocks,
                                              const int *job, const int4 *moves, int n) {
    const PoolLayout L{bs, kvh, hd};
    const int m = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (m >= n) return;
    const int4 mv = moves[m];
    const int *b = blocks + job[3 * mv.x];
    const int blk = b[mv.z / L.bs], off = mv.z % L.bs;
    const float *t = tmp + (i64)m * (2 * L.hd + 1);
    float *k = pool + L.k(blk, mv.y, off), *v = pool + L.v(blk, mv.y, off);
    for (int d = lane; d < L.hd; d += 32) {
        k[d] = t[d];
        v[d] = t[L.hd + d];
    }
    if (lane == 0) pool[L.score(blk, mv.y, off)] = t[2 * L.hd];
}

// ---- SnapKV's choice on the device ----------------------------------------
// The same tokens the host's selectTokens keeps (kernels/sparse.go), with the
// votes in double precision in the host's order, so that a sparse prefill
// needs no copy back and the GPU does not wait for the host at each sparse
// layer.

#define SEL_THREADS 1024

// An order key for a double: larger values give larger keys; NaN is lowest
// and -0 is +0 (the host's cmp.Compare order).
__device__ __forceinline__ unsigned long long order_key(double x) {
    if (x != x) return 0ULL;
    if (x == 0.0) x = 0.0;
    unsigned long long b = (unsigned long long)__double_as_longlong(x);
    return (b >> 63) ? ~b : (b | 0x8000000000000000ULL);
}

// The host's math.Max: NaN if either is NaN.
__device__ __forceinline__ double max_nan(double a, double b) { return (a != a || b != b) ? a + b : fmax(a, b); }

// Block-wide sum of v over SEL_THREADS threads (all must call).
__device__ int block_sum(int v, int *scratch) {
    const int t = threadIdx.x;
    scratch[t] = v;
    __syncthreads();
    for (int s = SEL_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) scratch[t] += scratch[t + s];
        __syncthreads();
    }
    const int total = scratch[0];
    __syncthreads();
    return total;
}

// Block-wide exclusive prefix sum of v (all must call).
__device__ int block_exclusive_scan(int v, int *scratch) {
    const int t = threadIdx.x;
    scratch[t] = v;
    __syncthreads();
    for (int s = 1; s < SEL_THREADS; s <<= 1) {
        const int add = t >= s ? scratch[t - s] : 0;
        __syncthreads();
        scratch[t] += add;
        __syncthreads();
    }
    const int incl = scratch[t];
    __syncthreads();
    return incl - v;
}

// One KV head's prefill choice. hs [heads, n] are the observation window's
// attention sums per query head (group of them per KV head); raw [kvh, n]
// gets each token's summed vote (its score in the pool), idx [kvh, keep]
// the kept tokens, ascending. vote and pooled [kvh, n] are scratch. grid
// (kvh), block SEL_THREADS.
extern "C" __global__ void snapkv_select(const float *hs, int group, int n, int obs_window, int sinks_wanted, int kernel,
                                         int pool_avg, int gqa_max, int snapkv, int keep, double *vote_buf,
                                         double *pooled_buf, float *raw, int *idx) {
    __shared__ int scratch[SEL_THREADS];
    const int h = blockIdx.x, t = threadIdx.x;
    double *vote = vote_buf + (i64)h * n, *pooled = pooled_buf + (i64)h * n;
    int *out = idx + (i64)h * keep;
    for (int j = t; j < n; j += SEL_THREADS) {
        double r = 0.0, v = 0.0;
        for (int g = 0; g < group; g++) {
            const double w = (double)hs[(i64)(h * group + g) * n + j];
            r += w;
            v = gqa_max ? max_nan(v, w) : v + w / (double)group;
        }
        raw[(i64)h * n + j] = (float)r;
        vote[j] = v;
    }
    if (!snapkv) {
        // Window layers: the first sinks and the last keep - sinks.
        const int s = min(sinks_wanted, n);
        const int from = max(n - (keep - s), s);
        for (int i = t; i < s; i += SEL_THREADS) out[i] = i;
        for (int j = from + t; j < n; j += SEL_THREADS) out[s + (j - from)] = j;
        return;
    }
    const int obs_from = max(0, n - obs_window);
    const int sinks = min(sinks_wanted, obs_from);
    const int cands = obs_from - sinks;
    const int want = max(0, min(cands, keep - (n - obs_from) - sinks));
    __syncthreads();
    // Pool the votes before the window (the host's pool1D: max skips the
    // padding, the average counts it as zero).
    const int r = kernel / 2;
    for (int i = sinks + t; i < obs_from; i += SEL_THREADS) {
        double acc = pool_avg ? 0.0 : -INFINITY;
        for (int j = i - r; j <= i + r; j++) {
            double v = 0.0;
            if (j >= 0 && j < obs_from) {
                v = vote[j];
            } else if (!pool_avg) {
                continue;
            }
            acc = pool_avg ? acc + v : max_nan(acc, v);
        }
        if (pool_avg) acc /= (double)kernel;
        pooled[i] = acc;
    }
    __syncthreads();
    // The want-th largest key, bit by bit from the top.
    unsigned long long thr = 0ULL;
    if (want > 0) {
        for (int bit = 63; bit >= 0; bit--) {
            const unsigned long long c = thr | (1ULL << bit);
            int cnt = 0;
            for (int i = sinks + t; i < obs_from; i += SEL_THREADS) cnt += order_key(pooled[i]) >= c;
            if (block_sum(cnt, scratch) >= want) thr = c;
        }
    }
    // Keys above the threshold are kept; of those equal to it, the earliest
    // (the host sorts by vote, then index). Each thread takes a contiguous
    // chunk so that positions come out ascending.
    const int chunk = (cands + SEL_THREADS - 1) / SEL_THREADS;
    const int lo = sinks + t * chunk, hi = min(obs_from, lo + chunk);
    int gt = 0, eq = 0;
    if (want > 0) {
        for (int i = lo; i < hi; i++) {
            const unsigned long long k = order_key(pooled[i]);
            gt += k > thr;
            eq += k == thr;
        }
    }
    const int gt_all = block_sum(gt, scratch);
    const int ties = want - gt_all;  // ties to keep, earliest first
    const int eq_before = block_exclusive_scan(eq, scratch);
    const int mine = gt + max(0, min(eq, ties - eq_before));
    const int at = block_exclusive_scan(mine, scratch);
    for (int i = t; i < sinks; i += SEL_THREADS) out[i] = i;
    if (want > 0) {
        int w = sinks + at, tie = eq_before;
        for (int i = lo; i < hi; i++) {
            const unsigned long long k = order_key(pooled[i]);
            if (k > thr || (k == thr && tie++ < ties)) out[w++] = i;
        }
    }
    for (int j = obs_from + t; j < n; j += SEL_THREADS) out[sinks + want + (j - obs_from)] = j;
}

// ---- Eviction chosen and compacted on the device --------------------------
// evictSources (kernels/sparse.go) on the device, so that kvd's eviction
// needs no copy back: per (table, head), the first sinks and the last
// recent tokens stay, and of the middle the keep-sinks-recent with the
// highest score (the earlier on a tie; NaN lowest), by bisection on order
// keys as in snapkv_select. The survivors then move, in order, to the
// table's first slots, in place: sources ascend and each is at or after
// its destination, so entries taken in order, a chunk at a time (all of a
// chunk read before any of it is written), never overwrite one not yet
// read. KVD_GPU_EVICT=1 turns it on until a GPU run validates it.

// An order key for a float: larger values give larger keys; NaN is lowest
// and -0 is +0 (the host's cmp.Compare order).
__device__ __forceinline__ unsigned order_key32(float x) {
    if (x != x) return 0u;
    if (x == 0.f) x = 0.f;
    const unsigned b = __float_as_uint(x);
    return (b >> 31) ? ~b : (b | 0x80000000u);
}

#define EVICT_CHUNK (SEL_THREADS / 32)  // entries moved at once: a warp each
#define EVICT_MAX_HD 128

// job [tables, 6]: blocks offset, tokens, keep, sinks, recent, src offset;
// src gets each head's kept tokens ([kvh, kept] at the table's offset).
// grid (kvh, tables), block SEL_THREADS; rows of up to EVICT_MAX_HD words
// (hd is a row's length in words: a bfloat16 pool's head dim may be twice
// that).
extern "C" __global__ void __launch_bounds__(SEL_THREADS) evict_many(float *pool, int bs, int kvh, int hd, const int *blocks, const int *job,
                                      int *src_buf) {
    __shared__ int scratch[SEL_THREADS];
    __shared__ float stage[EVICT_CHUNK][2 * EVICT_MAX_HD + 1];
    const PoolLayout L{bs, kvh, hd};
    const int h = blockIdx.x, t = threadIdx.x;
    const int *jb = job + 6 * blockIdx.y;
    const int *b = blocks + jb[0];
    const int tokens = jb[1], keep = jb[2], sinks = jb[3], recent = jb[4];
    const int lo = sinks, hi = tokens - recent, n = hi - lo;
    const int s0 = min(sinks, tokens);
    const int want = n > 0 ? min(max(keep - sinks - recent, 0), n) : 0;
    const int r0 = max(tokens - recent, sinks);
    const int kept = s0 + want + max(0, tokens - r0);
    int *src = src_buf + jb[5] + h * kept;
    auto key = [&](int i) { return order_key32(pool[L.score(b[i / L.bs], h, i % L.bs)]); };
    // The want-th largest key of the middle, bit by bit from the top.
    unsigned thr = 0u;
    if (want > 0) {
        for (int bit = 31; bit >= 0; bit--) {
            const unsigned c = thr | (1u << bit);
            int cnt = 0;
            for (int i = lo + t; i < hi; i += SEL_THREADS) cnt += key(i) >= c;
            if (block_sum(cnt, scratch) >= want) thr = c;
        }
    }
    // Keys above it stay; of those equal to it, the earliest. Each thread
    // takes a contiguous chunk so that survivors come out ascending.
    const int per = n > 0 ? (n + SEL_THREADS - 1) / SEL_THREADS : 0;
    const int clo = lo + t * per, chi = min(hi, clo + per);
    int gt = 0, eq = 0;
    if (want > 0) {
        for (int i = clo; i < chi; i++) {
            const unsigned k = key(i);
            gt += k > thr;
            eq += k == thr;
        }
    }
    const int ties = want - block_sum(gt, scratch);
    const int eq_before = block_exclusive_scan(eq, scratch);
    const int mine = gt + max(0, min(eq, ties - eq_before));
    const int at = block_exclusive_scan(mine, scratch);
    for (int i = t; i < s0; i += SEL_THREADS) src[i] = i;
    if (want > 0) {
        int w = s0 + at, tie = eq_before;
        for (int i = clo; i < chi; i++) {
            const unsigned k = key(i);
            if (k > thr || (k == thr && tie++ < ties)) src[w++] = i;
        }
    }
    for (int j = r0 + t; j < tokens; j += SEL_THREADS) src[s0 + want + (j - r0)] = j;
    __syncthreads();
    // The first survivor that moves: all before it stay where they are.
    int first = kept;
    for (int i = t; i < kept; i += SEL_THREADS)
        if (src[i] != i) first = min(first, i);
    scratch[t] = first;
    __syncthreads();
    for (int s = SEL_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) scratch[t] = min(scratch[t], scratch[t + s]);
        __syncthreads();
    }
    first = scratch[0];
    const int warp = t / 32, lane = t % 32;
    for (int base = first; base < kept; base += EVICT_CHUNK) {
        const int e = base + warp;
        const bool moves = e < kept && src[e] != e;
        if (moves) {
            const int s = src[e], blk = b[s / L.bs], off = s % L.bs;
            const float *k = pool + L.k(blk, h, off), *v = pool + L.v(blk, h, off);
            for (int d = lane; d < L.hd; d += 32) {
                stage[warp][d] = k[d];
                stage[warp][L.hd + d] = v[d];
            }
            if (lane == 0) stage[warp][2 * L.hd] = pool[L.score(blk, h, off)];
        }
        __syncthreads();
        if (moves) {
            const int blk = b[e / L.bs], off = e % L.bs;
            float *k = pool + L.k(blk, h, off), *v = pool + L.v(blk, h, off);
            for (int d = lane; d < L.hd; d += 32) {
                k[d] = stage[warp][d];
                v[d] = stage[warp][L.hd + d];
            }
            if (lane == 0) pool[L.score(blk, h, off)] = stage[warp][2 * L.hd];
        }
        __syncthreads();
    }
}
