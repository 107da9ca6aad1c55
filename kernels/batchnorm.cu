#include "kernels/batchnorm.cuh"

#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/train_dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kChannelsPerBlock = 32; // threadIdx.x: consecutive channels (coalesced in NHWC)
constexpr int kRowThreads = 8;        // threadIdx.y: rows of the chunk, strided
constexpr int kThreads = 256;

// The row chunking depends only on the shape, so the summation order is fixed.
struct Chunks {
    int64_t count, rows_per_chunk;
};
Chunks chunks_for(int64_t rows) {
    int64_t count = (rows + 255) / 256;
    if (count > 512) count = 512;
    if (count < 1) count = 1;
    return {count, (rows + count - 1) / count};
}

// Sums the kRowThreads values of each channel column in a fixed order; the result is valid in
// threads with threadIdx.y == 0.
__device__ __forceinline__ float block_column_sum(float v, float (*smem)[kChannelsPerBlock]) {
    smem[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    float s = 0.0f;
    if (threadIdx.y == 0)
        for (int i = 0; i < kRowThreads; ++i) s += smem[i][threadIdx.x];
    __syncthreads();
    return s;
}

// partial[chunk, c] = sum over the chunk's rows of x (mean == null) or (x - mean[c])^2.
template <typename T>
__global__ void __launch_bounds__(kThreads) bn_partial_kernel(const T* x, const float* mean, float* partial,
                                                              int64_t rows, int C, int64_t rows_per_chunk) {
    __shared__ float smem[kRowThreads][kChannelsPerBlock];
    const int c = blockIdx.x * kChannelsPerBlock + threadIdx.x;
    const int64_t begin = blockIdx.y * rows_per_chunk;
    const int64_t end = min(rows, begin + rows_per_chunk);
    float acc = 0.0f;
    if (c < C) {
        const float m = mean ? mean[c] : 0.0f;
        for (int64_t r = begin + threadIdx.y; r < end; r += kRowThreads) {
            const float v = to_float(x[r * C + c]);
            acc += mean ? (v - m) * (v - m) : v;
        }
    }
    const float s = block_column_sum(acc, smem);
    if (threadIdx.y == 0 && c < C) partial[blockIdx.y * int64_t(C) + c] = s;
}

__global__ void bn_finalize_mean_kernel(const float* partial, int64_t chunks, int C, int64_t rows,
                                        float* mean) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0.0;
    for (int64_t p = 0; p < chunks; ++p) s += partial[p * C + c];
    mean[c] = float(s / double(rows));
}

__global__ void bn_finalize_var_kernel(const float* partial, int64_t chunks, int C, int64_t rows, float eps,
                                       float momentum, const float* mean, float* invstd, float* running_mean,
                                       float* running_var) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sq = 0.0;
    for (int64_t p = 0; p < chunks; ++p) sq += partial[p * C + c];
    const double var_biased = sq / double(rows);
    invstd[c] = float(1.0 / sqrt(var_biased + double(eps)));
    if (running_mean)
        running_mean[c] = float((1.0 - double(momentum)) * running_mean[c] + double(momentum) * mean[c]);
    if (running_var)
        running_var[c] =
            float((1.0 - double(momentum)) * running_var[c] + double(momentum) * (sq / double(rows - 1)));
}

template <typename T>
__global__ void bn_apply_kernel(BatchNormApplyArgs a) {
    const T* x = static_cast<const T*>(a.x);
    const T* res = static_cast<const T*>(a.residual);
    T* y = static_cast<T*>(a.y);
    const int64_t n = a.rows * a.channels;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int c = int(i % a.channels);
        float v = (to_float(x[i]) - a.mean[c]) * a.invstd[c] * a.gamma[c] + a.beta[c];
        v = act_forward(v, a.act);
        if (a.sample_scale) v *= a.sample_scale[(i / a.channels) / a.rows_per_image];
        if (res) v += to_float(res[i]);
        y[i] = from_float<T>(v);
    }
}

// g = dy * act'(bn(x)) for element (r, c) with value xv.
template <typename T>
__device__ __forceinline__ float bn_backward_g(const BatchNormBackwardArgs& a, const T* dy, int64_t r, int c,
                                               float xhat) {
    float d = dy ? to_float(dy[r * a.channels + c])
                 : a.dy_pooled[(r / a.rows_per_image) * a.channels + c] * a.pooled_scale;
    if (a.dy_sample_scale) d *= a.dy_sample_scale[r / a.rows_per_image];
    if (a.act == Act::None) return d;
    return act_backward(xhat * a.gamma[c] + a.beta[c], d, a.act);
}

// partial[0][chunk, c] = sum g, partial[1][chunk, c] = sum g * xhat.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bn_backward_partial_kernel(BatchNormBackwardArgs a, int64_t chunks, int64_t rows_per_chunk) {
    __shared__ float smem[kRowThreads][kChannelsPerBlock];
    const T* x = static_cast<const T*>(a.x);
    const T* dy = static_cast<const T*>(a.dy);
    const int C = a.channels;
    const int c = blockIdx.x * kChannelsPerBlock + threadIdx.x;
    const int64_t begin = blockIdx.y * rows_per_chunk;
    const int64_t end = min(a.rows, begin + rows_per_chunk);
    float sg = 0.0f, sgx = 0.0f;
    if (c < C) {
        const float m = a.mean[c], is = a.invstd[c];
        for (int64_t r = begin + threadIdx.y; r < end; r += kRowThreads) {
            const float xhat = (to_float(x[r * C + c]) - m) * is;
            const float g = bn_backward_g(a, dy, r, c, xhat);
            sg += g;
            sgx += g * xhat;
        }
    }
    const float s0 = block_column_sum(sg, smem);
    const float s1 = block_column_sum(sgx, smem);
    if (threadIdx.y == 0 && c < C) {
        a.workspace[blockIdx.y * int64_t(C) + c] = s0;
        a.workspace[(chunks + blockIdx.y) * int64_t(C) + c] = s1;
    }
}

// dbeta, dgamma, and the two per-channel means dx needs (after the partials in the workspace).
__global__ void bn_backward_finalize_kernel(BatchNormBackwardArgs a, int64_t chunks) {
    const int C = a.channels;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sg = 0.0, sgx = 0.0;
    for (int64_t p = 0; p < chunks; ++p) {
        sg += a.workspace[p * C + c];
        sgx += a.workspace[(chunks + p) * C + c];
    }
    if (a.dbeta) a.dbeta[c] = float(sg);
    if (a.dgamma) a.dgamma[c] = float(sgx);
    float* means = a.workspace + 2 * chunks * C;
    means[c] = float(sg / double(a.rows));
    means[C + c] = float(sgx / double(a.rows));
}

template <typename T>
__global__ void bn_backward_dx_kernel(BatchNormBackwardArgs a, int64_t chunks) {
    const T* x = static_cast<const T*>(a.x);
    const T* dy = static_cast<const T*>(a.dy);
    T* dx = static_cast<T*>(a.dx);
    const int C = a.channels;
    const float* means = a.workspace + 2 * chunks * C;
    const int64_t n = a.rows * C;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = i / C;
        const int c = int(i - r * C);
        const float is = a.invstd[c];
        const float xhat = (to_float(x[i]) - a.mean[c]) * is;
        const float g = bn_backward_g(a, dy, r, c, xhat);
        dx[i] = from_float<T>(a.gamma[c] * is * (g - means[c] - xhat * means[C + c]));
    }
}

void check_shape(const char* op, int64_t rows, int C) {
    EFFNET_CHECK(rows >= 1 && C >= 1, std::string(op) + ": bad shape rows=" + std::to_string(rows) +
                                          " channels=" + std::to_string(C));
}

} // namespace

size_t batchnorm_workspace_floats(int64_t rows, int channels) {
    const Chunks ch = chunks_for(rows);
    return size_t(2 * ch.count + 2) * size_t(channels);
}

void launch_batchnorm_stats(const BatchNormStatsArgs& a, Precision storage, cudaStream_t stream) {
    check_shape("batchnorm_stats", a.rows, a.channels);
    EFFNET_CHECK(a.rows > 1,
                 "batchnorm_stats: training batch norm needs more than one value per channel, got " +
                     std::to_string(a.rows) + " rows");
    EFFNET_CHECK(a.x && a.save_mean && a.save_invstd && a.workspace,
                 "batchnorm_stats: null pointer argument");
    const Chunks ch = chunks_for(a.rows);
    const dim3 block(kChannelsPerBlock, kRowThreads);
    const dim3 grid(unsigned((a.channels + kChannelsPerBlock - 1) / kChannelsPerBlock), unsigned(ch.count));
    const unsigned fin_grid = unsigned((a.channels + 127) / 128);
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T* x = static_cast<const T*>(a.x);
        bn_partial_kernel<T>
            <<<grid, block, 0, stream>>>(x, nullptr, a.workspace, a.rows, a.channels, ch.rows_per_chunk);
        EFFNET_LAUNCH_CHECK("bn_partial_kernel (sum)");
        bn_finalize_mean_kernel<<<fin_grid, 128, 0, stream>>>(a.workspace, ch.count, a.channels, a.rows,
                                                              a.save_mean);
        EFFNET_LAUNCH_CHECK("bn_finalize_mean_kernel");
        bn_partial_kernel<T>
            <<<grid, block, 0, stream>>>(x, a.save_mean, a.workspace, a.rows, a.channels, ch.rows_per_chunk);
        EFFNET_LAUNCH_CHECK("bn_partial_kernel (squared deviations)");
        bn_finalize_var_kernel<<<fin_grid, 128, 0, stream>>>(a.workspace, ch.count, a.channels, a.rows, a.eps,
                                                             a.momentum, a.save_mean, a.save_invstd,
                                                             a.running_mean, a.running_var);
        EFFNET_LAUNCH_CHECK("bn_finalize_var_kernel");
    });
}

void launch_batchnorm_apply(const BatchNormApplyArgs& a, Precision storage, cudaStream_t stream) {
    check_shape("batchnorm_apply", a.rows, a.channels);
    EFFNET_CHECK(a.x && a.mean && a.invstd && a.gamma && a.beta && a.y,
                 "batchnorm_apply: null pointer argument");
    EFFNET_CHECK(a.x != a.y, "batchnorm_apply: output may not alias the input");
    EFFNET_CHECK(!a.sample_scale || (a.rows_per_image >= 1 && a.rows % a.rows_per_image == 0),
                 "batchnorm_apply: rows " + std::to_string(a.rows) + " not a multiple of rows_per_image " +
                     std::to_string(a.rows_per_image));
    const int64_t n = a.rows * a.channels;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        bn_apply_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(a);
    });
    EFFNET_LAUNCH_CHECK("bn_apply_kernel");
}

void launch_batchnorm_backward(const BatchNormBackwardArgs& a, Precision storage, cudaStream_t stream) {
    check_shape("batchnorm_backward", a.rows, a.channels);
    EFFNET_CHECK(a.x && (a.dy || a.dy_pooled) && a.mean && a.invstd && a.gamma && a.beta && a.dx &&
                     a.workspace,
                 "batchnorm_backward: null pointer argument");
    EFFNET_CHECK((a.dy && !a.dy_sample_scale) || (a.rows_per_image >= 1 && a.rows % a.rows_per_image == 0),
                 "batchnorm_backward: rows " + std::to_string(a.rows) + " not a multiple of rows_per_image " +
                     std::to_string(a.rows_per_image));
    const Chunks ch = chunks_for(a.rows);
    const dim3 block(kChannelsPerBlock, kRowThreads);
    const dim3 grid(unsigned((a.channels + kChannelsPerBlock - 1) / kChannelsPerBlock), unsigned(ch.count));
    const int64_t n = a.rows * a.channels;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        bn_backward_partial_kernel<T><<<grid, block, 0, stream>>>(a, ch.count, ch.rows_per_chunk);
        EFFNET_LAUNCH_CHECK("bn_backward_partial_kernel");
        bn_backward_finalize_kernel<<<unsigned((a.channels + 127) / 128), 128, 0, stream>>>(a, ch.count);
        EFFNET_LAUNCH_CHECK("bn_backward_finalize_kernel");
        bn_backward_dx_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(a, ch.count);
        EFFNET_LAUNCH_CHECK("bn_backward_dx_kernel");
    });
}

} // namespace effnet::kernels
