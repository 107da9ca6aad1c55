#pragma once
// Small fp32 matrix products for the training step: the squeeze-excite FC layers and the
// classifier (forward, data and weight gradients, bias sums). One thread per output element,
// summing over k in a fixed order: deterministic and exact enough for 1e-5 checks. Operands
// are addressed through strides, so transposes cost nothing:
//   out[i, j] = post( sum_k A[i*a_row + k*a_col] * B[k*b_row + j*b_col] + bias[j] )
// with B == null meaning B = 1 (a row/column sum) and post one of SmallMatmulPost.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

enum class SmallMatmulPost { None, Activation, Sigmoid };

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
    Act act = Act::None; // for SmallMatmulPost::Activation
};
void launch_small_matmul(const SmallMatmulArgs& args, cudaStream_t stream);

// d[i] = d[i] * f'(pre[i]) in place, for n elements: f = act, or sigmoid given its output
// (gate_out: f' = s * (1 - s)) when sigmoid_out is non-null.
void launch_pointwise_grad_f32(float* d, const float* pre, const float* sigmoid_out, int64_t n, Act act,
                               cudaStream_t stream);

} // namespace effnet::kernels
