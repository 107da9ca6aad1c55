#include "kernels/sgd.cuh"

#include <cmath>
#include <string>

#include "kernels/common.cuh"
#include "kernels/optimizer_common.cuh"
#include "kernels/train_dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSumBlocksCap = 1024; // partial sums of the sum of squares

// Same arithmetic as train::Optimizer (libeffnet/train/optimizer.cpp): double, one rounding per
// operation (__dmul_rn / __dadd_rn keep nvcc from fusing a multiply and an add into an FMA).
__global__ void sgd_kernel(SgdArgs a) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.count;
         i += int64_t(gridDim.x) * blockDim.x) {
        double wd;
        if (!element_decay(a.chunk_class, i, a.weight_decay, wd)) continue;
        const double p = a.param[i];
        const double grad = float(__dmul_rn(double(a.grad[i]), a.grad_scale)); // clipped, as stored
        const double g = __dadd_rn(grad, __dmul_rn(wd, p));                    // g = grad + wd * p
        if (a.momentum == 0.0) {
            a.param[i] = float(__dsub_rn(p, __dmul_rn(a.lr, g))); // p - lr * g
            continue;
        }
        const float buf = float(__dadd_rn(__dmul_rn(a.momentum, double(a.momentum_buffer[i])), g));
        a.momentum_buffer[i] = buf;
        const double update = a.nesterov ? __dadd_rn(g, __dmul_rn(a.momentum, double(buf))) : double(buf);
        a.param[i] = float(__dsub_rn(p, __dmul_rn(a.lr, update))); // p - lr * update
    }
}

__global__ void non_finite_kernel(const float* data, int64_t n, int* flag) {
    bool bad = false;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        bad |= !isfinite(data[i]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

// Tree sum of one value per thread in shared memory; thread 0 gets the block's total.
__device__ double block_sum(double value) {
    __shared__ double shared[kThreads];
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

__global__ void sum_squares_kernel(const float* data, int64_t n, double* partials) {
    double sum = 0.0;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const double v = data[i];
        sum += v * v;
    }
    const double total = block_sum(sum);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void sum_partials_kernel(const double* partials, int64_t count, double* result) {
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
    const double total = block_sum(sum);
    if (threadIdx.x == 0) *result = total;
}

__global__ void scale_kernel(float* data, int64_t n, float scale) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        data[i] *= scale;
}

template <typename T>
__global__ void cast_kernel(const float* src, T* dst, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = from_float<T>(src[i]);
}

} // namespace

void launch_sgd_update(const SgdArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.param && a.grad && (a.momentum == 0.0 || a.momentum_buffer) && a.count >= 0,
                 "sgd_update: null pointer argument");
    EFFNET_CHECK(std::isfinite(a.lr) && std::isfinite(a.momentum) && std::isfinite(a.weight_decay) &&
                     std::isfinite(a.grad_scale),
                 "sgd_update: non-finite hyperparameter");
    if (a.count == 0) return;
    sgd_kernel<<<grid_for(a.count, kThreads, 4096), kThreads, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("sgd_kernel");
}

void launch_find_non_finite(const float* data, int64_t n, int* flag, cudaStream_t stream) {
    EFFNET_CHECK(data && flag && n >= 0, "find_non_finite: null pointer argument");
    if (n == 0) return;
    non_finite_kernel<<<grid_for(n, kThreads, 4096), kThreads, 0, stream>>>(data, n, flag);
    EFFNET_LAUNCH_CHECK("non_finite_kernel");
}

int64_t sum_squares_partials(int64_t n) {
    return int64_t(grid_for(n, kThreads, kSumBlocksCap));
}

void launch_sum_squares(const float* data, int64_t n, double* partials, double* result, cudaStream_t stream) {
    EFFNET_CHECK(data && partials && result && n >= 0, "sum_squares: null pointer argument");
    const unsigned blocks = grid_for(n, kThreads, kSumBlocksCap); // n == 0: one block writes 0
    sum_squares_kernel<<<blocks, kThreads, 0, stream>>>(data, n, partials);
    EFFNET_LAUNCH_CHECK("sum_squares_kernel");
    sum_partials_kernel<<<1, kThreads, 0, stream>>>(partials, int64_t(blocks), result);
    EFFNET_LAUNCH_CHECK("sum_partials_kernel");
}

void launch_scale_f32(float* data, int64_t n, float scale, cudaStream_t stream) {
    EFFNET_CHECK(data && n >= 0, "scale_f32: null pointer argument");
    if (n == 0) return;
    scale_kernel<<<grid_for(n, kThreads, 4096), kThreads, 0, stream>>>(data, n, scale);
    EFFNET_LAUNCH_CHECK("scale_kernel");
}

void launch_cast_from_f32(const float* src, void* dst, int64_t n, Precision storage, cudaStream_t stream) {
    EFFNET_CHECK(src && dst && n >= 0, "cast_from_f32: null pointer argument");
    if (n == 0) return;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        cast_kernel<T><<<grid_for(n, kThreads, 4096), kThreads, 0, stream>>>(src, static_cast<T*>(dst), n);
    });
    EFFNET_LAUNCH_CHECK("cast_kernel");
}

} // namespace effnet::kernels
