// Backbone features from the GPU inference session (SessionOptions::features, run_features)
// against the CPU reference engine's features; features_only sessions; refusals.
//
// Not yet run on a GPU: written and compiled on a machine without one. The bounds are the
// whole-network bounds of test_session.cpp (a feature is a prefix of the network, so its error
// is at most the logits' error budget) and are marked "not yet measured on a GPU".
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"
#include "gpu/gpu_test_util.hpp"

using namespace effnet;
using namespace effnet::gpu_test;

namespace {

// Relative norm error of each feature vs the CPU engine's (not yet measured on a GPU):
//   fp32 3e-5: fp32 accumulation through up to ~20 layers vs the CPU's (test_session.cpp's
//     whole-network bound, measured 1.3e-6 on the logits);
//   fp16 2e-2 / bf16 6e-2: every activation rounded to 11 / 8 significant bits, layer after
//     layer; the NCHW float32 conversion itself is exact (fp16 / bf16 widen without rounding).
constexpr Bounds kFeatureBound{3e-5, 2e-2, 6e-2};

struct GpuFeatures {
    std::vector<std::vector<float>> maps; // NCHW float32, options.features order
    std::vector<float> logits;            // empty with features_only
};

GpuFeatures gpu_features(InferenceSession& session, const Tensor& input, bool with_logits) {
    GpuFeatures r;
    std::vector<float*> ptrs;
    for (const FeatureInfo& f : session.features())
        r.maps.emplace_back(size_t(f.shape.numel()), std::nanf(""));
    for (auto& m : r.maps) ptrs.push_back(m.data());
    if (with_logits) r.logits.assign(size_t(session.batch()) * size_t(session.num_classes()), std::nanf(""));
    session.run_features(input.ptr(), ptrs.data(), with_logits ? r.logits.data() : nullptr);
    return r;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

} // namespace

TEST_CASE("session features match the CPU engine's, every precision", "[gpu][session][features]") {
    EFFNET_SKIP_WITHOUT_GPU();
    for (const bool b0 : {false, true}) {
        Model model = random_model(b0 ? preset("b0") : small_config(), 41);
        randomise_batchnorm(model, 42);
        const Tensor input = random_tensor(b0 ? Shape{2, 3, 96, 96} : Shape{3, 3, 67, 61}, 43);
        cpu::Network net(model);
        cpu::ForwardOptions co;
        co.features = {0, 1, 2, 3, 4};
        const cpu::ForwardResult ref = net.forward(input, co);
        for (const Precision prec : kAllPrecisions) {
            SessionOptions so;
            so.features = {0, 1, 2, 3, 4};
            InferenceSession session(model, int(input.dim(0)), int(input.dim(2)), int(input.dim(3)), prec,
                                     so);
            REQUIRE(session.features().size() == 5);
            const GpuFeatures got = gpu_features(session, input, true);
            for (size_t k = 0; k < 5; ++k) {
                const FeatureInfo& f = session.features()[k];
                CHECK(ref.features[k].shape ==
                      Shape{f.shape.batch, f.shape.channels, f.shape.height, f.shape.width});
                const std::string name = std::string(b0 ? "b0 96x96" : "custom 67x61") + " feature " +
                                         std::to_string(k) + " (" + f.name + ") " + precision_name(prec) +
                                         " vs CPU";
                CHECK(report(name, rel_error(got.maps[k], ref.features[k].data), kFeatureBound(prec)) <=
                      kFeatureBound(prec));
            }
            // The logits run_features gives are run()'s: the same graph.
            std::vector<float> logits(got.logits.size(), std::nanf(""));
            session.run(input.ptr(), logits.data());
            CHECK(report(std::string("run_features logits vs run() ") + precision_name(prec),
                         rel_error(got.logits, logits), 0.0) == 0.0);
            CHECK(report(std::string("run_features logits vs CPU ") + precision_name(prec),
                         rel_error(got.logits, ref.logits.data), kFeatureBound(prec)) <= kFeatureBound(prec));
        }
    }
}

TEST_CASE("features_only session: the same features, no classifier", "[gpu][session][features]") {
    EFFNET_SKIP_WITHOUT_GPU();
    Model model = random_model(small_config(), 51);
    randomise_batchnorm(model, 52);
    const Tensor input = random_tensor({2, 3, 64, 64}, 53);
    for (const Precision prec : {Precision::FP32, Precision::FP16}) {
        // No autotuning: both sessions run the same fixed kernels, so the features are bit-equal.
        SessionOptions full;
        full.autotune = false;
        full.features = {1, 2, 3};
        SessionOptions only = full;
        only.features_only = true;
        InferenceSession a(model, 2, 64, 64, prec, full);
        InferenceSession b(model, 2, 64, 64, prec, only);
        const GpuFeatures fa = gpu_features(a, input, true);
        const GpuFeatures fb = gpu_features(b, input, false);
        for (size_t k = 0; k < 3; ++k)
            CHECK(report(std::string("features_only vs full session, feature ") + std::to_string(k + 1) +
                             " " + precision_name(prec),
                         rel_error(fb.maps[k], fa.maps[k]), 0.0) == 0.0);
        // Without head and classifier the session is smaller.
        CHECK(b.peak_device_memory() < a.peak_device_memory());

        // Device pointers: the same values, stream-ordered.
        cuda::DeviceBuffer in = upload_f32(input.data);
        std::vector<cuda::DeviceBuffer> outs;
        std::vector<float*> ptrs;
        for (const FeatureInfo& f : b.features()) {
            outs.push_back(poisoned(size_t(f.shape.numel()), Precision::FP32));
            ptrs.push_back(static_cast<float*>(outs.back().data()));
        }
        b.run_features(static_cast<const float*>(in.data()), ptrs.data(), nullptr, true);
        b.synchronize();
        for (size_t k = 0; k < 3; ++k)
            CHECK(report(std::string("device-pointer features vs host, feature ") + std::to_string(k + 1) +
                             " " + precision_name(prec),
                         rel_error(download(outs[k], fb.maps[k].size(), Precision::FP32), fb.maps[k]),
                         0.0) == 0.0);
    }
}

TEST_CASE("session feature refusals", "[gpu][session][features]") {
    EFFNET_SKIP_WITHOUT_GPU();
    Model model = random_model(small_config(), 61);
    const Tensor input = random_tensor({1, 3, 64, 64}, 62);
    SessionOptions bad;
    bad.features = {3, 5};
    CHECK_THAT(error_of([&] { InferenceSession(model, 1, 64, 64, Precision::FP32, bad); }),
               Catch::Contains("index 5 is out of range"));
    bad.features = {};
    bad.features_only = true;
    CHECK_THAT(error_of([&] { InferenceSession(model, 1, 64, 64, Precision::FP32, bad); }),
               Catch::Contains("features_only needs"));

    SessionOptions only;
    only.features = {0};
    only.features_only = true;
    InferenceSession s(model, 1, 64, 64, Precision::FP32, only);
    std::vector<float> logits(17), f0(size_t(s.features()[0].shape.numel()));
    float* ptrs[] = {f0.data()};
    CHECK_THAT(error_of([&] { s.run(input.ptr(), logits.data()); }), Catch::Contains("features_only"));
    CHECK_THAT(error_of([&] { s.run_features(input.ptr(), ptrs, logits.data()); }),
               Catch::Contains("pass logits = nullptr"));
    float* null_ptrs[] = {nullptr};
    CHECK_THAT(error_of([&] { s.run_features(input.ptr(), null_ptrs); }), Catch::Contains("null pointer"));
    s.run_features(input.ptr(), ptrs);
    CHECK(std::all_of(f0.begin(), f0.end(), [](float v) { return std::isfinite(v); }));

    InferenceSession plain(model, 1, 64, 64, Precision::FP32);
    CHECK(plain.features().empty());
    CHECK_THAT(error_of([&] { plain.run_features(input.ptr(), ptrs); }), Catch::Contains("without features"));
}
