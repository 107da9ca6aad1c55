#pragma once
// im2col for the training stem (3 input channels): the stem convolution and its weight
// gradient then run as GEMMs. Input NCHW fp32 (as the user hands it over), output
// [N*Ho*Wo, ld] in the storage precision with column ci*k*k + kh*k + kw (PyTorch's weight
// order [O, I, kh, kw]); columns [C*k*k, ld) are zero (ld pads rows for aligned GEMM loads).
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct Im2colArgs {
    const float* input = nullptr; // [N, C, H, W]
    void* columns = nullptr;      // [N*Ho*Wo, ld]
    int batch = 0, channels = 0, height = 0, width = 0;
    int kernel = 3, stride = 2, pad_top = 0, pad_left = 0, out_height = 0, out_width = 0;
    int ld = 0; // >= channels * kernel * kernel
};
void launch_im2col(const Im2colArgs& args, Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
