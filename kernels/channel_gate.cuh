#pragma once
// Squeeze-excite gate applied in place: x[m, k] *= gate[m / rows_per_image, k].
// The hand-written 1x1 GEMM applies the gate inside its A-tile load; a vendor GEMM (cuBLASLt)
// cannot, so before one the gate runs as this separate memory-bound pass over the depthwise
// output (read + write once, 16-byte vectors).
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// x: [rows, channels] storage precision, modified in place; gate: [rows / rows_per_image,
// channels] float32. rows % rows_per_image == 0.
void launch_channel_gate(void* x, const float* gate, int64_t rows, int channels, int rows_per_image,
                         Precision precision, cudaStream_t stream);

} // namespace effnet::kernels
