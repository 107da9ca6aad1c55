#include "kernels/non_finite.cuh"

#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void non_finite_kernel(const float* data, int64_t n, int* flag) {
    bool bad = false;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        bad |= !isfinite(data[i]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

} // namespace

void launch_find_non_finite(const float* data, int64_t n, int* flag, cudaStream_t stream) {
    EFFNET_CHECK(data && flag && n >= 0, "find_non_finite: null pointer argument");
    if (n == 0) return;
    non_finite_kernel<<<grid_for(n, kThreads, 4096), kThreads, 0, stream>>>(data, n, flag);
    EFFNET_LAUNCH_CHECK("non_finite_kernel");
}

} // namespace effnet::kernels
