#pragma once
// Stem: direct KxK strided convolution reading the NCHW float32 network input, with batch norm
// folded into weight + bias and the activation fused; writes NHWC in the storage precision.
#include "kernels/types.cuh"

namespace effnet::kernels {

struct StemConvArgs {
    const float* input = nullptr;  // [N, Cin, H, W] float32 (NCHW, as the user hands it over)
    const float* weight = nullptr; // [k, k, Cin, Cout] float32, BN folded
    const float* bias = nullptr;   // [Cout] float32, BN folded
    void* output = nullptr;        // [N, Ho, Wo, Cout] storage precision
    int batch = 0, in_channels = 0, height = 0, width = 0;
    int out_channels = 0, out_height = 0, out_width = 0;
    int kernel = 3, stride = 2, pad_top = 0, pad_left = 0;
    Act act = Act::SiLU;
    // The launcher picks a kernel specialised for 3x3, 3 input channels and 32/40/48/56/64
    // outputs (every EfficientNet stem) when it applies; true forces the generic one (tests).
    bool force_generic = false;
};

// Validates the arguments (throws effnet::Error) and launches on `stream`.
void launch_stem_conv(const StemConvArgs& args, Precision precision, cudaStream_t stream);

} // namespace effnet::kernels
