#pragma once
// Launch helpers for the kernels (included by .cu files only; first written for the training
// kernels): dispatch from a runtime storage precision to the element type, launch geometry.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "effnet/error.hpp"
#include "effnet/inference.hpp"

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

// Blocks for a grid-stride loop over `count` items: enough to fill the GPU, capped.
inline unsigned grid_for(int64_t count, int threads, int64_t cap = 65535) {
    int64_t blocks = (count + threads - 1) / threads;
    if (blocks < 1) blocks = 1;
    if (blocks > cap) blocks = cap;
    return unsigned(blocks);
}

} // namespace effnet::kernels
