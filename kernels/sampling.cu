// Sampling a token from each row of logits on the device, as the CPU
// backend's Sample (kernels/sample.go) defines it: temperature, then top-k
// (the tokens at or above the k-th largest logit), then top-p (the most
// likely of those, by logit, whose mass reaches p of theirs), then one draw
// in token order with a uniform that hashes the row's seed and step. Both
// thresholds are found by bisection over the logits' 32-bit order keys, so
// they are exact; sums are in float64. One CTA of ST threads per row.
#include "common.cuh"

#define ST 1024

// An order-preserving key: a < b as floats iff okey(a) < okey(b).
__device__ __forceinline__ unsigned okey(float f) {
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Block-wide reductions over ST threads; every thread gets the result.
template <class T, class Op> __device__ T block_reduce(T v, Op op, T *buf /*[32]*/) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();  // buf may still be read from the last reduction
    if ((threadIdx.x & 31) == 0) buf[threadIdx.x >> 5] = v;
    __syncthreads();
    v = buf[0];
    for (int w = 1; w < ST / 32; w++) v = op(v, buf[w]);
    return v;
}

struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumD {
    __device__ double operator()(double a, double b) const { return a + b; }
};
struct SumI {
    __device__ int operator()(int a, int b) const { return a + b; }
};
struct MinI {
    __device__ int operator()(int a, int b) const { return min(a, b); }
};
struct MaxI {
    __device__ int operator()(int a, int b) const { return max(a, b); }
};

// NaN counts as -Inf.
__device__ __forceinline__ float clean(float x) { return isnan(x) ? -INFINITY : x; }

// params [R, 8] as int32 words: temperature (float bits), top-k, top-p
// (float bits), seed (lo, hi), step (lo, hi), unused. Rows with suppressed
// tokens have had them set to -Inf (suppress_ids) before this runs.
extern "C" __global__ void __launch_bounds__(ST)
    sample_rows(int *out /*[R]*/, const float *logits /*[R, V]*/, int V, const int *params /*[R, 8]*/) {
    __shared__ float fbuf[32];
    __shared__ double dbuf[32];
    __shared__ int ibuf[32];
    __shared__ double scan[ST];
    const float *row = logits + (i64)blockIdx.x * V;
    const int *p = params + 8 * blockIdx.x;
    const float temp = __int_as_float(p[0]), topp = __int_as_float(p[2]);
    const int topk = p[1];
    const unsigned long long seed = (unsigned)p[3] | ((unsigned long long)(unsigned)p[4] << 32);
    const unsigned long long step = (unsigned)p[5] | ((unsigned long long)(unsigned)p[6] << 32);
    const int tid = threadIdx.x;
    float m = -INFINITY;
    for (int i = tid; i < V; i += ST) m = fmaxf(m, clean(row[i]));
    m = block_reduce(m, Max(), fbuf);
    const bool greedy = !(temp >= 1e-5f) || topk == 1;
    if (greedy || m == -INFINITY) {
        // argmax, the lowest index on a tie; 0 when nothing is above -Inf
        // (the draw below is uniform over all then, and greedy takes 0).
        int at = V;
        for (int i = tid; i < V; i += ST)
            if (clean(row[i]) == m && m != -INFINITY) { at = i; break; }
        at = block_reduce(at, MinI(), ibuf);
        if (tid == 0) {
            const double u = (double)(splitmix64(seed ^ splitmix64(step)) >> 11) * 0x1.0p-53;
            out[blockIdx.x] = greedy ? (at == V ? 0 : at) : min((int)(u * V), V - 1);
        }
        return;
    }
    const double u = (double)(splitmix64(seed ^ splitmix64(step)) >> 11) * 0x1.0p-53;
    // Weights: exp((x - m) / T) in float64; with +Inf logits, 1 for each of
    // them and 0 for the rest (m is +Inf).
    const double invT = isinf(temp) ? 1.0 / 3.4028234663852886e38 : 1.0 / (double)temp;
    auto weight = [&](float x) -> double {
        if (m == INFINITY) return x == INFINITY ? 1.0 : 0.0;
        return x == -INFINITY ? 0.0 : exp(((double)x - (double)m) * invT);
    };
    unsigned lo = 0;  // keep keys >= lo
    if (topk > 0 && topk < V && m != INFINITY) {
        unsigned hi = 0xffffffffu;
        while (lo < hi) {  // the largest K with count(key >= K) >= topk
            const unsigned mid = lo + (unsigned)(((unsigned long long)hi - lo + 1) / 2);
            int c = 0;
            for (int i = tid; i < V; i += ST) c += okey(clean(row[i])) >= mid;
            c = block_reduce(c, SumI(), ibuf);
            if (c >= topk) lo = mid;
            else hi = mid - 1;
        }
    }
    if (topp > 0.f && topp < 1.f && m != INFINITY) {
        double W = 0;
        for (int i = tid; i < V; i += ST) {
            const float x = clean(row[i]);
            if (okey(x) >= lo) W += weight(x);
        }
        W = block_reduce(W, SumD(), dbuf);
        const double want = (double)topp * W;
        unsigned hi = 0xffffffffu;
        while (lo < hi) {  // the largest K with mass(key >= K) >= p·W
            const unsigned mid = lo + (unsigned)(((unsigned long long)hi - lo + 1) / 2);
            double s = 0;
            for (int i = tid; i < V; i += ST) {
                const float x = clean(row[i]);
                if (okey(x) >= mid) s += weight(x);
            }
            s = block_reduce(s, SumD(), dbuf);
            if (s >= want) lo = mid;
            else hi = mid - 1;
        }
    }
    // The draw: the first token, in index order, whose running mass passes
    // u·W. Each thread owns a contiguous chunk; chunk sums are scanned.
    const int C = (V + ST - 1) / ST, c0 = min(tid * C, V), c1 = min(c0 + C, V);
    double s = 0;
    int last = -1;
    for (int i = c0; i < c1; i++) {
        const float x = clean(row[i]);
        if (okey(x) >= lo) {
            const double w = weight(x);
            s += w;
            if (w > 0) last = i;
        }
    }
    scan[tid] = s;
    __syncthreads();
    for (int o = 1; o < ST; o <<= 1) {  // inclusive scan (Hillis-Steele)
        const double v = tid >= o ? scan[tid - o] : 0.0;
        __syncthreads();
        scan[tid] += v;
        __syncthreads();
    }
    const double total = scan[ST - 1], target = u * total;
    double acc = scan[tid] - s;  // exclusive prefix
    int pick = V;
    if (acc <= target && target < scan[tid]) {
        for (int i = c0; i < c1; i++) {
            const float x = clean(row[i]);
            if (okey(x) < lo) continue;
            acc += weight(x);
            if (acc > target) { pick = i; break; }
        }
        if (pick == V) pick = last;  // rounding: the chunk's last kept token
    }
    pick = block_reduce(pick, MinI(), ibuf);
    last = block_reduce(last, MaxI(), ibuf);
    if (tid == 0) out[blockIdx.x] = pick < V && pick >= 0 ? pick : last;  // target past the total: the last token
}

// Sets logits[rows[j], ids[j]] = -Inf: min_tokens' stop tokens. grid (n).
extern "C" __global__ void suppress_ids(float *logits /*[R, V]*/, int V, const int *rows /*[n]*/, const int *ids /*[n]*/) {
    logits[(i64)rows[blockIdx.x] * V + ids[blockIdx.x]] = -INFINITY;
}
