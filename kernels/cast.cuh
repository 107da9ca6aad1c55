#pragma once
// fp32 -> storage precision copy: the fp32 master weights cast to the fp16 / bf16 weights the
// mixed-precision training step reads.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// dst (storage precision) = src (fp32), rounded to nearest even.
void launch_cast_from_f32(const float* src, void* dst, int64_t n, Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
