#pragma once
// Device code the optimizer kernels (sgd.cu, rmsprop.cu, adamw.cu) share: which elements a
// launch over a flat parameter buffer updates, with which weight decay, and the clipped gradient.
#include "kernels/types.cuh"

namespace effnet::kernels {

// The weight decay of element i under chunk_class (ParamClass per kParamChunk elements, or null:
// every element with weight_decay); false: the element is frozen, leave it alone.
__device__ __forceinline__ bool element_decay(const unsigned char* chunk_class, int64_t i,
                                              double weight_decay, double& wd) {
    wd = weight_decay;
    if (!chunk_class) return true;
    const unsigned char c = chunk_class[i / kParamChunk];
    if (c == kParamNoDecay) wd = 0.0;
    return c != kParamFrozen;
}

// Calls update(i, wd) for every element i < a.count that the launch updates (grid-stride), with
// its weight decay. Args: the optimizer's launch arguments (count, chunk_class, weight_decay).
template <typename Args, typename F>
__device__ __forceinline__ void for_each_updated(const Args& a, F&& update) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.count;
         i += int64_t(gridDim.x) * blockDim.x) {
        double wd;
        if (element_decay(a.chunk_class, i, a.weight_decay, wd)) update(i, wd);
    }
}

// The gradient as stored after clipping: grad * grad_scale (1 leaves it) rounded to float.
__device__ __forceinline__ double clipped_grad(float grad, double grad_scale) {
    return float(__dmul_rn(double(grad), grad_scale));
}

} // namespace effnet::kernels
