#pragma once
// Host-side launch helpers of the kernels (included by .cu files only): dispatch from a runtime
// storage precision or activation to a template parameter, and launch geometry.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "kernels/types.cuh"

namespace effnet::kernels {

template <typename T>
struct TypeTag {
    using type = T;
};

// Calls f(TypeTag<T>{}) with T the element type stored for precision p.
template <typename F>
void dispatch_storage(Precision p, F&& f) {
    switch (p) {
    case Precision::FP32:
        f(TypeTag<float>{});
        return;
    case Precision::FP16:
        f(TypeTag<__half>{});
        return;
    case Precision::BF16:
        f(TypeTag<__nv_bfloat16>{});
        return;
    }
    throw Error("kernel launch: unknown storage precision");
}

// Calls f(std::integral_constant<Act, act>{}): kernels that take the activation as a template
// parameter get straight-line element loops.
template <typename F>
void dispatch_act(Act act, F&& f) {
    switch (act) {
    case Act::None:
        f(std::integral_constant<Act, Act::None>{});
        return;
    case Act::SiLU:
        f(std::integral_constant<Act, Act::SiLU>{});
        return;
    case Act::ReLU6:
        f(std::integral_constant<Act, Act::ReLU6>{});
        return;
    }
    throw Error("kernel launch: unknown activation");
}

// Blocks for a grid-stride loop over `count` items: enough to fill the GPU, capped.
inline unsigned grid_for(int64_t count, int threads, int64_t cap = 65535) {
    int64_t blocks = (count + threads - 1) / threads;
    if (blocks < 1) blocks = 1;
    if (blocks > cap) blocks = cap;
    return unsigned(blocks);
}

} // namespace effnet::kernels
