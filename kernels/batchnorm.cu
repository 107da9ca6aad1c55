#include "kernels/batchnorm.cuh"

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// Row-chunk and elementwise kernels: blocks of (channel vectors, row lanes). threadIdx.x is a
// vector of V consecutive channels (16 bytes when the shape allows it), so a warp reads whole
// row segments; threadIdx.y strides over rows. Each thread keeps its channels for the whole
// kernel: per-channel parameters live in registers and there is no per-element div/mod.
constexpr int kThreads = 256;
constexpr int kMaxVecsPerBlock = 32; // channel vectors per block (512 bytes of a row)
// Reductions: at most this many row chunks (partial sums per channel); fewer for few rows.
constexpr int64_t kMaxChunks = 1024;
constexpr int64_t kChunkBlocks = 1024; // blocks per statistics launch aimed at (fills an H100/H200)
constexpr int64_t kMinChunkRows = 64;  // rows of a chunk at least (small tensors: fewer chunks)
constexpr int kFinChannels = 8;        // finalize: channels per block (one 32-byte sector per row)
constexpr int kFinRows = 64;           // finalize: threads summing one channel's partials
// Elementwise kernels (apply, dx): grid-stride over rows with 128-thread blocks capped at 96
// registers, so 5 blocks (640 threads) fit an SM with several 16-byte rows in flight per thread.
constexpr int kElemThreads = 128;
constexpr int kElemMinBlocks = 5;
constexpr int kApplyRows = 2;                         // rows loaded per iteration (x and the residual)
constexpr int kDxRows = 2;                            // rows loaded per iteration (x and dy)
constexpr int64_t kElemMaxThreads = int64_t(1) << 19; // per launch, at most (~6 waves on H100/H200)
constexpr int64_t kElemRowsPerThread = 4;             // at least, when the rows allow

// The row chunking depends only on the shape (not on the storage precision or the device), so
// the workspace size and the summation order are fixed by the shape: bit-identical runs.
struct Chunks {
    int64_t count, rows_per_chunk;
};
Chunks chunks_for(int64_t rows, int channels) {
    const int64_t channel_blocks = (int64_t(channels) + 255) / 256; // blocks per chunk with 8-wide vectors
    int64_t count = std::min((kChunkBlocks + channel_blocks - 1) / channel_blocks,
                             (rows + kMinChunkRows - 1) / kMinChunkRows);
    count = std::max<int64_t>(1, std::min(count, kMaxChunks));
    const int64_t per = (rows + count - 1) / count;
    return {(rows + per - 1) / per, per}; // every chunk non-empty
}

// Block shape for C channels read V at a time, `threads` per block at most: the channel vectors
// split evenly over the fewest blocks of at most kMaxVecsPerBlock (idle columns <
// channel_blocks); the rest of the block is row lanes.
struct Layout {
    int vecs_per_block, row_lanes, channel_blocks;
    dim3 block() const { return dim3(unsigned(vecs_per_block), unsigned(row_lanes)); }
};
Layout layout_for(int channels, int V, int threads) {
    const int vecs = channels / V;
    const int blocks = (vecs + kMaxVecsPerBlock - 1) / kMaxVecsPerBlock;
    const int per_block = (vecs + blocks - 1) / blocks;
    return {per_block, threads / per_block, blocks};
}

// Grid of the elementwise kernels: channel blocks x row blocks, a few rows per thread at least.
dim3 elementwise_grid(const Layout& l, int64_t rows) {
    const int64_t lanes = l.row_lanes;
    const int64_t cap = std::max<int64_t>(1, kElemMaxThreads / (int64_t(kElemThreads) * l.channel_blocks));
    const int64_t want = (rows + lanes * kElemRowsPerThread - 1) / (lanes * kElemRowsPerThread);
    return dim3(unsigned(l.channel_blocks), unsigned(std::max<int64_t>(1, std::min(want, cap))));
}

// Per-channel constants of the elementwise kernels (Args: BatchNormApplyArgs or
// BatchNormBackwardArgs): mean, k = gamma * invstd, beta.
template <int V, typename Args>
__device__ __forceinline__ void load_bn_params(const Args& a, int c0, float (&m)[V], float (&k)[V],
                                               float (&b)[V]) {
    load_f32<V>(a.mean + c0, m);
    load_f32<V>(a.invstd + c0, k);
    load_f32<V>(a.gamma + c0, b);
#pragma unroll
    for (int j = 0; j < V; ++j) k[j] *= b[j];
    load_f32<V>(a.beta + c0, b);
}

// row / rows_per_image in 32 bits (the launchers check rows < 2^32 where it is used): only the
// per-sample paths (stochastic depth, pooled dy) pay for a division, once per row of V channels.
__device__ __forceinline__ int64_t image_of(int64_t row, int64_t rows_per_image) {
    return int64_t(uint32_t(row) / uint32_t(rows_per_image));
}

// Smallest power of two >= n (n >= 1): the top of the fixed-order block trees.
__device__ __forceinline__ int pow2_at_least(int n) {
    int p = 1;
    while (p < n) p <<= 1;
    return p;
}

// ---------------------------------------------------------------------------------------------
// Forward statistics: one pass over x. Each thread runs Welford (mean, sum of squared
// deviations M2) over its rows in fp32, the block merges its row lanes with Chan's formula in a
// fixed tree, and partial[chunk] = (mean, M2) of the chunk's rows. The finalize combines the
// chunks in double about a shift (chunk 0's mean), so nothing cancels.
// partial layout: [chunks, C] means, then [chunks, C] M2.

template <int V>
__device__ __forceinline__ void welford_add(const float (&v)[V], float (&mean)[V], float (&m2)[V], float& n) {
    n += 1.0f;
    const float inv = __frcp_rn(n); // one reciprocal for the V channels
#pragma unroll
    for (int j = 0; j < V; ++j) {
        const float d = v[j] - mean[j];
        mean[j] = fmaf(d, inv, mean[j]);
        m2[j] = fmaf(d, v[j] - mean[j], m2[j]);
    }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    bn_stats_partial_kernel(const T* x, float* partial, int64_t rows, int C, int64_t chunks,
                            int64_t rows_per_chunk) {
    __shared__ float smem[2 * V + 1][kThreads]; // [means | M2s | count][thread]
    const int lanes = int(blockDim.y);
    const int tid = int(threadIdx.y * blockDim.x + threadIdx.x);
    const int cv = int(blockIdx.x * blockDim.x + threadIdx.x);
    const int c0 = cv * V;
    const int64_t begin = int64_t(blockIdx.y) * rows_per_chunk;
    const int64_t end = min(rows, begin + rows_per_chunk);
    float mean[V], m2[V], n = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) mean[j] = m2[j] = 0.0f;
    if (c0 < C) {
        int64_t r = begin + threadIdx.y;
        // Four rows in flight; the updates run in row order either way.
        for (; r + 3 * lanes < end; r += 4 * lanes) {
            float v[4][V];
#pragma unroll
            for (int u = 0; u < 4; ++u) load_vec<T, V>(x + (r + u * lanes) * C + c0, v[u]);
#pragma unroll
            for (int u = 0; u < 4; ++u) welford_add<V>(v[u], mean, m2, n);
        }
        for (; r < end; r += lanes) {
            float v[V];
            load_vec<T, V>(x + r * C + c0, v);
            welford_add<V>(v, mean, m2, n);
        }
    }
    // Fixed-order tree over the row lanes: lane y takes lane y + s (its writes at step s touch
    // only lanes < s, its reads lanes in [s, 2s)). Lanes with no rows (n == 0) merge as empty.
#pragma unroll
    for (int j = 0; j < V; ++j) {
        smem[j][tid] = mean[j];
        smem[V + j][tid] = m2[j];
    }
    smem[2 * V][tid] = n;
    for (int s = pow2_at_least(lanes) / 2; s > 0; s >>= 1) {
        __syncthreads();
        if (int(threadIdx.y) < s && int(threadIdx.y) + s < lanes) {
            const int o = tid + s * int(blockDim.x);
            const float nb = smem[2 * V][o];
            if (nb > 0.0f) {
                const float nt = n + nb, wb = nb / nt, wab = n * wb;
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    const float delta = smem[j][o] - mean[j];
                    mean[j] = fmaf(delta, wb, mean[j]);
                    m2[j] += smem[V + j][o] + delta * delta * wab;
                    smem[j][tid] = mean[j];
                    smem[V + j][tid] = m2[j];
                }
                n = nt;
                smem[2 * V][tid] = n;
            }
        }
    }
    if (threadIdx.y == 0 && c0 < C) {
        store_f32<V>(partial + int64_t(blockIdx.y) * C + c0, mean);
        store_f32<V>(partial + (chunks + blockIdx.y) * C + c0, m2);
    }
}

// Sums a per-thread double over the kFinRows row threads of a finalize block in a fixed tree;
// the result is valid in threadIdx.y == 0.
__device__ __forceinline__ double fin_column_sum(double v, double (*smem)[kFinChannels]) {
    smem[threadIdx.y][threadIdx.x] = v;
    for (int s = kFinRows / 2; s > 0; s >>= 1) {
        __syncthreads();
        if (int(threadIdx.y) < s) {
            v += smem[threadIdx.y + s][threadIdx.x];
            smem[threadIdx.y][threadIdx.x] = v;
        }
    }
    __syncthreads(); // smem is reused by the next call
    return v;
}

// Rows of chunk p (the last one may be short).
__device__ __forceinline__ double chunk_rows(int64_t p, int64_t rows, int64_t rows_per_chunk) {
    return double(min(rows, (p + 1) * rows_per_chunk) - p * rows_per_chunk);
}

// Per channel, over the chunks (p = threadIdx.y, + kFinRows, ...; then the tree), in double:
//   s = sum n_p (mean_p - K), q = sum M2_p + n_p (mean_p - K)^2 with K = mean_0; then
//   mean = K + s / rows, M2 = q - s^2 / rows. Block: kFinChannels x kFinRows.
__global__ void __launch_bounds__(kFinChannels* kFinRows)
    bn_stats_finalize_kernel(BatchNormStatsArgs a, int64_t chunks, int64_t rows_per_chunk) {
    __shared__ double smem[kFinRows][kFinChannels];
    const int C = a.channels;
    const int c = int(blockIdx.x) * kFinChannels + int(threadIdx.x);
    const float* pmean = a.workspace;
    const float* pm2 = a.workspace + chunks * C;
    double shift = 0.0, s = 0.0, q = 0.0;
    if (c < C) {
        shift = pmean[c];
#pragma unroll 4
        for (int64_t p = threadIdx.y; p < chunks; p += kFinRows) {
            const double np = chunk_rows(p, a.rows, rows_per_chunk);
            const double d = double(pmean[p * C + c]) - shift;
            s += np * d;
            q += double(pm2[p * C + c]) + np * d * d;
        }
    }
    s = fin_column_sum(s, smem);
    q = fin_column_sum(q, smem);
    if (threadIdx.y != 0 || c >= C) return;
    const double rows = double(a.rows);
    const double mean = shift + s / rows;
    const double m2 = fmax(q - s * s / rows, 0.0);
    const double invstd = 1.0 / sqrt(m2 / rows + double(a.eps));
    a.save_mean[c] = float(mean);
    a.save_invstd[c] = float(invstd);
    const double mom = double(a.momentum);
    if (a.running_mean) a.running_mean[c] = float((1.0 - mom) * a.running_mean[c] + mom * mean);
    if (a.running_var) a.running_var[c] = float((1.0 - mom) * a.running_var[c] + mom * (m2 / (rows - 1.0)));
    if (a.save_scale || a.save_shift) { // the launcher checked gamma and beta
        const double scale = double(a.gamma[c]) * invstd;
        if (a.save_scale) a.save_scale[c] = float(scale);
        if (a.save_shift) a.save_shift[c] = float(double(a.beta[c]) - mean * scale);
    }
}

// ---------------------------------------------------------------------------------------------
// Apply: y = act((x - mean) * (gamma * invstd) + beta) [* sample_scale] [+ residual].
// (x - mean) first: no cancellation when |mean| >> std, unlike x * scale + shift.
// The activation (and in the backward its gradient) is a template parameter: straight-line
// element loops, no beta / scale registers for Act::None; its math follows the storage type
// (act_math_for), which keeps the fp16 / bf16 passes memory-bound.
template <typename T, int V, Act A>
__global__ void __launch_bounds__(kElemThreads, kElemMinBlocks) bn_apply_kernel(BatchNormApplyArgs a) {
    const int C = a.channels;
    const int c0 = int(blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c0 >= C) return;
    const T* x = static_cast<const T*>(a.x) + c0;
    const T* res = a.residual ? static_cast<const T*>(a.residual) + c0 : nullptr;
    T* y = static_cast<T*>(a.y) + c0;
    float m[V], k[V], b[V];
    load_bn_params<V>(a, c0, m, k, b);
    const int64_t step = int64_t(gridDim.y) * blockDim.y;
    int64_t r = int64_t(blockIdx.y) * blockDim.y + threadIdx.y;
    auto finish = [&](int64_t row, const float(&xv)[V], const float(&rv)[V]) {
        float v[V];
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = act_forward<act_math_for<T>>(fmaf(xv[j] - m[j], k[j], b[j]), A);
        if (a.sample_scale) {
            const float ss = a.sample_scale[image_of(row, a.rows_per_image)];
#pragma unroll
            for (int j = 0; j < V; ++j) v[j] *= ss;
        }
        if (res) {
#pragma unroll
            for (int j = 0; j < V; ++j) v[j] += rv[j];
        }
        store_vec<T, V>(y + row * C, v);
    };
    // kApplyRows rows per iteration: all their loads are issued before the first store.
    for (; r + (kApplyRows - 1) * step < a.rows; r += kApplyRows * step) {
        float xv[kApplyRows][V], rv[kApplyRows][V];
#pragma unroll
        for (int u = 0; u < kApplyRows; ++u) load_vec<T, V>(x + (r + u * step) * C, xv[u]);
        if (res) {
#pragma unroll
            for (int u = 0; u < kApplyRows; ++u) load_vec<T, V>(res + (r + u * step) * C, rv[u]);
        }
#pragma unroll
        for (int u = 0; u < kApplyRows; ++u) finish(r + u * step, xv[u], rv[u]);
    }
    for (; r < a.rows; r += step) {
        float x0[V], r0[V];
        load_vec<T, V>(x + r * C, x0);
        if (res) load_vec<T, V>(res + r * C, r0);
        finish(r, x0, r0);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward. With d = x - mean, k = gamma * invstd: z = d * k + beta (the activation input),
// g = dy * act'(z); sums per channel: sum g and sum g * d (xhat = d * invstd is applied in the
// finalize, in double); dx = k * (g - mean(g) - d * invstd * mean(g * xhat)).

// dy for V channels of `row` from the stored gradient (a.dy non-null), times the per-sample scale.
template <typename T, int V>
__device__ __forceinline__ void load_dy_stored(const BatchNormBackwardArgs& a, int64_t row, int c0,
                                               float (&g)[V]) {
    load_vec<T, V>(static_cast<const T*>(a.dy) + row * a.channels + c0, g);
    if (a.dy_sample_scale) {
        const float ss = a.dy_sample_scale[image_of(row, a.rows_per_image)];
#pragma unroll
        for (int j = 0; j < V; ++j) g[j] *= ss;
    }
}

// dy for V channels of `row`: the stored gradient or the pooled one broadcast (the head's global
// average pool, a small tensor: only the one-row loops take it), times the per-sample scale.
template <typename T, int V>
__device__ __forceinline__ void load_dy(const BatchNormBackwardArgs& a, int64_t row, int c0, float (&g)[V]) {
    if (a.dy) {
        load_dy_stored<T, V>(a, row, c0, g);
        return;
    }
    const int64_t image = image_of(row, a.rows_per_image);
    load_f32<V>(a.dy_pooled + image * a.channels + c0, g);
    const float ss = a.pooled_scale * (a.dy_sample_scale ? a.dy_sample_scale[image] : 1.0f);
#pragma unroll
    for (int j = 0; j < V; ++j) g[j] *= ss;
}

// d = x - mean and g = dy * act'(z) in place.
template <typename T, int V, Act A>
__device__ __forceinline__ void backward_g(const float (&m)[V], const float (&k)[V], const float (&b)[V],
                                           float (&xd)[V], float (&g)[V]) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
        xd[j] -= m[j];
        if constexpr (A != Act::None) g[j] = act_backward<act_math_for<T>>(fmaf(xd[j], k[j], b[j]), g[j], A);
    }
}

// workspace[chunk, c] = sum g, workspace[chunks + chunk, c] = sum g * d over the chunk's rows
// (per thread in fp32, then a fixed-order tree over the row lanes).
template <typename T, int V, Act A>
__global__ void __launch_bounds__(kThreads)
    bn_backward_partial_kernel(BatchNormBackwardArgs a, int64_t chunks, int64_t rows_per_chunk) {
    __shared__ float smem[2 * V][kThreads];
    const int C = a.channels;
    const int lanes = int(blockDim.y);
    const int tid = int(threadIdx.y * blockDim.x + threadIdx.x);
    const int c0 = int(blockIdx.x * blockDim.x + threadIdx.x) * V;
    const int64_t begin = int64_t(blockIdx.y) * rows_per_chunk;
    const int64_t end = min(a.rows, begin + rows_per_chunk);
    float sg[V], sgd[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sg[j] = sgd[j] = 0.0f;
    if (c0 < C) {
        const T* x = static_cast<const T*>(a.x) + c0;
        float m[V], k[V], b[V];
        load_bn_params<V>(a, c0, m, k, b);
        auto accumulate = [&](float(&xd)[V], float(&g)[V]) {
            backward_g<T, V, A>(m, k, b, xd, g);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                sg[j] += g[j];
                sgd[j] = fmaf(g[j], xd[j], sgd[j]);
            }
        };
        int64_t r = begin + threadIdx.y;
        // Stored dy: two rows in flight. Accumulated in row order either way.
        if (a.dy) {
            for (; r + lanes < end; r += 2 * lanes) {
                float x0[V], x1[V], g0[V], g1[V];
                load_vec<T, V>(x + r * C, x0);
                load_vec<T, V>(x + (r + lanes) * C, x1);
                load_dy_stored<T, V>(a, r, c0, g0);
                load_dy_stored<T, V>(a, r + lanes, c0, g1);
                accumulate(x0, g0);
                accumulate(x1, g1);
            }
        }
        for (; r < end; r += lanes) {
            float x0[V], g0[V];
            load_vec<T, V>(x + r * C, x0);
            load_dy<T, V>(a, r, c0, g0);
            accumulate(x0, g0);
        }
    }
    // Fixed-order tree over the row lanes (as in bn_stats_partial_kernel).
#pragma unroll
    for (int j = 0; j < V; ++j) {
        smem[j][tid] = sg[j];
        smem[V + j][tid] = sgd[j];
    }
    for (int s = pow2_at_least(lanes) / 2; s > 0; s >>= 1) {
        __syncthreads();
        if (int(threadIdx.y) < s && int(threadIdx.y) + s < lanes) {
            const int o = tid + s * int(blockDim.x);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                sg[j] += smem[j][o];
                sgd[j] += smem[V + j][o];
                smem[j][tid] = sg[j];
                smem[V + j][tid] = sgd[j];
            }
        }
    }
    if (threadIdx.y == 0 && c0 < C) {
        store_f32<V>(a.workspace + int64_t(blockIdx.y) * C + c0, sg);
        store_f32<V>(a.workspace + (chunks + blockIdx.y) * C + c0, sgd);
    }
}

// dbeta = sum g, dgamma = invstd * sum g d (double, chunk partials summed by kFinRows threads
// per channel and a fixed tree), and the dx coefficients after the partials:
// coef[c] = mean(g), coef[C + c] = invstd * mean(g * xhat).
__global__ void __launch_bounds__(kFinChannels* kFinRows)
    bn_backward_finalize_kernel(BatchNormBackwardArgs a, int64_t chunks) {
    __shared__ double smem[kFinRows][kFinChannels];
    const int C = a.channels;
    const int c = int(blockIdx.x) * kFinChannels + int(threadIdx.x);
    double sg = 0.0, sgd = 0.0;
    if (c < C) {
#pragma unroll 4
        for (int64_t p = threadIdx.y; p < chunks; p += kFinRows) {
            sg += double(a.workspace[p * C + c]);
            sgd += double(a.workspace[(chunks + p) * C + c]);
        }
    }
    sg = fin_column_sum(sg, smem);
    sgd = fin_column_sum(sgd, smem);
    if (threadIdx.y != 0 || c >= C) return;
    const double is = a.invstd[c];
    const double sgx = sgd * is;
    if (a.dbeta) a.dbeta[c] = float(sg);
    if (a.dgamma) a.dgamma[c] = float(sgx);
    float* coef = a.workspace + 2 * chunks * C;
    coef[c] = float(sg / double(a.rows));
    coef[C + c] = float(is * sgx / double(a.rows));
}

// dx = k * (g - mean(g) - d * coef[C + c]); dx may alias dy (each element is read, then
// written, by the same thread).
template <typename T, int V, Act A>
__global__ void __launch_bounds__(kElemThreads, kElemMinBlocks)
    bn_backward_dx_kernel(BatchNormBackwardArgs a, const float* coef) {
    const int C = a.channels;
    const int c0 = int(blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c0 >= C) return;
    const T* x = static_cast<const T*>(a.x) + c0;
    T* dx = static_cast<T*>(a.dx) + c0;
    float m[V], k[V], b[V], mg[V], q[V];
    load_bn_params<V>(a, c0, m, k, b);
    load_f32<V>(coef + c0, mg);
    load_f32<V>(coef + C + c0, q);
    auto finish = [&](int64_t row, float(&xd)[V], float(&g)[V]) {
        backward_g<T, V, A>(m, k, b, xd, g);
#pragma unroll
        for (int j = 0; j < V; ++j) g[j] = k[j] * fmaf(-xd[j], q[j], g[j] - mg[j]);
        store_vec<T, V>(dx + row * C, g);
    };
    const int64_t step = int64_t(gridDim.y) * blockDim.y;
    int64_t r = int64_t(blockIdx.y) * blockDim.y + threadIdx.y;
    // Stored dy: kDxRows rows per iteration, all loaded before the first store (distinct rows,
    // so dx aliasing dy is safe).
    if (a.dy) {
        for (; r + (kDxRows - 1) * step < a.rows; r += kDxRows * step) {
            float xv[kDxRows][V], g[kDxRows][V];
#pragma unroll
            for (int u = 0; u < kDxRows; ++u) {
                load_vec<T, V>(x + (r + u * step) * C, xv[u]);
                load_dy_stored<T, V>(a, r + u * step, c0, g[u]);
            }
#pragma unroll
            for (int u = 0; u < kDxRows; ++u) finish(r + u * step, xv[u], g[u]);
        }
    }
    for (; r < a.rows; r += step) {
        float x0[V], g0[V];
        load_vec<T, V>(x + r * C, x0);
        load_dy<T, V>(a, r, c0, g0);
        finish(r, x0, g0);
    }
}

void check_shape(const char* op, int64_t rows, int C) {
    EFFNET_CHECK(rows >= 1 && C >= 1, std::string(op) + ": bad shape rows=" + std::to_string(rows) +
                                          " channels=" + std::to_string(C));
}

template <typename T, int V>
void launch_stats(const BatchNormStatsArgs& a, const Chunks& ch, cudaStream_t stream) {
    const Layout l = layout_for(a.channels, V, kThreads);
    bn_stats_partial_kernel<T, V>
        <<<dim3(unsigned(l.channel_blocks), unsigned(ch.count)), l.block(), 0, stream>>>(
            static_cast<const T*>(a.x), a.workspace, a.rows, a.channels, ch.count, ch.rows_per_chunk);
    EFFNET_LAUNCH_CHECK("bn_stats_partial_kernel");
}

template <typename T, int V, Act A>
void launch_apply(const BatchNormApplyArgs& a, cudaStream_t stream) {
    const Layout l = layout_for(a.channels, V, kElemThreads);
    bn_apply_kernel<T, V, A><<<elementwise_grid(l, a.rows), l.block(), 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("bn_apply_kernel");
}

template <typename T, int V, Act A>
void launch_backward(const BatchNormBackwardArgs& a, const Chunks& ch, cudaStream_t stream) {
    const Layout lp = layout_for(a.channels, V, kThreads);
    bn_backward_partial_kernel<T, V, A>
        <<<dim3(unsigned(lp.channel_blocks), unsigned(ch.count)), lp.block(), 0, stream>>>(a, ch.count,
                                                                                           ch.rows_per_chunk);
    EFFNET_LAUNCH_CHECK("bn_backward_partial_kernel");
    bn_backward_finalize_kernel<<<unsigned((a.channels + kFinChannels - 1) / kFinChannels),
                                  dim3(kFinChannels, kFinRows), 0, stream>>>(a, ch.count);
    EFFNET_LAUNCH_CHECK("bn_backward_finalize_kernel");
    const Layout le = layout_for(a.channels, V, kElemThreads);
    bn_backward_dx_kernel<T, V, A>
        <<<elementwise_grid(le, a.rows), le.block(), 0, stream>>>(a, a.workspace + 2 * ch.count * a.channels);
    EFFNET_LAUNCH_CHECK("bn_backward_dx_kernel");
}

} // namespace

size_t batchnorm_workspace_floats(int64_t rows, int channels) {
    const Chunks ch = chunks_for(rows, channels);
    return size_t(2 * ch.count + 2) * size_t(channels);
}

void launch_batchnorm_stats(const BatchNormStatsArgs& a, Precision storage, cudaStream_t stream) {
    check_shape("batchnorm_stats", a.rows, a.channels);
    EFFNET_CHECK(a.rows > 1,
                 "batchnorm_stats: training batch norm needs more than one value per channel, got " +
                     std::to_string(a.rows) + " rows");
    EFFNET_CHECK(a.x && a.save_mean && a.save_invstd && a.workspace,
                 "batchnorm_stats: null pointer argument");
    EFFNET_CHECK(!(a.save_scale || a.save_shift) || (a.gamma && a.beta),
                 "batchnorm_stats: save_scale / save_shift need gamma and beta");
    const Chunks ch = chunks_for(a.rows, a.channels);
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int kVec = int(16 / sizeof(T));
        if (vectors_fit(a.channels, kVec, {a.x, a.workspace}))
            launch_stats<T, kVec>(a, ch, stream);
        else
            launch_stats<T, 1>(a, ch, stream);
    });
    bn_stats_finalize_kernel<<<unsigned((a.channels + kFinChannels - 1) / kFinChannels),
                               dim3(kFinChannels, kFinRows), 0, stream>>>(a, ch.count, ch.rows_per_chunk);
    EFFNET_LAUNCH_CHECK("bn_stats_finalize_kernel");
}

void launch_batchnorm_apply(const BatchNormApplyArgs& a, Precision storage, cudaStream_t stream) {
    check_shape("batchnorm_apply", a.rows, a.channels);
    EFFNET_CHECK(a.x && a.mean && a.invstd && a.gamma && a.beta && a.y,
                 "batchnorm_apply: null pointer argument");
    EFFNET_CHECK(a.x != a.y, "batchnorm_apply: output may not alias the input");
    EFFNET_CHECK(!a.sample_scale || (a.rows_per_image >= 1 && a.rows % a.rows_per_image == 0),
                 "batchnorm_apply: rows " + std::to_string(a.rows) + " not a multiple of rows_per_image " +
                     std::to_string(a.rows_per_image));
    EFFNET_CHECK(!a.sample_scale || a.rows <= int64_t(UINT32_MAX),
                 "batchnorm_apply: per-sample scale needs rows < 2^32, got " + std::to_string(a.rows));
    const bool vec16 = vectors_fit(a.channels, int(16 / storage_size(storage)),
                                   {a.x, a.residual, a.y, a.mean, a.invstd, a.gamma, a.beta});
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        dispatch_act(a.act, [&](auto act) {
            constexpr Act kAct = decltype(act)::value;
            if (vec16)
                launch_apply<T, int(16 / sizeof(T)), kAct>(a, stream);
            else
                launch_apply<T, 1, kAct>(a, stream);
        });
    });
}

void launch_batchnorm_backward(const BatchNormBackwardArgs& a, Precision storage, cudaStream_t stream) {
    check_shape("batchnorm_backward", a.rows, a.channels);
    EFFNET_CHECK(a.x && (a.dy || a.dy_pooled) && a.mean && a.invstd && a.gamma && a.beta && a.dx &&
                     a.workspace,
                 "batchnorm_backward: null pointer argument");
    EFFNET_CHECK((a.dy && !a.dy_sample_scale) || (a.rows_per_image >= 1 && a.rows % a.rows_per_image == 0),
                 "batchnorm_backward: rows " + std::to_string(a.rows) + " not a multiple of rows_per_image " +
                     std::to_string(a.rows_per_image));
    EFFNET_CHECK((a.dy && !a.dy_sample_scale) || a.rows <= int64_t(UINT32_MAX),
                 "batchnorm_backward: per-sample dy needs rows < 2^32, got " + std::to_string(a.rows));
    const Chunks ch = chunks_for(a.rows, a.channels);
    const bool vec16 =
        vectors_fit(a.channels, int(16 / storage_size(storage)),
                    {a.x, a.dy, a.dy_pooled, a.dx, a.mean, a.invstd, a.gamma, a.beta, a.workspace});
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        dispatch_act(a.act, [&](auto act) {
            constexpr Act kAct = decltype(act)::value;
            if (vec16)
                launch_backward<T, int(16 / sizeof(T)), kAct>(a, ch, stream);
            else
                launch_backward<T, 1, kAct>(a, ch, stream);
        });
    });
}

} // namespace effnet::kernels
