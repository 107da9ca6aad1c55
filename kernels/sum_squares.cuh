#pragma once
// The sum of squares of the fp32 gradients: the global norm that gradient clipping compares
// with its threshold.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// *result = sum of double(data[i])^2 over [0, n), in double. Each block writes one partial sum
// into partials (sum_squares_partials(n) doubles), then one block adds them in a fixed order: no
// atomics, the same value on every run.
int64_t sum_squares_partials(int64_t n);
void launch_sum_squares(const float* data, int64_t n, double* partials, double* result, cudaStream_t stream);

} // namespace effnet::kernels
