// Flash-style prefill on Hopper's warpgroup tensor cores (wgmma, sm_90a):
// flash_wgmma<HD, KV> does what flash_mma.cuh's flash_mma does (the same
// tiles of FLASH_BM query rows of one head, the same causal masking,
// online softmax in float32, Q, P, K and V rounded to bf16) with the four
// warps of the CTA as one warpgroup: Q·Kᵀ of a 64-key tile is HD/16
// wgmma m64n64k16 and P·V is 4 wgmma m64n<HD>k16, with Q and P as A from
// registers (the mma.sync A layout, so Q's and P's fragments are built as
// flash_mma builds them) and K and V read by the tensor cores from shared
// memory through descriptors: no ldmatrix, 12 wgmma a tile at head dim
// 128 where flash_mma issues 128 mma and 64 ldmatrix a warp.
//
// Shared memory: K and V tiles of 64 keys in wgmma's 128-byte swizzled
// layout. A tile is HD/64 column blocks of 64 dims (128 bytes a key); key
// n's 16-byte chunk c of a block sits at n·128 + ((c ^ n % 8) · 16), so
// eight keys make a 1024-byte atom (on 1024 bytes). For Q·Kᵀ, K is B
// "K-major" (a key's dims contiguous): SBO = 1024 between groups of 8
// keys, a k-step of 16 dims is 32 bytes further into the block. For P·V,
// V is B "MN-major" (transposed, imm-trans-b = 1: a key's dims, now N,
// contiguous): SBO = 1024 between groups of 8 keys (now K), LBO = the
// column block's size between blocks of 64 dims, a k-step of 16 keys 2048
// bytes further. The PTX ISA's canonical layouts ("Shared Memory Matrix
// Layout", Swizzle<3,4,3>) give these strides.
//
// wgmma reads shared memory through the async proxy: what cp.async and
// the fp8 widening wrote is published to it by fence.proxy.async before
// the barrier. Accumulators: wgmma.fence before each batch (their registers
// were written by ordinary instructions), commit, wait, and an empty asm
// on every accumulator after the wait so the compiler reads none early.
//
// nvcc 11.8 (make kernels' pinned compiler) has no sm_90a target and its
// ptxas does not know wgmma: attention_sm90a.cu is compiled to PTX only,
// the wgmma text passing through as inline assembly, and make kernels
// marks the PTX for sm_90a (.version 8.0, .target sm_90a); the driver
// compiles it when the gateway starts on an H100 or H200 (gpu.go).
#pragma once

// K and V buffers in flight: tile j+BUFS-1 streams in while tile j is used.
#ifndef FLASH_WGMMA_BUFS
#define FLASH_WGMMA_BUFS 2
#endif

// d (+)= a·B for one wgmma: a, this warp's 16 rows of A (bf16 pairs in
// the mma.sync m16n8k16 A layout), B in shared memory by its descriptor
// (K-major, or MN-major with TNSP = 1: transposed); d is the m64nN C
// layout, n-tiles of 8 columns as mma.sync's; d is overwritten when
// scale_d is 0.
template <int TNSP>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[8][4], const unsigned (&a)[4], unsigned long long desc,
                                                int scale_d) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
          "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
          "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
          "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(TNSP));
}
template <int TNSP>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[16][4], const unsigned (&a)[4], unsigned long long desc,
                                                 int scale_d) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
          "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
          "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
          "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
          "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
          "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
          "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),
          "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(TNSP));
}

// wgmma's three barriers on the register side.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Makes what this thread wrote to shared memory visible to the async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins accumulators after wgmma_wait0: nothing reads them before it.
template <int N> __device__ __forceinline__ void wgmma_hold(float (&d)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+f"(d[n][e])::"memory");
}

// A shared-memory matrix descriptor, 128-byte swizzle: addr (shared
// window), lbo and sbo in bytes.
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned addr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}

// Byte offset of key n's 16-byte chunk c (dims 8c..8c+7) in a swizzled
// tile of BN keys.
template <int BN> __device__ __forceinline__ int wg_swz(int n, int c) {
    return (c >> 3) * (BN * 128) + n * 128 + (((c & 7) ^ (n & 7)) << 4);
}

// P·V's m64n<HD>k16, transposed B.
template <int HD> __device__ __forceinline__ void wgmma_pv(float (&o)[HD / 8][4], const unsigned (&a)[4], unsigned long long d);
template <> __device__ __forceinline__ void wgmma_pv<64>(float (&o)[8][4], const unsigned (&a)[4], unsigned long long d) {
    wgmma_m64n64k16<1>(o, a, d, 1);
}
template <> __device__ __forceinline__ void wgmma_pv<128>(float (&o)[16][4], const unsigned (&a)[4], unsigned long long d) {
    wgmma_m64n128k16<1>(o, a, d, 1);
}

// The K and V rows of a thread's run of R consecutive keys j..j+R-1 for
// the tile loaders: the first rows and the stride to the next, in values
// of T. Over the pool a run inside one block is one table lookup and one
// division (a division by the runtime block size is a dozen instructions:
// one a row was most of the loaders' work); a run that crosses a block
// (a block size that R does not divide) takes its rows one by one. Rows
// past kv_end are zero-filled by cp.async, which reads nothing there: they
// get the run's first row (key 0's when the whole run is past the end).
template <class T, int R, class F>
__device__ __forceinline__ void kv_run(const PagedKV<T> &kv, int j, int kv_end, F copy) {
    const int s = j < kv_end ? j : 0;
    const int q = s / kv.L.bs, r = s - q * kv.L.bs;
    const float *w = kv.pool + kv.L.k(kv.blocks[q], kv.h, r);
    const T *k = reinterpret_cast<const T *>(w), *v = reinterpret_cast<const T *>(w + (i64)kv.L.kvh * kv.L.bs * kv.L.hd);
    if (r + R <= kv.L.bs) {
        const int stride = kv.L.hd * 4 / (int)sizeof(T);
#pragma unroll
        for (int i = 0; i < R; i++) {
            const bool ok = j + i < kv_end;
            copy(i, ok ? k + i * stride : k, ok ? v + i * stride : v, ok);
        }
    } else {
#pragma unroll
        for (int i = 0; i < R; i++) {
            const bool ok = j + i < kv_end;
            copy(i, ok ? kv.key(j + i) : k, ok ? kv.val(j + i) : v, ok);
        }
    }
}
template <class T, int R, class F>
__device__ __forceinline__ void kv_run(const DenseKVT<T> &kv, int j, int kv_end, F copy) {
    const int s = j < kv_end ? j : 0;
    const T *k = kv.key(s), *v = kv.val(s);
    const i64 stride = (i64)kv.kvh * kv.hd;
#pragma unroll
    for (int i = 0; i < R; i++) {
        const bool ok = j + i < kv_end;
        copy(i, ok ? k + i * stride : k, ok ? v + i * stride : v, ok);
    }
}

// How flash_wgmma stages K and V of type T: the swizzled bf16 tiles,
// FLASH_WGMMA_BUFS buffers (bf16: the pool's rows land there by cp.async)
// or one (fp8: the raw rows land in FLASH_WGMMA_BUFS buffers of their
// own, and stage() widens the landed one, as flash_mma's fp8 tiles do).
// base is 1024-byte aligned.
template <int HD, class T> struct WgTiles;

template <int HD> struct WgTiles<HD, bf16_t> {
    static constexpr int BN = 64, TILE = BN * HD * 2;  // a K or V tile's bytes
    static constexpr int BYTES = FLASH_WGMMA_BUFS * 2 * TILE;
    static constexpr bool STAGED = false;
    char *base;
    __device__ explicit WgTiles(char *b) : base(b) {}
    __device__ char *K(int b) const { return base + b * 2 * TILE; }
    __device__ char *V(int b) const { return base + b * 2 * TILE + TILE; }
    // A thread copies chunk c of R consecutive keys (a run: kv_run); at
    // head dim 128 the warp's 32 lanes read two runs' rows whole (four
    // runs' at 64).
    template <class KV> __device__ void load(const KV &kv, int kb, int kv_end, int b) const {
        constexpr int CPR = HD / 8, R = BN * CPR / 128;  // 16-byte chunks a row; keys a thread
        const int c = threadIdx.x % CPR, k0 = threadIdx.x / CPR * R;
        char *k = K(b), *v = V(b);
        kv_run<bf16_t, R>(kv, kb + k0, kv_end, [&](int i, const bf16_t *kr, const bf16_t *vr, bool ok) {
            const int off = wg_swz<BN>(k0 + i, c);
            cp_async16(k + off, kr + c * 8, ok);
            cp_async16(v + off, vr + c * 8, ok);
        });
        cp_async_commit();
    }
    __device__ void stage(int) const {}
};

template <int HD> struct WgTiles<HD, fp8_t> {
    static constexpr int BN = 64, TILE = BN * HD * 2, RAW = BN * HD;
    static constexpr int BYTES = 2 * TILE + FLASH_WGMMA_BUFS * 2 * RAW;  // bf16 K and V, raw K and V a buffer each
    static constexpr bool STAGED = true;
    char *base;
    __device__ explicit WgTiles(char *b) : base(b) {}
    __device__ char *K(int) const { return base; }
    __device__ char *V(int) const { return base + TILE; }
    __device__ fp8_t *RK(int b) const { return reinterpret_cast<fp8_t *>(base + 2 * TILE + b * 2 * RAW); }
    __device__ fp8_t *RV(int b) const { return reinterpret_cast<fp8_t *>(base + 2 * TILE + b * 2 * RAW + RAW); }
    template <class KV> __device__ void load(const KV &kv, int kb, int kv_end, int b) const {
        constexpr int CPR = HD / 16, R = BN * CPR / 128;  // 16-byte pieces a raw row; keys a thread
        const int c = threadIdx.x % CPR * 16, k0 = threadIdx.x / CPR * R;
        fp8_t *k = RK(b) + k0 * HD + c, *v = RV(b) + k0 * HD + c;
        kv_run<fp8_t, R>(kv, kb + k0, kv_end, [&](int i, const fp8_t *kr, const fp8_t *vr, bool ok) {
            cp_async16(k + i * HD, kr + c, ok);
            cp_async16(v + i * HD, vr + c, ok);
        });
        cp_async_commit();
    }
    // Raw buffer b, landed and published by a barrier, widened into the
    // swizzled bf16 tiles: 16 values (two chunks) a thread a pass.
    __device__ void stage(int b) const {
        constexpr int CPR = HD / 16;
        for (int i = threadIdx.x; i < 2 * BN * CPR; i += 128) {
            const bool isv = i >= BN * CPR;
            const int j = isv ? i - BN * CPR : i, key = j / CPR, c = j % CPR;
            const uint4 w = *reinterpret_cast<const uint4 *>((isv ? RV(b) : RK(b)) + key * HD + c * 16);
            uint4 lo, hi;
            FlashMmaTiles<HD, fp8_t>::fp8x4_bf16(lo.x, lo.y, w.x);
            FlashMmaTiles<HD, fp8_t>::fp8x4_bf16(lo.z, lo.w, w.y);
            FlashMmaTiles<HD, fp8_t>::fp8x4_bf16(hi.x, hi.y, w.z);
            FlashMmaTiles<HD, fp8_t>::fp8x4_bf16(hi.z, hi.w, w.w);
            char *dst = isv ? V(0) : K(0);
            *reinterpret_cast<uint4 *>(dst + wg_swz<BN>(key, 2 * c)) = lo;
            *reinterpret_cast<uint4 *>(dst + wg_swz<BN>(key, 2 * c + 1)) = hi;
        }
    }
};

// The dynamic shared memory flash_wgmma<HD> uses over K and V of type T,
// with room to align the tiles on 1024 bytes.
template <int HD, class T> constexpr int flash_wgmma_smem_bytes() { return WgTiles<HD, T>::BYTES + 1024; }

// One tile, as flash_mma: query rows row0..row0+nrows of q [T, H*HD] (head
// h), the first at position qpos0 of its sequence, so row i sees keys
// 0..qpos0+i. 128 threads, one warpgroup: every warp takes part in every
// tile's wgmma (rows a tile does not reach are masked).
template <int HD, class KV>
__device__ void flash_wgmma(float *out, const float *q, int H, int h, int row0, int nrows, int qpos0, const KV &kv,
                            float scale) {
    typedef WgTiles<HD, typename KV::elem> Tiles;
    constexpr int BN = Tiles::BN;
    extern __shared__ __align__(16) char wsmem[];
    const unsigned sa = (unsigned)__cvta_generic_to_shared(wsmem);
    const Tiles tiles(wsmem + (((sa + 1023) & ~1023u) - sa));
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;  // exp(x·scale) = exp2(x·scale·log2 e)
    const int kv_end = qpos0 + nrows;                       // keys the last row sees
    const int wr = warp * 16;
#pragma unroll
    for (int i = 0; i < FLASH_WGMMA_BUFS - 1; i++) {
        if (i * BN < kv_end) tiles.load(kv, i * BN, kv_end, i);
        else cp_async_commit();  // an empty group: every tile one group
    }
    // Q fragments, scaled, for rows wr+g (i even) and wr+g+8 (i odd) of
    // this warp: a[i] holds dims 16kk + 2t + 8(i / 2) and the next.
    unsigned qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = wr + g + (i & 1) * 8, c = kk * 16 + 2 * t + (i >> 1) * 8;
            const float *qr = q + ((i64)(row0 + r) * H + h) * HD + c;
            qa[kk][i] = r < nrows ? bf16x2(qr[0] * sl2, qr[1] * sl2) : 0u;
        }
    }
    float o[HD / 8][4], s[BN / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
#pragma unroll
    for (int n = 0; n < BN / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    for (int kb = 0, b = 0; kb < kv_end; kb += BN, b = b + 1 == FLASH_WGMMA_BUFS ? 0 : b + 1) {
        // Tile kb + (BUFS-1)·BN into the buffer the last iteration finished
        // with; then this tile's group is done, the BUFS-1 after it may fly.
        const int ahead = kb + (FLASH_WGMMA_BUFS - 1) * BN;
        const int bb = b == 0 ? FLASH_WGMMA_BUFS - 1 : b - 1;
        if (ahead < kv_end) tiles.load(kv, ahead, kv_end, bb);
        else cp_async_commit();
        cp_async_wait<FLASH_WGMMA_BUFS - 1>();
        if (!Tiles::STAGED) fence_proxy_async();
        __syncthreads();
        if (Tiles::STAGED) {  // fp8: widen the landed tile to bf16 first
            tiles.stage(b);
            fence_proxy_async();
            __syncthreads();
        }
        const unsigned kaddr = (unsigned)__cvta_generic_to_shared(tiles.K(b));
        const unsigned vaddr = (unsigned)__cvta_generic_to_shared(tiles.V(b));
        // s = Q·Kᵀ: rows g, g+8 of this warp by keys kb+8n+2t, +1 (the C layout).
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
            wgmma_m64n64k16<0>(s, qa[kk], wgmma_desc(kaddr + (kk >> 2) * (BN * 128) + (kk & 3) * 32, 16, 1024), kk > 0);
        wgmma_commit();
        wgmma_wait0();
        wgmma_hold(s);
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
        // The running sums stay this lane's own (its columns of the rows),
        // summed over the row's four lanes at the end; the outputs are
        // rescaled only when a row's max moved (alpha is exactly 1
        // otherwise), which past a row's first tiles is seldom. (Rows past
        // nrows, in a sequence's last tile, keep m = -inf and alpha = 0:
        // their warp rescales at every tile, zeros, at no harm but time.)
        l[0] = l[0] * alpha[0] + sum[0];
        l[1] = l[1] * alpha[1] + sum[1];
        if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
            for (int n = 0; n < HD / 8; n++)
                o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        }
        // P's A fragments for its k-steps of 16 keys, from S's C layout.
        unsigned pa[BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            pa[kk][0] = bf16x2(s[2 * kk][0], s[2 * kk][1]);          // row g, keys 2t, 2t+1
            pa[kk][1] = bf16x2(s[2 * kk][2], s[2 * kk][3]);          // row g+8
            pa[kk][2] = bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);  // row g, keys 8+2t, 8+2t+1
            pa[kk][3] = bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);  // row g+8
        }
        // o += P·V: V transposed, 16 keys a k-step.
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) wgmma_pv<HD>(o, pa[kk], wgmma_desc(vaddr + kk * 2048, BN * 128, 1024));
        wgmma_commit();
        wgmma_wait0();
        wgmma_hold(o);
        __syncthreads();  // the next iteration refills buffer b
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
    flash_store<HD>(out, o, l, H, h, row0, nrows, wr, g, t);
}

// The core that flash.cuh's flash_paged and flash_prompt run for the
// wgmma entry points.
struct FlashWGMMA {
    template <int HD, class KV>
    static __device__ __forceinline__ void run(float *out, const float *q, int H, int h, int row0, int nrows, int qpos0,
                                               const KV &kv, float scale) {
        flash_wgmma<HD>(out, q, H, h, row0, nrows, qpos0, kv, scale);
    }
};
