#include "kernels/cast.cuh"

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void cast_kernel(const float* src, T* dst, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = from_float<T>(src[i]);
}

} // namespace

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
