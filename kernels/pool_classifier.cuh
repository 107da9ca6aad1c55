#pragma once
// Network tail: global average pool of the head output, then the classifier (a small GEMM with
// float32 weights) writing float32 logits.
#include "kernels/types.cuh"

namespace effnet::kernels {

// input [N, HW, C] storage precision -> output [N, C] float32 mean over HW.
void launch_global_avg_pool(const void* input, float* output, int batch, int pixels, int channels,
                            Precision precision, cudaStream_t stream);

// input [N, K] float32, weight [M, K] float32, bias [M] -> output [N, M] float32.
void launch_linear(const float* input, const float* weight, const float* bias, float* output, int batch,
                   int in_features, int out_features, cudaStream_t stream);

} // namespace effnet::kernels
