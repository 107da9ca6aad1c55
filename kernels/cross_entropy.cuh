#pragma once
// Mean softmax cross-entropy over the batch with PyTorch's label smoothing eps, forward and
// backward in one kernel (one block per sample, fixed-order block reductions):
//   loss_n = (1 - eps) * (lse - logit[t_n]) + eps * mean_k(lse - logit[k])
//   dlogits[n, k] = (softmax[n, k] - (1 - eps) [k == t_n] - eps / K) / N * grad_scale
// grad_scale is the AMP loss scale (1 without). The mean over the batch is left to the caller
// (per-sample losses are small and summed on the host in double).
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct CrossEntropyArgs {
    const float* logits = nullptr;    // [N, K]
    const int32_t* targets = nullptr; // [N], each in [0, K) (validated on the host)
    float* sample_loss = nullptr;     // [N] out
    float* dlogits = nullptr;         // [N, K] out, or null
    int batch = 0, classes = 0;
    float label_smoothing = 0.0f;
    float grad_scale = 1.0f;
};
void launch_cross_entropy(const CrossEntropyArgs& args, cudaStream_t stream);

} // namespace effnet::kernels
