// The forward pass's row-wise and element-wise kernels. Activations are
// float32 row-major; weights are bf16 (matrices) or float32 (norms).
// Shapes are written outermost first; T is the step's tokens.
#include "common.cuh"

// out[T, D] = table[ids[t], :] (bf16 table widened to float32).
// grid (T), block any.
extern "C" __global__ void embedding_bf16(float *out /*[T, D]*/, const bf16_t *table /*[V, D]*/,
                                          const int *ids /*[T]*/, int D) {
    const i64 t = blockIdx.x;
    const bf16_t *row = table + (i64)ids[t] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[t * D + i] = bf16_to_f32(row[i]);
}

// out[T, D] = x / sqrt(mean(x²) + eps) * w. grid (T), block 256.
extern "C" __global__ void rmsnorm(float *out /*[T, D]*/, const float *x /*[T, D]*/, const float *w /*[D]*/,
                                   int D, float eps) {
    __shared__ float part[32];
    const i64 t = blockIdx.x;
    const float *row = x + t * D;
    float ss = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += row[i] * row[i];
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
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[t * D + i] = row[i] * inv * w[i];
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

// out[T, F] = silu(gu[T, :F]) * gu[T, F:]. Grid-stride over T·F.
extern "C" __global__ void silu_mul(float *out /*[T, F]*/, const float *gu /*[T, 2F]*/, int F, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / F, f = i % F;
        const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
        out[i] = g / (1.f + expf(-g)) * u;
    }
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
