#pragma once
// The AMP loss scaler's check: whether any element of the fp32 gradients is inf or NaN.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// *flag = 1 when any of data[0..n) is inf or NaN; *flag is left unchanged otherwise (the caller
// zeroes it first). Blocks that find one store the same value: no atomics needed.
void launch_find_non_finite(const float* data, int64_t n, int* flag, cudaStream_t stream);

} // namespace effnet::kernels
