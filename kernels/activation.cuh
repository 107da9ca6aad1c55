#pragma once
// SiLU / ReLU6 (and the squeeze-excite gate's sigmoid), forward and backward: the launchers of
// the standalone elementwise passes, and the device functions every kernel that applies an
// activation uses (epilogues, batch norm, input transforms): one definition per activation and
// one NaN rule for every kernel and storage type. The backward takes the pre-activation x (not
// the output): the training step stores only pre-activations and recomputes cheap pointwise ops.
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
// How exp and the divide of SiLU / sigmoid are evaluated. Accurate: expf and an IEEE divide (fp32
// results are checked to 1e-5 against the CPU). Fast: __expf and __fdividef, within ~1e-6
// relative, far under the rounding of an fp16 / bf16 result (2^-11 / 2^-8); the accurate pair
// made the wide fp16 epilogues arithmetic-bound. Both give the same answers at 0, +-inf and NaN.
enum class ActMath { Accurate, Fast };

// The math for a result stored as T: accurate for fp32, fast for fp16 / bf16.
template <typename T>
inline constexpr ActMath act_math_for = sizeof(T) == 4 ? ActMath::Accurate : ActMath::Fast;

template <ActMath M>
__device__ __forceinline__ float act_exp(float x) {
    if constexpr (M == ActMath::Fast)
        return __expf(x);
    else
        return expf(x);
}
template <ActMath M>
__device__ __forceinline__ float act_divide(float a, float b) {
    if constexpr (M == ActMath::Fast)
        return __fdividef(a, b);
    else
        return a / b;
}

// PyTorch's rules, which the CPU reference follows: NaN in, NaN out, for every activation.
// sigmoid: 1 / (1 + e^-x); 0 at -inf, 1 at +inf.
template <ActMath M = ActMath::Accurate>
__device__ __forceinline__ float sigmoid(float x) {
    return act_divide<M>(1.0f, 1.0f + act_exp<M>(-x));
}

// clamp(x, 0, 6) with NaN propagated: fminf / fmaxf would turn NaN into 0 or 6. From sm_80 the
// NaN-propagating max / min instructions (two instructions, as fminf / fmaxf), else comparisons.
__device__ __forceinline__ float relu6(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float y;
    asm("max.NaN.f32 %0, %1, 0f00000000;\n\tmin.NaN.f32 %0, %0, 0f40C00000;" : "=f"(y) : "f"(x));
    return y;
#else
    return x < 0.0f ? 0.0f : (x > 6.0f ? 6.0f : x);
#endif
}

// SiLU: x / (1 + e^-x) (+inf at +inf; NaN at -inf, -inf / inf, as PyTorch computes it).
template <ActMath M = ActMath::Accurate>
__device__ __forceinline__ float act_forward(float x, Act a) {
    if (a == Act::SiLU) return act_divide<M>(x, 1.0f + act_exp<M>(-x));
    if (a == Act::ReLU6) return relu6(x);
    return x;
}

// dy * act'(x). SiLU: s * (1 + x * (1 - s)), s = sigmoid(x) (NaN at +-inf: inf * 0). ReLU6:
// PyTorch's hardtanh backward, dy strictly inside (0, 6), else 0 (also at the kinks and at NaN).
template <ActMath M = ActMath::Accurate>
__device__ __forceinline__ float act_backward(float x, float dy, Act a) {
    if (a == Act::SiLU) {
        const float s = sigmoid<M>(x);
        return dy * s * (1.0f + x * (1.0f - s));
    }
    if (a == Act::ReLU6) return (x > 0.0f && x < 6.0f) ? dy : 0.0f;
    return dy;
}
#endif

} // namespace effnet::kernels
