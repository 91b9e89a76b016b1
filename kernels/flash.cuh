// What the prefill attention kernels share: how they read K and V (the
// pool's pages, PagedKV, or a prompt's own rows, DenseKVT), cp.async, the
// online softmax of a warp's rows in the mma C layout and the entry
// wrappers that give a core (flash, flash_mma, flash_wgmma) its tile.
// attention.cu includes it for its kernels; attention_sm90a.cu for the
// wgmma ones, which are built apart (see that file).
#pragma once
#include "common.cuh"

// Query rows a prefill tile (a CTA): four warps of 16 rows.
#define FLASH_BM 64

// Paged keys: token j of a table is slot j % bs of block blocks[j / bs].
// T is how the pool stores K and V (float, bf16_t packed two a word, or
// fp8_t four a word);
// L's row length is in words (row_words).
template <class T> struct PagedKV {
    typedef T elem;
    const float *pool;
    PoolLayout L;
    const int *blocks;
    int h;
    __device__ const T *key(int j) const {
        return reinterpret_cast<const T *>(pool + L.k(blocks[j / L.bs], h, j % L.bs));
    }
    __device__ const T *val(int j) const {
        return reinterpret_cast<const T *>(pool + L.v(blocks[j / L.bs], h, j % L.bs));
    }
};

// A row's length in the pool's words for head dim hd, K and V stored as T.
template <class T> __device__ __forceinline__ int row_words(int hd) { return hd * (int)sizeof(T) / 4; }

// Dense keys: token j is row row0 + j of k, v [T, kvh*hd], stored as T
// (float32, or bf16 for flash_prompt_mma_bf16).
template <class T> struct DenseKVT {
    typedef T elem;
    const T *k, *v;
    int kvh, hd, row0, h;
    __device__ const T *key(int j) const { return k + ((i64)(row0 + j) * kvh + h) * hd; }
    __device__ const T *val(int j) const { return v + ((i64)(row0 + j) * kvh + h) * hd; }
};
typedef DenseKVT<float> DenseKV;

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// 2^x for the probabilities: the bare ex2.approx.ftz (relative error
// ~2^-22, far under P's bf16 rounding; results below 2^-126 flush to 0,
// beside a row's largest term, 1). exp2f (-DFLASH_PRECISE_EXP2) spends
// several instructions more on each, and this kernel is latency bound:
// on an H200 (run 11, call U, nvcc 11.8's sm_90 code) a 5000-token prompt
// took 1168.2 against 1210.7 µs a layer over bfloat16 and 1343.5 against
// 1379.4 over fp8 (two runs each).
__device__ __forceinline__ float flash_exp2(float x) {
#ifdef FLASH_PRECISE_EXP2
    return exp2f(x);
#else
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}

// lo and hi rounded to bf16 (nearest even), lo in the low half. cvt puts
// its first source in the high half.
__device__ __forceinline__ unsigned bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// The online softmax of flash, flash_mma and flash_wgmma (flash_max; the
// last keeps its own sums), for a warp's
// rows g (i = 0) and g+8 (i = 1). flash_max takes mx, this lane's maxima of
// a tile's logits, to the rows' maxima over the tile and the running max m
// (updated); mu is what the tile's logits lose before exp2 (0 for a row
// that has seen nothing yet) and alpha what the earlier sums and outputs
// are scaled by.
__device__ __forceinline__ void flash_max(float (&mx)[2], float (&m)[2], float (&mu)[2], float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float mn = fmaxf(m[i], mx[i]);
        mu[i] = mn == -INFINITY ? 0.f : mn;  // a row that has seen nothing yet
        alpha[i] = exp2f(m[i] - mu[i]);
        m[i] = mn;
    }
}

// flash_sum adds sum, this lane's part of the tile's exp2s, to the rows'
// running sums l, and scales the outputs o [HD/8][4] (C layout) by alpha.
template <int NO>
__device__ __forceinline__ void flash_sum(float (&sum)[2], const float (&alpha)[2], float (&l)[2], float (&o)[NO][4]) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
        sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
        sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
        l[i] = l[i] * alpha[i] + sum[i];
    }
#pragma unroll
    for (int n = 0; n < NO; n++)
        o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];
}

// flash_store writes the warp's rows wr+g and wr+g+8 (those below nrows)
// of o / l to out [T, H*HD], head h, the tile's first row at row0.
template <int HD>
__device__ __forceinline__ void flash_store(float *out, const float (&o)[HD / 8][4], const float (&l)[2], int H, int h,
                                            int row0, int nrows, int wr, int g, int t) {
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

// Prefill rows over the pool, its K and V stored as T. tiles [ntiles, 4]:
// first row, rows, the first row's position, and where its sequence's
// table starts in blocks. Rows must start on 16 bytes (cp.async): a
// BlockElems that is a multiple of 4 words. grid (ntiles, H), block 128.
template <class Core, int HD, class T>
__device__ void flash_paged(float *out, const float *q, const float *pool, int bs, int kvh, int H,
                            const int *tiles /*[ntiles, 4]*/, const int *blocks, float scale) {
    const int *tl = tiles + 4 * blockIdx.x;
    const int h = blockIdx.y, group = H / kvh;
    const PagedKV<T> kv{pool, PoolLayout{bs, kvh, row_words<T>(HD)}, blocks + tl[3], h / group};
    Core::template run<HD>(out, q, H, h, tl[0], tl[1], tl[2], kv, scale);
}

// A sparse layer's prompt rows 0..nrows of row0..row0+n (all of them, or
// those before the observation window when the window votes on the split
// kernels) over the prompt's own K and V. grid (ceil(nrows /
// FLASH_BM), H), block 128.
template <class Core, int HD, class T = float>
__device__ void flash_prompt(float *out, const float *q, const T *k, const T *v, int kvh, int H, int row0, int nrows,
                             float scale) {
    // The last rows first: a tile's work grows with its rows' positions,
    // and the heaviest tiles left for the last wave leave SMs idle (as
    // gpu.go orders the pool kernel's tiles).
    const int h = blockIdx.y, group = H / kvh, r0 = (gridDim.x - 1 - blockIdx.x) * FLASH_BM;
    const DenseKVT<T> kv{k, v, kvh, HD, row0, h / group};
    Core::template run<HD>(out, q, H, h, row0 + r0, min(FLASH_BM, nrows - r0), r0, kv, scale);
}
