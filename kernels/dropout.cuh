#pragma once
// Dropout before the classifier, on the pooled fp32 features: out = x * mask (the mask holds 0
// or 1/(1-p) per element, made on the host by the CPU reference's generator so that both
// engines drop the same units). Stochastic depth (per sample) is fused into the batch-norm
// apply / backward kernels (BatchNormApplyArgs::sample_scale, BatchNormBackwardArgs::dy_sample_scale).
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// out[i] = x[i] * mask[i], fp32 (out may alias x).
void launch_mask_multiply_f32(const float* x, const float* mask, float* out, int64_t n, cudaStream_t stream);

} // namespace effnet::kernels
