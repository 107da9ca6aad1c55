#pragma once
// Small fp32 matrix products for the training step: the squeeze-excite FC layers and the
// classifier (forward, data and weight gradients, bias sums). Operands are addressed through
// strides, so transposes cost nothing:
//   out[i, j] = post( sum_k A[i*a_row + k*a_col] * B[k*b_row + j*b_col] + bias[j] )
// with B == null meaning B = 1 (a row sum) and post one of SmallMatmulPost. Each output is one
// fmaf chain over k = 0..K-1 in order (acc = fmaf(a_k, b_k, acc), from 0; bias added after):
// deterministic, exact enough for 1e-5 checks, and the same bits whatever the tiling. The kernel
// stages 32x32 tiles of A and B in shared memory, each loaded along whichever of the operand's
// two strides is smaller (coalesced for both row-major and transposed operands).
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// ActivationGrad: out = act'(act_x[i, j]) * (the sum + bias), act' taken at the pre-activation
// (an activation's backward fused into the product that feeds it).
enum class SmallMatmulPost { None, Activation, Sigmoid, ActivationGrad };

struct SmallMatmulArgs {
    const float* a = nullptr;
    int64_t a_row = 0, a_col = 0;
    const float* b = nullptr; // null: all ones
    int64_t b_row = 0, b_col = 0;
    const float* bias = nullptr;       // [J] or null
    float* out_pre = nullptr;          // [I, J] before the post op, or null
    float* out = nullptr;              // [I, J] after it
    int rows = 0, cols = 0, inner = 0; // I, J, K
    SmallMatmulPost post = SmallMatmulPost::None;
    Act act = Act::None;          // for SmallMatmulPost::Activation / ActivationGrad
    const float* act_x = nullptr; // [I, J] pre-activation, for SmallMatmulPost::ActivationGrad
    // [I] or null: row_sum[i] = sum_k A[i, k] in the same fmaf order as the B == null mode (no
    // bias, no post op), from the A tiles already staged: e.g. the bias gradient next to a
    // weight gradient, one launch instead of two.
    float* row_sum = nullptr;
};
// Outputs (out, out_pre, row_sum) must not alias the inputs.
void launch_small_matmul(const SmallMatmulArgs& args, cudaStream_t stream);

} // namespace effnet::kernels
