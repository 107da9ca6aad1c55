#pragma once
// Fused MBConv front half: expand 1x1 (+ BN folded + act) and depthwise KxK (+ BN folded + act)
// in one kernel. Each block computes the expanded values of one input tile (output tile plus
// halo) for a chunk of 32 expanded channels into shared memory, then the depthwise conv from
// there: the expanded tensor never reaches device memory. The squeeze-excite pooling is fused
// as in the depthwise kernel (pooled_sum += per-channel sums of the output).
#include "kernels/types.cuh"

namespace effnet::kernels {

struct FusedExpandDepthwiseArgs {
    const void* input = nullptr;         // [N, H, W, Cin] storage precision
    const void* expand_weight = nullptr; // [Ce, Cin] storage precision, BN folded
    const float* expand_bias = nullptr;  // [Ce]
    const float* dw_weight = nullptr;    // [k*k, Ce] float32, BN folded
    const float* dw_bias = nullptr;      // [Ce]
    void* output = nullptr;              // [N, Ho, Wo, Ce] storage precision
    float* pooled_sum = nullptr;         // [N, Ce] or null
    int batch = 0, height = 0, width = 0, in_channels = 0, expand_channels = 0;
    int kernel = 3, stride = 1, pad_top = 0, pad_left = 0, out_height = 0, out_width = 0;
    Act act = Act::SiLU;
};

// Kernel 3 or 5, stride 1 or 2 (the tile sizes are chosen for those).
bool fused_expand_depthwise_supported(const FusedExpandDepthwiseArgs& args);
void launch_fused_expand_depthwise(const FusedExpandDepthwiseArgs& args, Precision precision,
                                   cudaStream_t stream);

} // namespace effnet::kernels
