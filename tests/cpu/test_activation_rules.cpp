// The CPU reference activations at the special values, against PyTorch's rules derived by hand
// from PyTorch's definitions (not from the code under test):
//   silu(x) = x / (1 + exp(-x));  silu'(x) = s * (1 + x * (1 - s)), s = sigmoid(x)
//   relu6(x) = hardtanh(x, 0, 6) = clamp(x, 0, 6), which propagates NaN
//   relu6'(x): hardtanh_backward, dy where 0 < x < 6, else 0 (0 at the kinks 0 and 6)
// evaluated in IEEE arithmetic. Where that differs from the mathematical limit, PyTorch's value
// is the rule (the engines are compared with PyTorch): silu(-inf) = -inf / inf = NaN, not the limit
// 0 (pytorch/pytorch#160876, open), and silu' at +-inf = NaN (inf * 0), not the limits 1 and 0.
// ReLU6 backward at x = NaN is 0 (the comparisons are false), as PyTorch's vectorised CPU kernel;
// its scalar and CUDA kernels pass dy through there. The GPU kernels follow these rules too
// (tests/gpu/test_activation_rules.cpp checks them against this engine).
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "cpu/ops.hpp"

using namespace effnet;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

Tensor tensor_of(const std::vector<float>& v) {
    Tensor t({int64_t(v.size())});
    t.data = v;
    return t;
}

// Exactly equal (NaN matches NaN, the sign of zero must match when `signed_zero`), or within
// 1e-6 relative / 1e-30 absolute for finite values computed through exp.
bool same(float got, double want, bool signed_zero = false) {
    if (std::isnan(want)) return std::isnan(got);
    if (std::isinf(want)) return got == float(want);
    if (want == 0.0 && signed_zero) return got == 0.0f && std::signbit(got) == std::signbit(want);
    return std::abs(double(got) - want) <= 1e-6 * std::abs(want) + 1e-30;
}

double sigmoid(double x) {
    return 1.0 / (1.0 + std::exp(-x));
}

struct Case {
    float x;
    double silu, silu_grad, relu6, relu6_grad; // d/dx with dy = 1
    bool signed_zero;
};

// The values the rules hinge on: NaN, +-inf, the ReLU6 kinks 0 and 6 (and -0), just inside and
// outside them, and magnitudes whose exp overflows a float (|x| = 100).
std::vector<Case> cases() {
    const double s6 = sigmoid(6.0), s1 = sigmoid(1.0), sm1 = sigmoid(-1.0), s3 = sigmoid(3.0);
    const double s65 = sigmoid(6.5), s599 = sigmoid(double(5.99f));
    return {
        {kNaN, NAN, NAN, NAN, 0.0, false},
        {kInf, INFINITY, NAN, 6.0, 0.0, false},
        {-kInf, NAN, NAN, 0.0, 0.0, false},
        {0.0f, 0.0, 0.5, 0.0, 0.0, true},
        {-0.0f, -0.0, 0.5, -0.0, 0.0, true}, // clamp(-0, 0, 6): -0 is not < 0, it stays -0
        {6.0f, 6.0 * s6, s6 * (1.0 + 6.0 * (1.0 - s6)), 6.0, 0.0, false},
        {5.99f, double(5.99f) * s599, s599 * (1.0 + double(5.99f) * (1.0 - s599)), double(5.99f), 1.0, false},
        {6.5f, 6.5 * s65, s65 * (1.0 + 6.5 * (1.0 - s65)), 6.0, 0.0, false},
        {1.0f, s1, s1 * (1.0 + (1.0 - s1)), 1.0, 1.0, false},
        {3.0f, 3.0 * s3, s3 * (1.0 + 3.0 * (1.0 - s3)), 3.0, 1.0, false},
        {-1.0f, -sm1, sm1 * (1.0 - (1.0 - sm1)), 0.0, 0.0, false},
        // exp(100) overflows a float: silu(-100) = -100 / inf = -0 in float (exactly -3.7e-42);
        // the gradients are 0 (-3.6e-42) and 1.
        {-100.0f, -100.0 * sigmoid(-100.0), 0.0, 0.0, 0.0, false},
        {100.0f, 100.0, 1.0, 6.0, 0.0, false},
    };
}

} // namespace

TEST_CASE("activation rules: SiLU and ReLU6 forward at NaN, +-inf, 0 and the kinks", "[activation]") {
    const std::vector<Case> table = cases();
    std::vector<float> xs;
    for (const Case& c : table) xs.push_back(c.x);
    const Tensor silu = cpu::activation_forward(tensor_of(xs), Activation::SiLU);
    const Tensor relu6 = cpu::activation_forward(tensor_of(xs), Activation::ReLU6);
    for (size_t i = 0; i < xs.size(); ++i) {
        const Case& c = table[i];
        INFO("x = " << c.x);
        CHECK(same(silu.data[i], c.silu, c.signed_zero));
        CHECK(same(relu6.data[i], c.relu6, c.signed_zero));
    }
}

TEST_CASE("activation rules: SiLU and ReLU6 backward at NaN, +-inf, 0 and the kinks", "[activation]") {
    const std::vector<Case> table = cases();
    std::vector<float> xs;
    for (const Case& c : table) xs.push_back(c.x);
    const Tensor x = tensor_of(xs);
    // dy = 1 gives the derivative itself; dy = -2 checks that it scales.
    for (float dy : {1.0f, -2.0f}) {
        const Tensor dys = tensor_of(std::vector<float>(xs.size(), dy));
        const Tensor silu = cpu::activation_backward(x, dys, Activation::SiLU);
        const Tensor relu6 = cpu::activation_backward(x, dys, Activation::ReLU6);
        for (size_t i = 0; i < xs.size(); ++i) {
            const Case& c = table[i];
            INFO("x = " << c.x << " dy = " << dy);
            CHECK(same(silu.data[i], dy * c.silu_grad));
            CHECK(same(relu6.data[i], dy * c.relu6_grad));
        }
    }
}

TEST_CASE("activation rules: a NaN gradient propagates where the activation passes it", "[activation]") {
    // SiLU' is never 0 at a finite x, so NaN * it is NaN everywhere; ReLU6 passes dy only
    // strictly inside (0, 6), and outside it the gradient is 0 whatever dy is (PyTorch's select).
    const Tensor x = tensor_of({-1.0f, 0.0f, 3.0f, 6.0f, 7.0f});
    const Tensor dy = tensor_of(std::vector<float>(5, kNaN));
    const Tensor silu = cpu::activation_backward(x, dy, Activation::SiLU);
    const Tensor relu6 = cpu::activation_backward(x, dy, Activation::ReLU6);
    for (float v : silu.data) CHECK(std::isnan(v));
    CHECK(relu6.data[0] == 0.0f);
    CHECK(relu6.data[1] == 0.0f);
    CHECK(std::isnan(relu6.data[2]));
    CHECK(relu6.data[3] == 0.0f);
    CHECK(relu6.data[4] == 0.0f);
}

TEST_CASE("activation rules: sigmoid (the squeeze-excite gate) at NaN, +-inf and 0", "[activation]") {
    const Tensor x = tensor_of({kNaN, kInf, -kInf, 0.0f, 100.0f, -100.0f});
    const Tensor y = cpu::sigmoid_forward(x);
    CHECK(std::isnan(y.data[0]));
    CHECK(y.data[1] == 1.0f);
    CHECK(y.data[2] == 0.0f);
    CHECK(y.data[3] == 0.5f);
    CHECK(y.data[4] == 1.0f);
    CHECK(same(y.data[5], sigmoid(-100.0))); // 3.7e-44: exp(100) overflows the float: 1 / inf = 0
    // s' = s (1 - s): NaN at NaN, 0 at +-inf (s is exactly 0 or 1 there, no inf * 0).
    const Tensor g = cpu::sigmoid_backward(x, tensor_of(std::vector<float>(6, 1.0f)));
    CHECK(std::isnan(g.data[0]));
    CHECK(g.data[1] == 0.0f);
    CHECK(g.data[2] == 0.0f);
    CHECK(g.data[3] == 0.25f);
}
