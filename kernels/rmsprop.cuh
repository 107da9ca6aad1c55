#pragma once
// RMSProp as TensorFlow defines it (the EfficientNet paper's optimizer: decay 0.9, momentum 0.9,
// eps 1e-3) on fp32 master weights, computed exactly as train::Optimizer does: in double per
// element, every operation rounded once (no FMA contraction), each state value rounded to
// float32 when stored and used rounded from then on:
//   g   = float(grad * grad_scale) + wd * p      (grad_scale: gradient clipping; 1: grad as is)
//   ms  = float(rho * ms + (1 - rho) * g^2)      (starts at 1, as TF's "rms" slot)
//   mom = float(mu * mom + lr * g / sqrt(ms + eps))   (eps inside the root; lr inside the buffer)
//   p   = float(p - mom)
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct RmsPropArgs {
    float* param = nullptr;           // [n]
    const float* grad = nullptr;      // [n]
    float* mean_square = nullptr;     // [n] "ms"
    float* momentum_buffer = nullptr; // [n] "mom"
    int64_t count = 0;
    double lr = 0.0, decay = 0.9, momentum = 0.9, eps = 1e-3, weight_decay = 0.0, grad_scale = 1.0;
    // Or null: every element with weight_decay. Else [ceil(count / kParamChunk)] ParamClass per
    // chunk from param[0] (types.cuh): one launch updates every tensor of a flat buffer.
    const unsigned char* chunk_class = nullptr;
};
// Throws effnet::Error on a null pointer or a hyperparameter outside train::Optimizer's ranges.
void launch_rmsprop_update(const RmsPropArgs& args, cudaStream_t stream);

} // namespace effnet::kernels
