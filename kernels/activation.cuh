#pragma once
// SiLU / ReLU6 forward and backward for training. The backward takes the pre-activation x
// (not the output): the training step stores only pre-activations and recomputes cheap
// pointwise ops. The device functions below are also fused into the batch-norm kernels.
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// y = act(x), n elements of the storage precision.
void launch_activation_forward(const void* x, void* y, int64_t n, Act act, Precision storage,
                               cudaStream_t stream);
// dx = dy * act'(x).
void launch_activation_backward(const void* x, const void* dy, void* dx, int64_t n, Act act,
                                Precision storage, cudaStream_t stream);

#ifdef __CUDACC__
// SiLU: x * sigmoid(x) with the accurate expf (fp32 is checked to 1e-5). ReLU6 uses
// comparisons (not fminf/fmaxf) so that NaN propagates, as the CPU reference does.
__device__ __forceinline__ float act_forward(float x, Act a) {
    if (a == Act::SiLU) return x / (1.0f + expf(-x));
    if (a == Act::ReLU6) return x < 0.0f ? 0.0f : (x > 6.0f ? 6.0f : x);
    return x;
}
// d act / dx at x, times dy. SiLU: s * (1 + x * (1 - s)). ReLU6: PyTorch's hardtanh backward,
// zero at and outside the kinks 0 and 6.
__device__ __forceinline__ float act_backward(float x, float dy, Act a) {
    if (a == Act::SiLU) {
        const float s = 1.0f / (1.0f + expf(-x));
        return dy * s * (1.0f + x * (1.0f - s));
    }
    if (a == Act::ReLU6) return (x > 0.0f && x < 6.0f) ? dy : 0.0f;
    return dy;
}
#endif

} // namespace effnet::kernels
