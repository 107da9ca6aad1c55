// Elementwise ops: SiLU, ReLU6, sigmoid and their backward; add.
#include <cmath>
#include <string>

#include "cpu/ops.hpp"
#include "cpu/ops_util.hpp"
#include "effnet/error.hpp"

namespace effnet::cpu {
namespace {

// Overflow-free logistic: exp of a non-positive argument only.
inline double logistic(double x) {
    if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
    const double e = std::exp(x);
    return e / (1.0 + e);
}

} // namespace

Tensor activation_forward(const Tensor& x, Activation a) {
    Tensor y(x.shape);
    const int64_t n = x.numel();
    const float* xp = x.ptr();
    float* yp = y.ptr();
    if (a == Activation::SiLU) {
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
        for (int64_t i = 0; i < n; ++i) yp[i] = xp[i] / (1.0f + std::exp(-xp[i])); // float exp: hot path
    } else {
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
        for (int64_t i = 0; i < n; ++i) { // comparisons, not fmin/fmax, so NaN propagates
            const float v = xp[i];
            yp[i] = v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
        }
    }
    return y;
}

Tensor activation_backward(const Tensor& x, const Tensor& dy, Activation a) {
    detail::check_same_shape("activation_backward", "x", x, "dy", dy);
    Tensor dx(x.shape);
    const int64_t n = x.numel();
    const float* xp = x.ptr();
    const float* dp = dy.ptr();
    float* gp = dx.ptr();
    if (a == Activation::SiLU) {
        // d/dx x*s(x) = s(x) * (1 + x * (1 - s(x)))
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
        for (int64_t i = 0; i < n; ++i) {
            const double s = logistic(xp[i]);
            gp[i] = float(dp[i] * s * (1.0 + xp[i] * (1.0 - s)));
        }
    } else {
        // PyTorch's hardtanh backward: zero at and outside the kinks 0 and 6.
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
        for (int64_t i = 0; i < n; ++i) gp[i] = (xp[i] > 0.0f && xp[i] < 6.0f) ? dp[i] : 0.0f;
    }
    return dx;
}

Tensor sigmoid_forward(const Tensor& x) {
    Tensor y(x.shape);
    const int64_t n = x.numel();
    const float* xp = x.ptr();
    float* yp = y.ptr();
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) yp[i] = 1.0f / (1.0f + std::exp(-xp[i])); // 0 or 1 at the extremes
    return y;
}

Tensor sigmoid_backward(const Tensor& x, const Tensor& dy) {
    detail::check_same_shape("sigmoid_backward", "x", x, "dy", dy);
    Tensor dx(x.shape);
    const int64_t n = x.numel();
    const float* xp = x.ptr();
    const float* dp = dy.ptr();
    float* gp = dx.ptr();
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
        const double s = logistic(xp[i]);
        gp[i] = float(dp[i] * s * (1.0 - s));
    }
    return dx;
}

Tensor add(const Tensor& a, const Tensor& b) {
    detail::check_same_shape("add", "a", a, "b", b);
    Tensor y(a.shape);
    const int64_t n = a.numel();
    const float* ap = a.ptr();
    const float* bp = b.ptr();
    float* yp = y.ptr();
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) yp[i] = ap[i] + bp[i];
    return y;
}

} // namespace effnet::cpu
