#include "kernels/small_matmul.cuh"

#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/train_dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

// Thread index -> (i, j) with j fastest.
__global__ void small_matmul_kernel(SmallMatmulArgs a) {
    const int64_t total = int64_t(a.rows) * a.cols;
    for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
         t += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = t / a.cols, j = t - i * a.cols;
        const float* ap = a.a + i * a.a_row;
        float acc = 0.0f;
        if (a.b) {
            const float* bp = a.b + j * a.b_col;
            for (int k = 0; k < a.inner; ++k) acc = fmaf(ap[k * a.a_col], bp[k * a.b_row], acc);
        } else {
            for (int k = 0; k < a.inner; ++k) acc += ap[k * a.a_col];
        }
        if (a.bias) acc += a.bias[j];
        if (a.out_pre) a.out_pre[t] = acc;
        if (a.post == SmallMatmulPost::Activation)
            acc = act_forward(acc, a.act);
        else if (a.post == SmallMatmulPost::Sigmoid)
            acc = 1.0f / (1.0f + expf(-acc));
        a.out[t] = acc;
    }
}

__global__ void pointwise_grad_kernel(float* d, const float* pre, const float* sig, int64_t n, Act act) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        if (sig) {
            const float s = sig[i];
            d[i] = d[i] * s * (1.0f - s);
        } else {
            d[i] = act_backward(pre[i], d[i], act);
        }
    }
}

} // namespace

void launch_small_matmul(const SmallMatmulArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.a && a.out, "small_matmul: null pointer argument");
    EFFNET_CHECK(a.rows >= 1 && a.cols >= 1 && a.inner >= 1,
                 "small_matmul: bad shape " + std::to_string(a.rows) + "x" + std::to_string(a.cols) + "x" +
                     std::to_string(a.inner));
    const int64_t total = int64_t(a.rows) * a.cols;
    small_matmul_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("small_matmul_kernel");
}

void launch_pointwise_grad_f32(float* d, const float* pre, const float* sigmoid_out, int64_t n, Act act,
                               cudaStream_t stream) {
    EFFNET_CHECK(d && (pre || sigmoid_out) && n >= 1, "pointwise_grad_f32: null pointer or empty");
    pointwise_grad_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(d, pre, sigmoid_out, n, act);
    EFFNET_LAUNCH_CHECK("pointwise_grad_kernel");
}

} // namespace effnet::kernels
