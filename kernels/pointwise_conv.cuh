#pragma once
// 1x1 convolution as a GEMM over NHWC rows: Y[M = N*H*W, Cout] = X'[M, Cin] * W^T with
//   prologue  X'[m, k] = X[m, k] * gate[m / rows_per_image, k]   (squeeze-excite, optional)
//   epilogue  Y = act(acc + bias) (+ residual)                    (BN folded into W and bias)
// Two kernels: a SIMT one (fp32 accumulate, any shape, all precisions) and a tensor-core one
// (mma.sync m16n8k16 with a cp.async pipeline, fp16/bf16 in, fp32 accumulate; tile shape chosen
// per layer, see pointwise_conv_tc.cuh) used when Cin and Cout are multiples of 8.
#include "kernels/types.cuh"

namespace effnet::kernels {

struct PointwiseArgs {
    const void* input = nullptr;    // [M, K] storage precision
    const void* weight = nullptr;   // [N, K] storage precision (PyTorch [Cout, Cin, 1, 1])
    const float* bias = nullptr;    // [N] float32
    const float* gate = nullptr;    // [M / rows_per_image, K] float32 or null
    const void* residual = nullptr; // [M, N] storage precision or null
    void* output = nullptr;         // [M, N] storage precision
    int64_t rows = 0;               // M
    int out_channels = 0;           // N
    int in_channels = 0;            // K
    int rows_per_image = 1;         // H*W: row m belongs to image m / rows_per_image
    Act act = Act::None;
};

enum class GemmKernel { Auto, Simt, TensorCore };

// Whether the tensor-core kernel can run these arguments (fp16/bf16, K and N multiples of 8,
// 16-byte aligned pointers).
bool pointwise_tensor_core_eligible(const PointwiseArgs& args, Precision precision);

// Auto picks the tensor-core kernel when eligible, else SIMT. Asking for TensorCore on
// ineligible arguments throws.
void launch_pointwise_conv(const PointwiseArgs& args, Precision precision, GemmKernel kernel,
                           cudaStream_t stream);

} // namespace effnet::kernels
