#pragma once
// Training-mode batch norm on NHWC activations viewed as [rows = N*H*W, C].
//   forward:  per-channel batch mean and biased variance in one pass over x (Welford per thread,
//             merged with Chan's formula; the chunks combined in double about a shift, so an offset
//             mean does not cancel), invstd = 1/sqrt(var + eps); running stats updated with momentum
//             and the unbiased variance (PyTorch); y = act((x - mean) * invstd * gamma + beta)
//             [* sample_scale] [+ residual]
//   backward: g = dy * act'(bn(x)) (the activation is recomputed from x), then
//             dbeta = sum g, dgamma = sum g * xhat (one pass), dx = gamma * invstd * (g - mean(g) -
//             xhat * mean(g * xhat)) (a second pass).
// Reductions are deterministic: the rows are cut into chunks fixed by the shape (rows, C) alone;
// each block sums its chunk in a fixed order (fp32 per thread, a fixed tree over threads) and
// writes per-chunk partials; a finalize kernel adds the partials of each channel in double with
// 64 threads in a fixed order (strided subsets, then a fixed tree). No atomics: the same inputs
// give the same bits on every run.
// Elementwise work reads 16-byte vectors (8 fp16/bf16 or 4 fp32 channels per thread) when C is a
// multiple of the vector and the tensors are 16-byte aligned; other shapes take a scalar path.
#include <cstddef>
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// Floats of scratch space the forward statistics and the backward need for [rows, channels].
size_t batchnorm_workspace_floats(int64_t rows, int channels);

struct BatchNormStatsArgs {
    const void* x = nullptr; // [rows, C] storage precision
    int64_t rows = 0;
    int channels = 0;
    float eps = 1e-5f;
    float momentum = 0.1f;
    float* running_mean = nullptr; // [C], updated when non-null
    float* running_var = nullptr;  // [C], updated when non-null (unbiased batch variance)
    float* save_mean = nullptr;    // [C] out: batch mean
    float* save_invstd = nullptr;  // [C] out: 1 / sqrt(biased batch var + eps)
    // Optional folded affine form, written when non-null (then gamma and beta are required):
    // save_scale = gamma * invstd, save_shift = beta - mean * save_scale (computed in double), so
    // that a consumer can apply the batch norm as x * scale + shift.
    const float* gamma = nullptr; // [C]
    const float* beta = nullptr;  // [C]
    float* save_scale = nullptr;  // [C] out
    float* save_shift = nullptr;  // [C] out
    float* workspace = nullptr;   // batchnorm_workspace_floats(rows, C)
};
void launch_batchnorm_stats(const BatchNormStatsArgs& args, Precision storage, cudaStream_t stream);

struct BatchNormApplyArgs {
    const void* x = nullptr;             // [rows, C]
    const float* mean = nullptr;         // [C]
    const float* invstd = nullptr;       // [C]
    const float* gamma = nullptr;        // [C]
    const float* beta = nullptr;         // [C]
    const void* residual = nullptr;      // [rows, C] added after the activation, or null
    const float* sample_scale = nullptr; // [rows / rows_per_image] stochastic-depth scale applied
    int64_t rows_per_image = 1;          //   before the residual add, or null
    void* y = nullptr;                   // [rows, C] (may not alias x)
    int64_t rows = 0;
    int channels = 0;
    Act act = Act::None;
};
void launch_batchnorm_apply(const BatchNormApplyArgs& args, Precision storage, cudaStream_t stream);

struct BatchNormBackwardArgs {
    const void* x = nullptr;  // [rows, C] the forward's BN input
    const void* dy = nullptr; // [rows, C] gradient of the (activated) output, or null when:
    const float* dy_pooled =
        nullptr; // [rows / rows_per_image, C]: dy[r, c] = dy_pooled[r / rows_per_image, c] * pooled_scale
    int64_t rows_per_image = 1; //   (the backward of a global average pool, fused)
    float pooled_scale = 1.0f;
    const float* dy_sample_scale = nullptr; // [rows / rows_per_image]: dy scaled per sample
                                            //   (stochastic-depth backward), or null
    const float* mean = nullptr;            // [C] saved by the forward
    const float* invstd = nullptr;          // [C]
    const float* gamma = nullptr;           // [C]
    const float* beta = nullptr;            // [C] (to recompute the activation input)
    Act act = Act::None;
    float* dgamma = nullptr; // [C] out (overwritten)
    float* dbeta = nullptr;  // [C] out (overwritten)
    void* dx = nullptr;      // [rows, C] out, storage precision (may alias dy)
    int64_t rows = 0;
    int channels = 0;
    float* workspace = nullptr; // batchnorm_workspace_floats(rows, C)
};
void launch_batchnorm_backward(const BatchNormBackwardArgs& args, Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
