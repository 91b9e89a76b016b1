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

// out = row / sqrt(mean(row²) + eps) * w, given each thread's part ss of
// Σ row²: the block sums the parts, then scales the row. O: float or bf16_t.
template <typename O>
__device__ __forceinline__ void norm_row(O *out, const float *row, const float *w, int D, float eps, float ss) {
    __shared__ float part[32];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.f;
        v = warp_sum(v);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    const float inv = rsqrtf(part[0] / D + eps);
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

// out[n] = bf16(x[n]): a GEMM's activation operand. Grid-stride.
extern "C" __global__ void to_bf16(bf16_t *out /*[n]*/, const float *x /*[n]*/, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = f32_to_bf16(x[i]);
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

template <typename O>
__device__ __forceinline__ void silu_mul_all(O *out, const float *gu, int F, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / F, f = i % F;
        const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
        const float v = g / (1.f + expf(-g)) * u;
        put(&out[i], v);
    }
}

// out[T, F] = silu(gu[T, :F]) * gu[T, F:]. Grid-stride over T·F.
extern "C" __global__ void silu_mul(float *out /*[T, F]*/, const float *gu /*[T, 2F]*/, int F, i64 n) {
    silu_mul_all(out, gu, F, n);
}

// silu_mul with out rounded to bf16: a GEMM's operand. Grid-stride over T·F.
extern "C" __global__ void silu_mul_bf16out(bf16_t *out /*[T, F]*/, const float *gu /*[T, 2F]*/, int F, i64 n) {
    silu_mul_all(out, gu, F, n);
}

// dst[n] += x[n]. Grid-stride.
extern "C" __global__ void add(float *dst /*[n]*/, const float *x /*[n]*/, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) dst[i] += x[i];
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
// rotated as rope does. grid (T), block any.
extern "C" __global__ void split_rope(float *q /*[T, H*hd]*/, float *k /*[T, KVH*hd]*/, float *v /*[T, KVH*hd]*/,
                                      const float *qkv /*[T, (H+2KVH)*hd]*/, const int *pos /*[T]*/,
                                      const float *inv_freq /*[hd/2]*/, int H, int KVH, int hd) {
    const i64 t = blockIdx.x;
    const int half = hd / 2, W = (H + 2 * KVH) * hd;
    const float *row = qkv + t * W;
    // Rotated pairs of q's and k's heads: H + KVH heads of half pairs.
    for (int j = threadIdx.x; j < (H + KVH) * half; j += blockDim.x) {
        const int h = j / half, i = j % half;
        double s, c;
        sincos((double)pos[t] * (double)inv_freq[i], &s, &c);
        const float cs = (float)c, sn = (float)s;
        const float a = row[h * hd + i], b = row[h * hd + i + half];
        float *dst = h < H ? q + (t * H + h) * hd : k + (t * KVH + h - H) * hd;
        dst[i] = a * cs - b * sn;
        dst[i + half] = b * cs + a * sn;
    }
    for (int j = threadIdx.x; j < KVH * hd; j += blockDim.x) v[t * KVH * hd + j] = row[(H + KVH) * hd + j];
}

template <typename O>
__device__ __forceinline__ void add_rmsnorm_rows(O *out, float *x, const float *delta, const float *w, int D, float eps) {
    const i64 t = blockIdx.x;
    float *row = x + t * D;
    const float *dr = delta + t * D;
    float ss = 0;
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
