#pragma once
// SGD on the fp32 master weights (rmsprop.cuh, adamw.cuh: the other optimizers):
//   SGD with momentum (PyTorch's definition, dampening 0; the buffer starts at zero, which
//   makes the first step buf = g as PyTorch does), computed exactly as train::Optimizer does:
//   in double per element, every operation rounded once (no FMA contraction; the CPU build does
//   not contract either), the buffer rounded to float32 when stored and read back rounded:
//     g = float(grad * grad_scale) + wd * p     (grad_scale: gradient clipping; 1 leaves grad as is)
//     buf = float(mu * buf + g); update = nesterov ? g + mu * buf : buf; p = float(p - lr * update)
//   (momentum 0: p = float(p - lr * g), the buffer is not touched).
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

} // namespace effnet::kernels
