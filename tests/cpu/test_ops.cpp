// Forward (and convolution backward) of the CPU ops against independent naive implementations
// in double, hand-computed values, and the properties the network relies on (shape checks,
// determinism across thread counts, dropout statistics).
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include <catch2/catch.hpp>

#include "cpu/ops.hpp"
#include "effnet/error.hpp"
#include "gradcheck.hpp"

using namespace effnet;
using namespace effnet::cpu;
using effnet::test::random_tensor;

namespace {

// Output = double reduction rounded to float once, so it agrees with a double reference to
// float rounding (~6e-8 relative) plus summation-order noise; 1e-6 leaves room for both.
constexpr double kConvTol = 1e-6;

// The textbook 7-loop convolution in double, with explicit bounds tests for padding.
struct NaiveConv {
    int64_t N, C, H, W, O, K, Ho, Wo, groups, stride, pt, pl;
    std::vector<double> y, dx, dw;

    NaiveConv(const Tensor& x, const Tensor& w, const Tensor* b, const Conv2dParams& p)
        : N(x.shape[0]), C(x.shape[1]), H(x.shape[2]), W(x.shape[3]), O(w.shape[0]), K(w.shape[2]),
          groups(p.groups), stride(p.stride), pt(p.pad_top), pl(p.pad_left) {
        Ho = (H + p.pad_top + p.pad_bottom - K) / stride + 1;
        Wo = (W + p.pad_left + p.pad_right - K) / stride + 1;
        y.assign(N * O * Ho * Wo, 0.0);
        const int64_t cg = C / groups, og = O / groups;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t o = 0; o < O; ++o)
                for (int64_t oh = 0; oh < Ho; ++oh)
                    for (int64_t ow = 0; ow < Wo; ++ow) {
                        double s = b ? b->data[o] : 0.0;
                        for (int64_t cl = 0; cl < cg; ++cl)
                            for (int64_t kh = 0; kh < K; ++kh)
                                for (int64_t kw = 0; kw < K; ++kw) {
                                    const int64_t ih = oh * stride - pt + kh, iw = ow * stride - pl + kw;
                                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                    const int64_t c = (o / og) * cg + cl;
                                    s += double(x.data[((n * C + c) * H + ih) * W + iw]) *
                                         w.data[((o * cg + cl) * K + kh) * K + kw];
                                }
                        y[((n * O + o) * Ho + oh) * Wo + ow] = s;
                    }
    }

    // Scatter form of the backward, the transpose of the loops above.
    void backward(const Tensor& x, const Tensor& w, const Tensor& dy) {
        dx.assign(x.numel(), 0.0);
        dw.assign(w.numel(), 0.0);
        const int64_t cg = C / groups, og = O / groups;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t o = 0; o < O; ++o)
                for (int64_t oh = 0; oh < Ho; ++oh)
                    for (int64_t ow = 0; ow < Wo; ++ow) {
                        const double g = dy.data[((n * O + o) * Ho + oh) * Wo + ow];
                        for (int64_t cl = 0; cl < cg; ++cl)
                            for (int64_t kh = 0; kh < K; ++kh)
                                for (int64_t kw = 0; kw < K; ++kw) {
                                    const int64_t ih = oh * stride - pt + kh, iw = ow * stride - pl + kw;
                                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                    const int64_t xi = ((n * C + (o / og) * cg + cl) * H + ih) * W + iw;
                                    const int64_t wi = ((o * cg + cl) * K + kh) * K + kw;
                                    dx[xi] += g * w.data[wi];
                                    dw[wi] += g * x.data[xi];
                                }
                    }
    }
};

double rel_error(const Tensor& got, const std::vector<double>& want) {
    REQUIRE(size_t(got.numel()) == want.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        num += (got.data[i] - want[i]) * (got.data[i] - want[i]);
        den += want[i] * want[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

} // namespace

TEST_CASE("conv_params: TF SAME gives ceil(in / stride) outputs and pads bottom/right", "[ops]") {
    for (int in : {1, 2, 7, 16, 17, 34, 112, 225})
        for (int k : {1, 3, 5})
            for (int s : {1, 2}) {
                const Conv2dParams p = conv_params(in, in + 1, k, s, 1, Padding::TfSame);
                const int out_h = (in + p.pad_top + p.pad_bottom - k) / s + 1;
                const int out_w = (in + 1 + p.pad_left + p.pad_right - k) / s + 1;
                INFO("in " << in << " k " << k << " s " << s);
                CHECK(out_h == (in + s - 1) / s);
                CHECK(out_w == (in + 1 + s - 1) / s);
                CHECK(p.pad_bottom - p.pad_top >= 0); // the extra pixel goes at the end
                CHECK(p.pad_bottom - p.pad_top <= 1);
                CHECK(p.pad_right - p.pad_left >= 0);
                CHECK(p.pad_right - p.pad_left <= 1);
            }
    // 34 with k3 s2: total = (17-1)*2 + 3 - 34 = 1 -> nothing on top, 1 at the bottom.
    const Conv2dParams a = conv_params(34, 17, 3, 2, 1, Padding::TfSame);
    CHECK(a.pad_top == 0);
    CHECK(a.pad_bottom == 1);
    CHECK(a.pad_left == 1); // 17: total = 8*2 + 3 - 17 = 2
    CHECK(a.pad_right == 1);
    const Conv2dParams sym = conv_params(34, 17, 5, 2, 7, Padding::Symmetric);
    CHECK((sym.pad_top == 2 && sym.pad_bottom == 2 && sym.pad_left == 2 && sym.pad_right == 2));
    CHECK(sym.stride == 2);
    CHECK(sym.groups == 7);
}

TEST_CASE("conv2d forward and backward match a naive double convolution", "[ops]") {
    std::mt19937 rng(99);
    const int N = 2, C = 4, H = 17, W = 34;
    for (int k : {1, 3, 5})
        for (int s : {1, 2})
            for (int groups : {1, C})
                for (Padding pad : {Padding::Symmetric, Padding::TfSame}) {
                    const int O = groups == 1 ? 6 : C;
                    const Tensor x = random_tensor({N, C, H, W}, rng);
                    const Tensor w = random_tensor({O, C / groups, k, k}, rng);
                    const Tensor b = random_tensor({O}, rng);
                    const Conv2dParams p = conv_params(H, W, k, s, groups, pad);
                    INFO("k " << k << " s " << s << " groups " << groups << " " << padding_name(pad));
                    const Tensor y = conv2d_forward(x, w, &b, p);
                    NaiveConv ref(x, w, &b, p);
                    REQUIRE(y.shape == Shape{N, O, ref.Ho, ref.Wo});
                    CHECK(rel_error(y, ref.y) < kConvTol);

                    const Tensor dy = random_tensor(y.shape, rng);
                    Tensor dx, dw, db;
                    conv2d_backward(x, w, dy, p, &dx, &dw, &db);
                    ref.backward(x, w, dy);
                    CHECK(rel_error(dx, ref.dx) < kConvTol);
                    CHECK(rel_error(dw, ref.dw) < kConvTol);
                    std::vector<double> ref_db(O, 0.0);
                    for (int64_t i = 0; i < dy.numel(); ++i)
                        ref_db[(i / (ref.Ho * ref.Wo)) % O] += dy.data[i];
                    CHECK(rel_error(db, ref_db) < kConvTol);
                }
}

TEST_CASE("conv2d: larger 1x1 (GEMM path) and explicit asymmetric padding", "[ops]") {
    std::mt19937 rng(5);
    SECTION("1x1 with 37 outputs and 300 columns (row and tile remainders)") {
        const Tensor x = random_tensor({2, 19, 15, 20}, rng);
        const Tensor w = random_tensor({37, 19, 1, 1}, rng);
        const Conv2dParams p = conv_params(15, 20, 1, 1, 1, Padding::Symmetric);
        const Tensor y = conv2d_forward(x, w, nullptr, p);
        NaiveConv ref(x, w, nullptr, p);
        CHECK(rel_error(y, ref.y) < kConvTol);
        const Tensor dy = random_tensor(y.shape, rng);
        Tensor dx, dw;
        conv2d_backward(x, w, dy, p, &dx, &dw, nullptr);
        ref.backward(x, w, dy);
        CHECK(rel_error(dx, ref.dx) < kConvTol);
        CHECK(rel_error(dw, ref.dw) < kConvTol);
    }
    SECTION("hand-set pads (top 2, bottom 0, left 0, right 3), grouped") {
        const Tensor x = random_tensor({1, 6, 9, 11}, rng);
        const Tensor w = random_tensor({4, 3, 3, 3}, rng);
        Conv2dParams p;
        p.stride = 2;
        p.groups = 2;
        p.pad_top = 2, p.pad_bottom = 0, p.pad_left = 0, p.pad_right = 3;
        const Tensor y = conv2d_forward(x, w, nullptr, p);
        NaiveConv ref(x, w, nullptr, p);
        CHECK(y.shape == Shape{1, 4, 5, 6});
        CHECK(rel_error(y, ref.y) < kConvTol);
        const Tensor dy = random_tensor(y.shape, rng);
        Tensor dx, dw;
        conv2d_backward(x, w, dy, p, &dx, &dw, nullptr);
        ref.backward(x, w, dy);
        CHECK(rel_error(dx, ref.dx) < kConvTol);
        CHECK(rel_error(dw, ref.dw) < kConvTol);
    }
}

TEST_CASE("conv2d rejects inconsistent shapes", "[ops]") {
    const Tensor x({1, 4, 8, 8});
    const Conv2dParams p = conv_params(8, 8, 3, 1, 1, Padding::Symmetric);
    CHECK_THROWS_AS(conv2d_forward(x, Tensor({2, 3, 3, 3}), nullptr, p), Error); // C mismatch
    CHECK_THROWS_AS(conv2d_forward(Tensor({4, 8, 8}), Tensor({2, 4, 3, 3}), nullptr, p), Error);
    const Tensor bad_bias({3});
    CHECK_THROWS_AS(conv2d_forward(x, Tensor({2, 4, 3, 3}), &bad_bias, p), Error);
    Conv2dParams g = p;
    g.groups = 3; // 4 channels do not split into 3 groups
    CHECK_THROWS_AS(conv2d_forward(x, Tensor({3, 1, 3, 3}), nullptr, g), Error);
    Tensor dx;
    CHECK_THROWS_AS(conv2d_backward(x, Tensor({2, 4, 3, 3}), Tensor({1, 2, 7, 8}), p, &dx, nullptr, nullptr),
                    Error);
    try {
        conv2d_forward(x, Tensor({2, 3, 3, 3}), nullptr, p);
    } catch (const Error& e) {
        const std::string msg = e.what();
        CHECK(msg.find("conv2d_forward") != std::string::npos);
        CHECK(msg.find("[1, 4, 8, 8]") != std::string::npos);
        CHECK(msg.find("[2, 3, 3, 3]") != std::string::npos);
    }
}

TEST_CASE("conv2d and dropout do not depend on the thread count", "[ops]") {
    std::mt19937 rng(3);
    const Tensor x = random_tensor({2, 8, 13, 14}, rng);
    const Tensor w_dense = random_tensor({12, 8, 1, 1}, rng);
    const Tensor w_dw = random_tensor({8, 1, 5, 5}, rng);
    const Conv2dParams p1 = conv_params(13, 14, 1, 1, 1, Padding::Symmetric);
    const Conv2dParams p5 = conv_params(13, 14, 5, 2, 8, Padding::TfSame);
    auto run = [&](int threads) {
        const int saved = omp_get_max_threads();
        omp_set_num_threads(threads);
        std::vector<Tensor> out;
        out.push_back(conv2d_forward(x, w_dense, nullptr, p1));
        const Tensor y5 = conv2d_forward(x, w_dw, nullptr, p5);
        out.push_back(y5);
        Tensor dx, dw;
        conv2d_backward(x, w_dw, y5, p5, &dx, &dw, nullptr);
        out.push_back(dx);
        out.push_back(dw);
        out.push_back(dropout_forward(x, 0.25f, 77, nullptr));
        omp_set_num_threads(saved);
        return out;
    };
    const std::vector<Tensor> one = run(1), three = run(3);
    for (size_t i = 0; i < one.size(); ++i) {
        INFO("output " << i);
        CHECK(one[i].data == three[i].data); // bitwise
    }
}

TEST_CASE("batchnorm forward: batch statistics and running-stat update", "[ops]") {
    std::mt19937 rng(17);
    const int N = 3, C = 2, H = 4, W = 5, M = N * H * W;
    const Tensor x = random_tensor({N, C, H, W}, rng, -1.0f, 4.0f);
    const Tensor gamma = random_tensor({C}, rng, 0.5f, 1.5f);
    const Tensor beta = random_tensor({C}, rng);
    Tensor running_mean = random_tensor({C}, rng);
    Tensor running_var = random_tensor({C}, rng, 0.5f, 2.0f);
    const Tensor mean0 = running_mean, var0 = running_var;
    const float eps = 1e-5f, momentum = 0.1f;
    BatchNormSaved saved;
    const Tensor y =
        batchnorm_train_forward(x, gamma, beta, eps, &saved, &running_mean, &running_var, momentum);
    for (int c = 0; c < C; ++c) {
        double sum = 0, sq = 0;
        for (int n = 0; n < N; ++n)
            for (int i = 0; i < H * W; ++i) sum += x.data[(n * C + c) * H * W + i];
        const double mean = sum / M;
        for (int n = 0; n < N; ++n)
            for (int i = 0; i < H * W; ++i) {
                const double d = x.data[(n * C + c) * H * W + i] - mean;
                sq += d * d;
            }
        const double var_biased = sq / M, var_unbiased = sq / (M - 1);
        // running = (1 - m) running + m batch, the unbiased batch variance (PyTorch).
        CHECK(running_mean.data[c] == Approx((1 - momentum) * mean0.data[c] + momentum * mean).epsilon(1e-6));
        CHECK(running_var.data[c] ==
              Approx((1 - momentum) * var0.data[c] + momentum * var_unbiased).epsilon(1e-6));
        CHECK(saved.mean[c] == Approx(mean).epsilon(1e-12));
        CHECK(saved.invstd[c] == Approx(1 / std::sqrt(var_biased + eps)).epsilon(1e-12));
        for (int n = 0; n < N; ++n)
            for (int i = 0; i < H * W; ++i) {
                const int64_t j = (n * C + c) * H * W + i;
                const double want =
                    (x.data[j] - mean) / std::sqrt(var_biased + eps) * gamma.data[c] + beta.data[c];
                CHECK(y.data[j] == Approx(want).margin(1e-5));
            }
    }
    // Training on one value per channel is undefined (PyTorch raises too).
    CHECK_THROWS_AS(
        batchnorm_train_forward(Tensor({1, C, 1, 1}), gamma, beta, eps, nullptr, nullptr, nullptr, 0.1f),
        Error);
    // Eval: the running statistics.
    const Tensor ye = batchnorm_eval_forward(x, gamma, beta, mean0, var0, eps);
    for (int64_t j = 0; j < x.numel(); ++j) {
        const int c = int((j / (H * W)) % C);
        const double want =
            (x.data[j] - mean0.data[c]) / std::sqrt(var0.data[c] + double(eps)) * gamma.data[c] +
            beta.data[c];
        CHECK(ye.data[j] == Approx(want).margin(1e-5));
    }
    CHECK_THROWS_AS(batchnorm_eval_forward(x, gamma, beta, Tensor({3}), var0, eps), Error);
}

TEST_CASE("pointwise forward values", "[ops]") {
    Tensor x({1, 7});
    x.data = {-100.0f, -1.0f, 0.0f, 1.0f, 3.0f, 6.5f, 100.0f};
    const Tensor silu = activation_forward(x, Activation::SiLU);
    const Tensor relu6 = activation_forward(x, Activation::ReLU6);
    const Tensor sig = sigmoid_forward(x);
    for (int i = 0; i < 7; ++i) {
        const double v = x.data[i], s = 1 / (1 + std::exp(-v));
        CHECK(silu.data[i] == Approx(v * s).margin(1e-6));
        CHECK(relu6.data[i] == Approx(std::min(std::max(v, 0.0), 6.0)));
        CHECK(sig.data[i] == Approx(s).margin(1e-7));
        CHECK(std::isfinite(silu.data[i]));
    }
    CHECK_THROWS_AS(add(Tensor({2, 3}), Tensor({3, 2})), Error);
    CHECK_THROWS_AS(activation_backward(Tensor({2, 3}), Tensor({6}), Activation::SiLU), Error);
}

TEST_CASE("global average pool, linear and squeeze-excite forward match naive loops", "[ops]") {
    std::mt19937 rng(23);
    const int N = 2, C = 5, H = 3, W = 4, S = 2;
    const Tensor x = random_tensor({N, C, H, W}, rng);
    const Tensor pooled = global_avg_pool_forward(x);
    REQUIRE(pooled.shape == Shape{N, C});
    for (int i = 0; i < N * C; ++i) {
        double s = 0;
        for (int j = 0; j < H * W; ++j) s += x.data[i * H * W + j];
        CHECK(pooled.data[i] == Approx(s / (H * W)).margin(1e-6));
    }

    const Tensor w = random_tensor({3, C}, rng), b = random_tensor({3}, rng);
    const Tensor lin = linear_forward(pooled, w, &b);
    REQUIRE(lin.shape == Shape{N, 3});
    for (int n = 0; n < N; ++n)
        for (int m = 0; m < 3; ++m) {
            double s = b.data[m];
            for (int k = 0; k < C; ++k) s += double(pooled.data[n * C + k]) * w.data[m * C + k];
            CHECK(lin.data[n * 3 + m] == Approx(s).margin(1e-6));
        }
    CHECK_THROWS_AS(linear_forward(pooled, Tensor({3, C + 1}), nullptr), Error);

    const Tensor w1 = random_tensor({S, C, 1, 1}, rng), b1 = random_tensor({S}, rng);
    const Tensor w2 = random_tensor({C, S, 1, 1}, rng), b2 = random_tensor({C}, rng);
    for (Activation act : {Activation::SiLU, Activation::ReLU6}) {
        SqueezeExciteSaved saved;
        const Tensor y = squeeze_excite_forward(x, w1, b1, w2, b2, act, &saved);
        for (int n = 0; n < N; ++n) {
            std::vector<double> z(S);
            for (int s = 0; s < S; ++s) {
                double a = b1.data[s];
                for (int c = 0; c < C; ++c) a += double(w1.data[s * C + c]) * pooled.data[n * C + c];
                z[s] = act == Activation::SiLU ? a / (1 + std::exp(-a)) : std::min(std::max(a, 0.0), 6.0);
            }
            for (int c = 0; c < C; ++c) {
                double a = b2.data[c];
                for (int s = 0; s < S; ++s) a += double(w2.data[c * S + s]) * z[s];
                const double gate = 1 / (1 + std::exp(-a));
                CHECK(saved.gate.data[n * C + c] == Approx(gate).margin(1e-6));
                for (int j = 0; j < H * W; ++j) {
                    const int64_t i = (int64_t(n) * C + c) * H * W + j;
                    CHECK(y.data[i] == Approx(x.data[i] * gate).margin(1e-6));
                }
            }
        }
    }
    CHECK_THROWS_AS(
        squeeze_excite_forward(x, w1, b1, Tensor({C, S + 1, 1, 1}), b2, Activation::SiLU, nullptr), Error);
}

TEST_CASE("softmax cross-entropy: hand-computed 2x3 example", "[ops]") {
    Tensor logits({2, 3});
    logits.data = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f, 2.0f};
    const std::vector<int64_t> targets = {0, 1};
    // Row 0: lse = 3 + log(1 + e^-1 + e^-2) = 3.4076059644; -log p_0 = lse - 1 = 2.4076059644.
    // Row 1: lse = 2 + log(1 + e^-1.5 + e^-3) = 2.2413112967; -log p_1 = lse + 1 = 3.2413112967.
    // Mean NLL = 2.8244586306.
    Tensor grad;
    CHECK(softmax_cross_entropy(logits, targets, 0.0f, &grad) == Approx(2.8244586306).epsilon(1e-9));
    // Smoothing 0.1: mean_k(-log p_k) = lse - mean(logits) = 1.4076059644 and 1.7413112967;
    // loss = mean_n(0.9 * nll_n + 0.1 * those) = 2.6994586306.
    CHECK(softmax_cross_entropy(logits, targets, 0.1f, &grad) == Approx(2.6994586306).epsilon(1e-7));
    // d/dlogits = (softmax - (0.9 onehot + 0.1/3)) / N
    const double want[6] = {-0.42165138, 0.10569757, 0.31595381, 0.07097853, -0.44711038, 0.37613185};
    for (int i = 0; i < 6; ++i) CHECK(grad.data[i] == Approx(want[i]).margin(1e-7));

    const Tensor p = softmax(logits);
    CHECK(p.data[0] == Approx(std::exp(1.0 - 3.4076059644)).epsilon(1e-6));
    CHECK(p.data[0] + p.data[1] + p.data[2] == Approx(1.0).epsilon(1e-6));

    // Large logits: no overflow thanks to the max shift.
    Tensor big({1, 3});
    big.data = {1000.0f, 999.0f, -1000.0f};
    const double loss = softmax_cross_entropy(big, {1}, 0.0f, nullptr);
    CHECK(loss == Approx(1.0 + std::log(1 + std::exp(-1.0))).epsilon(1e-9));
    CHECK(std::isfinite(softmax(big).data[2]));

    CHECK_THROWS_AS(softmax_cross_entropy(logits, {0, 3}, 0.0f, nullptr), Error);
    CHECK_THROWS_AS(softmax_cross_entropy(logits, {-1, 0}, 0.0f, nullptr), Error);
    CHECK_THROWS_AS(softmax_cross_entropy(logits, {0}, 0.0f, nullptr), Error);
}

TEST_CASE("dropout and stochastic depth: statistics, seeds, edge probabilities", "[ops]") {
    std::mt19937 rng(8);
    const Tensor x = random_tensor({4, 10, 100, 250}, rng, 0.5f, 1.5f); // 1e6 elements, none zero
    const float p = 0.3f;
    std::vector<float> mask, mask_again, mask_other;
    const Tensor y = dropout_forward(x, p, 1234, &mask);
    dropout_forward(x, p, 1234, &mask_again);
    dropout_forward(x, p, 1235, &mask_other);
    CHECK(mask == mask_again);
    CHECK(mask != mask_other);
    int64_t kept = 0, wrong = 0; // counted, not asserted per element: 1e6 assertions are slow
    for (int64_t i = 0; i < x.numel(); ++i) {
        if (mask[i] != 0.0f) {
            ++kept;
            wrong += mask[i] != float(1 / (1 - double(p))) ||
                     std::abs(y.data[i] - x.data[i] / (1 - p)) > 1e-6f * std::abs(y.data[i]);
        } else {
            wrong += y.data[i] != 0.0f;
        }
    }
    CHECK(wrong == 0);
    // Binomial(1e6, 0.7): standard deviation 4.6e-4 in the fraction; 0.003 is 6.5 sigma.
    CHECK(std::abs(double(kept) / x.numel() - (1 - p)) < 0.003);

    CHECK(dropout_forward(x, 0.0f, 5, nullptr).data == x.data);
    const Tensor zero = dropout_forward(x, 1.0f, 5, &mask);
    CHECK(zero.data == std::vector<float>(x.numel(), 0.0f));
    CHECK(mask == std::vector<float>(x.numel(), 0.0f));
    CHECK_THROWS_AS(dropout_forward(x, 1.5f, 5, nullptr), Error);
    CHECK_THROWS_AS(dropout_forward(x, -0.1f, 5, nullptr), Error);
    CHECK_THROWS_AS(dropout_backward(x, std::vector<float>(10)), Error);

    // Stochastic depth: one decision per sample (row), the whole sample scaled or zeroed.
    const Tensor rows = random_tensor({20000, 2, 3, 1}, rng, 0.5f, 1.5f);
    std::vector<float> row_mask;
    const Tensor yr = stochastic_depth_forward(rows, 0.2f, 99, &row_mask);
    REQUIRE(row_mask.size() == 20000u);
    int64_t rows_kept = 0, rows_wrong = 0;
    for (int64_t n = 0; n < 20000; ++n) {
        rows_kept += row_mask[n] != 0.0f;
        for (int j = 0; j < 6; ++j) rows_wrong += yr.data[n * 6 + j] != rows.data[n * 6 + j] * row_mask[n];
        rows_wrong += !(row_mask[n] == 0.0f || row_mask[n] == 1.25f);
    }
    CHECK(rows_wrong == 0);
    // Binomial(2e4, 0.8): standard deviation 2.8e-3 in the fraction; 0.015 is 5 sigma.
    CHECK(std::abs(double(rows_kept) / 20000 - 0.8) < 0.015);
    std::vector<float> row_mask_again;
    stochastic_depth_forward(rows, 0.2f, 99, &row_mask_again);
    CHECK(row_mask == row_mask_again);
    CHECK(stochastic_depth_forward(rows, 0.0f, 1, nullptr).data == rows.data);
    CHECK(stochastic_depth_forward(rows, 1.0f, 1, nullptr).data == std::vector<float>(rows.numel(), 0.0f));
    CHECK_THROWS_AS(stochastic_depth_backward(rows, std::vector<float>(3)), Error);
}
