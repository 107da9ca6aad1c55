#include "kernels/cross_entropy.cuh"

#include <string>

#include "kernels/common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

// Fixed-order tree reduction over the block (deterministic). op: 0 = sum, 1 = max.
__device__ float block_reduce(float v, float* smem, int op) {
    smem[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float o = smem[threadIdx.x + s];
            smem[threadIdx.x] = op == 0 ? smem[threadIdx.x] + o : fmaxf(smem[threadIdx.x], o);
        }
        __syncthreads();
    }
    const float r = smem[0];
    __syncthreads();
    return r;
}

__global__ void __launch_bounds__(kThreads) cross_entropy_kernel(CrossEntropyArgs a) {
    __shared__ float smem[kThreads];
    const int n = blockIdx.x, K = a.classes;
    const float* row = a.logits + int64_t(n) * K;
    float mx = -INFINITY;
    for (int k = threadIdx.x; k < K; k += blockDim.x) mx = fmaxf(mx, row[k]);
    mx = block_reduce(mx, smem, 1);
    float se = 0.0f, sl = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        se += expf(row[k] - mx);
        sl += row[k];
    }
    se = block_reduce(se, smem, 0);
    sl = block_reduce(sl, smem, 0);
    const float lse = mx + logf(se);
    const int t = a.targets[n];
    const float eps = a.label_smoothing;
    if (threadIdx.x == 0) {
        const float nll = lse - row[t];
        const float smooth = lse - sl / float(K); // mean_k(lse - logit[k])
        a.sample_loss[n] = (1.0f - eps) * nll + eps * smooth;
    }
    if (!a.dlogits) return;
    const float scale = a.grad_scale / float(a.batch);
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float target = (k == t ? 1.0f - eps : 0.0f) + eps / float(K);
        a.dlogits[int64_t(n) * K + k] = (expf(row[k] - lse) - target) * scale;
    }
}

} // namespace

void launch_cross_entropy(const CrossEntropyArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.logits && a.targets && a.sample_loss, "cross_entropy: null pointer argument");
    EFFNET_CHECK(a.batch >= 1 && a.classes >= 1,
                 "cross_entropy: bad shape N=" + std::to_string(a.batch) + " K=" + std::to_string(a.classes));
    EFFNET_CHECK(a.label_smoothing >= 0.0f && a.label_smoothing <= 1.0f,
                 "cross_entropy: label smoothing must be in [0, 1], got " +
                     std::to_string(a.label_smoothing));
    cross_entropy_kernel<<<unsigned(a.batch), kThreads, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("cross_entropy_kernel");
}

} // namespace effnet::kernels
