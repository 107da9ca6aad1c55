#pragma once
// The optimizer side of the training step, on fp32 master weights:
//   SGD with momentum (PyTorch's definition, dampening 0; the buffer starts at zero, which
//   makes the first step buf = g as PyTorch does): g = grad * grad_scale + wd * p;
//   buf = mu * buf + g; update = nesterov ? g + mu * buf : buf; p -= lr * update.
//   A finite check over all gradients (for the AMP loss scaler), casts of the master weights
//   to the storage precision, and an in-place scale.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct SgdArgs {
    float* param = nullptr;           // [n]
    const float* grad = nullptr;      // [n]
    float* momentum_buffer = nullptr; // [n] (unused when momentum == 0)
    int64_t count = 0;
    float lr = 0.0f, momentum = 0.0f, weight_decay = 0.0f, grad_scale = 1.0f;
    bool nesterov = false;
};
void launch_sgd_update(const SgdArgs& args, cudaStream_t stream);

// *flag = 1 when any of data[0..n) is inf or NaN; *flag is left unchanged otherwise (the caller
// zeroes it first). Blocks that find one store the same value: no atomics needed.
void launch_find_non_finite(const float* data, int64_t n, int* flag, cudaStream_t stream);

// data[i] *= scale
void launch_scale_f32(float* data, int64_t n, float scale, cudaStream_t stream);

// dst (storage precision) = src (fp32), rounded to nearest even.
void launch_cast_from_f32(const float* src, void* dst, int64_t n, Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
