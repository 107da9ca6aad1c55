// Each CUDA kernel against the CPU reference ops (libeffnet/cpu/ops.hpp) on seeded random
// inputs with odd shapes, for fp32 / fp16 / bf16. Outputs are NaN-poisoned before each launch.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "effnet/config.hpp"
#include "effnet/inference.hpp"
#include "gpu/gpu_test_util.hpp"
#include "kernels/depthwise_conv.cuh"
#include "kernels/fused_mbconv.cuh"
#include "kernels/pointwise_conv.cuh"
#include "kernels/pool_classifier.cuh"
#include "kernels/squeeze_excite.cuh"
#include "kernels/stem_conv.cuh"
#include "libeffnet/cuda/folded_weights.hpp"

using namespace effnet;
using namespace effnet::gpu_test;

namespace {

struct BatchNormParams {
    Tensor gamma, beta, mean, var;
};
BatchNormParams random_bn(int64_t c, uint64_t seed) {
    return {random_tensor({c}, seed, 0.5f, 1.5f), random_tensor({c}, seed + 1, -0.5f, 0.5f),
            random_tensor({c}, seed + 2, -0.3f, 0.3f), random_tensor({c}, seed + 3, 0.5f, 2.0f)};
}
constexpr float kEps = 1e-3f;

// conv -> BN (eval) -> optional activation, all on the CPU in NCHW.
Tensor cpu_conv_bn_act(const Tensor& x, const Tensor& w, const BatchNormParams& bn,
                       const cpu::Conv2dParams& p, const Activation* act) {
    Tensor y = cpu::conv2d_forward(x, w, nullptr, p);
    y = cpu::batchnorm_eval_forward(y, bn.gamma, bn.beta, bn.mean, bn.var, kEps);
    return act ? cpu::activation_forward(y, *act) : y;
}

kernels::Act act_of(const Activation* a) {
    return a ? kernels::to_act(*a) : kernels::Act::None;
}

const char* schedule_label(kernels::DepthwiseSchedule s) {
    return s == kernels::DepthwiseSchedule::SharedTile        ? " tile"
           : s == kernels::DepthwiseSchedule::SharedTileSmall ? " tile128"
                                                              : " strips";
}

std::string tag(Precision p) {
    return std::string(" ") + precision_name(p);
}

// Bounds (fp32, fp16, bf16) and the largest error measured for each (gpu_test_util.hpp, Bounds).
// fp16/bf16 outputs: one storage rounding (2^-11 / 2^-9 relative per element) dominates; the bf16
// bounds stay at the 1e-2 they replaced (6x measured and less).
// stem: measured 1.3e-7 / 2.1e-4 / 1.7e-3.
constexpr Bounds kStemBound{3e-6, 6e-3, 1e-2};
// depthwise output: measured 1.3e-7 / 2.1e-4 / 1.7e-3.
constexpr Bounds kDepthwiseBound{3e-6, 6e-3, 1e-2};
// depthwise squeeze sums: summed from the fp32 activations before the output's rounding, so every
// precision is an fp32 sum of rounded-input convolutions: measured 1.4e-7 / 1.3e-7 / 1.4e-7.
constexpr Bounds kDepthwiseSqueezeBound{4e-6, 3e-6, 4e-6};
// depthwise with the activation on its input: measured 8.7e-8 / 2.9e-4 / 2.3e-3.
constexpr Bounds kDepthwiseInputActBound{2.5e-6, 8e-3, 1e-2};
// 1x1 GEMM, SIMT and tensor cores: measured 3.3e-7 / 3.6e-4 / 2.8e-3.
constexpr Bounds kPointwiseBound{9e-6, 1e-2, 1e-2};
// excite gate (fp32 only): measured 9.4e-8.
constexpr double kExciteBound = 2.5e-6;
// global average pool of already rounded inputs, an fp32 sum: measured 1.2e-7 / 7.0e-9 / 0 (bf16
// inputs, 8 significant bits, sum exactly in fp32 here; bf16 keeps fp16's bound).
constexpr Bounds kAvgPoolBound{3e-6, 2e-7, 2e-7};
// classifier 1280 -> 1000 (fp32): measured 1.0e-7.
constexpr double kClassifierBound = 3e-6;
// fused expand + depthwise output: measured 2.0e-7 / 3.8e-4 / 3.1e-3.
constexpr Bounds kFusedBound{5e-6, 1e-2, 1e-2};
// its squeeze sums (from the rounded expand output): measured 8.6e-8 / 1.2e-4 / 1.2e-3.
constexpr Bounds kFusedSqueezeBound{2.5e-6, 3e-3, 1e-2};

} // namespace

TEST_CASE("stem conv matches CPU conv+BN+act", "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    // 24 and 13: the generic kernel; 32, 40, 48, 56, 64 (the EfficientNet stems): the specialised
    // one, which is also forced onto the generic kernel once as a check of the dispatch.
    for (Padding pad : {Padding::Symmetric, Padding::TfSame})
        for (int cout : {24, 13, 32, 40, 48, 56, 64})
            for (Precision prec : kAllPrecisions) {
                const int N = 2, Cin = 3, H = 17, W = 34, k = 3, s = 2;
                const Activation act = pad == Padding::Symmetric ? Activation::SiLU : Activation::ReLU6;
                const Tensor x = random_tensor({N, Cin, H, W}, 11);
                const Tensor w = random_tensor({cout, Cin, k, k}, 12, -0.5f, 0.5f);
                const BatchNormParams bn = random_bn(cout, 13);
                const cpu::Conv2dParams cp = cpu::conv_params(H, W, k, s, 1, pad);
                const Tensor ref = cpu_conv_bn_act(x, w, bn, cp, &act);
                const int Ho = int(ref.dim(2)), Wo = int(ref.dim(3));

                const cuda::FoldedConv f = cuda::fold_batchnorm(w, bn.gamma, bn.beta, bn.mean, bn.var, kEps);
                auto d_x = upload_f32(x.data);
                auto d_w = upload_f32(cuda::stem_layout(f));
                auto d_b = upload_f32(f.bias);
                auto d_y = poisoned(size_t(N) * Ho * Wo * cout, prec);
                kernels::StemConvArgs a;
                a.input = d_x.as<float>();
                a.weight = d_w.as<float>();
                a.bias = d_b.as<float>();
                a.output = d_y.data();
                a.batch = N;
                a.in_channels = Cin;
                a.height = H;
                a.width = W;
                a.out_channels = cout;
                a.out_height = Ho;
                a.out_width = Wo;
                a.kernel = k;
                a.stride = s;
                a.pad_top = cp.pad_top;
                a.pad_left = cp.pad_left;
                a.act = kernels::to_act(act);
                for (bool generic : {false, true}) {
                    if (generic && cout != 32) continue;
                    a.force_generic = generic;
                    EFFNET_CUDA_CHECK(cudaMemset(d_y.data(), 0xFF, d_y.size())); // poison again
                    kernels::launch_stem_conv(a, prec, nullptr);
                    const Tensor got =
                        nhwc_to_nchw(download(d_y, size_t(N) * Ho * Wo * cout, prec), N, Ho, Wo, cout);
                    const double err =
                        report("stem " + std::string(padding_name(pad)) + " Cout=" + std::to_string(cout) +
                                   (generic ? " generic" : "") + tag(prec),
                               rel_error(got.data, ref.data), kStemBound(prec));
                    CHECK(err <= kStemBound(prec));
                }
            }
}

TEST_CASE("depthwise conv (+ fused squeeze) matches CPU", "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    for (int k : {3, 5})
        for (int s : {1, 2})
            for (Padding pad : {Padding::Symmetric, Padding::TfSame})
                // fp16: 96 and 80 channels split into slabs of 6 and 5 vectors (12 and 10 groups).
                for (int C : {24, 40, 13, 96, 80})
                    for (Precision prec : kAllPrecisions) {
                        const int N = 2, H = 17, W = 34;
                        const Activation act = C == 40 ? Activation::ReLU6 : Activation::SiLU;
                        const uint64_t seed = 100 + 10 * k + s + C;
                        const Tensor x = rounded(random_tensor({N, C, H, W}, seed, -2.0f, 2.0f), prec);
                        const Tensor w = random_tensor({C, 1, k, k}, seed + 1, -0.5f, 0.5f);
                        const BatchNormParams bn = random_bn(C, seed + 2);
                        const cpu::Conv2dParams cp = cpu::conv_params(H, W, k, s, C, pad);
                        const Tensor ref = cpu_conv_bn_act(x, w, bn, cp, &act);
                        const Tensor ref_pool = cpu::global_avg_pool_forward(ref);
                        const int Ho = int(ref.dim(2)), Wo = int(ref.dim(3));

                        const cuda::FoldedConv f =
                            cuda::fold_batchnorm(w, bn.gamma, bn.beta, bn.mean, bn.var, kEps);
                        auto d_x = upload(nchw_to_nhwc(x), prec);
                        auto d_w = upload_f32(cuda::depthwise_layout(f));
                        auto d_b = upload_f32(f.bias);
                        auto d_y = poisoned(size_t(N) * Ho * Wo * C, prec);
                        auto d_pool = upload_f32(std::vector<float>(size_t(N) * C, 0.0f));
                        kernels::DepthwiseArgs a;
                        a.input = d_x.data();
                        a.weight = d_w.as<float>();
                        a.bias = d_b.as<float>();
                        a.output = d_y.data();
                        a.pooled_sum = d_pool.as<float>();
                        a.batch = N;
                        a.height = H;
                        a.width = W;
                        a.channels = C;
                        a.kernel = k;
                        a.stride = s;
                        a.pad_top = cp.pad_top;
                        a.pad_left = cp.pad_left;
                        a.out_height = Ho;
                        a.out_width = Wo;
                        a.act = kernels::to_act(act);
                        for (kernels::DepthwiseSchedule sched :
                             {kernels::DepthwiseSchedule::RegisterStrips,
                              kernels::DepthwiseSchedule::SharedTile,
                              kernels::DepthwiseSchedule::SharedTileSmall}) {
                            a.schedule = sched;
                            if (!kernels::depthwise_schedule_supported(a, prec, sched)) continue;
                            EFFNET_CUDA_CHECK(cudaMemset(d_y.data(), 0xFF, d_y.size())); // poison
                            EFFNET_CUDA_CHECK(cudaMemset(d_pool.data(), 0, d_pool.size()));
                            kernels::launch_depthwise_conv(a, prec, nullptr);
                            const Tensor got =
                                nhwc_to_nchw(download(d_y, size_t(N) * Ho * Wo * C, prec), N, Ho, Wo, C);
                            std::vector<float> pool = download(d_pool, size_t(N) * C, Precision::FP32);
                            for (float& v : pool) v /= float(Ho * Wo);
                            const std::string name = "depthwise k" + std::to_string(k) + " s" +
                                                     std::to_string(s) + " " + padding_name(pad) +
                                                     " C=" + std::to_string(C) + schedule_label(sched) +
                                                     tag(prec);
                            const double tol = kDepthwiseBound(prec);
                            CHECK(report(name, rel_error(got.data, ref.data), tol) <= tol);
                            // The squeeze sums the fp32 activations before rounding: an fp32 bound
                            // in every precision (the reference sums rounded-input convolutions).
                            const double sq_tol = kDepthwiseSqueezeBound(prec);
                            CHECK(report(name + " squeeze", rel_error(pool, ref_pool.data), sq_tol) <=
                                  sq_tol);
                        }
                    }
}

TEST_CASE("depthwise conv with the activation applied to its input matches CPU act then conv",
          "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    for (int k : {3, 5})
        for (int s : {1, 2})
            for (int C : {24, 13}) // vector and scalar paths
                for (Precision prec : kAllPrecisions) {
                    const int N = 2, H = 15, W = 22;
                    const Activation in_act = k == 3 ? Activation::SiLU : Activation::ReLU6;
                    const Activation act = Activation::SiLU;
                    const uint64_t seed = 700 + 10 * k + s + C;
                    // The stored pre-activation, as a vendor GEMM would leave it.
                    const Tensor x = rounded(random_tensor({N, C, H, W}, seed, -4.0f, 8.0f), prec);
                    const Tensor w = random_tensor({C, 1, k, k}, seed + 1, -0.5f, 0.5f);
                    const BatchNormParams bn = random_bn(C, seed + 2);
                    const cpu::Conv2dParams cp = cpu::conv_params(H, W, k, s, C, Padding::TfSame);
                    const Tensor ref = cpu_conv_bn_act(cpu::activation_forward(x, in_act), w, bn, cp, &act);
                    const int Ho = int(ref.dim(2)), Wo = int(ref.dim(3));
                    const cuda::FoldedConv f =
                        cuda::fold_batchnorm(w, bn.gamma, bn.beta, bn.mean, bn.var, kEps);
                    auto d_x = upload(nchw_to_nhwc(x), prec);
                    auto d_w = upload_f32(cuda::depthwise_layout(f));
                    auto d_b = upload_f32(f.bias);
                    auto d_y = poisoned(size_t(N) * Ho * Wo * C, prec);
                    kernels::DepthwiseArgs a;
                    a.input = d_x.data();
                    a.weight = d_w.as<float>();
                    a.bias = d_b.as<float>();
                    a.output = d_y.data();
                    a.batch = N;
                    a.height = H;
                    a.width = W;
                    a.channels = C;
                    a.kernel = k;
                    a.stride = s;
                    a.pad_top = cp.pad_top;
                    a.pad_left = cp.pad_left;
                    a.out_height = Ho;
                    a.out_width = Wo;
                    a.act = kernels::to_act(act);
                    a.input_act = kernels::to_act(in_act);
                    for (kernels::DepthwiseSchedule sched :
                         {kernels::DepthwiseSchedule::RegisterStrips, kernels::DepthwiseSchedule::SharedTile,
                          kernels::DepthwiseSchedule::SharedTileSmall}) {
                        a.schedule = sched;
                        if (!kernels::depthwise_schedule_supported(a, prec, sched)) continue;
                        EFFNET_CUDA_CHECK(cudaMemset(d_y.data(), 0xFF, d_y.size())); // poison
                        kernels::launch_depthwise_conv(a, prec, nullptr);
                        const Tensor got =
                            nhwc_to_nchw(download(d_y, size_t(N) * Ho * Wo * C, prec), N, Ho, Wo, C);
                        const double tol = kDepthwiseInputActBound(prec);
                        CHECK(report(std::string("depthwise input ") + activation_name(in_act) + " k" +
                                         std::to_string(k) + " s" + std::to_string(s) +
                                         " C=" + std::to_string(C) + schedule_label(sched) + tag(prec),
                                     rel_error(got.data, ref.data), tol) <= tol);
                    }
                }
}

TEST_CASE("pointwise GEMM (SIMT and tensor cores) matches CPU 1x1 conv+BN+act, gate, residual",
          "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    struct Case {
        int cin, cout;
        bool gate, residual, activation;
    };
    const Case cases[] = {{24, 40, false, false, true},   {13, 7, true, false, false},
                          {40, 240, false, false, true},  {96, 24, true, true, false},
                          {24, 24, true, true, false},    {240, 80, true, false, false},
                          {320, 1280, false, false, true}};
    for (const Case& cs : cases)
        for (Precision prec : kAllPrecisions)
            for (kernels::GemmKernel which : {kernels::GemmKernel::Simt, kernels::GemmKernel::TensorCore}) {
                const int N = 2, H = 17, W = 34;
                const Activation silu = Activation::SiLU;
                const Activation* act = cs.activation ? &silu : nullptr;
                const uint64_t seed = 1000 + cs.cin * 7 + cs.cout;
                const Tensor x = rounded(random_tensor({N, cs.cin, H, W}, seed, -2.0f, 2.0f), prec);
                const Tensor g = random_tensor({N, cs.cin}, seed + 1, 0.0f, 1.0f); // a sigmoid output
                Tensor w = random_tensor({cs.cout, cs.cin, 1, 1}, seed + 2, -0.5f, 0.5f);
                const BatchNormParams bn = random_bn(cs.cout, seed + 3);
                // The GPU multiplies by weights folded and rounded to the storage precision;
                // the reference uses the unrounded weights: that rounding is part of the tolerance.
                Tensor xg = x;
                if (cs.gate)
                    for (int64_t n = 0; n < N; ++n)
                        for (int64_t c = 0; c < cs.cin; ++c)
                            for (int64_t i = 0; i < H * W; ++i)
                                xg.data[size_t((n * cs.cin + c) * H * W + i)] *=
                                    g.data[size_t(n * cs.cin + c)];
                Tensor ref =
                    cpu_conv_bn_act(xg, w, bn, cpu::conv_params(H, W, 1, 1, 1, Padding::Symmetric), act);
                Tensor res;
                if (cs.residual) {
                    res = rounded(random_tensor({N, cs.cout, H, W}, seed + 4), prec);
                    ref = cpu::add(ref, res);
                }

                const cuda::FoldedConv f = cuda::fold_batchnorm(w, bn.gamma, bn.beta, bn.mean, bn.var, kEps);
                auto d_x = upload(nchw_to_nhwc(x), prec);
                auto d_w = upload(f.weight, prec);
                auto d_b = upload_f32(f.bias);
                auto d_g = upload_f32(g.data);
                cuda::DeviceBuffer d_r;
                if (cs.residual) d_r = upload(nchw_to_nhwc(res), prec);
                auto d_y = poisoned(size_t(N) * H * W * cs.cout, prec);
                kernels::PointwiseArgs a;
                a.input = d_x.data();
                a.weight = d_w.data();
                a.bias = d_b.as<float>();
                a.gate = cs.gate ? d_g.as<float>() : nullptr;
                a.residual = cs.residual ? d_r.data() : nullptr;
                a.output = d_y.data();
                a.rows = int64_t(N) * H * W;
                a.out_channels = cs.cout;
                a.in_channels = cs.cin;
                a.rows_per_image = H * W;
                a.act = act_of(act);
                const bool tc = which == kernels::GemmKernel::TensorCore;
                if (tc && !kernels::pointwise_tensor_core_eligible(a, prec)) {
                    CHECK_THROWS_AS(kernels::launch_pointwise_conv(a, prec, which, nullptr), Error);
                    continue;
                }
                kernels::launch_pointwise_conv(a, prec, which, nullptr);
                const Tensor got =
                    nhwc_to_nchw(download(d_y, size_t(N) * H * W * cs.cout, prec), N, H, W, cs.cout);
                const std::string name = std::string(tc ? "pointwise-tc" : "pointwise-simt") +
                                         " K=" + std::to_string(cs.cin) + " N=" + std::to_string(cs.cout) +
                                         (cs.gate ? " gate" : "") + (cs.residual ? " residual" : "") +
                                         (act ? " silu" : "") + tag(prec);
                const double tol = kPointwiseBound(prec);
                CHECK(report(name, rel_error(got.data, ref.data), tol) <= tol);
            }
}

TEST_CASE("excite kernel matches CPU squeeze-excite gate", "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    for (int C : {96, 13, 1152})
        for (Activation act : {Activation::SiLU, Activation::ReLU6}) {
            const int N = 3, H = 5, W = 7, S = std::max(1, C / 24);
            const uint64_t seed = 5000 + C;
            const Tensor x = random_tensor({N, C, H, W}, seed, -2.0f, 2.0f);
            const Tensor w1 = random_tensor({S, C, 1, 1}, seed + 1, -0.3f, 0.3f);
            const Tensor b1 = random_tensor({S}, seed + 2, -0.3f, 0.3f);
            const Tensor w2 = random_tensor({C, S, 1, 1}, seed + 3, -0.5f, 0.5f);
            const Tensor b2 = random_tensor({C}, seed + 4, -0.3f, 0.3f);
            cpu::SqueezeExciteSaved saved;
            cpu::squeeze_excite_forward(x, w1, b1, w2, b2, act, &saved);

            std::vector<float> sums(size_t(N) * C, 0.0f);
            for (int64_t n = 0; n < N; ++n)
                for (int64_t c = 0; c < C; ++c) {
                    double s = 0.0;
                    for (int64_t i = 0; i < H * W; ++i) s += x.data[size_t((n * C + c) * H * W + i)];
                    sums[size_t(n * C + c)] = float(s);
                }
            auto d_sum = upload_f32(sums);
            auto d_w1 = upload_f32(w1.data);
            auto d_b1 = upload_f32(b1.data);
            auto d_w2 = upload_f32(cuda::transpose(w2.data, C, S));
            auto d_b2 = upload_f32(b2.data);
            auto d_gate = poisoned(size_t(N) * C, Precision::FP32);
            kernels::ExciteArgs a;
            a.pooled_sum = d_sum.as<float>();
            a.inv_count = 1.0f / float(H * W);
            a.w_reduce = d_w1.as<float>();
            a.b_reduce = d_b1.as<float>();
            a.w_expand_t = d_w2.as<float>();
            a.b_expand = d_b2.as<float>();
            a.gate = d_gate.as<float>();
            a.batch = N;
            a.channels = C;
            a.reduced = S;
            a.act = kernels::to_act(act);
            kernels::launch_excite(a, nullptr);
            const std::vector<float> got = download(d_gate, size_t(N) * C, Precision::FP32);
            CHECK(report("excite C=" + std::to_string(C) + " " + activation_name(act),
                         rel_error(got, saved.gate.data), kExciteBound) <= kExciteBound);
            // The excite leaves the sums at zero for the next forward's squeeze to add into.
            const std::vector<float> sums_after = download(d_sum, size_t(N) * C, Precision::FP32);
            CHECK(std::all_of(sums_after.begin(), sums_after.end(), [](float v) { return v == 0.0f; }));
        }
}

TEST_CASE("global average pool and classifier match CPU", "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    for (Precision prec : kAllPrecisions) {
        const int N = 3, H = 7, W = 5, C = 200;
        const Tensor x = rounded(random_tensor({N, C, H, W}, 77, -2.0f, 2.0f), prec);
        const Tensor ref_pool = cpu::global_avg_pool_forward(x);
        auto d_x = upload(nchw_to_nhwc(x), prec);
        auto d_pool = poisoned(size_t(N) * C, Precision::FP32);
        kernels::launch_global_avg_pool(d_x.data(), d_pool.as<float>(), N, H * W, C, prec, nullptr);
        const std::vector<float> pool = download(d_pool, size_t(N) * C, Precision::FP32);
        // Inputs are already rounded; the sum is fp32: an fp32 bound for every precision.
        CHECK(report(std::string("global_avg_pool") + tag(prec), rel_error(pool, ref_pool.data),
                     kAvgPoolBound(prec)) <= kAvgPoolBound(prec));
    }
    const int N = 3, K = 1280, M = 1000;
    const Tensor x = random_tensor({N, K}, 78);
    const Tensor w = random_tensor({M, K}, 79, -0.05f, 0.05f);
    const Tensor b = random_tensor({M}, 80);
    const Tensor ref = cpu::linear_forward(x, w, &b);
    auto d_x = upload_f32(x.data);
    auto d_w = upload_f32(w.data);
    auto d_b = upload_f32(b.data);
    auto d_y = poisoned(size_t(N) * M, Precision::FP32);
    kernels::launch_linear(d_x.as<float>(), d_w.as<float>(), d_b.as<float>(), d_y.as<float>(), N, K, M,
                           nullptr);
    const std::vector<float> got = download(d_y, size_t(N) * M, Precision::FP32);
    CHECK(report("classifier 1280 -> 1000", rel_error(got, ref.data), kClassifierBound) <= kClassifierBound);
}

TEST_CASE("fused expand+depthwise matches CPU expand conv+BN+act then depthwise conv+BN+act",
          "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    struct Case {
        int cin, ce;
    };
    for (const Case cs : {Case{16, 96}, Case{24, 144}, Case{13, 78}, Case{40, 40 * 6 + 7}})
        for (int k : {3, 5})
            for (int s : {1, 2})
                for (Padding pad : {Padding::Symmetric, Padding::TfSame})
                    for (Precision prec : kAllPrecisions) {
                        if (cs.cin == 40 && (k == 3 || pad == Padding::TfSame))
                            continue; // keep the runtime modest
                        const int N = 2, H = 17, W = 34;
                        const Activation act =
                            pad == Padding::Symmetric ? Activation::SiLU : Activation::ReLU6;
                        const uint64_t seed = 9000 + cs.cin + 10 * k + s;
                        const Tensor x = rounded(random_tensor({N, cs.cin, H, W}, seed, -2.0f, 2.0f), prec);
                        const Tensor we = random_tensor({cs.ce, cs.cin, 1, 1}, seed + 1, -0.4f, 0.4f);
                        const BatchNormParams bne = random_bn(cs.ce, seed + 2);
                        const Tensor wd = random_tensor({cs.ce, 1, k, k}, seed + 3, -0.5f, 0.5f);
                        const BatchNormParams bnd = random_bn(cs.ce, seed + 4);
                        const Tensor e =
                            cpu_conv_bn_act(x, we, bne, cpu::conv_params(H, W, 1, 1, 1, pad), &act);
                        const cpu::Conv2dParams cp = cpu::conv_params(H, W, k, s, cs.ce, pad);
                        const Tensor ref = cpu_conv_bn_act(e, wd, bnd, cp, &act);
                        const Tensor ref_pool = cpu::global_avg_pool_forward(ref);
                        const int Ho = int(ref.dim(2)), Wo = int(ref.dim(3));

                        const cuda::FoldedConv fe =
                            cuda::fold_batchnorm(we, bne.gamma, bne.beta, bne.mean, bne.var, kEps);
                        const cuda::FoldedConv fd =
                            cuda::fold_batchnorm(wd, bnd.gamma, bnd.beta, bnd.mean, bnd.var, kEps);
                        auto d_x = upload(nchw_to_nhwc(x), prec);
                        auto d_we = upload(fe.weight, prec);
                        auto d_be = upload_f32(fe.bias);
                        auto d_wd = upload_f32(cuda::depthwise_layout(fd));
                        auto d_bd = upload_f32(fd.bias);
                        auto d_y = poisoned(size_t(N) * Ho * Wo * cs.ce, prec);
                        auto d_pool = upload_f32(std::vector<float>(size_t(N) * cs.ce, 0.0f));
                        kernels::FusedExpandDepthwiseArgs a;
                        a.input = d_x.data();
                        a.expand_weight = d_we.data();
                        a.expand_bias = d_be.as<float>();
                        a.dw_weight = d_wd.as<float>();
                        a.dw_bias = d_bd.as<float>();
                        a.output = d_y.data();
                        a.pooled_sum = d_pool.as<float>();
                        a.batch = N;
                        a.height = H;
                        a.width = W;
                        a.in_channels = cs.cin;
                        a.expand_channels = cs.ce;
                        a.kernel = k;
                        a.stride = s;
                        a.pad_top = cp.pad_top;
                        a.pad_left = cp.pad_left;
                        a.out_height = Ho;
                        a.out_width = Wo;
                        a.act = kernels::to_act(act);
                        REQUIRE(kernels::fused_expand_depthwise_supported(a));
                        kernels::launch_fused_expand_depthwise(a, prec, nullptr);
                        const Tensor got =
                            nhwc_to_nchw(download(d_y, size_t(N) * Ho * Wo * cs.ce, prec), N, Ho, Wo, cs.ce);
                        std::vector<float> pool = download(d_pool, size_t(N) * cs.ce, Precision::FP32);
                        for (float& v : pool) v /= float(Ho * Wo);
                        const std::string name = "fused expand+dw Cin=" + std::to_string(cs.cin) +
                                                 " Ce=" + std::to_string(cs.ce) + " k" + std::to_string(k) +
                                                 " s" + std::to_string(s) + " " + padding_name(pad) +
                                                 tag(prec);
                        const double tol = kFusedBound(prec), sq_tol = kFusedSqueezeBound(prec);
                        CHECK(report(name, rel_error(got.data, ref.data), tol) <= tol);
                        CHECK(report(name + " squeeze", rel_error(pool, ref_pool.data), sq_tol) <= sq_tol);
                    }
}

TEST_CASE("kernel launchers reject bad arguments", "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    kernels::DepthwiseArgs a; // null pointers, zero shape
    CHECK_THROWS_AS(kernels::launch_depthwise_conv(a, Precision::FP32, nullptr), Error);
    kernels::PointwiseArgs p;
    CHECK_THROWS_AS(kernels::launch_pointwise_conv(p, Precision::FP16, kernels::GemmKernel::Auto, nullptr),
                    Error);
    kernels::StemConvArgs s;
    CHECK_THROWS_AS(kernels::launch_stem_conv(s, Precision::BF16, nullptr), Error);
}
