#pragma once
// 1x1 convolution for short reductions (K = in_channels <= 64, the first expand convs of every
// EfficientNet: 16, 24, 32, 40, 48, 56 channels in). Such a GEMM is bound by writing its output
// (N = 4-6x K values per row), so this kernel gives each thread one row and 32 output channels:
// the row's K inputs are loaded once (16-byte loads), the 32 x K weights are shared-memory
// broadcasts, and bias + activation are applied before 16-byte stores. fp32 accumulation.
// No gate, no residual (expand convs have neither). A candidate for the session's per-layer
// GEMM choice, which times it against the tensor-core kernel and cuBLASLt.
#include "kernels/pointwise_conv.cuh"

namespace effnet::kernels {

// Whether launch_pointwise_small_k can run these arguments: K in {8, 16, ..., 64}, N a multiple
// of 8, no gate or residual, 16-byte aligned input/output/weight.
bool pointwise_small_k_eligible(const PointwiseArgs& args, Precision precision);

void launch_pointwise_small_k(const PointwiseArgs& args, Precision precision, cudaStream_t stream);

} // namespace effnet::kernels
