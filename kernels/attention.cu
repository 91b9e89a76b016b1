// Attention over the pool (prefill and decode in one launch) and over a
// prompt's own K and V (a sparse layer's prefill), with the score
// accumulation that H2O and SnapKV select by.
//
// Decode rows (H2O's, which score, among them) and short prefills take
// the split row kernels: a work item is one query row's range of keys for one KV head,
// whose G query heads (GQA) share every key and value read. An item walks
// its keys in tiles of TILE with an online softmax in float32 and leaves
// its unnormalised partial (max, sum, weighted values); attn_combine merges
// a row's items (flash-decoding), and a row that scores gets a second pass
// over its keys once the final max and sum are known, adding each key's
// probability, summed over the group, to its score with atomics. Splitting
// a long context over many items keeps every SM busy at batch 1.
// Long runs of rows that do not score take the tensor-core kernel below,
// and so does a sparse layer's whole prompt, whose observation window
// then votes with obs_stats, obs_fin and obs_votes (or, when the backend
// says so, as rows that score here).
//
// A bfloat16 pool (shm.BFloat16: two values a 32-bit word) has its own
// entry points over the pool, split_paged_bf16_g*, score_paged_bf16_g* and
// flash_paged_bf16_hd*: the same code reading K and V through PagedKV<bf16_t>,
// whose values are widened to float32 (exactly) as they are read, so all
// arithmetic is as over a float32 pool. Rows of a bfloat16 pool are hd/2
// words long and need only start on a word (4 bytes) for the row kernels.
// An fp8 pool (shm.FP8E4M3: four E4M3 values a word) likewise has
// split_paged_fp8_g*, score_paged_fp8_g*, split_paged_v2{,_score}_fp8_g*,
// score_logits_fp8_g* and flash_paged_mma_fp8_hd* (the tensor-core
// prefill widens its tiles to bf16 as it stages them; no TF32 variant),
// its values widened exactly to float32 (or bf16) as they are read; its
// rows are hd/4 words.
#include "common.cuh"
#include "flash.cuh"

#define NT 128    // threads per CTA
#define TILE 64   // keys per tile
#define HDMAX 256 // largest head dim (two dims per thread)

// A row's dims d..d+3 and dim d as float32, whatever the row's type. d is
// a multiple of 4 for ld4, so a bf16 row's two words there are whole; the
// loads are a word wide (a bf16 row starts on any word), through the
// read-only path: nothing writes K or V while attention runs (score_paged
// writes scores only), and with plain loads ptxas spilled in some of the
// bf16 kernels.
__device__ __forceinline__ float4 ld4(const float *r, int d) { return make_float4(r[d], r[d + 1], r[d + 2], r[d + 3]); }
__device__ __forceinline__ float4 ld4(const bf16_t *r, int d) {
    const unsigned *w = reinterpret_cast<const unsigned *>(r) + (d >> 1);
    const unsigned a = __ldg(w), b = __ldg(w + 1);
    return make_float4(__uint_as_float(a << 16), __uint_as_float(a & 0xffff0000u), __uint_as_float(b << 16),
                       __uint_as_float(b & 0xffff0000u));
}
__device__ __forceinline__ float4 ld4(const fp8_t *r, int d) {
    return fp8x4_to_f32(__ldg(reinterpret_cast<const unsigned *>(r) + (d >> 2)));
}
__device__ __forceinline__ float ld1(const float *r, int d) { return r[d]; }
__device__ __forceinline__ float ld1(const bf16_t *r, int d) { return bf16_to_f32(r[d]); }
__device__ __forceinline__ float ld1(const fp8_t *r, int d) { return fp8_to_f32(r[d]); }

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

// sc[g][j] = scale · q_g · key(t0 + j) for j < tn. Each key is read by 8
// lanes (4 keys per warp at once), so a dot product needs 3 shuffles.
template <int G, class KV>
__device__ __forceinline__ void logits(float (&sc)[G][TILE], const float (&qs)[G][HDMAX], const KV &kv, int hd, int t0,
                                       int tn, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane >> 3, sl = lane & 7;
    for (int j0 = warp * 4; j0 < tn; j0 += NT / 8) {  // uniform per warp: all lanes shuffle
        const int j = j0 + sub;
        float dot[G];
#pragma unroll
        for (int g = 0; g < G; g++) dot[g] = 0;
        if (j < tn) {
            const auto *kr = kv.key(t0 + j);
            for (int d = sl * 4; d < hd; d += 32) {
                const float4 k = ld4(kr, d);
#pragma unroll
                for (int g = 0; g < G; g++)
                    dot[g] += qs[g][d] * k.x + qs[g][d + 1] * k.y + qs[g][d + 2] * k.z + qs[g][d + 3] * k.w;
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            float s = dot[g];
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            if (sl == 0 && j < tn) sc[g][j] = s * scale;
        }
    }
}

// Loads the group's queries, [G, hd] from q, into qs.
template <int G>
__device__ __forceinline__ void load_q(float (&qs)[G][HDMAX], const float *q, int hd) {
    for (int i = threadIdx.x; i < G * hd; i += NT) qs[i / hd][i % hd] = q[i];
    __syncthreads();
}

// One work item: keys k0..k1 of one query row for one KV head's group (q
// points at the group's first head, [G, hd]). Leaves in ws [2G + G·hd]
// the running max and sum per head and the unnormalised weighted values.
template <int G, class KV>
__device__ void partial(float *ws, const float *q, int hd, int k0, int k1, const KV &kv, float scale) {
    __shared__ float qs[G][HDMAX];
    __shared__ float sc[G][TILE];
    __shared__ float red[G];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    load_q<G>(qs, q, hd);
    float m[G], l[G], acc[G][2];
#pragma unroll
    for (int g = 0; g < G; g++) m[g] = -INFINITY, l[g] = 0, acc[g][0] = acc[g][1] = 0;
    for (int t0 = k0; t0 < k1; t0 += TILE) {
        const int tn = min(TILE, k1 - t0);
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
                const float vv = ld1(kv.val(t0 + j), d);
#pragma unroll
                for (int g = 0; g < G; g++) a[g] += sc[g][j] * vv;
            }
#pragma unroll
            for (int g = 0; g < G; g++) acc[g][c] = a[g];
        }
        __syncthreads();  // sc and red are rewritten by the next tile
    }
    if (tid < G) {
#pragma unroll
        for (int g = 0; g < G; g++)
            if (g == tid) ws[g] = m[g], ws[G + g] = l[g];
    }
#pragma unroll
    for (int c = 0; c < 2; c++) {
        const int d = tid + c * NT;
        if (d >= hd) continue;
#pragma unroll
        for (int g = 0; g < G; g++) ws[2 * G + g * hd + d] = acc[g][c];
    }
}

// The scoring pass of one work item: with the row's final max and sum per
// head (fin [2G]), each key's probability goes to sink.
template <int G, class KV, class Sink>
__device__ void score(const float *fin, const float *q, int hd, int k0, int k1, const KV &kv, const Sink &sink,
                      float scale) {
    __shared__ float qs[G][HDMAX];
    __shared__ float sc[G][TILE];
    load_q<G>(qs, q, hd);
    float m[G], inv[G];
#pragma unroll
    for (int g = 0; g < G; g++) m[g] = fin[g], inv[g] = 1.f / fin[G + g];
    for (int t0 = k0; t0 < k1; t0 += TILE) {
        const int tn = min(TILE, k1 - t0);
        logits<G>(sc, qs, kv, hd, t0, tn, scale);
        __syncthreads();
        for (int j = threadIdx.x; j < tn; j += NT) {
            float p[G];
#pragma unroll
            for (int g = 0; g < G; g++) p[g] = expf(sc[g][j] - m[g]) * inv[g];
            sink.add(t0 + j, p);
        }
        __syncthreads();
    }
}

// Work items, items [n, 4]: the row (an index into rowinfo), its first and
// end key, and the item's slot in the workspace. rowinfo [R, 4]: the row of
// q and out, keys it sees, where its table starts in blocks (paged), and
// whether it scores. ws [items, kvh, 2G + G·hd]; fin [R, kvh, 2G].

template <int G, class T>
__device__ void split_paged(float *ws, const float *q, const float *pool, int bs, int kvh, int hd, const int *rowinfo,
                            const int *items, const int *blocks, float scale) {
    const int *it = items + 4 * blockIdx.x, *ri = rowinfo + 4 * it[0];
    const int h = blockIdx.y;
    const PagedKV<T> kv{pool, PoolLayout{bs, kvh, row_words<T>(hd)}, blocks + ri[2], h};
    partial<G>(ws + ((i64)it[3] * kvh + h) * (2 * G + G * hd), q + ((i64)ri[0] * kvh + h) * G * hd, hd, it[1], it[2],
               kv, scale);
}

template <int G, class T>
__device__ void score_paged(float *pool, const float *fin, const float *q, int bs, int kvh, int hd, const int *rowinfo,
                            const int *items, const int *blocks, float scale) {
    const int *it = items + 4 * blockIdx.x, *ri = rowinfo + 4 * it[0];
    const int h = blockIdx.y;
    const PoolLayout L{bs, kvh, row_words<T>(hd)};
    const int *bl = blocks + ri[2];
    score<G>(fin + ((i64)it[0] * kvh + h) * 2 * G, q + ((i64)ri[0] * kvh + h) * G * hd, hd, it[1], it[2],
             PagedKV<T>{pool, L, bl, h}, PoolScore<G>{pool, L, bl, h}, scale);
}

// A sparse layer's prompt: rowinfo's rows index rows row0.. of q, k, v, and
// scores go to hs [H, n] per query head.
template <int G>
__device__ void split_prompt(float *ws, const float *q, const float *k, const float *v, int kvh, int hd, int row0,
                             const int *rowinfo, const int *items, float scale) {
    const int *it = items + 4 * blockIdx.x, *ri = rowinfo + 4 * it[0];
    const int h = blockIdx.y;
    partial<G>(ws + ((i64)it[3] * kvh + h) * (2 * G + G * hd), q + ((i64)ri[0] * kvh + h) * G * hd, hd, it[1], it[2],
               DenseKV{k, v, kvh, hd, row0, h}, scale);
}

template <int G>
__device__ void score_prompt(float *hs, int n, const float *fin, const float *q, const float *k, const float *v, int kvh,
                             int hd, int row0, const int *rowinfo, const int *items, float scale) {
    const int *it = items + 4 * blockIdx.x, *ri = rowinfo + 4 * it[0];
    const int h = blockIdx.y;
    score<G>(fin + ((i64)it[0] * kvh + h) * 2 * G, q + ((i64)ri[0] * kvh + h) * G * hd, hd, it[1], it[2],
             DenseKV{k, v, kvh, hd, row0, h}, HeadScore<G>{hs, n, h}, scale);
}

// Merges each row's items, rowsplit [R+1] (a row's items are consecutive
// workspace slots), into out, and leaves the final max and sum in fin for
// rows that score. grid (R, kvh), block NT.
extern "C" __global__ void __launch_bounds__(NT)
    attn_combine(float *out /*[T, H*hd]*/, float *fin /*[R, kvh, 2G]*/, const float *ws, const int *rowinfo,
                 const int *rowsplit /*[R+1]*/, int H, int kvh, int hd) {
    const int r = blockIdx.x, h = blockIdx.y, G = H / kvh, stride = 2 * G + G * hd;
    const int s0 = rowsplit[r], s1 = rowsplit[r + 1];
    const int *ri = rowinfo + 4 * r;
    for (int g = 0; g < G; g++) {
        float M = -INFINITY, L = 0;
        for (int s = s0; s < s1; s++) M = fmaxf(M, ws[((i64)s * kvh + h) * stride + g]);
        for (int s = s0; s < s1; s++) {
            const float *w = ws + ((i64)s * kvh + h) * stride;
            L += w[G + g] * expf(w[g] - M);
        }
        for (int d = threadIdx.x; d < hd; d += NT) {
            float o = 0;
            for (int s = s0; s < s1; s++) {
                const float *w = ws + ((i64)s * kvh + h) * stride;
                o += w[2 * G + g * hd + d] * expf(w[g] - M);
            }
            out[((i64)ri[0] * H + h * G + g) * hd + d] = o / L;
        }
        if (threadIdx.x == 0 && ri[3]) {
            fin[((i64)r * kvh + h) * 2 * G + g] = M;
            fin[((i64)r * kvh + h) * 2 * G + G + g] = L;
        }
    }
}

// Decode and other row work over the pool at head dim 128
// (split_paged_v2_g*, split_paged_v2_bf16_g* over a bfloat16 pool): the
// same work items and partials as split_paged, built to keep more of K and
// V in flight. split_paged's CTA moves through a tile in lock step, five
// barriers a tile, reading K four bytes a load and V one key after
// another; on an H200 it read K and V at 46% of the card's copy rate, and
// this kernel at 100% (decode, 32 sequences of 5000 tokens: 706 against
// 349 us a layer). Each of the four warps walks its own chunks of
// V2_CHUNK keys with no block-wide barrier: a chunk's 32 row addresses
// are found once, a lane each, and shuffled to where they are needed;
// eight lanes a key read K 16 bytes a load (four keys at once, three
// shuffles a dot product), the chunk's softmax runs a key per lane, and a
// lane owns four of the 128 dims of V (16 bytes of float32s, 8 of
// bfloat16s), several keys unrolled. The warps' partials (max, sum,
// weighted values) merge in shared memory at the end, into the one partial
// split_paged leaves. Needs 16-byte aligned rows: shm.Layout.BlockElems a
// multiple of 4 words.
#define V2_HD 128
#define V2_CHUNK 32
#define V2_WARPS (NT / 32)
// A thread a dim when the warps merge, a lane a key in a chunk's softmax.
static_assert(NT == V2_HD && V2_CHUNK == 32 && V2_WARPS * 32 == NT, "split_paged_v2's shape");
// Over a bfloat16 pool: lanes a key for the logits (4 or 8), keys' loads
// unrolled in the logits' and the values' loops, and the queries' order in
// shared memory (v2_qslot). -D overrides them to time variants
// (KVD_CUDABIN_DIR). On an H200 (BenchmarkGPUAttention, decode, 32
// sequences of 5000 tokens, bfloat16 pool, four items an SM) the
// defaults take 241 us a layer; before them (8, 2, 16, queries in place)
// 355: lanes reading their query 32 bytes apart conflicted two ways, and
// each warp kept too few keys' loads in flight. Four lanes a key, or
// fewer registers (__launch_bounds__ with V2_BF16_MINB), did no better.
#ifndef V2_BF16_KL
#define V2_BF16_KL 8
#endif
#ifndef V2_BF16_KUNROLL
#define V2_BF16_KUNROLL 4
#endif
#ifndef V2_BF16_VUNROLL
#define V2_BF16_VUNROLL 32
#endif
#ifndef V2_BF16_QPERM
#define V2_BF16_QPERM 1
#endif
static_assert(V2_BF16_KL == 4 || V2_BF16_KL == 8, "V2_BF16_KL");
#ifdef V2_BF16_MINB
#define V2_BF16_BOUNDS __launch_bounds__(NT, V2_BF16_MINB)
#else
#define V2_BF16_BOUNDS __launch_bounds__(NT)
#endif
// (#pragma unroll's argument is not macro-expanded: constants.)
constexpr int v2_bf16_kunroll = V2_BF16_KUNROLL, v2_bf16_vunroll = V2_BF16_VUNROLL;

// dot[g] = the part of query head g's dot product with a key's row that
// lane sl of the key's eight lanes holds: dims 4(sl+8i)..+3, i < 4, of a
// float32 row (four 16-byte loads), or dims 8(sl+8i)..+7, i < 2, of a
// bfloat16 row (two 16-byte loads of eight values: word w holds dims 2w,
// low half, and 2w+1). qs is the group's queries in shared memory.
__device__ __forceinline__ float bf_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

template <int G, int KL>
__device__ __forceinline__ void v2_kdot(float (&dot)[G], const float *row, const float (*qs)[V2_HD], int sl) {
    static_assert(KL == 8, "float32 rows: eight lanes a key");
    const float4 *kr = reinterpret_cast<const float4 *>(row);
    float4 kk[4];
#pragma unroll
    for (int i = 0; i < 4; i++) kk[i] = kr[sl + 8 * i];
#pragma unroll
    for (int g = 0; g < G; g++) dot[g] = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int g = 0; g < G; g++) {
            const float4 qq = reinterpret_cast<const float4 *>(qs[g])[sl + 8 * i];
            dot[g] += qq.x * kk[i].x + qq.y * kk[i].y + qq.z * kk[i].z + qq.w * kk[i].w;
        }
    }
}

template <int G, int KL>
__device__ __forceinline__ void v2_kdot(float (&dot)[G], const bf16_t *row, const float (*qs)[V2_HD], int sl) {
    constexpr int NL = 16 / KL;  // 16-byte loads a lane
    const uint4 *kr = reinterpret_cast<const uint4 *>(row);
    uint4 kk[NL];
#pragma unroll
    for (int i = 0; i < NL; i++) kk[i] = kr[sl + KL * i];
#pragma unroll
    for (int g = 0; g < G; g++) dot[g] = 0;
#pragma unroll
    for (int i = 0; i < NL; i++) {
#pragma unroll
        for (int g = 0; g < G; g++) {
#if V2_BF16_QPERM
            // qs in v2_qslot's order: a lane's two float4s are each in a
            // run of KL consecutive ones (no bank conflict).
            const float4 *qq = reinterpret_cast<const float4 *>(qs[g]) + 2 * KL * i + sl;
            const float4 a = qq[0], b = qq[KL];
#else
            const float4 *qq = reinterpret_cast<const float4 *>(qs[g]) + 2 * (sl + KL * i);
            const float4 a = qq[0], b = qq[1];
#endif
            dot[g] += a.x * bf_lo(kk[i].x) + a.y * bf_hi(kk[i].x) + a.z * bf_lo(kk[i].y) + a.w * bf_hi(kk[i].y) +
                      b.x * bf_lo(kk[i].z) + b.y * bf_hi(kk[i].z) + b.z * bf_lo(kk[i].w) + b.w * bf_hi(kk[i].w);
        }
    }
}

// An fp8 row: lane sl's one 16-byte load holds dims 16sl..16sl+15, word i
// of it dims 16sl+4i..+3, whose queries v2_qslot puts at float4 8i+sl (a
// quarter warp reads consecutive float4s).
template <int G, int KL>
__device__ __forceinline__ void v2_kdot(float (&dot)[G], const fp8_t *row, const float (*qs)[V2_HD], int sl) {
    static_assert(KL == 8, "fp8 rows: eight lanes a key");
    const uint4 kw = reinterpret_cast<const uint4 *>(row)[sl];
    const float4 k0 = fp8x4_to_f32(kw.x), k1 = fp8x4_to_f32(kw.y), k2 = fp8x4_to_f32(kw.z), k3 = fp8x4_to_f32(kw.w);
#pragma unroll
    for (int g = 0; g < G; g++) {
        const float4 *qq = reinterpret_cast<const float4 *>(qs[g]) + sl;
        const float4 a = qq[0], b = qq[8], c = qq[16], d = qq[24];
        dot[g] = a.x * k0.x + a.y * k0.y + a.z * k0.z + a.w * k0.w + b.x * k1.x + b.y * k1.y + b.z * k1.z +
                 b.w * k1.w + c.x * k2.x + c.y * k2.y + c.z * k2.z + c.w * k2.w + d.x * k3.x + d.y * k3.y +
                 d.z * k3.z + d.w * k3.w;
    }
}

// Where dim d of a query goes in shared memory: in place for float32
// rows; for bfloat16 rows with V2_BF16_QPERM, dims 8(sl+KL·i)..+3 (the
// first float4 lane sl reads for its i-th load) at float4 2KL·i+sl and
// the next four at 2KL·i+KL+sl, so a quarter warp reads consecutive
// float4s. (In place, lanes read 32 bytes apart: two-way conflicts.) For
// fp8 rows, dims 16sl+4i..+3 at float4 8i+sl.
template <class T, int KL>
__device__ __forceinline__ int v2_qslot(int d) {
    if (sizeof(T) == 1) return (8 * ((d / 4) % 4) + d / 16) * 4 + d % 4;
    if (sizeof(T) == 4 || !V2_BF16_QPERM) return d;
    const int u = d / 8, half = (d / 4) % 2, c = d % 4;  // u = sl + KL·i
    return ((2 * KL * (u / KL) + half * KL + u % KL) * 4) + c;
}

// The logits with the group's queries in registers (V2_QREG; bfloat16
// rows, G <= 4, eight lanes a key): lane sl of a key's eight multiplies the same 16
// dims of every key it takes, so it holds those dims of each query head,
// qr[g][i] for dim v2_qdim(sl, i), and reads no shared memory. With
// the queries in shared memory, each key's logits read 2 KB of them at G
// = 4 whatever K's dtype: ncu found the bf16 kernel bound by L1 and
// shared memory (L1/TEX 82% of peak, DRAM 51%; H200, 32 × 5000), and
// fp8 K and V, half the bytes, ran only 10% faster. On an H200 (run 10,
// call O) the registers took bfloat16 decode at 32 × 5000 from 243.8 to
// 228.5 us a layer and a scoring layer at 32 × 1100 from 116.4 to 100.0;
// over fp8, ptxas kept the kernel to 128 registers and spilled (360 against
// 210 us), and capped at three CTAs an SM it ran decode faster (193) but
// the scoring layer slower (89.6 against 75.7); over float32 it gained
// nothing (364.7 against 359.7). Only bfloat16 rows hold Q in registers.
#ifndef V2_QREG
#define V2_QREG 1
#endif
// Lane sl's 16 dims of a bfloat16 row, as v2_kdot reads K: dims
// 8(sl+8j)..+7, j < 2; qr[g][i] holds query head g's dim
// 8(sl+8(i/8)) + i%8. (2e1a599 has the float32 and fp8 forms measured
// above.)
__device__ __forceinline__ int v2_qdim(int sl, int i) { return 8 * (sl + 8 * (i / 8)) + i % 8; }
template <int G>
__device__ __forceinline__ void v2_kdot_r(float (&dot)[G], const bf16_t *row, const float (&qr)[G][16], int sl) {
    const uint4 *kr = reinterpret_cast<const uint4 *>(row);
    uint4 kk[2];
#pragma unroll
    for (int j = 0; j < 2; j++) kk[j] = kr[sl + 8 * j];
#pragma unroll
    for (int g = 0; g < G; g++) {
        float d = 0;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const float *a = &qr[g][8 * j];
            d += a[0] * bf_lo(kk[j].x) + a[1] * bf_hi(kk[j].x) + a[2] * bf_lo(kk[j].y) + a[3] * bf_hi(kk[j].y) +
                 a[4] * bf_lo(kk[j].z) + a[5] * bf_hi(kk[j].z) + a[6] * bf_lo(kk[j].w) + a[7] * bf_hi(kk[j].w);
        }
        dot[g] = d;
    }
}

// Lane's four dims 4·lane..+3 of a V row: one 16-byte load of float32s,
// one 8-byte load of bfloat16s (words 2·lane and 2·lane+1), or one word
// of fp8s (word lane).
__device__ __forceinline__ float4 v2_vrow(const float *row, int lane) {
    return reinterpret_cast<const float4 *>(row)[lane];
}
__device__ __forceinline__ float4 v2_vrow(const bf16_t *row, int lane) {
    const uint2 w = reinterpret_cast<const uint2 *>(row)[lane];
    return make_float4(bf_lo(w.x), bf_hi(w.x), bf_lo(w.y), bf_hi(w.y));
}
__device__ __forceinline__ float4 v2_vrow(const fp8_t *row, int lane) {
    return fp8x4_to_f32(reinterpret_cast<const unsigned *>(row)[lane]);
}

// The item's partial in ws from the warps' (after the barrier that
// publishes them): each warp's max and sum per head (wm, wl) and its
// weighted values, dim d of head g at wacc[w][g][d + skew(d)], merged by
// thread d (NT == V2_HD). A warp that had no chunk has max -inf and weighs
// 0 (an item has at least one key, so M is finite).
template <int G, int WS, int SKEW = 0>
__device__ __forceinline__ void v2_merge_warps(float *ws, const float (&wm)[V2_WARPS][G], const float (&wl)[V2_WARPS][G],
                                               const float (&wacc)[V2_WARPS][G][WS], int tid) {
#pragma unroll
    for (int g = 0; g < G; g++) {
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < V2_WARPS; w++) M = fmaxf(M, wm[w][g]);
        float L = 0, a = 0;
#pragma unroll
        for (int w = 0; w < V2_WARPS; w++) {
            const float f = wm[w][g] == -INFINITY ? 0.f : expf(wm[w][g] - M);
            L += wl[w][g] * f;
            a += wacc[w][g][tid + (SKEW ? tid / SKEW : 0)] * f;
        }
        ws[2 * G + g * V2_HD + tid] = a;  // NT == V2_HD: a thread a dim
        if (tid == 0) ws[g] = M, ws[G + g] = L;
    }
}

// lg: with SCORE, where the item's logits go for the scoring pass
// (score_logits): lg[key·G + g], scaled (the caller offsets lg by -k0·G);
// null for a row that does not score.
template <int G, class T, bool SCORE = false>
__device__ void partial_v2(float *ws, const float *q, int k0, int k1, const PagedKV<T> &kv, float scale,
                           float *lg = nullptr) {
    __shared__ __align__(16) float qs[G][V2_HD];
    __shared__ float sc[V2_WARPS][G][V2_CHUNK];
    __shared__ float wm[V2_WARPS][G], wl[V2_WARPS][G];
    __shared__ __align__(16) float wacc[V2_WARPS][G][V2_HD];
    // KL lanes a key when the logits are taken: eight for float32 rows
    // (four 16-byte loads a lane) and fp8 rows (one); for bfloat16 rows
    // V2_BF16_KL (eight by default, two loads a lane; four gives four
    // loads a lane).
    constexpr int KL = sizeof(T) == 2 ? V2_BF16_KL : 8, KPI = 32 / KL;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, sub = lane / KL, sl = lane % KL;
    constexpr bool QREG = V2_QREG && G <= 4 && KL == 8 && sizeof(T) == 2;
    float qr[G][16];  // unused (and so not allocated) unless QREG
    if constexpr (QREG) {
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < 16; i++) qr[g][i] = __ldg(q + g * V2_HD + v2_qdim(sl, i));
    } else {
        for (int i = tid; i < G * V2_HD; i += NT) qs[i / V2_HD][v2_qslot<T, KL>(i % V2_HD)] = q[i];
        __syncthreads();
    }
    float m[G], l[G];
    float4 acc[G];
#pragma unroll
    for (int g = 0; g < G; g++) m[g] = -INFINITY, l[g] = 0, acc[g] = make_float4(0, 0, 0, 0);
    for (int c0 = k0 + warp * V2_CHUNK; c0 < k1; c0 += V2_WARPS * V2_CHUNK) {
        const int tn = min(V2_CHUNK, k1 - c0);
        // Lane i finds where key c0+i's K row is (keys past tn: the
        // chunk's last, so every load below reads a real row and none
        // waits on a branch); the others get it by shuffle.
        const int mine = c0 + min(lane, tn - 1);
        const i64 koff = kv.L.k(kv.blocks[mine / kv.L.bs], kv.h, mine % kv.L.bs);
        // Logits: lanes sub*KL..sub*KL+KL-1 take key p*KPI+sub.
#pragma unroll(sizeof(T) == 4 ? 2 : v2_bf16_kunroll)
        for (int p = 0; p < V2_CHUNK / KPI; p++) {
            const int j = p * KPI + sub;
            float dot[G];
            const T *krow = reinterpret_cast<const T *>(kv.pool + __shfl_sync(0xffffffffu, koff, j));
            if constexpr (QREG)
                v2_kdot_r<G>(dot, krow, qr, sl);
            else
                v2_kdot<G, KL>(dot, krow, qs, sl);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float s = dot[g];
#pragma unroll
                for (int o = 1; o < KL; o *= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (sl == 0) sc[warp][g][j] = j < tn ? s * scale : -INFINITY;
                if (SCORE && lg != nullptr && sl == 0 && j < tn) lg[(c0 + j) * G + g] = s * scale;
            }
        }
        __syncwarp();
        // The chunk's softmax, a key per lane; a chunk has at least one
        // key, so the new max is finite and keys past tn weigh 0.
        float alpha[G];
#pragma unroll
        for (int g = 0; g < G; g++) {
            const float s = sc[warp][g][lane];
            const float mn = fmaxf(m[g], warp_max(s));
            alpha[g] = expf(m[g] - mn);  // 0 on the warp's first chunk
            const float pj = expf(s - mn);
            l[g] = l[g] * alpha[g] + warp_sum(pj);
            m[g] = mn;
            sc[warp][g][lane] = pj;
        }
        __syncwarp();
#pragma unroll
        for (int g = 0; g < G; g++) acc[g].x *= alpha[g], acc[g].y *= alpha[g], acc[g].z *= alpha[g], acc[g].w *= alpha[g];
        const i64 vdelta = (i64)kv.L.kvh * kv.L.bs * kv.L.hd;  // a block's V after its K, in words
        if (tn == V2_CHUNK) {
#pragma unroll(sizeof(T) == 4 ? 8 : v2_bf16_vunroll)  // bfloat16: loads half as wide, twice as many in flight
            for (int j = 0; j < V2_CHUNK; j++) {
                const float4 vv = v2_vrow(reinterpret_cast<const T *>(kv.pool + __shfl_sync(0xffffffffu, koff, j) + vdelta), lane);
#pragma unroll
                for (int g = 0; g < G; g++) {
                    const float pj = sc[warp][g][j];
                    acc[g].x += pj * vv.x, acc[g].y += pj * vv.y, acc[g].z += pj * vv.z, acc[g].w += pj * vv.w;
                }
            }
        } else {
            for (int j = 0; j < tn; j++) {  // tn is the warp's: the shuffles see every lane
                const float4 vv = v2_vrow(reinterpret_cast<const T *>(kv.pool + __shfl_sync(0xffffffffu, koff, j) + vdelta), lane);
#pragma unroll
                for (int g = 0; g < G; g++) {
                    const float pj = sc[warp][g][j];
                    acc[g].x += pj * vv.x, acc[g].y += pj * vv.y, acc[g].z += pj * vv.z, acc[g].w += pj * vv.w;
                }
            }
        }
        __syncwarp();  // sc is rewritten by the next chunk
    }
    // Merge the warps' partials; a warp that had no chunk has max -inf
    // and weighs 0 (an item has at least one key, so M is finite).
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < G; g++) wm[warp][g] = m[g], wl[warp][g] = l[g];
    }
#pragma unroll
    for (int g = 0; g < G; g++) reinterpret_cast<float4 *>(wacc[warp][g])[lane] = acc[g];
    __syncthreads();
    v2_merge_warps<G>(ws, wm, wl, wacc, tid);
}

// What split_paged_v2 needs to merge a row's items itself (count set), as
// attn_combine would in a launch of its own: out [T, H·V2_HD], fin [R,
// kvh, 2G], rowsplit [R+1] (a row's items are consecutive workspace
// slots), count [R, kvh] zeros, and H. count null: attn_combine follows.
struct V2Combine {
    float *out, *fin;
    const int *rowsplit;
    int *count;
    int H;
};

// The CTA that finishes the last of row r's items for its KV head merges
// the row's partials into out (and fin for a scoring row). Every CTA
// publishes its partial (each thread fences its stores, then one count
// per CTA); the one that brings the count to the row's item count reads
// them all from L2 (__ldcg: no stale L1 line) and sets the count back to
// 0 for the next launch. A row of one item merges its own partial with no
// count. On an H200 attn_combine, the launch this saves, took 14 µs a
// layer at 32 rows, 0.45 ms of a decode step (run 8).
template <int G>
__device__ void v2_combine(const V2Combine &c, const float *ws, const int *rowinfo, int r, int kvh) {
    const int h = blockIdx.y, s0 = c.rowsplit[r], n = c.rowsplit[r + 1] - s0;
    __shared__ int last;
    if (n > 1) {
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            int *k = c.count + (i64)r * kvh + h;
            last = atomicAdd(k, 1) == n - 1;
            if (last) *k = 0;
        }
        __syncthreads();
        if (!last) return;
        __threadfence();
    } else {
        __syncthreads();  // thread 0's max and sum
    }
    const int *ri = rowinfo + 4 * r;
    const i64 stride = 2 * G + G * V2_HD, step = (i64)kvh * stride;  // step: one item's partial to the next's
    const float *w0 = ws + ((i64)s0 * kvh + h) * stride;
#pragma unroll
    for (int g = 0; g < G; g++) {
        float M = -INFINITY;
        for (int s = 0; s < n; s++) M = fmaxf(M, __ldcg(w0 + s * step + g));
        float L = 0, o = 0;
        for (int s = 0; s < n; s++) {
            const float *w = w0 + s * step;
            const float f = expf(__ldcg(w + g) - M);
            L += __ldcg(w + G + g) * f;
            o += __ldcg(w + 2 * G + g * V2_HD + threadIdx.x) * f;  // NT == V2_HD: a thread a dim
        }
        c.out[((i64)ri[0] * c.H + h * G + g) * V2_HD + threadIdx.x] = o / L;
        if (threadIdx.x == 0 && ri[3]) {
            c.fin[((i64)r * kvh + h) * 2 * G + g] = M;
            c.fin[((i64)r * kvh + h) * 2 * G + G + g] = L;
        }
    }
}

// The row kernels' partial of an item on the tensor cores (decode_mma.cuh,
// included at the end of this file).
template <int G, class T, bool SCORE>
__device__ void partial_mma(float *ws, const float *q, int k0, int k1, const PagedKV<T> &kv, float scale, float *lg);

// A CTA's items of split_paged_v2 (MMA false: partial_v2 on the CUDA
// cores) or split_paged_mma (MMA: partial_mma): each item's partial, and
// with counts the row's merge (v2_combine). With SCORE (the _score
// kernels) a scoring row's logits go to lg [items, kvh, lgs, G] (lgs: the
// most keys an item has) for score_logits: H2O's scores without reading K
// again (score_paged's pass re-reads it). The _score kernels are
// instantiated over bfloat16 and fp8 pools only (the GPU's; each
// instantiation adds ~100 KB of fat binary).
//
// CTA x takes items cta[x] to cta[x+1] in turn (gpu.go's streamItems: a
// launch of as many CTAs as the card holds at once, each with the same
// number of keys, a row's keys split where one CTA's share ends), or with
// cta null item x alone.
template <int G, class T, bool SCORE, bool MMA>
__device__ void split_paged_item(float *ws, float *lg, int lgs, const float *q, const float *pool, int bs, int kvh,
                                 const int *rowinfo, const int *items, const int *blocks, float scale,
                                 const V2Combine &c, const int *cta) {
    const int h = blockIdx.y;
    const int i0 = cta != nullptr ? cta[blockIdx.x] : blockIdx.x, i1 = cta != nullptr ? cta[blockIdx.x + 1] : i0 + 1;
    for (int i = i0; i < i1; i++) {
        if (i > i0) __syncthreads();  // the last item's merge has read the warps' partials in shared memory
        const int *it = items + 4 * i, *ri = rowinfo + 4 * it[0];
        const PagedKV<T> kv{pool, PoolLayout{bs, kvh, row_words<T>(V2_HD)}, blocks + ri[2], h};
        float *mine = SCORE && ri[3] ? lg + (((i64)it[3] * kvh + h) * lgs - it[1]) * G : nullptr;
        float *w = ws + ((i64)it[3] * kvh + h) * (2 * G + G * V2_HD);
        const float *qi = q + ((i64)ri[0] * kvh + h) * G * V2_HD;
        if constexpr (MMA)
            partial_mma<G, T, SCORE>(w, qi, it[1], it[2], kv, scale, mine);
        else
            partial_v2<G, T, SCORE>(w, qi, it[1], it[2], kv, scale, mine);
        if (c.count != nullptr) v2_combine<G>(c, ws, rowinfo, it[0], kvh);
    }
}

// The scoring pass over the logits split_paged_v2_score left: with the
// row's final max and sum per head (fin [R, kvh, 2G]), each key's
// probability summed over the group is added to its score in the pool, as
// score_paged adds it. items are the scoring items.
template <int G, class T>
__device__ void score_logits(float *pool, const float *fin, const float *lg, int lgs, int bs, int kvh,
                             const int *rowinfo, const int *items, const int *blocks) {
    const int *it = items + 4 * blockIdx.x, *ri = rowinfo + 4 * it[0];
    const int h = blockIdx.y;
    const PoolScore<G> sink{pool, PoolLayout{bs, kvh, row_words<T>(V2_HD)}, blocks + ri[2], h};
    const float *f = fin + ((i64)it[0] * kvh + h) * 2 * G;
    const float *mine = lg + ((i64)it[3] * kvh + h) * lgs * G;
    float m[G], inv[G];
#pragma unroll
    for (int g = 0; g < G; g++) m[g] = f[g], inv[g] = 1.f / f[G + g];
    for (int j = it[1] + threadIdx.x; j < it[2]; j += NT) {
        float p[G];
#pragma unroll
        for (int g = 0; g < G; g++) p[g] = expf(mine[(j - it[1]) * G + g] - m[g]) * inv[g];
        sink.add(j, p);
    }
}

// The kernels over the pool for K and V stored as T, named with SFX
// (gpu.go's kvSuffix); V2B is split_paged_v2's launch bounds.
#define INSTANTIATE_POOL(G, SFX, T, V2B)                                                                               \
    extern "C" __global__ void __launch_bounds__(NT)                                                                  \
        split_paged##SFX##_g##G(float *ws, const float *q, const float *pool, int bs, int kvh, int hd,                 \
                                const int *rowinfo, const int *items, const int *blocks, float scale) {               \
        split_paged<G, T>(ws, q, pool, bs, kvh, hd, rowinfo, items, blocks, scale);                                   \
    }                                                                                                                  \
    extern "C" __global__ void V2B split_paged_v2##SFX##_g##G(                                                        \
        float *ws, const float *q, const float *pool, int bs, int kvh, int hd, const int *rowinfo, const int *items,   \
        const int *blocks, float scale, float *out, float *fin, const int *rowsplit, int *count, int H,               \
        const int *cta) {                                                                                              \
        split_paged_item<G, T, false, false>(ws, nullptr, 0, q, pool, bs, kvh, rowinfo, items, blocks, scale,         \
                             V2Combine{out, fin, rowsplit, count, H}, cta);                                           \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(NT)                                                                  \
        score_paged##SFX##_g##G(float *pool, const float *fin, const float *q, int bs, int kvh, int hd,                \
                                const int *rowinfo, const int *items, const int *blocks, float scale) {               \
        score_paged<G, T>(pool, fin, q, bs, kvh, hd, rowinfo, items, blocks, scale);                                  \
    }

// The fused scoring pass's kernels (split_paged_v2_score, score_logits),
// over bfloat16 and fp8 pools.
#define INSTANTIATE_FUSED(G, SFX, T)                                                                                   \
    extern "C" __global__ void V2_BF16_BOUNDS split_paged_v2_score##SFX##_g##G(                                       \
        float *ws, float *lg, int lgs, const float *q, const float *pool, int bs, int kvh, const int *rowinfo,         \
        const int *items, const int *blocks, float scale, float *out, float *fin, const int *rowsplit, int *count,    \
        int H, const int *cta) {                                                                                       \
        split_paged_item<G, T, true, false>(ws, lg, lgs, q, pool, bs, kvh, rowinfo, items, blocks, scale,             \
                                   V2Combine{out, fin, rowsplit, count, H}, cta);                                     \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(NT)                                                                  \
        score_logits##SFX##_g##G(float *pool, const float *fin, const float *lg, int lgs, int bs, int kvh,             \
                                 const int *rowinfo, const int *items, const int *blocks) {                           \
        score_logits<G, T>(pool, fin, lg, lgs, bs, kvh, rowinfo, items, blocks);                                      \
    }

// The group sizes instantiated: 1 to 8 query heads per KV head. Over the
// pool: float32 (no suffix), bfloat16 (_bf16) and fp8 (_fp8) pools; over
// a prompt's own float32 K and V: split_prompt, score_prompt.
#define INSTANTIATE(G)                                                                                                 \
    INSTANTIATE_POOL(G, , float, __launch_bounds__(NT))                                                               \
    INSTANTIATE_POOL(G, _bf16, bf16_t, V2_BF16_BOUNDS)                                                                \
    INSTANTIATE_POOL(G, _fp8, fp8_t, V2_BF16_BOUNDS)                                                                  \
    INSTANTIATE_FUSED(G, _bf16, bf16_t)                                                                               \
    INSTANTIATE_FUSED(G, _fp8, fp8_t)                                                                                 \
    extern "C" __global__ void __launch_bounds__(NT)                                                                  \
        split_prompt_g##G(float *ws, const float *q, const float *k, const float *v, int kvh, int hd, int row0,        \
                          const int *rowinfo, const int *items, float scale) {                                        \
        split_prompt<G>(ws, q, k, v, kvh, hd, row0, rowinfo, items, scale);                                           \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(NT)                                                                  \
        score_prompt_g##G(float *hs, int n, const float *fin, const float *q, const float *k, const float *v, int kvh,  \
                          int hd, int row0, const int *rowinfo, const int *items, float scale) {                      \
        score_prompt<G>(hs, n, fin, q, k, v, kvh, hd, row0, rowinfo, items, scale);                                   \
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
// SnapKV's observation window over a sparse layer's prompt, once the
// tensor-core kernel has attended every row of the prompt (those of the
// window too): its last W rows vote for the keys they attend to, hs [H, n]
// per query head the sum over those rows of each key's probability. The
// split kernels above did this one row at a time, each row reading all of
// K and V (and K again to score): on an H200, 0.73 s of a 6.4 s prefill of
// 32 prompts of 5000 tokens at 26 sparse layers. Here a CTA takes
// OBS_KT keys of one KV head into shared memory once and runs every row of
// the window (its G query heads × W rows) over them, in two passes: the
// rows' max and sum over the tile (obs_stats), merged per row in a fixed
// order (obs_fin), then the probabilities, summed per query head in a
// fixed order and stored, not added (obs_votes): the same sums every run.
// Logits are float32 over the prompt's float32 K, as the CPU backend's;
// row w (prompt row obsFrom + w) sees keys 0..obsFrom + w.
#define OBS_KT 32 // keys per CTA: a warp's lane each
#define OBS_RB 4  // rows a warp runs at once over its K float4
#define OBS_GMAX 8 // query heads a KV head at most (gpu.go's maxGroup)

// The CTA's keys t0..t0+OBS_KT of KV head h, as float4 rows padded to 33
// (conflict-free float4 reads across a quarter warp), zero past n.
__device__ __forceinline__ void obs_load_k(float4 (*ks)[33], const float *k, int kvh, int hd, int row0, int n, int t0,
                                           int h) {
    const int c4 = hd / 4;
    for (int i = threadIdx.x; i < OBS_KT * c4; i += NT) {
        const int j = i / c4, c = i % c4;
        ks[j][c] = t0 + j < n ? __ldg(reinterpret_cast<const float4 *>(k + ((i64)(row0 + t0 + j) * kvh + h) * hd) + c)
                              : make_float4(0, 0, 0, 0);
    }
    __syncthreads();
}

// Logits of window rows r0..r0+OBS_RB (r = g·W + w over the group's G·W
// rows) for the lane's key, -inf where the row does not see it.
__device__ __forceinline__ void obs_logits(float (&s)[OBS_RB], const float4 (*ks)[33], const float *q, int H, int G,
                                           int hd, int row0, int n, int obsFrom, int W, int h, int t0, int r0,
                                           float scale) {
    const int lane = threadIdx.x & 31, R = G * W, j = t0 + lane;
    const float4 *qr[OBS_RB];
#pragma unroll
    for (int b = 0; b < OBS_RB; b++) {
        const int r = min(r0 + b, R - 1), g = r / W, w = r % W;
        qr[b] = reinterpret_cast<const float4 *>(q + ((i64)(row0 + obsFrom + w) * H + h * G + g) * hd);
    }
    float acc[OBS_RB];
#pragma unroll
    for (int b = 0; b < OBS_RB; b++) acc[b] = 0;
    for (int c = 0; c < hd / 4; c++) {
        const float4 kk = ks[lane][c];
#pragma unroll
        for (int b = 0; b < OBS_RB; b++) {
            const float4 qq = __ldg(qr[b] + c);
            acc[b] += qq.x * kk.x + qq.y * kk.y + qq.z * kk.z + qq.w * kk.w;
        }
    }
#pragma unroll
    for (int b = 0; b < OBS_RB; b++) {
        const int r = r0 + b, w = r % W;
        s[b] = r < R && j < n && j <= obsFrom + w ? acc[b] * scale : -INFINITY;
    }
}

// st [tiles, H, W, 2]: each row's max and sum of exp(logit - max) over the
// tile's keys (-inf and 0 where it sees none). grid (tiles, kvh), block NT.
extern "C" __global__ void __launch_bounds__(NT)
    obs_stats(float *st /*[tiles, H, W, 2]*/, const float *q /*[T, H*hd]*/, const float *k /*[T, kvh*hd]*/, int kvh,
              int H, int hd, int row0, int n, int obsFrom, float scale) {
    __shared__ float4 ks[OBS_KT][33];
    const int h = blockIdx.y, t0 = blockIdx.x * OBS_KT, G = H / kvh, W = n - obsFrom, R = G * W;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    obs_load_k(ks, k, kvh, hd, row0, n, t0, h);
    for (int r0 = warp * OBS_RB; r0 < R; r0 += (NT / 32) * OBS_RB) {  // uniform per warp
        float s[OBS_RB];
        obs_logits(s, ks, q, H, G, hd, row0, n, obsFrom, W, h, t0, r0, scale);
#pragma unroll
        for (int b = 0; b < OBS_RB; b++) {
            const float m = warp_max(s[b]);
            const float e = warp_sum(m == -INFINITY ? 0.f : expf(s[b] - m));
            const int r = r0 + b;
            if (lane == 0 && r < R) {
                const int g = r / W, w = r % W;
                float *o = st + (((i64)blockIdx.x * H + h * G + g) * W + w) * 2;
                o[0] = m, o[1] = e;
            }
        }
    }
}

// fin [H, W, 2]: each row's max and sum over all keys, merged from st's
// tiles, a warp a row (lanes over tiles, then the warp's fixed shuffle
// order). grid ceil(H·W / (NT/32)), block NT.
extern "C" __global__ void __launch_bounds__(NT) obs_fin(float *fin, const float *st, int tiles, int HW) {
    const int lane = threadIdx.x & 31, i = blockIdx.x * (NT / 32) + (threadIdx.x >> 5);
    if (i >= HW) return;  // uniform per warp
    float M = -INFINITY;
    for (int t = lane; t < tiles; t += 32) M = fmaxf(M, st[((i64)t * HW + i) * 2]);
    M = warp_max(M);
    float L = 0;
    for (int t = lane; t < tiles; t += 32) {
        const float *o = st + ((i64)t * HW + i) * 2;
        if (o[1] > 0) L += o[1] * expf(o[0] - M);
    }
    L = warp_sum(L);
    if (lane == 0) fin[2 * i] = M, fin[2 * i + 1] = L;
}

// hs [H, n] = per query head, the window rows' probabilities of each key
// summed (a warp's rows in order, then the warps in order). G ≤ OBS_GMAX
// (gpu.go's maxGroup). grid (tiles, kvh), block NT.
extern "C" __global__ void __launch_bounds__(NT)
    obs_votes(float *hs /*[H, n]*/, const float *fin /*[H, W, 2]*/, const float *q /*[T, H*hd]*/,
              const float *k /*[T, kvh*hd]*/, int kvh, int H, int hd, int row0, int n, int obsFrom, float scale) {
    __shared__ float4 ks[OBS_KT][33];
    __shared__ float part[NT / 32][OBS_GMAX][OBS_KT];
    const int h = blockIdx.y, t0 = blockIdx.x * OBS_KT, G = H / kvh, W = n - obsFrom, R = G * W;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int g = 0; g < G; g++) part[warp][g][lane] = 0;
    obs_load_k(ks, k, kvh, hd, row0, n, t0, h);
    for (int r0 = warp * OBS_RB; r0 < R; r0 += (NT / 32) * OBS_RB) {
        float s[OBS_RB];
        obs_logits(s, ks, q, H, G, hd, row0, n, obsFrom, W, h, t0, r0, scale);
#pragma unroll
        for (int b = 0; b < OBS_RB; b++) {
            const int r = r0 + b;
            if (r >= R || s[b] == -INFINITY) continue;
            const int g = r / W, w = r % W;
            const float *f = fin + ((i64)(h * G + g) * W + w) * 2;
            part[warp][g][lane] += expf(s[b] - f[0]) * (1.f / f[1]);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * OBS_KT; i += NT) {
        const int g = i / OBS_KT, j = i % OBS_KT;
        if (t0 + j >= n) continue;
        float v = 0;
#pragma unroll
        for (int wp = 0; wp < NT / 32; wp++) v += part[wp][g][j];
        hs[(i64)(h * G + g) * n + t0 + j] = v;
    }
}

// ---------------------------------------------------------------------------
// Flash-style prefill on the tensor cores: a CTA takes FLASH_BM query rows
// of one query head, four warps of 16 rows, and walks the keys they see in
// tiles of FLASH_BN, with TF32 mma.sync (m16n8k8, float32 accumulate) for
// Q·Kᵀ and P·V and the online softmax in registers. These rows only
// produce outputs: H2O's decode rows stay on the kernels above, which
// know the final probabilities, and a sparse prompt's observation window
// votes in obs_votes after this kernel has attended it. The default is
// flash_mma.cuh's bf16 variant of this kernel (1.9× faster on an H200);
// this one runs with KVD_FLASH_TF32=1.

#define FLASH_BN 32
// Launched with flash_smem_bytes<HD, T>() of dynamic shared memory.

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

// How flash keeps K and V tiles of type T (as the pool or prompt stores
// them) in shared memory, double-buffered with rows padded for
// conflict-free fragments, and reads TF32 fragments from them. kcol is the
// head dim that a k-step's fragment column t (hi = 0) or t+4 (hi = 1)
// stands for; Q's fragments are loaded by the same map, so any permutation
// of the dims within a k-step gives the same dot products.
template <int HD, class T> struct FlashTiles;

// Queues tile kb's keys and values into buffer b of the K and V tiles (rows
// of T, padded to KS), 16 bytes a copy: 4 float32s or 8 bfloat16s.
template <int HD, class T, int KS, class KV>
__device__ void flash_load(T (*K)[FLASH_BN][KS], T (*V)[FLASH_BN][KS], const KV &kv, int kb, int kv_end, int b) {
    constexpr int VPC = 16 / sizeof(T);  // values a copy
    for (int i = threadIdx.x; i < FLASH_BN * HD / VPC; i += blockDim.x) {
        const int key = i / (HD / VPC), c = (i % (HD / VPC)) * VPC;
        const bool ok = kb + key < kv_end;
        const int j = ok ? kb + key : 0;
        cp_async16(&K[b][key][c], kv.key(j) + c, ok);
        cp_async16(&V[b][key][c], kv.val(j) + c, ok);
    }
    cp_async_commit();
}

// float32 K and V: their values feed the TF32 units as they are (the
// units read the top 19 bits).
template <int HD> struct FlashTiles<HD, float> {
    static constexpr int KS = HD + 4;                   // a padded row
    static constexpr int WORDS = 2 * 2 * FLASH_BN * KS;  // K and V, two buffers each
    float (*K)[FLASH_BN][KS], (*V)[FLASH_BN][KS];
    __device__ explicit FlashTiles(float *smem)
        : K(reinterpret_cast<float(*)[FLASH_BN][KS]>(smem)),
          V(reinterpret_cast<float(*)[FLASH_BN][KS]>(smem + 2 * FLASH_BN * KS)) {}
    template <class KV> __device__ void load(const KV &kv, int kb, int kv_end, int b) const {
        flash_load<HD>(K, V, kv, kb, kv_end, b);
    }
    static __device__ __forceinline__ int kcol(int kk, int t, int hi) { return kk * 8 + t + hi * 4; }
    __device__ __forceinline__ void kfrag(unsigned &b0, unsigned &b1, int b, int key, int kk, int t) const {
        b0 = __float_as_uint(K[b][key][kk * 8 + t]);
        b1 = __float_as_uint(K[b][key][kk * 8 + t + 4]);
    }
    __device__ __forceinline__ unsigned vfrag(int b, int key, int d) const { return __float_as_uint(V[b][key][d]); }
};

// bfloat16 K and V (a bfloat16 pool): staged as they are, half the bytes
// of float32 tiles, and widened as fragments are read (exact: a bf16 is a
// TF32 with a shorter mantissa). Rows of HD + 8 values keep every row on
// 16 bytes for cp.async and put a fragment's 8 rows 4 banks apart. A
// k-step's columns t and t+4 stand for dims 2t and 2t+1, one word: a
// single shared load gives both of a key fragment's values.
template <int HD> struct FlashTiles<HD, bf16_t> {
    static constexpr int KS = HD + 8;                       // a padded row, in bf16s
    static constexpr int WORDS = 2 * 2 * FLASH_BN * KS / 2;  // K and V, two buffers each
    bf16_t (*K)[FLASH_BN][KS], (*V)[FLASH_BN][KS];
    __device__ explicit FlashTiles(float *smem)
        : K(reinterpret_cast<bf16_t(*)[FLASH_BN][KS]>(smem)),
          V(reinterpret_cast<bf16_t(*)[FLASH_BN][KS]>(smem + FLASH_BN * KS)) {}
    template <class KV> __device__ void load(const KV &kv, int kb, int kv_end, int b) const {
        flash_load<HD>(K, V, kv, kb, kv_end, b);
    }
    static __device__ __forceinline__ int kcol(int kk, int t, int hi) { return kk * 8 + 2 * t + hi; }
    __device__ __forceinline__ void kfrag(unsigned &b0, unsigned &b1, int b, int key, int kk, int t) const {
        const unsigned w = reinterpret_cast<const unsigned *>(&K[b][key][kk * 8])[t];  // dims 2t, 2t+1
        b0 = w << 16;
        b1 = w & 0xffff0000u;
    }
    __device__ __forceinline__ unsigned vfrag(int b, int key, int d) const { return (unsigned)V[b][key][d] << 16; }
};

// The dynamic shared memory flash<HD> uses over K and V of type T: their
// tiles and each warp's P.
template <int HD, class T> constexpr int flash_smem_bytes() {
    return (FlashTiles<HD, T>::WORDS + 4 * 16 * (FLASH_BN + 4)) * 4;
}

// One tile: query rows row0..row0+nrows of q [T, H*HD] (head h), the first
// at position qpos0 of its sequence, so row i sees keys 0..qpos0+i. The next
// K/V tile streams into shared memory (cp.async) while this one is used;
// K and V go to the TF32 units as FlashTiles says, Q and P are rounded to
// TF32.
template <int HD, class KV>
__device__ void flash(float *out, const float *q, int H, int h, int row0, int nrows, int qpos0, const KV &kv,
                      float scale) {
    typedef FlashTiles<HD, typename KV::elem> Tiles;
    constexpr int PS = FLASH_BN + 4;
    extern __shared__ __align__(16) float smem[];
    const Tiles tiles(smem);
    float(*Ps)[16][PS] = reinterpret_cast<float(*)[16][PS]>(smem + Tiles::WORDS);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;  // exp(x·scale) = exp2(x·scale·log2 e)
    const int kv_end = qpos0 + nrows;                       // keys the last row sees
    const int wr = warp * 16;
    const int warp_last = qpos0 + min(wr + 15, nrows - 1);  // this warp's last row's position
    auto load = [&](int kb, int b) { tiles.load(kv, kb, kv_end, b); };
    load(0, 0);
    // Q fragments, scaled, for rows wr+g and wr+g+8 of this warp.
    unsigned qa[HD / 8][4];
#pragma unroll
    for (int kk = 0; kk < HD / 8; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = wr + g + (i & 1) * 8, c = Tiles::kcol(kk, t, i >> 1);
            const float v = r < nrows ? q[((i64)(row0 + r) * H + h) * HD + c] * sl2 : 0.f;
            qa[kk][i] = to_tf32(v);
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    for (int kb = 0, b = 0; kb < kv_end; kb += FLASH_BN, b ^= 1) {
        if (kb + FLASH_BN < kv_end) {
            load(kb + FLASH_BN, b ^ 1);  // the buffer the last iteration finished with
            cp_async_wait<1>();         // this tile's group is done, the next may fly
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (wr < nrows && kb <= warp_last) {  // else no row of this warp sees this tile
            float s[FLASH_BN / 8][4];
#pragma unroll
            for (int n = 0; n < FLASH_BN / 8; n++) {
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
                for (int kk = 0; kk < HD / 8; kk++) {
                    unsigned b0, b1;
                    tiles.kfrag(b0, b1, b, n * 8 + g, kk, t);
                    mma_tf32(s[n], qa[kk], b0, b1);
                }
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
            flash_max(mx, m, mu, alpha);
            float sum[2] = {0.f, 0.f};
#pragma unroll
            for (int n = 0; n < FLASH_BN / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float p = exp2f(s[n][e] - mu[e >> 1]);
                    sum[e >> 1] += p;
                    Ps[warp][g + (e >> 1) * 8][n * 8 + 2 * t + (e & 1)] = __uint_as_float(to_tf32(p));
                }
            flash_sum(sum, alpha, l, o);
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
                    mma_tf32(o[n], pa[kk], tiles.vfrag(b, kk * 8 + t, n * 8 + g),
                             tiles.vfrag(b, kk * 8 + t + 4, n * 8 + g));
        }
        __syncthreads();  // buffer b is refilled two tiles on
    }
    flash_store<HD>(out, o, l, H, h, row0, nrows, wr, g, t);
}

// Which core the entry points below run for a tile: flash (TF32) here,
// flash_mma (bf16) in flash_mma.cuh.
struct FlashTF32 {
    template <int HD, class KV>
    static __device__ __forceinline__ void run(float *out, const float *q, int H, int h, int row0, int nrows, int qpos0,
                                               const KV &kv, float scale) {
        flash<HD>(out, q, H, h, row0, nrows, qpos0, kv, scale);
    }
};

#define INSTANTIATE_FLASH(HD)                                                                                         \
    extern "C" __global__ void __launch_bounds__(128) flash_paged_hd##HD(float *out, const float *q,                 \
                                                                         const float *pool, int bs, int kvh, int H,  \
                                                                         const int *tiles, const int *blocks,        \
                                                                         float scale) {                              \
        flash_paged<FlashTF32, HD, float>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                           \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128)                                                                 \
        flash_paged_bf16_hd##HD(float *out, const float *q, const float *pool, int bs, int kvh, int H,                \
                                const int *tiles, const int *blocks, float scale) {                                  \
        flash_paged<FlashTF32, HD, bf16_t>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                          \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) flash_prompt_hd##HD(float *out, const float *q, const float *k, \
                                                                          const float *v, int kvh, int H, int row0,  \
                                                                          int nrows, float scale) {                  \
        flash_prompt<FlashTF32, HD>(out, q, k, v, kvh, H, row0, nrows, scale);                                       \
    }
INSTANTIATE_FLASH(64)
INSTANTIATE_FLASH(128)

// The bf16 m16n8k16 prefill kernels (the default; KVD_FLASH_TF32=1 in the
// gateway's environment runs flash above instead), over the helpers above.
#include "flash_mma.cuh"

// Three CTAs an SM at head dim 128 (an H100's or H200's shared memory
// holds three, an A100's two: 168 registers), four at 64 (128
// registers); ptxas fits both without spills.
#ifndef FLASH_MMA_CTAS128
#define FLASH_MMA_CTAS128 3
#endif
#define FLASH_MMA_CTAS(HD) ((HD) == 64 ? 4 : FLASH_MMA_CTAS128)

#define INSTANTIATE_FLASH_MMA(HD)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128, FLASH_MMA_CTAS(HD))                                            \
        flash_paged_mma_hd##HD(float *out, const float *q, const float *pool, int bs, int kvh, int H,                 \
                               const int *tiles, const int *blocks, float scale) {                                   \
        flash_paged<FlashMMA, HD, float>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                            \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128, FLASH_MMA_CTAS(HD))                                            \
        flash_paged_mma_bf16_hd##HD(float *out, const float *q, const float *pool, int bs, int kvh, int H,            \
                                    const int *tiles, const int *blocks, float scale) {                              \
        flash_paged<FlashMMA, HD, bf16_t>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                           \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128, FLASH_MMA_CTAS(HD))                                            \
        flash_paged_mma_fp8_hd##HD(float *out, const float *q, const float *pool, int bs, int kvh, int H,             \
                                   const int *tiles, const int *blocks, float scale) {                               \
        flash_paged<FlashMMA, HD, fp8_t>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                            \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128, FLASH_MMA_CTAS(HD))                                            \
        flash_prompt_mma_hd##HD(float *out, const float *q, const float *k, const float *v, int kvh, int H, int row0, \
                                int nrows, float scale) {                                                            \
        flash_prompt<FlashMMA, HD>(out, q, k, v, kvh, H, row0, nrows, scale);                                        \
    }                                                                                                                 \
    /* The prompt's K and V rounded to bf16 first (the values the kernel  */                                         \
    /* above rounds them to as it reads them): bf16 tiles, as the pool's. */                                         \
    extern "C" __global__ void __launch_bounds__(128, FLASH_MMA_CTAS(HD))                                            \
        flash_prompt_mma_bf16_hd##HD(float *out, const float *q, const bf16_t *k, const bf16_t *v, int kvh, int H,    \
                                     int row0, int nrows, float scale) {                                             \
        flash_prompt<FlashMMA, HD, bf16_t>(out, q, k, v, kvh, H, row0, nrows, scale);                                \
    }
INSTANTIATE_FLASH_MMA(64)
INSTANTIATE_FLASH_MMA(128)

// Decode rows over a bfloat16 or fp8 pool on the tensor cores, over
// split_paged_v2's items and merge and flash_mma.cuh's helpers.
#include "decode_mma.cuh"
