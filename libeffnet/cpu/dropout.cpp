// Dropout (per element) and stochastic depth (per sample, torchvision's mode="row").
// The keep decision for element/sample i is a pure function of (seed, i) through a
// counter-based hash (splitmix64), so masks do not depend on the thread count.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ops.hpp"
#include "cpu/ops_util.hpp"
#include "effnet/error.hpp"
#include "splitmix64.hpp"

namespace effnet::cpu {
namespace {

uint64_t splitmix64(uint64_t z) {
    return splitmix64_next(z);
}

// Uniform in [0, 1) with 53 random bits, for index i under `seed`.
double uniform01(uint64_t seed, uint64_t i) {
    const uint64_t h = splitmix64(splitmix64(seed) + i * 0xd1b54a32d192ed03ull);
    return double(h >> 11) * 0x1.0p-53;
}

void check_probability(const char* op, float p) {
    EFFNET_CHECK(p >= 0.0f && p <= 1.0f,
                 std::string(op) + ": probability must be in [0, 1], got " + std::to_string(p));
}

// Scale per kept unit: 1/(1-p); p = 1 keeps nothing, so no division by zero.
float keep_scale(float p) {
    return p < 1.0f ? float(1.0 / (1.0 - double(p))) : 0.0f;
}

// Scales in {0, 1/(1-p)} for `count` units.
std::vector<float> make_mask(int64_t count, float p, uint64_t seed) {
    std::vector<float> mask(count);
    const float scale = keep_scale(p);
    const double keep = 1.0 - double(p);
#pragma omp parallel for schedule(static) if (count > detail::kParallelMinWork)
    for (int64_t i = 0; i < count; ++i) mask[i] = uniform01(seed, uint64_t(i)) < keep ? scale : 0.0f;
    return mask;
}

} // namespace

Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, std::vector<float>* mask) {
    check_probability("dropout_forward", p);
    std::vector<float> m = make_mask(x.numel(), p, seed);
    Tensor y(x.shape);
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) y.data[i] = x.data[i] * m[i];
    if (mask) *mask = std::move(m);
    return y;
}

Tensor dropout_backward(const Tensor& dy, const std::vector<float>& mask) {
    EFFNET_CHECK(int64_t(mask.size()) == dy.numel(), "dropout_backward: mask has " +
                                                         std::to_string(mask.size()) + " values, dy " +
                                                         shape_str(dy.shape));
    Tensor dx(dy.shape);
    const int64_t n = dy.numel();
#pragma omp parallel for schedule(static) if (n > detail::kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) dx.data[i] = dy.data[i] * mask[i];
    return dx;
}

Tensor stochastic_depth_forward(const Tensor& x, float p, uint64_t seed, std::vector<float>* mask) {
    check_probability("stochastic_depth_forward", p);
    EFFNET_CHECK(x.rank() >= 1,
                 "stochastic_depth_forward: x must have a batch dimension, got shape " + shape_str(x.shape));
    const int64_t N = x.shape[0], per = N > 0 ? x.numel() / N : 0;
    std::vector<float> m = make_mask(N, p, seed);
    Tensor y(x.shape);
#pragma omp parallel for schedule(static) if (x.numel() > detail::kParallelMinWork)
    for (int64_t i = 0; i < x.numel(); ++i) y.data[i] = x.data[i] * m[i / per];
    if (mask) *mask = std::move(m);
    return y;
}

Tensor stochastic_depth_backward(const Tensor& dy, const std::vector<float>& mask) {
    EFFNET_CHECK(dy.rank() >= 1 && int64_t(mask.size()) == dy.shape[0],
                 "stochastic_depth_backward: mask has " + std::to_string(mask.size()) + " values, dy " +
                     shape_str(dy.shape));
    const int64_t N = dy.shape[0], per = N > 0 ? dy.numel() / N : 0;
    Tensor dx(dy.shape);
#pragma omp parallel for schedule(static) if (dy.numel() > detail::kParallelMinWork)
    for (int64_t i = 0; i < dy.numel(); ++i) dx.data[i] = dy.data[i] * mask[i / per];
    return dx;
}

} // namespace effnet::cpu
