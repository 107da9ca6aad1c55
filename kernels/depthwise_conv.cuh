#pragma once
// Depthwise KxK convolution (K = 3 or 5, any stride, any top/left padding; bottom/right padding
// is implied by the output size), NHWC, batch norm folded, activation fused (on the input too,
// optionally, after an optional per-channel affine), an optional residual added, and optionally the
// squeeze of squeeze-excite fused into the epilogue: the per-channel sum of the activated output
// is atomically added into pooled_sum (which the caller zeroes first).
#include "kernels/types.cuh"

namespace effnet::kernels {

// How the work is laid out (both schedules compute the same thing; the session times them per
// layer and keeps the faster).
enum class DepthwiseSchedule {
    RegisterStrips,  // each thread loads its kernel rows from global memory as it goes (any C)
    SharedTile,      // each block stages its input tile in shared memory first (C % vector == 0)
    SharedTileSmall, // the same with blocks of at most 128 threads: more blocks per SM, whose load
                     // and compute phases overlap
};

struct DepthwiseArgs {
    const void* input = nullptr;   // [N, H, W, C] storage precision
    const float* weight = nullptr; // [k*k, C] float32, BN folded (tap-major so channels are contiguous)
    const float* bias = nullptr;   // [C] float32, BN folded; null: no bias (the training kernels)
    void* output = nullptr;        // [N, Ho, Wo, C] storage precision
    float* pooled_sum = nullptr;   // [N, C] float32 or null: += sum over Ho*Wo of the output
    // [N, Ho, Wo, C] storage precision or null: added to the output after the activation (before
    // the squeeze). May alias output: each thread reads it where it then writes. The data
    // gradient of the training step adds the residual branch's gradient here.
    const void* residual = nullptr;
    int batch = 0, height = 0, width = 0, channels = 0;
    int kernel = 3, stride = 1, pad_top = 0, pad_left = 0;
    int out_height = 0, out_width = 0;
    Act act = Act::SiLU;
    // Applied to each input element as it is loaded (zero padding stays zero): the expand
    // convolution's activation when a vendor GEMM wrote the expand output without it, which
    // saves a read and a write of the largest tensor in the block.
    Act input_act = Act::None;
    // [C] float32 or both null: x * input_scale[c] + input_shift[c] before input_act, on the same
    // loads (padding stays zero). The training step's batch norm of the expand output, applied
    // here so that the BN output is never stored.
    const float* input_scale = nullptr;
    const float* input_shift = nullptr;
    // Output pixels each thread computes along W: 0 lets the launcher choose (by how many threads
    // the layer needs to fill the GPU); 1, 2 or 4 (4 only at stride 1) force it, for benchmarks.
    int pixels_per_thread = 0;
    DepthwiseSchedule schedule = DepthwiseSchedule::RegisterStrips;
};

// Whether `schedule` can run these arguments (RegisterStrips: always).
bool depthwise_schedule_supported(const DepthwiseArgs& args, Precision precision, DepthwiseSchedule schedule);

void launch_depthwise_conv(const DepthwiseArgs& args, Precision precision, cudaStream_t stream);

} // namespace effnet::kernels
