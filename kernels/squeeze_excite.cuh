#pragma once
// Excite half of squeeze-excite: from the pooled sums of the depthwise output (the squeeze is
// fused into the depthwise kernel), gate[n, :] = sigmoid(W2 act(W1 mean + b1) + b2).
// The gate is applied later, on load, by the project GEMM's prologue.
#include "kernels/types.cuh"

namespace effnet::kernels {

struct ExciteArgs {
    float* pooled_sum = nullptr;       // [N, C] sum over H*W; zeroed once read, ready for the
                                       // next forward's squeeze to add into
    float inv_count = 1.0f;            // 1 / (H*W)
    const float* w_reduce = nullptr;   // [S, C]
    const float* b_reduce = nullptr;   // [S]
    const float* w_expand_t = nullptr; // [S, C] (the [C, S] expand weight transposed)
    const float* b_expand = nullptr;   // [C]
    float* gate = nullptr;             // [N, C]
    int batch = 0, channels = 0, reduced = 0;
    Act act = Act::SiLU;
};

void launch_excite(const ExciteArgs& args, cudaStream_t stream);

} // namespace effnet::kernels
