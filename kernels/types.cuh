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

// Bytes of one stored activation element.
inline size_t storage_size(Precision p) {
    return p == Precision::FP32 ? 4 : 2;
}

} // namespace effnet::kernels
