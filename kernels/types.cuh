#pragma once
// Host-visible types shared by the kernel launchers. Every kernels/*.cuh declares plain host
// launch functions (no device code), so C++ files compiled by g++ can include them.
#include <cuda_runtime_api.h>

#include "effnet/config.hpp"
#include "effnet/inference.hpp"

namespace effnet::kernels {

// Activation fused into an epilogue; None for the project conv (BN only).
enum class Act { None, SiLU, ReLU6 };

inline Act to_act(Activation a) {
    return a == Activation::SiLU ? Act::SiLU : Act::ReLU6;
}

// One optimizer launch over a flat parameter buffer whose tensors start at multiples of
// kParamChunk elements: a class per chunk says how the update treats it (the optimizers'
// `chunk_class`). Elements past a tensor's end, up to the next chunk, hold zeros and zero
// gradients, which every update leaves at zero.
constexpr int kParamChunk = 32;
enum ParamClass : unsigned char {
    kParamFrozen = 0,  // not trainable (running statistics): left alone
    kParamNoDecay = 1, // trainable, without weight decay (BN parameters, biases)
    kParamDecay = 2,   // trainable, with the launch's weight_decay
};

// Bytes of one stored activation element.
inline size_t storage_size(Precision p) {
    return p == Precision::FP32 ? 4 : 2;
}

} // namespace effnet::kernels
