#pragma once
// Device code the optimizer kernels (sgd.cu, rmsprop.cu, adamw.cu) share: which elements a
// launch over a flat parameter buffer updates, and with which weight decay.
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

} // namespace effnet::kernels
