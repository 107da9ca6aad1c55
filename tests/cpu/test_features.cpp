// Backbone features (timm's features_only): feature_info for every preset, the CPU engine's
// features against real PyTorch per-stage outputs (golden fixtures), features_only, index
// validation, and backward with gradients entering at the features (finite differences, and
// linearity with the logits path).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"
#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"
#include "effnet/safetensors.hpp"
#include "golden_fixture.hpp"
#include "gradcheck.hpp"

namespace {

using namespace effnet;
using golden::convert;
using golden::kGoldenDir;
using golden::rel_error;
using golden::to_tensor;

const std::string kOutDir = std::string(EFFNET_BINARY_DIR) + "/features";

// A feature is a prefix of the eval forward, a chain of float32 ops against PyTorch's float64:
// measured worst relative norm error over the 5 features of each fixture: tv_tiny 8.0e-8,
// timm_tiny 1.1e-7, timm_tf_tiny 1.1e-7, timm_lite_tiny 4.0e-7. 2e-6 is 5x the worst, and far
// below what a wrong layer (O(1)) or a skipped BN gives.
constexpr double kFeatureTolerance = 2e-6;

// timm's features_only (and torchvision's feature extraction) take these stages' outputs.
const std::vector<int> kFeatureStages = {0, 1, 2, 4, 6};

// PyTorch's module for stage s: torchvision features.(s+1) (features.0 is the stem), timm blocks.s.
std::string torch_module(int stage, const std::string& family) {
    return family == "torchvision" ? "eval.act.features." + std::to_string(stage + 1)
                                   : "eval.act.blocks." + std::to_string(stage);
}

ModelConfig tiny_config() {
    CustomOptions o;
    o.width = 0.1;
    o.depth = 0.1;
    o.num_classes = 5;
    o.resolution = 32;
    ModelConfig c = custom_config(o);
    c.dropout = 0.0f;
    c.stochastic_depth = 0.0f;
    return c;
}

std::vector<int> all_features() {
    return {0, 1, 2, 3, 4};
}

void require_equal(const Tensor& a, const Tensor& b) {
    REQUIRE(a.shape == b.shape);
    REQUIRE(a.data == b.data); // bit-exact
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

TEST_CASE("features match PyTorch's per-stage outputs on the golden fixtures", "[features][golden]") {
    for (const std::string name : {"tv_tiny", "timm_tiny", "timm_tf_tiny", "timm_lite_tiny"}) {
        const SafetensorsFile golden = SafetensorsFile::open(kGoldenDir + "/" + name + "_golden.safetensors");
        const std::string weights = convert(name, golden, kOutDir);
        const Tensor input = to_tensor(golden, "input");
        Model model = load_weights(weights);
        INFO(name << " (" << model.family << ")");
        cpu::Network net(model);
        cpu::ForwardOptions opt;
        opt.features = all_features();
        opt.record_stages = true;
        const cpu::ForwardResult r = net.forward(input, opt);
        const std::vector<FeatureInfo> info = feature_info(
            make_network_plan(model.config, int(input.dim(0)), int(input.dim(2)), int(input.dim(3))));
        REQUIRE(r.features.size() == 5);
        double worst = 0;
        for (int k = 0; k < 5; ++k) {
            const FeatureInfo& f = info[size_t(k)];
            INFO("feature " << k << " = " << f.name);
            CHECK(f.name == "stage." + std::to_string(kFeatureStages[size_t(k)]));
            CHECK(f.stride == 2 << k);
            const std::string key = torch_module(kFeatureStages[size_t(k)], model.family);
            REQUIRE(golden.contains(key));
            CHECK(r.features[size_t(k)].shape == golden.info(key).shape); // NCHW, as PyTorch's
            CHECK(r.features[size_t(k)].shape ==
                  Shape{f.shape.batch, f.shape.channels, f.shape.height, f.shape.width});
            const double e = rel_error(r.features[size_t(k)], golden.read_f64(key));
            CHECK(e <= kFeatureTolerance);
            worst = std::max(worst, e);
            require_equal(r.features[size_t(k)], r.stages.at(f.name)); // the same tensor as the stage
        }
        std::printf("[features] %-15s worst feature vs PyTorch %.2e\n", name.c_str(), worst);
    }
}

TEST_CASE("features_only gives the full forward's features bit for bit and no logits", "[features]") {
    Model model = random_model(tiny_config(), 11);
    std::mt19937 rng(5);
    const Tensor input = test::random_tensor({2, 3, 37, 33}, rng);
    cpu::Network net(model);
    cpu::ForwardOptions full;
    full.features = {1, 3, 4};
    const cpu::ForwardResult a = net.forward(input, full);
    REQUIRE(a.logits.shape == Shape{2, 5});
    REQUIRE(a.features.size() == 3);
    for (const std::vector<int>& wanted : std::vector<std::vector<int>>{{1, 3, 4}, {1, 3}, {1}}) {
        cpu::ForwardOptions only;
        only.features = wanted;
        only.features_only = true;
        const cpu::ForwardResult b = net.forward(input, only);
        CHECK(b.logits.empty());
        REQUIRE(b.features.size() == wanted.size());
        for (size_t k = 0; k < wanted.size(); ++k) require_equal(b.features[k], a.features[k]);
    }
    // The logits do not change when features are asked for.
    const cpu::ForwardResult plain = net.forward(input);
    require_equal(plain.logits, a.logits);
    CHECK(plain.features.empty());

    // Train mode: the head's running statistics are not touched by a features_only forward.
    const Tensor head_mean = model.param("head.bn.running_mean");
    const Tensor stem_mean = model.param("stem.bn.running_mean");
    cpu::ForwardOptions train;
    train.train = true;
    train.features = {2};
    train.features_only = true;
    net.forward(input, train);
    require_equal(model.param("head.bn.running_mean"), head_mean);
    CHECK(model.param("stem.bn.running_mean").data != stem_mean.data);
}

TEST_CASE("feature_info: strides 2..32 at every preset's resolution and at 225", "[features][network_plan]") {
    // timm features_only channels of each preset (feature_info.channels() of timm 1.0.31
    // efficientnet_bN / tf_efficientnet_liteN, which also gives reductions 2, 4, 8, 16, 32).
    const std::map<std::string, std::vector<int>> channels = {
        {"b0", {16, 24, 40, 112, 320}},    {"b1", {16, 24, 40, 112, 320}},
        {"b2", {16, 24, 48, 120, 352}},    {"b3", {24, 32, 48, 136, 384}},
        {"b4", {24, 32, 56, 160, 448}},    {"b5", {24, 40, 64, 176, 512}},
        {"b6", {32, 40, 72, 200, 576}},    {"b7", {32, 48, 80, 224, 640}},
        {"lite0", {16, 24, 40, 112, 320}}, {"lite1", {16, 24, 40, 112, 320}},
        {"lite2", {16, 24, 48, 120, 352}}, {"lite3", {24, 32, 48, 136, 384}},
        {"lite4", {24, 32, 56, 160, 448}},
    };
    REQUIRE(preset_names().size() == channels.size());
    for (const std::string& name : preset_names()) {
        const ModelConfig c = preset(name);
        for (const int size : {c.resolution, 225}) {
            INFO(name << " at " << size);
            const NetworkPlan plan = make_network_plan(c, 3, size, size);
            const std::vector<FeatureInfo> info = feature_info(plan);
            REQUIRE(info.size() == 5);
            int side = size;
            for (int k = 0; k < 5; ++k) {
                const FeatureInfo& f = info[size_t(k)];
                INFO("feature " << k);
                side = (side + 1) / 2; // every stride-2 conv here gives ceil(in / 2)
                CHECK(f.index == k);
                CHECK(f.stride == 2 << k);
                CHECK(f.name == "stage." + std::to_string(kFeatureStages[size_t(k)]));
                CHECK(f.shape.channels == channels.at(name)[size_t(k)]);
                CHECK(f.shape.batch == 3);
                CHECK(f.shape.height == side);
                CHECK(f.shape.width == side);
                REQUIRE(f.layer >= 0);
                const Layer& l = plan.layers[size_t(f.layer)];
                CHECK(l.kind == LayerKind::Project);
                CHECK(plan.ends_stage(size_t(f.layer)));
                CHECK(l.stage == kFeatureStages[size_t(k)]);
                CHECK(l.out.channels == f.shape.channels);
                if (size % 32 == 0) CHECK(size / f.stride == f.shape.height);
            }
        }
    }
}

TEST_CASE("bad feature indices and feature gradients are refused with clear messages", "[features]") {
    CHECK_THAT(error_of([] { check_feature_indices({}); }), Catch::Contains("no feature index"));
    CHECK_THAT(error_of([] { check_feature_indices({0, 5}); }), Catch::Contains("index 5 is out of range"));
    CHECK_THAT(error_of([] { check_feature_indices({-1}); }), Catch::Contains("index -1 is out of range"));
    CHECK_THAT(error_of([] { check_feature_indices({1, 1}); }), Catch::Contains("index 1 after 1"));
    CHECK_THAT(error_of([] { check_feature_indices({3, 2}); }), Catch::Contains("strictly increasing"));
    CHECK(error_of([] { check_feature_indices({0, 1, 2, 3, 4}); }).empty());

    Model model = random_model(tiny_config(), 3);
    std::mt19937 rng(1);
    const Tensor input = test::random_tensor({2, 3, 32, 32}, rng);
    cpu::Network net(model);
    cpu::ForwardOptions opt;
    opt.features_only = true;
    CHECK_THAT(error_of([&] { net.forward(input, opt); }), Catch::Contains("features_only needs"));
    opt.features = {2, 7};
    CHECK_THAT(error_of([&] { net.forward(input, opt); }), Catch::Contains("index 7"));

    opt.features = {1, 2};
    const cpu::ForwardResult r = net.forward(input, opt);
    const Tensor dlogits({2, 5}, 1.0f);
    CHECK_THAT(error_of([&] { net.backward(dlogits); }), Catch::Contains("features_only"));
    CHECK_THAT(error_of([&] { net.backward(Tensor(), {r.features[0]}); }),
               Catch::Contains("1 feature gradients for a forward that returned 2"));
    CHECK_THAT(error_of([&] {
                   net.backward(Tensor(), {r.features[1], r.features[1]});
               }),
               Catch::Contains("gradient of feature 1 (stage.1) has shape"));
    CHECK_THAT(error_of([&] {
                   net.backward(Tensor(), {Tensor(), Tensor()});
               }),
               Catch::Contains("no gradient given"));
    CHECK(net.backward(Tensor(), {Tensor(), r.features[1]}).input.shape == input.shape);
}

// L = <feature 1, r1> + <feature 3, r3> (+ <logits, rl>): its gradient by backward with the
// feature gradients r1, r3 (and dlogits rl) against central differences (gradcheck.hpp's
// tolerance: 2e-3 relative plus a floor). A gradient entering at the wrong layer, or lost at a
// residual, is off by O(1).
TEST_CASE("backward from feature gradients matches finite differences", "[features][gradcheck]") {
    for (const bool with_logits : {false, true}) {
        for (const bool train : {false, true}) {
            INFO((with_logits ? "features + logits" : "features only")
                 << (train ? ", train mode" : ", eval"));
            Model model = random_model(tiny_config(), 21);
            std::mt19937 rng(with_logits ? 9 : 8);
            // Train mode: a larger input, so that batch norm at stride 32 sees 2 x 3x3 values a
            // channel rather than 2 x 1x2 (with 4 values the loss curves too much for h).
            Tensor input = test::random_tensor(train ? Shape{2, 3, 96, 96} : Shape{2, 3, 32, 36}, rng);
            cpu::ForwardOptions opt;
            opt.train = train;
            opt.update_running_stats = false; // every loss() evaluation sees the same model
            opt.features = {1, 3};
            opt.features_only = !with_logits;
            cpu::Network net(model);
            const cpu::ForwardResult r0 = net.forward(input, opt);
            const Tensor r1 = test::random_tensor(r0.features[0].shape, rng);
            const Tensor r3 = test::random_tensor(r0.features[1].shape, rng);
            const Tensor rl = with_logits ? test::random_tensor(r0.logits.shape, rng) : Tensor();
            const cpu::Gradients g = net.backward(rl, {r1, r3});
            // Train-mode BN normalises late stages over few values per channel, which curves the
            // loss: a smaller step keeps the central difference's truncation error in bounds.
            test::GradCheckOptions gc;
            if (train) gc.h = 2e-3;
            auto loss = [&] {
                const cpu::ForwardResult r = net.forward(input, opt);
                double l = test::dot(r.features[0], r1) + test::dot(r.features[1], r3);
                if (with_logits) l += test::dot(r.logits, rl);
                return l;
            };
            test::check_gradient("input", loss, input, g.input, rng, gc);
            for (const std::string p : {"stem.conv.weight", "stem.bn.weight", "blocks.1.project.conv.weight",
                                        "blocks.1.dw.conv.weight", "blocks.2.se.reduce.weight",
                                        "blocks.3.expand.conv.weight", "blocks.4.project.bn.bias"}) {
                REQUIRE(g.params.count(p) == 1);
                test::check_gradient(p, loss, model.param(p), g.params.at(p), rng, gc);
            }
            if (with_logits) {
                for (const std::string p :
                     {"blocks.6.project.conv.weight", "head.conv.weight", "classifier.weight"}) {
                    REQUIRE(g.params.count(p) == 1);
                    test::check_gradient(p, loss, model.param(p), g.params.at(p), rng, gc);
                }
            } else {
                // The walk started at feature 3 (stage 4): later layers are not walked.
                CHECK(g.params.count("blocks.5.dw.conv.weight") == 0);
                CHECK(g.params.count("head.conv.weight") == 0);
                CHECK(g.params.count("classifier.weight") == 0);
            }
        }
    }
}

// Backward is linear in its incoming gradients: backward(dlogits, df) must equal
// backward(dlogits) + backward(-, df) for every gradient, with df entering at feature 4 (the
// last stage, where the head's own gradient arrives) and feature 0. Sums of float32 in another
// order: 1e-5 relative; a feature gradient added at the wrong layer, or twice, is off by O(1).
TEST_CASE("feature gradients add to the logits path", "[features]") {
    Model model = random_model(tiny_config(), 31);
    std::mt19937 rng(4);
    const Tensor input = test::random_tensor({2, 3, 32, 32}, rng);
    cpu::Network net(model);
    cpu::ForwardOptions opt;
    opt.features = {0, 4};
    const cpu::ForwardResult r = net.forward(input, opt);
    const Tensor dlogits = test::random_tensor(r.logits.shape, rng);
    const std::vector<Tensor> df = {test::random_tensor(r.features[0].shape, rng),
                                    test::random_tensor(r.features[1].shape, rng)};
    const cpu::Gradients both = net.backward(dlogits, df);
    const cpu::Gradients logits_only = net.backward(dlogits);
    const cpu::Gradients features_only = net.backward(Tensor(), df);
    const cpu::Gradients empty_list = net.backward(dlogits, {});
    double worst = 0;
    auto check_sum = [&](const std::string& name, const Tensor& sum, const Tensor& a, const Tensor* b) {
        INFO(name);
        REQUIRE(sum.shape == a.shape);
        double num = 0, den = 0;
        for (size_t i = 0; i < sum.data.size(); ++i) {
            const double expected = double(a.data[i]) + (b ? double(b->data[i]) : 0.0);
            num += (sum.data[i] - expected) * (sum.data[i] - expected);
            den += expected * expected;
        }
        const double e = std::sqrt(num / std::max(den, 1e-300));
        CHECK(e <= 1e-5);
        worst = std::max(worst, e);
    };
    check_sum("input", both.input, logits_only.input, &features_only.input);
    REQUIRE(both.params.size() == logits_only.params.size());
    for (const auto& [name, g] : both.params) {
        const auto f = features_only.params.find(name);
        check_sum(name, g, logits_only.params.at(name),
                  f == features_only.params.end() ? nullptr : &f->second);
        require_equal(empty_list.params.at(name), logits_only.params.at(name));
    }
    // Feature 4 is the last stage's output: the head and classifier are not walked without dlogits.
    CHECK(features_only.params.count("head.conv.weight") == 0);
    CHECK(features_only.params.count("blocks.6.project.conv.weight") == 1);
    // ... and the feature gradient changes what reaches the input (the check above is not vacuous).
    CHECK(test::norm(features_only.input) > 0);
    std::printf("[features] backward linearity: worst relative difference %.2e\n", worst);
}
