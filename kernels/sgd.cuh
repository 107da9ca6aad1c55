#pragma once
// The optimizer side of the training step, on fp32 master weights:
//   SGD with momentum (PyTorch's definition, dampening 0; the buffer starts at zero, which
//   makes the first step buf = g as PyTorch does), computed exactly as train::Optimizer does:
//   in double per element, every operation rounded once (no FMA contraction; the CPU build does
//   not contract either), the buffer rounded to float32 when stored and read back rounded:
//     g = float(grad * grad_scale) + wd * p     (grad_scale: gradient clipping; 1 leaves grad as is)
//     buf = float(mu * buf + g); update = nesterov ? g + mu * buf : buf; p = float(p - lr * update)
//   (momentum 0: p = float(p - lr * g), the buffer is not touched).
//   A finite check over all gradients (for the AMP loss scaler), the global sum of squares (for
//   gradient clipping), casts of the master weights to the storage precision, and an in-place scale.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct SgdArgs {
    float* param = nullptr;           // [n]
    const float* grad = nullptr;      // [n]
    float* momentum_buffer = nullptr; // [n] (unused when momentum == 0)
    int64_t count = 0;
    double lr = 0.0, momentum = 0.0, weight_decay = 0.0, grad_scale = 1.0;
    bool nesterov = false;
    // Or null: every element with weight_decay. Else [ceil(count / kParamChunk)] ParamClass per
    // chunk from param[0] (types.cuh): one launch updates every tensor of a flat buffer.
    const unsigned char* chunk_class = nullptr;
};
void launch_sgd_update(const SgdArgs& args, cudaStream_t stream);

// *flag = 1 when any of data[0..n) is inf or NaN; *flag is left unchanged otherwise (the caller
// zeroes it first). Blocks that find one store the same value: no atomics needed.
void launch_find_non_finite(const float* data, int64_t n, int* flag, cudaStream_t stream);

// *result = sum of double(data[i])^2 over [0, n), in double. Each block writes one partial sum
// into partials (sum_squares_partials(n) doubles), then one block adds them in a fixed order: no
// atomics, the same value on every run.
int64_t sum_squares_partials(int64_t n);
void launch_sum_squares(const float* data, int64_t n, double* partials, double* result, cudaStream_t stream);

// data[i] *= scale
void launch_scale_f32(float* data, int64_t n, float scale, cudaStream_t stream);

// dst (storage precision) = src (fp32), rounded to nearest even.
void launch_cast_from_f32(const float* src, void* dst, int64_t n, Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
