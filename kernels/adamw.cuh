#pragma once
// AdamW (Loshchilov & Hutter, PyTorch's definition) on fp32 master weights, computed exactly as
// train::Optimizer does: in double per element, every operation rounded once (no FMA
// contraction), the moments rounded to float32 when stored and used rounded from then on:
//   g  = float(grad * grad_scale)                (grad_scale: gradient clipping; 1: grad as is)
//   pd = p * (1 - lr * wd)                       (decoupled weight decay)
//   m  = float(b1 * m + (1 - b1) * g)            (both moments start at 0)
//   v  = float(b2 * v + (1 - b2) * g^2)
//   p  = float(pd - lr * (m / c1) / (sqrt(v / c2) + eps)),  c1 = 1 - b1^t, c2 = 1 - b2^t
// t is the optimizer step count, from 1; the corrections are computed on the host with
// std::pow, as the CPU optimizer does.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct AdamWArgs {
    float* param = nullptr;      // [n]
    const float* grad = nullptr; // [n]
    float* exp_avg = nullptr;    // [n] m
    float* exp_avg_sq = nullptr; // [n] v
    int64_t count = 0;
    double lr = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0, grad_scale = 1.0;
    int64_t step = 1; // t >= 1
    // Or null: every element with weight_decay. Else [ceil(count / kParamChunk)] ParamClass per
    // chunk from param[0] (types.cuh): one launch updates every tensor of a flat buffer.
    const unsigned char* chunk_class = nullptr;
};
// Throws effnet::Error on a null pointer or a hyperparameter outside train::Optimizer's ranges.
void launch_adamw_update(const AdamWArgs& args, cudaStream_t stream);

} // namespace effnet::kernels
