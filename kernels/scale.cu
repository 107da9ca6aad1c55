#include "kernels/scale.cuh"

#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void scale_kernel(float* data, int64_t n, float scale) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        data[i] *= scale;
}

} // namespace

void launch_scale_f32(float* data, int64_t n, float scale, cudaStream_t stream) {
    EFFNET_CHECK(data && n >= 0, "scale_f32: null pointer argument");
    if (n == 0) return;
    scale_kernel<<<grid_for(n, kThreads, 4096), kThreads, 0, stream>>>(data, n, scale);
    EFFNET_LAUNCH_CHECK("scale_kernel");
}

} // namespace effnet::kernels
