// Every GPU path that applies SiLU or ReLU6 fed NaN, +-inf, +-0, the ReLU6 kinks and values whose
// exp overflows, against the CPU engine's activations (whose rules tests/cpu/test_activation_rules
// checks by hand): NaN propagates, relu6(+-inf) = 6 / 0, silu(-inf) = NaN as in PyTorch, for every
// storage type. Paths: the standalone forward and backward passes (16-byte and scalar), batch-norm
// apply, the depthwise epilogue and input transform (both schedules, inference and training
// variants), and the 1x1 convolution epilogues (SIMT, small-K, tensor-core persistent and one tile
// per block).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "effnet/config.hpp"
#include "gpu/gpu_test_util.hpp"
#include "kernels/activation.cuh"
#include "kernels/batchnorm.cuh"
#include "kernels/depthwise_conv.cuh"
#include "kernels/pointwise_conv.cuh"
#include "kernels/pointwise_conv_small_k.cuh"
#include "kernels/pointwise_conv_tc.cuh"

using namespace effnet;
using namespace effnet::gpu_test;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// 16 values (a multiple of every 16-byte vector): the special ones and a few ordinary ones.
const std::vector<float> kValues = {kNaN, kInf, -kInf, 0.0f,    -0.0f,  6.0f, 5.99f, 6.5f,
                                    1.0f, 3.0f, -1.0f, -100.0f, 100.0f, 0.5f, -3.0f, 2.0f};

const kernels::Act kActs[] = {kernels::Act::SiLU, kernels::Act::ReLU6};

Activation activation_of(kernels::Act a) {
    return a == kernels::Act::SiLU ? Activation::SiLU : Activation::ReLU6;
}

std::string name(kernels::Act a, Precision p) {
    return std::string(a == kernels::Act::SiLU ? " silu " : " relu6 ") + precision_name(p);
}

// The CPU engine's activation of x, rounded to the storage precision as the GPU stores it.
std::vector<float> cpu_forward(const std::vector<float>& x, kernels::Act a, Precision p) {
    Tensor t({int64_t(x.size())});
    t.data = x;
    return cuda::round_to_storage(cpu::activation_forward(t, activation_of(a)).data, p);
}

std::vector<float> cpu_backward(const std::vector<float>& x, const std::vector<float>& dy, kernels::Act a,
                                Precision p) {
    Tensor tx({int64_t(x.size())}), tdy({int64_t(dy.size())});
    tx.data = x;
    tdy.data = dy;
    return cuda::round_to_storage(cpu::activation_backward(tx, tdy, activation_of(a)).data, p);
}

// Rounding of one stored result, relative (1 ulp of the storage type and the fast exp's 1e-6).
double tolerance(Precision p) {
    return p == Precision::FP32 ? 1e-5 : p == Precision::FP16 ? 2e-3 : 1.6e-2;
}

// NaN where the CPU has NaN, the same infinity where it has one, finite values within the
// tolerance (relative, absolute below 1); zeros of either sign are equal. Prints each mismatch.
bool agree(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
           double tol) {
    bool ok = got.size() == want.size();
    for (size_t i = 0; ok && i < got.size(); ++i) {
        const float g = got[i], w = want[i];
        const bool same = std::isnan(w)   ? std::isnan(g)
                          : std::isinf(w) ? g == w
                                          : std::isfinite(g) && std::abs(double(g) - double(w)) <=
                                                                    tol * std::max(1.0, std::abs(double(w)));
        if (!same) {
            std::printf("[gpu] %s: element %zu got %g want %g\n", what.c_str(), i, double(g), double(w));
            ok = false;
        }
    }
    std::printf("[gpu] %-72s %s\n", what.c_str(), ok ? "ok" : "FAIL");
    return ok;
}

// rows x C values, row r channel c = kValues[(r + c) % 16]: every value in every channel slot.
std::vector<float> spread(int rows, int C, Precision p) {
    std::vector<float> v(size_t(rows) * C);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < C; ++c) v[size_t(r) * C + c] = kValues[size_t(r + c) % kValues.size()];
    return cuda::round_to_storage(v, p);
}

} // namespace

TEST_CASE("activation rules: standalone forward and backward passes agree with the CPU engine",
          "[gpu][activation]") {
    EFFNET_SKIP_WITHOUT_GPU();
    for (Precision p : kAllPrecisions)
        for (kernels::Act act : kActs)
            // 16: the 16-byte path; 15: the scalar one.
            for (size_t n : {size_t(16), size_t(15)}) {
                const std::vector<float> x(kValues.begin(), kValues.begin() + long(n));
                const std::vector<float> xr = cuda::round_to_storage(x, p);
                const std::string tag = name(act, p) + " n=" + std::to_string(n);
                auto d_x = upload(xr, p);
                auto d_y = poisoned(n, p);
                kernels::launch_activation_forward(d_x.data(), d_y.data(), int64_t(n), act, p, nullptr);
                CHECK(agree("activation forward" + tag, download(d_y, n, p), cpu_forward(xr, act, p),
                            tolerance(p)));
                // dy = 1.5 (the derivative, scaled), then dy = NaN (propagated where act' passes it).
                for (float dy_value : {1.5f, kNaN}) {
                    const std::vector<float> dy(n, dy_value);
                    auto d_dy = upload(dy, p);
                    auto d_dx = poisoned(n, p);
                    kernels::launch_activation_backward(d_x.data(), d_dy.data(), d_dx.data(), int64_t(n), act,
                                                        p, nullptr);
                    CHECK(agree("activation backward dy=" + std::to_string(dy_value) + tag,
                                download(d_dx, n, p), cpu_backward(xr, dy, act, p), tolerance(p)));
                }
            }
}

TEST_CASE("activation rules: batch-norm apply with an activation agrees with the CPU engine",
          "[gpu][activation]") {
    EFFNET_SKIP_WITHOUT_GPU();
    // mean 0, invstd 1, gamma 1, beta 0: the activation's input is x itself (fmaf(x, 1, 0)).
    for (Precision p : kAllPrecisions)
        for (kernels::Act act : kActs)
            for (int C : {8, 3}) { // 16-byte vectors / scalar
                const int rows = 16;
                const std::vector<float> x = spread(rows, C, p);
                auto d_x = upload(x, p);
                auto d_y = poisoned(x.size(), p);
                auto d_zero = upload_f32(std::vector<float>(size_t(C), 0.0f));
                auto d_one = upload_f32(std::vector<float>(size_t(C), 1.0f));
                kernels::BatchNormApplyArgs a;
                a.x = d_x.data();
                a.mean = d_zero.as<float>();
                a.invstd = d_one.as<float>();
                a.gamma = d_one.as<float>();
                a.beta = d_zero.as<float>();
                a.y = d_y.data();
                a.rows = rows;
                a.channels = C;
                a.act = act;
                kernels::launch_batchnorm_apply(a, p, nullptr);
                CHECK(agree("batchnorm apply" + name(act, p) + " C=" + std::to_string(C),
                            download(d_y, x.size(), p), cpu_forward(x, act, p), tolerance(p)));
            }
}

TEST_CASE("activation rules: depthwise epilogue and input transform agree with the CPU engine",
          "[gpu][activation]") {
    EFFNET_SKIP_WITHOUT_GPU();
    // 16 images of 1x1, a 3x3 kernel whose only non-zero tap is the centre (1), padding 1: each
    // output is act(x) (the padding taps are skipped or add 0 * 0).
    const int N = 16;
    for (Precision p : kAllPrecisions)
        for (kernels::Act act : kActs)
            for (int C : {8, 3}) {
                const std::vector<float> x = spread(N, C, p);
                std::vector<float> taps(size_t(9) * C, 0.0f);
                for (int c = 0; c < C; ++c) taps[size_t(4) * C + c] = 1.0f;
                auto d_x = upload(x, p);
                auto d_w = upload_f32(taps);
                auto d_zero = upload_f32(std::vector<float>(size_t(C), 0.0f));
                auto d_one = upload_f32(std::vector<float>(size_t(C), 1.0f));
                const std::vector<float> want = cpu_forward(x, act, p);
                // The activation in the output epilogue; on the input (inference, a vendor GEMM's
                // output); on the input after the training step's affine (x * 1 + 0, no bias).
                for (int mode = 0; mode < 3; ++mode)
                    for (kernels::DepthwiseSchedule schedule :
                         {kernels::DepthwiseSchedule::RegisterStrips, kernels::DepthwiseSchedule::SharedTile,
                          kernels::DepthwiseSchedule::SharedTileSmall}) {
                        auto d_y = poisoned(x.size(), p);
                        kernels::DepthwiseArgs a;
                        a.input = d_x.data();
                        a.weight = d_w.as<float>();
                        a.bias = mode == 2 ? nullptr : d_zero.as<float>();
                        a.output = d_y.data();
                        a.batch = N;
                        a.height = a.width = a.out_height = a.out_width = 1;
                        a.channels = C;
                        a.kernel = 3;
                        a.stride = 1;
                        a.pad_top = a.pad_left = 1;
                        a.act = mode == 0 ? act : kernels::Act::None;
                        a.input_act = mode == 0 ? kernels::Act::None : act;
                        if (mode == 2) {
                            a.input_scale = d_one.as<float>();
                            a.input_shift = d_zero.as<float>();
                        }
                        a.schedule = schedule;
                        if (!kernels::depthwise_schedule_supported(a, p, schedule)) continue;
                        kernels::launch_depthwise_conv(a, p, nullptr);
                        CHECK(agree("depthwise mode " + std::to_string(mode) + " schedule " +
                                        std::to_string(int(schedule)) + name(act, p) +
                                        " C=" + std::to_string(C),
                                    download(d_y, x.size(), p), want, tolerance(p)));
                    }
            }
}

TEST_CASE("activation rules: 1x1 convolution epilogues agree with the CPU engine", "[gpu][activation]") {
    EFFNET_SKIP_WITHOUT_GPU();
    // X [16, 8] with row m holding kValues[m] at column m % 8 and zeros elsewhere, W = I [8, 8],
    // bias 0: out[m, n] = x * [n == m % 8] + zeros, i.e. x on the diagonal and 0 (NaN where x is
    // +-inf or NaN: inf * 0) elsewhere, on the CPU (double sums) as on the GPU.
    const int M = 16, K = 8, Nout = 8;
    for (Precision p : kAllPrecisions)
        for (kernels::Act act : kActs) {
            std::vector<float> x(size_t(M) * K, 0.0f), w(size_t(Nout) * K, 0.0f);
            for (int m = 0; m < M; ++m) x[size_t(m) * K + m % K] = kValues[size_t(m)];
            for (int n = 0; n < Nout; ++n) w[size_t(n) * K + n] = 1.0f;
            x = cuda::round_to_storage(x, p);
            Tensor tx({M, K}), tw({Nout, K}), tb({Nout});
            tx.data = x;
            tw.data = w;
            const std::vector<float> want = cpu_forward(cpu::linear_forward(tx, tw, &tb).data, act, p);

            auto d_x = upload(x, p);
            auto d_w = upload(w, p);
            auto d_b = upload_f32(tb.data);
            auto run = [&](const std::string& path, auto&& launch) {
                auto d_y = poisoned(want.size(), p);
                kernels::PointwiseArgs a;
                a.input = d_x.data();
                a.weight = d_w.data();
                a.bias = d_b.as<float>();
                a.output = d_y.data();
                a.rows = M;
                a.out_channels = Nout;
                a.in_channels = K;
                a.rows_per_image = M;
                a.act = act;
                launch(a);
                CHECK(agree("pointwise " + path + name(act, p), download(d_y, want.size(), p), want,
                            tolerance(p)));
            };
            run("simt", [&](const kernels::PointwiseArgs& a) {
                kernels::launch_pointwise_conv(a, p, kernels::GemmKernel::Simt, nullptr);
            });
            run("small-k",
                [&](const kernels::PointwiseArgs& a) { kernels::launch_pointwise_small_k(a, p, nullptr); });
            if (p == Precision::FP32) continue;
            // The persistent schedule (fast SiLU) and one tile per block (accurate SiLU).
            run("tensor-core persistent", [&](const kernels::PointwiseArgs& a) {
                kernels::launch_pointwise_mma(a, p, kernels::PointwiseTile::M128_N32, nullptr, 0);
            });
            run("tensor-core tile per block", [&](const kernels::PointwiseArgs& a) {
                kernels::launch_pointwise_mma(a, p, kernels::PointwiseTile::M128_N32, nullptr, -1);
            });
        }
}
