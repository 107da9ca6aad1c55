#include "kernels/dropout.cuh"

#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

__global__ void mask_multiply_kernel(const float* x, const float* mask, float* out, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        out[i] = x[i] * mask[i];
}

} // namespace

void launch_mask_multiply_f32(const float* x, const float* mask, float* out, int64_t n, cudaStream_t stream) {
    EFFNET_CHECK(x && mask && out && n >= 0, "mask_multiply_f32: null pointer argument");
    if (n == 0) return;
    mask_multiply_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, mask, out, n);
    EFFNET_LAUNCH_CHECK("mask_multiply_kernel");
}

} // namespace effnet::kernels
