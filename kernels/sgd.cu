#include "kernels/sgd.cuh"

#include <string>

#include "kernels/common.cuh"
#include "kernels/train_dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void sgd_kernel(SgdArgs a) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.count;
         i += int64_t(gridDim.x) * blockDim.x) {
        const float p = a.param[i];
        const float g = a.grad[i] * a.grad_scale + a.weight_decay * p;
        float update = g;
        if (a.momentum != 0.0f) {
            const float buf = a.momentum * a.momentum_buffer[i] + g;
            a.momentum_buffer[i] = buf;
            update = a.nesterov ? g + a.momentum * buf : buf;
        }
        a.param[i] = p - a.lr * update;
    }
}

__global__ void non_finite_kernel(const float* data, int64_t n, int* flag) {
    bool bad = false;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        bad |= !isfinite(data[i]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
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
    EFFNET_CHECK(a.param && a.grad && (a.momentum == 0.0f || a.momentum_buffer) && a.count >= 0,
                 "sgd_update: null pointer argument");
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
