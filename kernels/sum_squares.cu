#include "kernels/sum_squares.cuh"

#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSumBlocksCap = 1024; // partial sums

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

} // namespace

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

} // namespace effnet::kernels
