// The forward pass's row-wise and element-wise kernels. Activations are
// float32 row-major; weights are bf16 (matrices) or float32 (norms). A
// GEMM's activation operand may be bf16 instead (AllocLinearInput): the
// kernels that produce one have a _bf16out variant that writes it rounded,
// so no to_bf16 pass runs before the GEMM, and gemv_bf16 one that reads it.
// Shapes are written outermost first; T is the step's tokens.
#include "common.cuh"

// put stores v as an output element of type float (as is) or bf16_t
// (rounded to nearest even, as to_bf16 rounds): the kernels that may write
// a GEMM's operand are templates over it, their float instantiation the
// plain store they always did. Callers compute v before taking the
// address, the order `out[i] = v` evaluates them in: the other order
// changes the float kernels' machine code (cuobjdump -sass).
__device__ __forceinline__ void put(float *p, float v) { *p = v; }
__device__ __forceinline__ void put(bf16_t *p, float v) { *p = f32_to_bf16(v); }

// as_f32 widens an input element of type float (as is) or bf16_t.
__device__ __forceinline__ float as_f32(float v) { return v; }
__device__ __forceinline__ float as_f32(bf16_t v) { return bf16_to_f32(v); }

// out[T, D] = table[ids[t], :] (bf16 table widened to float32).
// grid (T), block any.
extern "C" __global__ void embedding_bf16(float *out /*[T, D]*/, const bf16_t *table /*[V, D]*/,
                                          const int *ids /*[T]*/, int D) {
    const i64 t = blockIdx.x;
    const bf16_t *row = table + (i64)ids[t] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[t * D + i] = bf16_to_f32(row[i]);
}

// put4 stores four consecutive output elements at once: a float4, or four
// bf16 packed as put rounds them. p must be aligned to the four.
__device__ __forceinline__ void put4(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }
__device__ __forceinline__ void put4(bf16_t *p, float4 v) {
    *reinterpret_cast<uint2 *>(p) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
}

__device__ __forceinline__ bool aligned(const void *p, unsigned bytes) { return ((size_t)p & (bytes - 1)) == 0; }

__device__ __forceinline__ float4 ld4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
// Four bf16s (8-byte aligned) widened.
__device__ __forceinline__ float4 ld4(const bf16_t *p) {
    const uint2 w = *reinterpret_cast<const uint2 *>(p);
    return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u), __uint_as_float(w.y << 16),
                       __uint_as_float(w.y & 0xffff0000u));
}
__device__ __forceinline__ float ld1(const float *p) { return *p; }
__device__ __forceinline__ float ld1(const bf16_t *p) { return bf16_to_f32(*p); }

// block_sum is Σ v over the block, in every thread: one barrier, then each
// thread adds the warps' sums in the same order, so all get the same bits.
// Called once per kernel (part is not reused).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0;
    for (int i = 0; i < (blockDim.x + 31) / 32; i++) s += part[i];
    return s;
}

// The norm kernels below hold a row in registers, up to NORM_V float4s a
// thread (D <= 8192 at block 256): each thread issues all its loads at
// once, x's and w's before the reduction, and the row is not read again.
// D % 4 == 0 and 16-byte aligned inputs take that path (norm_fits), any
// other the stride loop. The choice never looks at out, so the float and
// bf16out instantiations sum in the same order on the same inputs: their
// outputs differ only by the final rounding.
#define NORM_V 8
__device__ __forceinline__ bool norm_fits(int D) { return D % 4 == 0 && D / 4 <= NORM_V * (int)blockDim.x; }

// out = v / sqrt(ss / D + eps) * w for a row held as norm_fits's float4s:
// element 4(threadIdx.x + k·blockDim) + c of the row in v[k].c; ss is the
// thread's part of Σ row². w's loads are issued before the reduction. out
// is this row's; it is written four at a time where it is aligned for it.
template <typename O>
__device__ __forceinline__ void norm_regs(O *out, const float4 (&v)[NORM_V], const float *w, int D, float eps,
                                          float ss) {
    const int n4 = D / 4;
    float4 wv[NORM_V];
#pragma unroll
    for (int k = 0; k < NORM_V; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < n4) wv[k] = ld4(w + 4 * i);
    }
    const float inv = rsqrtf(block_sum(ss) / D + eps);
    const bool vec = aligned(out, 4 * sizeof(O));
#pragma unroll
    for (int k = 0; k < NORM_V; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i >= n4) break;
        const float4 o = make_float4(v[k].x * inv * wv[k].x, v[k].y * inv * wv[k].y, v[k].z * inv * wv[k].z,
                                     v[k].w * inv * wv[k].w);
        if (vec) {
            put4(out + 4 * i, o);
        } else {
            put(&out[4 * i], o.x), put(&out[4 * i + 1], o.y);
            put(&out[4 * i + 2], o.z), put(&out[4 * i + 3], o.w);
        }
    }
}

__device__ __forceinline__ float sum_sq(float ss, float4 v) {
    ss += v.x * v.x;
    ss += v.y * v.y;
    ss += v.z * v.z;
    ss += v.w * v.w;
    return ss;
}

// out = row / sqrt(mean(row²) + eps) * w, given each thread's part ss of
// Σ row²: the block sums the parts, then scales the row, reading it again.
// The path for rows norm_fits refuses. O: float or bf16_t.
template <typename O>
__device__ __forceinline__ void norm_row(O *out, const float *row, const float *w, int D, float eps, float ss) {
    const float inv = rsqrtf(block_sum(ss) / D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float v = row[i] * inv * w[i];
        put(&out[i], v);
    }
}

template <typename O>
__device__ __forceinline__ void rmsnorm_rows(O *out, const float *x, const float *w, int D, float eps) {
    const i64 t = blockIdx.x;
    const float *row = x + t * D;
    float ss = 0;
    if (norm_fits(D) && aligned(x, 16) && aligned(w, 16)) {
        float4 v[NORM_V];
#pragma unroll
        for (int k = 0; k < NORM_V; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < D / 4) v[k] = ld4(row + 4 * i);
        }
#pragma unroll
        for (int k = 0; k < NORM_V; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < D / 4) ss = sum_sq(ss, v[k]);
        }
        norm_regs(out + t * D, v, w, D, eps, ss);
        return;
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += row[i] * row[i];
    norm_row(out + t * D, row, w, D, eps, ss);
}

// out[T, D] = x / sqrt(mean(x²) + eps) * w. grid (T), block 256.
extern "C" __global__ void rmsnorm(float *out /*[T, D]*/, const float *x /*[T, D]*/, const float *w /*[D]*/,
                                   int D, float eps) {
    rmsnorm_rows(out, x, w, D, eps);
}

// rmsnorm with out rounded to bf16: a GEMM's operand. grid (T), block 256.
extern "C" __global__ void rmsnorm_bf16out(bf16_t *out /*[T, D]*/, const float *x /*[T, D]*/, const float *w /*[D]*/,
                                           int D, float eps) {
    rmsnorm_rows(out, x, w, D, eps);
}

// out[n] = bf16(x[n]): a GEMM's activation operand. Grid-stride, four
// elements a thread (a 16-byte load, an 8-byte store) where x and out are
// aligned for it: one a thread ran at a third of the copy rate (1.5 TB/s
// on an H200, run 11's profile); the last n % 4 one a thread.
extern "C" __global__ void to_bf16(bf16_t *out /*[n]*/, const float *x /*[n]*/, i64 n) {
    const i64 first = blockIdx.x * (i64)blockDim.x + threadIdx.x, stride = (i64)gridDim.x * blockDim.x;
    i64 done = 0;
    if (aligned(x, 16) && aligned(out, 8)) {
        done = n / 4 * 4;
        for (i64 i = first; 4 * i < done; i += stride) put4(out + 4 * i, ld4(x + 4 * i));
    }
    for (i64 i = done + first; i < n; i += stride) out[i] = f32_to_bf16(x[i]);
}

// Rotates each head of x in place by pos[t]·inv_freq[i], pairing element i
// with i + hd/2 (HF's rotate_half). Angles in float64, as the CPU backend.
// grid (T), block any.
extern "C" __global__ void rope(float *x /*[T, heads*hd]*/, const int *pos /*[T]*/, const float *inv_freq /*[hd/2]*/,
                                int heads, int hd) {
    const i64 t = blockIdx.x;
    const int half = hd / 2;
    float *row = x + t * heads * hd;
    for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
        const int h = j / half, i = j % half;
        double s, c;
        sincos((double)pos[t] * (double)inv_freq[i], &s, &c);
        const float cs = (float)c, sn = (float)s;
        float *v = row + h * hd;
        const float a = v[i], b = v[i + half];
        v[i] = a * cs - b * sn;
        v[i + half] = b * cs + a * sn;
    }
}

// silu(g)·u, as silu_mul has always computed it (the CPU backend compares).
__device__ __forceinline__ float silu_mul1(float g, float u) { return g / (1.f + expf(-g)) * u; }

// Four elements a thread where F % 4 == 0 and gu and out are aligned for
// it, which keeps gu's rows' halves aligned too; else one. Indices are
// 32-bit where n allows, sparing a 64-bit division an element.
template <typename O, typename I>
__device__ __forceinline__ void silu_mul_all(O *out, const I *gu, int F, i64 n) {
    const unsigned stride = gridDim.x * blockDim.x, i0 = blockIdx.x * blockDim.x + threadIdx.x;
    if (n <= 0x7fffffff && F % 4 == 0 && aligned(gu, 4 * sizeof(I)) && aligned(out, 4 * sizeof(O))) {
        const unsigned F4 = F / 4, n4 = (unsigned)n / 4;
        for (unsigned i = i0; i < n4; i += stride) {
            const unsigned t = i / F4, f = (i - t * F4) * 4;
            const I *g = gu + (i64)t * 2 * F + f;
            const float4 gv = ld4(g), uv = ld4(g + F);
            put4(out + (i64)4 * i, make_float4(silu_mul1(gv.x, uv.x), silu_mul1(gv.y, uv.y), silu_mul1(gv.z, uv.z),
                                               silu_mul1(gv.w, uv.w)));
        }
        return;
    }
    if (n <= 0x7fffffff) {
        for (unsigned i = i0; i < (unsigned)n; i += stride) {
            const unsigned t = i / F, f = i - t * F;
            const float v = silu_mul1(ld1(gu + (i64)t * 2 * F + f), ld1(gu + (i64)t * 2 * F + F + f));
            put(&out[i], v);
        }
        return;
    }
    for (i64 i = i0; i < n; i += stride) {
        const i64 t = i / F, f = i % F;
        const float v = silu_mul1(ld1(gu + t * 2 * F + f), ld1(gu + t * 2 * F + F + f));
        put(&out[i], v);
    }
}

// out[T, F] = silu(gu[T, :F]) * gu[T, F:], n = T·F. Grid-stride; the
// backend launches a thread per four elements (gpu.go, SiLUMul).
extern "C" __global__ void silu_mul(float *out /*[T, F]*/, const float *gu /*[T, 2F]*/, int F, i64 n) {
    silu_mul_all(out, gu, F, n);
}

// silu_mul with out rounded to bf16: a GEMM's operand. Grid-stride, as
// silu_mul.
extern "C" __global__ void silu_mul_bf16out(bf16_t *out /*[T, F]*/, const float *gu /*[T, 2F]*/, int F, i64 n) {
    silu_mul_all(out, gu, F, n);
}

// silu_mul_bf16out over a bf16 gu: the gate and up projections' GEMM
// written in bf16 (AllocGateUp), as HF's bf16 MLP rounds them; half the
// bytes of float32 written by the GEMM and read here.
extern "C" __global__ void silu_mul_bf16in_bf16out(bf16_t *out /*[T, F]*/, const bf16_t *gu /*[T, 2F]*/, int F, i64 n) {
    silu_mul_all(out, gu, F, n);
}

// dst[n] += x[n]. Grid-stride, four elements a thread where dst and x are
// aligned for it (the backend launches a thread per four, gpu.go, Add).
extern "C" __global__ void add(float *dst /*[n]*/, const float *x /*[n]*/, i64 n) {
    const i64 i0 = blockIdx.x * (i64)blockDim.x + threadIdx.x, stride = (i64)gridDim.x * blockDim.x;
    if (aligned(dst, 16) && aligned(x, 16)) {
        for (i64 i = i0; i < n / 4; i += stride) {
            const float4 a = ld4(dst + 4 * i), b = ld4(x + 4 * i);
            *reinterpret_cast<float4 *>(dst + 4 * i) = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
        }
        if (i0 < n % 4) dst[n / 4 * 4 + i0] += x[n / 4 * 4 + i0];
        return;
    }
    for (i64 i = i0; i < n; i += stride) dst[i] += x[i];
}

// out[R, C] = x[rows[r], :]. grid (R), block any.
extern "C" __global__ void gather_rows(float *out /*[R, C]*/, const float *x /*[*, C]*/, const int *rows /*[R]*/,
                                       int C) {
    const i64 r = blockIdx.x;
    const float *src = x + (i64)rows[r] * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) out[r * C + i] = src[i];
}

// out[T, C] = x[T, start:start+C] of x [T, XC]. grid (T), block any.
extern "C" __global__ void columns(float *out /*[T, C]*/, const float *x /*[T, XC]*/, int C, int XC, int start) {
    const i64 t = blockIdx.x;
    for (int i = threadIdx.x; i < C; i += blockDim.x) out[t * C + i] = x[t * XC + start + i];
}

// q [T, H*hd], k, v [T, KVH*hd] from qkv [T, (H+2·KVH)*hd], with q and k
// rotated as rope does. The angles depend on (t, i) alone, so a block
// takes each pair's cos and sin once, into shared memory, for all heads
// (the same float64 sincos, so the same values); hd <= 2·ROPE_HALF, else
// per pair as rope. Four pairs a thread where hd % 8 == 0 and q, k, v,
// qkv are 16-byte aligned. grid (T), block any.
#define ROPE_HALF 256
extern "C" __global__ void split_rope(float *q /*[T, H*hd]*/, float *k /*[T, KVH*hd]*/, float *v /*[T, KVH*hd]*/,
                                      const float *qkv /*[T, (H+2KVH)*hd]*/, const int *pos /*[T]*/,
                                      const float *inv_freq /*[hd/2]*/, int H, int KVH, int hd) {
    __shared__ __align__(16) float cos_i[ROPE_HALF], sin_i[ROPE_HALF];
    const i64 t = blockIdx.x;
    const int half = hd / 2, W = (H + 2 * KVH) * hd, pairs = (H + KVH) * half;
    const float *row = qkv + t * W;
    const bool table = half <= ROPE_HALF;
    const bool vec = hd % 8 == 0 && aligned(q, 16) && aligned(k, 16) && aligned(v, 16) && aligned(qkv, 16);
    if (table)
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            double s, c;
            sincos((double)pos[t] * (double)inv_freq[i], &s, &c);
            cos_i[i] = (float)c, sin_i[i] = (float)s;
        }
    // v before the barrier: its copy needs no angles.
    if (vec)
        for (int j = threadIdx.x; j < KVH * hd / 4; j += blockDim.x)
            *reinterpret_cast<float4 *>(v + t * KVH * hd + 4 * j) = ld4(row + (H + KVH) * hd + 4 * j);
    else
        for (int j = threadIdx.x; j < KVH * hd; j += blockDim.x) v[t * KVH * hd + j] = row[(H + KVH) * hd + j];
    if (table) __syncthreads();
    if (table && vec) {
        // U groups of four pairs a thread, all loaded before any store
        // (q and k might alias qkv as far as the compiler knows).
        constexpr int U = 4;
        const int quads = half / 4;
        for (int j0 = threadIdx.x; j0 < pairs / 4; j0 += U * blockDim.x) {
            float4 a[U], b[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int j = j0 + u * blockDim.x, h = j / quads, i = (j - h * quads) * 4;
                if (j < pairs / 4) a[u] = ld4(row + h * hd + i), b[u] = ld4(row + h * hd + i + half);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int j = j0 + u * blockDim.x, h = j / quads, i = (j - h * quads) * 4;
                if (j >= pairs / 4) break;
                const float4 c = *reinterpret_cast<const float4 *>(&cos_i[i]);
                const float4 s = *reinterpret_cast<const float4 *>(&sin_i[i]);
                float *dst = h < H ? q + (t * H + h) * hd : k + (t * KVH + h - H) * hd;
                *reinterpret_cast<float4 *>(dst + i) =
                    make_float4(a[u].x * c.x - b[u].x * s.x, a[u].y * c.y - b[u].y * s.y, a[u].z * c.z - b[u].z * s.z,
                                a[u].w * c.w - b[u].w * s.w);
                *reinterpret_cast<float4 *>(dst + i + half) =
                    make_float4(b[u].x * c.x + a[u].x * s.x, b[u].y * c.y + a[u].y * s.y, b[u].z * c.z + a[u].z * s.z,
                                b[u].w * c.w + a[u].w * s.w);
            }
        }
        return;
    }
    // Rotated pairs of q's and k's heads: H + KVH heads of half pairs.
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
        const int h = j / half, i = j % half;
        float cs, sn;
        if (table) {
            cs = cos_i[i], sn = sin_i[i];
        } else {
            double s, c;
            sincos((double)pos[t] * (double)inv_freq[i], &s, &c);
            cs = (float)c, sn = (float)s;
        }
        const float a = row[h * hd + i], b = row[h * hd + i + half];
        float *dst = h < H ? q + (t * H + h) * hd : k + (t * KVH + h - H) * hd;
        dst[i] = a * cs - b * sn;
        dst[i + half] = b * cs + a * sn;
    }
}

template <typename O>
__device__ __forceinline__ void add_rmsnorm_rows(O *out, float *x, const float *delta, const float *w, int D, float eps) {
    const i64 t = blockIdx.x;
    float *row = x + t * D;
    const float *dr = delta + t * D;
    float ss = 0;
    if (norm_fits(D) && aligned(x, 16) && aligned(delta, 16) && aligned(w, 16)) {
        // Each thread reads delta where it alone later writes out, so out
        // may be delta here too.
        float4 v[NORM_V], d[NORM_V];
#pragma unroll
        for (int k = 0; k < NORM_V; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < D / 4) v[k] = ld4(row + 4 * i), d[k] = ld4(dr + 4 * i);
        }
#pragma unroll
        for (int k = 0; k < NORM_V; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < D / 4) {
                v[k] = make_float4(v[k].x + d[k].x, v[k].y + d[k].y, v[k].z + d[k].z, v[k].w + d[k].w);
                *reinterpret_cast<float4 *>(row + 4 * i) = v[k];
                ss = sum_sq(ss, v[k]);
            }
        }
        norm_regs(out + t * D, v, w, D, eps, ss);
        return;
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float v = row[i] + dr[i];
        row[i] = v;
        ss += v * v;
    }
    norm_row(out + t * D, row, w, D, eps, ss);
}

// x += delta, then out = x / sqrt(mean(x²) + eps) * w: a residual add and
// the next norm in one pass. out may be delta. grid (T), block 256.
extern "C" __global__ void add_rmsnorm(float *out /*[T, D]*/, float *x /*[T, D]*/, const float *delta /*[T, D]*/,
                                       const float *w /*[D]*/, int D, float eps) {
    add_rmsnorm_rows(out, x, delta, w, D, eps);
}

// add_rmsnorm with out rounded to bf16 (a GEMM's operand); x stays float32
// and is updated in place as there. out cannot be delta. grid (T), block 256.
extern "C" __global__ void add_rmsnorm_bf16out(bf16_t *out /*[T, D]*/, float *x /*[T, D]*/,
                                               const float *delta /*[T, D]*/, const float *w /*[D]*/, int D,
                                               float eps) {
    add_rmsnorm_rows(out, x, delta, w, D, eps);
}

// Decode's matrix-vector products: out [T, N] = x [T, K] · w [N, K]ᵀ for
// T <= 8, w in bf16, x in float32 or bf16 (X), float32 accumulate.
// Memory-bound: each warp streams R rows of w with 16-byte loads, a
// chunk's loads all issued before their use, while x sits in shared memory
// (as float32) a chunk of K at a time; R rows per warp reuse each x read R
// times. Needs K % 8 == 0. grid (ceil(N / (8R))), block 256. The backend
// uses it for one row of x (gpu.go, gemvRows).
#define GEMV_TMAX 8
#define GEMV_KC 1024
__device__ __forceinline__ void unpack8(float (&f)[8], uint4 r) {
    f[0] = __uint_as_float(r.x << 16), f[1] = __uint_as_float(r.x & 0xffff0000u);
    f[2] = __uint_as_float(r.y << 16), f[3] = __uint_as_float(r.y & 0xffff0000u);
    f[4] = __uint_as_float(r.z << 16), f[5] = __uint_as_float(r.z & 0xffff0000u);
    f[6] = __uint_as_float(r.w << 16), f[7] = __uint_as_float(r.w & 0xffff0000u);
}

template <int R, typename X>
__device__ void gemv(float *out, const X *x, const bf16_t *w, int T, int N, int K) {
    __shared__ __align__(16) float xs[GEMV_TMAX][GEMV_KC];
    const int lane = threadIdx.x & 31, n0 = (blockIdx.x * 8 + (threadIdx.x >> 5)) * R;
    float acc[R][GEMV_TMAX];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < GEMV_TMAX; t++) acc[r][t] = 0.f;
    for (int k0 = 0; k0 < K; k0 += GEMV_KC) {
        const int kn = min(GEMV_KC, K - k0);
        __syncthreads();
        for (int i = threadIdx.x; i < T * GEMV_KC; i += blockDim.x) {
            const int t = i / GEMV_KC, k = i % GEMV_KC;
            xs[t][k] = k < kn ? as_f32(x[(i64)t * K + k0 + k]) : 0.f;
        }
        __syncthreads();
        if (n0 >= N) continue;
        uint4 wv[R][GEMV_KC / 256];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int c = 0; c < GEMV_KC / 256; c++) {
                const int k = lane * 8 + c * 256;
                wv[r][c] = n0 + r < N && k < kn ? *reinterpret_cast<const uint4 *>(w + (i64)(n0 + r) * K + k0 + k)
                                                : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int c = 0; c < GEMV_KC / 256; c++) {
            const int k = lane * 8 + c * 256;
            if (k >= kn) break;
            float wf[R][8];
#pragma unroll
            for (int r = 0; r < R; r++) unpack8(wf[r], wv[r][c]);
#pragma unroll
            for (int t = 0; t < GEMV_TMAX; t++) {
                if (t >= T) break;
                const float4 a = *reinterpret_cast<const float4 *>(&xs[t][k]);
                const float4 b = *reinterpret_cast<const float4 *>(&xs[t][k + 4]);
#pragma unroll
                for (int r = 0; r < R; r++)
                    acc[r][t] += wf[r][0] * a.x + wf[r][1] * a.y + wf[r][2] * a.z + wf[r][3] * a.w +
                                 wf[r][4] * b.x + wf[r][5] * b.y + wf[r][6] * b.z + wf[r][7] * b.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int t = 0; t < GEMV_TMAX; t++) {
            if (t >= T) break;
            const float s = warp_sum(acc[r][t]);
            if (lane == 0 && n0 + r < N) out[(i64)t * N + n0 + r] = s;
        }
    }
}

// One row of w per warp.
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16(float *out /*[T, N]*/, const float *x /*[T, K]*/, const bf16_t *w /*[N, K]*/, int T, int N, int K) {
    gemv<1>(out, x, w, T, N, K);
}

// gemv_bf16 over x in bf16 (a GEMM operand that rmsnorm_bf16out,
// add_rmsnorm_bf16out or silu_mul_bf16out wrote).
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_bf16in(float *out /*[T, N]*/, const bf16_t *x /*[T, K]*/, const bf16_t *w /*[N, K]*/, int T, int N,
                     int K) {
    gemv<1>(out, x, w, T, N, K);
}
