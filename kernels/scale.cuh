#pragma once
// In-place scaling of an fp32 buffer: the AMP loss scaler's unscale of the gradients.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// data[i] *= scale
void launch_scale_f32(float* data, int64_t n, float scale, cudaStream_t stream);

} // namespace effnet::kernels
