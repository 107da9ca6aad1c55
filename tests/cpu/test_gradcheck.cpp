// Finite-difference checks of every backward in cpu/ops.hpp (see tests/gradcheck.hpp for the
// method and the tolerance). Each op is made scalar by projecting its output on a fixed random
// tensor r; the backward then runs with dy = r.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "cpu/ops.hpp"
#include "gradcheck.hpp"

using namespace effnet;
using namespace effnet::cpu;
using effnet::test::check_gradient;
using effnet::test::dot;
using effnet::test::random_tensor;

namespace {

struct ConvCase {
    const char* name;
    int N, C, H, W, O, kernel, stride, groups;
    Padding padding;
    bool bias;
};

} // namespace

TEST_CASE("conv2d backward matches finite differences", "[gradcheck]") {
    const ConvCase cases[] = {
        {"dense 3x3 s1 symmetric", 2, 3, 7, 8, 4, 3, 1, 1, Padding::Symmetric, true},
        {"dense 3x3 s2 tf_same (asymmetric)", 2, 3, 8, 9, 4, 3, 2, 1, Padding::TfSame, true},
        {"1x1 dense (GEMM path, row/tile remainders)", 2, 5, 12, 13, 6, 1, 1, 1, Padding::Symmetric, true},
        {"1x1 stride 2", 1, 4, 7, 6, 3, 1, 2, 1, Padding::TfSame, false},
        {"depthwise 3x3 s1 symmetric", 2, 4, 7, 9, 4, 3, 1, 4, Padding::Symmetric, false},
        {"depthwise 3x3 s2 tf_same", 2, 4, 8, 7, 4, 3, 2, 4, Padding::TfSame, true},
        {"depthwise 5x5 s1 tf_same", 1, 3, 9, 8, 3, 5, 1, 3, Padding::TfSame, false},
        {"depthwise 5x5 s2 symmetric", 2, 3, 10, 9, 3, 5, 2, 3, Padding::Symmetric, true},
        {"grouped 3x3 (2 groups, 2 outputs per group)", 1, 4, 6, 7, 4, 3, 1, 2, Padding::Symmetric, true},
    };
    std::mt19937 rng(1234);
    for (const ConvCase& c : cases) {
        SECTION(c.name) {
            Tensor x = random_tensor({c.N, c.C, c.H, c.W}, rng);
            Tensor w = random_tensor({c.O, c.C / c.groups, c.kernel, c.kernel}, rng);
            Tensor b = random_tensor({c.O}, rng);
            const Conv2dParams p = conv_params(c.H, c.W, c.kernel, c.stride, c.groups, c.padding);
            const Tensor* bias = c.bias ? &b : nullptr;
            const Tensor y = conv2d_forward(x, w, bias, p);
            const Tensor r = random_tensor(y.shape, rng);
            auto loss = [&] { return dot(conv2d_forward(x, w, bias, p), r); };
            Tensor dx, dw, db;
            conv2d_backward(x, w, r, p, &dx, &dw, c.bias ? &db : nullptr);
            check_gradient("x", loss, x, dx, rng);
            check_gradient("w", loss, w, dw, rng);
            if (c.bias) check_gradient("bias", loss, b, db, rng);
        }
    }
}

TEST_CASE("batchnorm backward matches finite differences", "[gradcheck]") {
    std::mt19937 rng(7);
    Tensor x = random_tensor({3, 4, 5, 6}, rng, -2.0f, 3.0f);
    Tensor gamma = random_tensor({4}, rng, 0.5f, 1.5f);
    Tensor beta = random_tensor({4}, rng);
    const Tensor r = random_tensor(x.shape, rng);
    const float eps = 1e-3f;

    SECTION("train mode (batch statistics)") {
        auto loss = [&] {
            return dot(batchnorm_train_forward(x, gamma, beta, eps, nullptr, nullptr, nullptr, 0.1f), r);
        };
        BatchNormSaved saved;
        batchnorm_train_forward(x, gamma, beta, eps, &saved, nullptr, nullptr, 0.1f);
        Tensor dx, dgamma, dbeta;
        batchnorm_train_backward(x, gamma, saved, r, &dx, &dgamma, &dbeta);
        check_gradient("x", loss, x, dx, rng);
        check_gradient("gamma", loss, gamma, dgamma, rng);
        check_gradient("beta", loss, beta, dbeta, rng);
    }
    SECTION("eval mode (running statistics)") {
        Tensor mean = random_tensor({4}, rng);
        Tensor var = random_tensor({4}, rng, 0.5f, 2.0f);
        auto loss = [&] { return dot(batchnorm_eval_forward(x, gamma, beta, mean, var, eps), r); };
        Tensor dx, dgamma, dbeta;
        batchnorm_eval_backward(x, gamma, mean, var, eps, r, &dx, &dgamma, &dbeta);
        check_gradient("x", loss, x, dx, rng);
        check_gradient("gamma", loss, gamma, dgamma, rng);
        check_gradient("beta", loss, beta, dbeta, rng);
    }
}

TEST_CASE("pointwise backward matches finite differences", "[gradcheck]") {
    std::mt19937 rng(11);
    SECTION("SiLU") {
        Tensor x = random_tensor({2, 3, 4, 5}, rng, -6.0f, 6.0f);
        const Tensor r = random_tensor(x.shape, rng);
        auto loss = [&] { return dot(activation_forward(x, Activation::SiLU), r); };
        check_gradient("x", loss, x, activation_backward(x, r, Activation::SiLU), rng);
    }
    SECTION("ReLU6, inputs away from the kinks at 0 and 6") {
        // Perturbations are at most h * |v| = 0.01; keep every input 0.1 away from a kink.
        Tensor x = random_tensor({2, 3, 4, 5}, rng, -2.0f, 8.0f);
        for (float& v : x.data) {
            if (std::abs(v) < 0.1f) v += 0.25f;
            if (std::abs(v - 6.0f) < 0.1f) v += 0.25f;
        }
        int inside = 0;
        for (float v : x.data) inside += (v > 0 && v < 6);
        REQUIRE(inside > 10); // both regimes are exercised
        REQUIRE(inside < int(x.numel()) - 10);
        const Tensor r = random_tensor(x.shape, rng);
        auto loss = [&] { return dot(activation_forward(x, Activation::ReLU6), r); };
        check_gradient("x", loss, x, activation_backward(x, r, Activation::ReLU6), rng);
    }
    SECTION("sigmoid") {
        Tensor x = random_tensor({3, 7}, rng, -6.0f, 6.0f);
        const Tensor r = random_tensor(x.shape, rng);
        auto loss = [&] { return dot(sigmoid_forward(x), r); };
        check_gradient("x", loss, x, sigmoid_backward(x, r), rng);
    }
    SECTION("add") {
        Tensor a = random_tensor({2, 3, 4, 4}, rng);
        Tensor b = random_tensor({2, 3, 4, 4}, rng);
        const Tensor r = random_tensor(a.shape, rng);
        auto loss = [&] { return dot(add(a, b), r); };
        // d(a + b)/da = d(a + b)/db = identity: the gradient of both is r.
        check_gradient("a", loss, a, r, rng);
        check_gradient("b", loss, b, r, rng);
    }
}

TEST_CASE("squeeze-excite backward matches finite differences", "[gradcheck]") {
    for (Activation act : {Activation::SiLU, Activation::ReLU6}) {
        SECTION(activation_name(act)) {
            std::mt19937 rng(act == Activation::SiLU ? 21 : 22);
            const int N = 2, C = 6, S = 3;
            Tensor x = random_tensor({N, C, 5, 4}, rng, -2.0f, 2.0f);
            Tensor w1 = random_tensor({S, C, 1, 1}, rng);
            Tensor b1 = random_tensor({S}, rng);
            Tensor w2 = random_tensor({C, S, 1, 1}, rng);
            Tensor b2 = random_tensor({C}, rng);
            SqueezeExciteSaved saved;
            const Tensor y = squeeze_excite_forward(x, w1, b1, w2, b2, act, &saved);
            if (act == Activation::ReLU6) {
                // The reduced pre-activations must sit away from the kinks (0, 6) by more than
                // a perturbation can move them: |h v| <= 0.01 per value, through a mean of x
                // and a row of w1 (6 weights in [-1, 1]) that is below 0.1.
                for (float v : saved.reduced_pre.data) {
                    INFO("reduced pre-activation " << v);
                    REQUIRE((std::abs(v) > 0.1f && std::abs(v - 6.0f) > 0.1f));
                }
            }
            const Tensor r = random_tensor(y.shape, rng);
            auto loss = [&] { return dot(squeeze_excite_forward(x, w1, b1, w2, b2, act, nullptr), r); };
            Tensor dx, dw1, db1, dw2, db2;
            squeeze_excite_backward(x, w1, w2, act, saved, r, &dx, &dw1, &db1, &dw2, &db2);
            check_gradient("x", loss, x, dx, rng);
            check_gradient("w1", loss, w1, dw1, rng);
            check_gradient("b1", loss, b1, db1, rng);
            check_gradient("w2", loss, w2, dw2, rng);
            check_gradient("b2", loss, b2, db2, rng);
        }
    }
}

TEST_CASE("pooling and linear backward match finite differences", "[gradcheck]") {
    std::mt19937 rng(31);
    SECTION("global average pool") {
        Tensor x = random_tensor({2, 3, 5, 7}, rng);
        const Tensor r = random_tensor({2, 3}, rng);
        auto loss = [&] { return dot(global_avg_pool_forward(x), r); };
        check_gradient("x", loss, x, global_avg_pool_backward(x.shape, r), rng);
    }
    SECTION("linear") {
        Tensor x = random_tensor({3, 10}, rng);
        Tensor w = random_tensor({7, 10}, rng);
        Tensor b = random_tensor({7}, rng);
        const Tensor r = random_tensor({3, 7}, rng);
        auto loss = [&] { return dot(linear_forward(x, w, &b), r); };
        Tensor dx, dw, db;
        linear_backward(x, w, r, &dx, &dw, &db);
        check_gradient("x", loss, x, dx, rng);
        check_gradient("w", loss, w, dw, rng);
        check_gradient("b", loss, b, db, rng);
    }
}

TEST_CASE("dropout and stochastic depth backward match finite differences", "[gradcheck]") {
    std::mt19937 rng(41);
    const uint64_t seed = 0x5eed;
    SECTION("dropout p = 0.3") {
        Tensor x = random_tensor({2, 3, 4, 5}, rng);
        const Tensor r = random_tensor(x.shape, rng);
        std::vector<float> mask;
        dropout_forward(x, 0.3f, seed, &mask);
        auto loss = [&] { return dot(dropout_forward(x, 0.3f, seed, nullptr), r); };
        check_gradient("x", loss, x, dropout_backward(r, mask), rng);
    }
    SECTION("stochastic depth p = 0.5") {
        Tensor x = random_tensor({6, 3, 4, 4}, rng);
        const Tensor r = random_tensor(x.shape, rng);
        std::vector<float> mask;
        stochastic_depth_forward(x, 0.5f, seed, &mask);
        auto loss = [&] { return dot(stochastic_depth_forward(x, 0.5f, seed, nullptr), r); };
        check_gradient("x", loss, x, stochastic_depth_backward(r, mask), rng);
    }
}

TEST_CASE("softmax cross-entropy gradient matches finite differences", "[gradcheck]") {
    std::mt19937 rng(51);
    const std::vector<int64_t> targets = {3, 0, 6, 2};
    for (float smoothing : {0.0f, 0.1f}) {
        SECTION("label smoothing " + std::to_string(smoothing)) {
            Tensor logits = random_tensor({4, 7}, rng, -3.0f, 3.0f);
            Tensor dlogits;
            softmax_cross_entropy(logits, targets, smoothing, &dlogits);
            auto loss = [&] { return softmax_cross_entropy(logits, targets, smoothing, nullptr); };
            check_gradient("logits", loss, logits, dlogits, rng);
        }
    }
}
