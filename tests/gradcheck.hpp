#pragma once
// Finite-difference gradient checks for the CPU ops.
//
// A test turns an op into a scalar: L(params) = <f(params), r> for a fixed random projection r
// (or the op's own scalar, for a loss), and its analytic gradient is the op's backward with
// dy = r. For each parameter p and a random direction v we compare the directional derivative
//     <dL/dp, v>   with   (L(p + h v) - L(p - h v)) / 2h,
// the op evaluated in float as the library runs it, L summed in double.
//
// Tolerance: with v in [-1, 1] and h = 1e-2, the central difference has a truncation error
// O(h^2 |L'''|) ~ 1e-4 relative for the smooth ops here (zero for linear ops), and a rounding
// error of about 6e-8 * |L| / h ~ 1e-5 relative (float outputs). So |analytic - numeric| must be
// below 2e-3 of their magnitude, plus a floor of 1e-3 * ||g|| ||v|| / sqrt(dim) (the typical size
// of <g, v> for a random v) for the unlucky case where <g, v> is itself near zero. A wrong
// gradient (a missing term, a transposed index) is off by O(1) in this measure.
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "effnet/tensor.hpp"

namespace effnet::test {

inline Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
    Tensor t(shape);
    std::uniform_real_distribution<float> u(lo, hi);
    for (float& v : t.data) v = u(rng);
    return t;
}

inline double dot(const Tensor& a, const Tensor& b) {
    REQUIRE(a.shape == b.shape);
    double s = 0;
    for (size_t i = 0; i < a.data.size(); ++i) s += double(a.data[i]) * double(b.data[i]);
    return s;
}

inline double norm(const Tensor& a) {
    return std::sqrt(dot(a, a));
}

struct GradCheckOptions {
    double h = 1e-2;
    double rtol = 2e-3;
    int directions = 3; // random directions per parameter
};

// Checks `grad` = dL/dparam against central differences of `loss` along random directions.
// `param` is perturbed in place and restored.
inline void check_gradient(const std::string& name, const std::function<double()>& loss, Tensor& param,
                           const Tensor& grad, std::mt19937& rng, const GradCheckOptions& opt = {}) {
    INFO("parameter " << name << " " << shape_str(param.shape));
    REQUIRE(grad.shape == param.shape);
    const Tensor original = param;
    for (int d = 0; d < opt.directions; ++d) {
        const Tensor v = random_tensor(param.shape, rng);
        for (size_t i = 0; i < param.data.size(); ++i)
            param.data[i] = float(original.data[i] + opt.h * v.data[i]);
        const double plus = loss();
        for (size_t i = 0; i < param.data.size(); ++i)
            param.data[i] = float(original.data[i] - opt.h * v.data[i]);
        const double minus = loss();
        param = original;
        const double numeric = (plus - minus) / (2 * opt.h);
        const double analytic = dot(grad, v);
        const double floor =
            1e-3 * norm(grad) * norm(v) / std::sqrt(double(std::max<size_t>(1, v.data.size())));
        INFO("direction " << d << ": analytic " << analytic << ", numeric " << numeric);
        CHECK(std::abs(analytic - numeric) <=
              opt.rtol * 0.5 * (std::abs(analytic) + std::abs(numeric)) + floor);
    }
}

} // namespace effnet::test
