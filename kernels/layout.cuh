#pragma once
// Layout conversion for outputs handed to the user: the sessions keep activations NHWC in the
// storage precision; a feature map leaves as NCHW float32 (as the CPU engine and PyTorch give it).
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// dst [batch, channels, pixels] float32 = src [batch, pixels, channels] (storage precision),
// widened exactly (fp16 / bf16 -> fp32 loses nothing).
void launch_nhwc_to_nchw_f32(const void* src, float* dst, int64_t batch, int64_t pixels, int channels,
                             Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
