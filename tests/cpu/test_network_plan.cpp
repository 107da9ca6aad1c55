// The network plan against facts stated independently of it: torchvision's feature-map shapes
// for B0 at 224, TF "SAME" padding worked out by hand, the parameter list, the mask seeds
// (splitmix64 written out again here), and its errors.
#include <catch2/catch.hpp>

#include <array>
#include <map>
#include <set>
#include <string>

#include "effnet/config.hpp"
#include "effnet/error.hpp"
#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"

using namespace effnet;

namespace {

std::map<LayerKind, int> count_kinds(const NetworkPlan& plan) {
    std::map<LayerKind, int> n;
    for (const Layer& l : plan.layers) ++n[l.kind];
    return n;
}

} // namespace

TEST_CASE("network plan: B0 at 224 has torchvision's layers and feature maps", "[plan]") {
    const NetworkPlan plan = make_network_plan(preset("b0"), 2, 224, 224);
    // torchvision efficientnet_b0: 16 MBConv blocks, all with SE, the first without expand.
    const std::map<LayerKind, int> kinds = count_kinds(plan);
    CHECK(kinds.at(LayerKind::Stem) == 1);
    CHECK(kinds.at(LayerKind::Expand) == 15);
    CHECK(kinds.at(LayerKind::Depthwise) == 16);
    CHECK(kinds.at(LayerKind::SqueezeExcite) == 16);
    CHECK(kinds.at(LayerKind::Project) == 16);
    CHECK(kinds.at(LayerKind::Head) == 1);
    CHECK(kinds.at(LayerKind::Pool) == 1);
    CHECK(kinds.at(LayerKind::Dropout) == 1);
    CHECK(kinds.at(LayerKind::Classifier) == 1);
    CHECK(plan.layers.size() == 68);

    // features[i] output shapes of torchvision's B0 for a 224 input ([C, H, W]).
    const std::vector<std::array<int, 3>> stages = {{16, 112, 112}, {24, 56, 56}, {40, 28, 28}, {80, 14, 14},
                                                    {112, 14, 14},  {192, 7, 7},  {320, 7, 7}};
    std::vector<std::array<int, 3>> got;
    for (size_t i = 0; i < plan.layers.size(); ++i) {
        const Layer& l = plan.layers[i];
        CHECK(l.out.batch == 2);
        if (plan.ends_stage(i)) got.push_back({l.out.channels, l.out.height, l.out.width});
    }
    CHECK(got == stages);
    CHECK(plan.layers[0].out.channels == 32);
    CHECK(plan.layers[0].out.height == 112);
    CHECK(plan.classifier().out.channels == 1000);
    CHECK(plan.classifier().in.channels == 1280);

    // Residual connections: stride-1 blocks whose channels do not change (9 of B0's 16), each
    // adding the previous block's output (or the stem's) to a project conv's.
    int residuals = 0;
    for (const Layer& l : plan.layers) {
        if (l.residual < 0) continue;
        ++residuals;
        CHECK(l.kind == LayerKind::Project);
        const Layer& source = plan.layers[size_t(l.residual)];
        CHECK((source.kind == LayerKind::Project || source.kind == LayerKind::Stem));
        CHECK(source.block == l.block - 1);
        CHECK(source.out.channels == l.out.channels);
        CHECK(source.out.height == l.out.height);
        CHECK(l.drop_rate == plan.config.blocks[size_t(l.block)].drop_path);
        CHECK(l.mask_stream == uint64_t(l.block));
    }
    CHECK(residuals == 9);
    // Every layer reads the one before it.
    for (size_t i = 0; i < plan.layers.size(); ++i) CHECK(plan.layers[i].input == int(i) - 1);
    // The dropout draws from the stream after the blocks', as it always did.
    CHECK(plan.layers[plan.layers.size() - 2].kind == LayerKind::Dropout);
    CHECK(plan.layers[plan.layers.size() - 2].mask_stream == 16);
    CHECK(plan.layers[plan.layers.size() - 2].drop_rate == 0.2f);
}

TEST_CASE("network plan: TF SAME padding per layer for odd and even inputs", "[plan]") {
    ModelConfig c = preset("b0");
    c.padding = Padding::TfSame;
    // Stem k3 s2. In 225: out ceil(225/2) = 113, total pad (113-1)*2 + 3 - 225 = 2 -> 1 / 1.
    // In 224: out 112, total (112-1)*2 + 3 - 224 = 1 -> 0 before, 1 after.
    const Layer odd = make_network_plan(c, 1, 225, 224).layers[0];
    CHECK(odd.out.height == 113);
    CHECK(odd.out.width == 112);
    CHECK(odd.conv.pad_top == 1);
    CHECK(odd.conv.pad_bottom == 1);
    CHECK(odd.conv.pad_left == 0);
    CHECK(odd.conv.pad_right == 1);
    // Symmetric: (k - 1) / 2 on every side whatever the size; a 5x5 depthwise pads 2.
    for (const Layer& l : make_network_plan(preset("b0"), 1, 37, 53).layers) {
        if (l.kind != LayerKind::Depthwise) continue;
        const int p = (l.conv.kernel - 1) / 2;
        CHECK(l.conv.pad_top == p);
        CHECK(l.conv.pad_bottom == p);
        CHECK(l.conv.groups == l.in.channels);
        CHECK(l.out.height == (l.in.height + 2 * p - l.conv.kernel) / l.conv.stride + 1);
    }
}

TEST_CASE("network plan: parameters are parameter_specs, once each, in network order", "[plan]") {
    for (const char* name : {"b0", "b3", "lite0"}) {
        INFO(name);
        const ModelConfig c = preset(name);
        const NetworkPlan plan = make_network_plan(c, 1, 64, 64);
        const std::vector<ParamSpec> specs = plan.parameters();
        CHECK(specs.size() == parameter_specs(c).size());
        std::set<std::string> names;
        for (const ParamSpec& s : specs) names.insert(s.name);
        CHECK(names.size() == specs.size());
        // The model.hpp naming: the first and last, and a block's in the documented order.
        CHECK(specs.front().name == "stem.conv.weight");
        CHECK(specs.back().name == "classifier.bias");
        std::vector<std::string> block1;
        for (const ParamSpec& s : specs)
            if (s.name.rfind("blocks.1.", 0) == 0 && s.name.find("running") == std::string::npos)
                block1.push_back(s.name.substr(9));
        std::vector<std::string> expected;
        if (c.blocks[1].has_expand()) expected = {"expand.conv.weight", "expand.bn.weight", "expand.bn.bias"};
        for (const char* n : {"dw.conv.weight", "dw.bn.weight", "dw.bn.bias"}) expected.push_back(n);
        if (c.blocks[1].has_se())
            for (const char* n : {"se.reduce.weight", "se.reduce.bias", "se.expand.weight", "se.expand.bias"})
                expected.push_back(n);
        for (const char* n : {"project.conv.weight", "project.bn.weight", "project.bn.bias"})
            expected.push_back(n);
        CHECK(block1 == expected);
    }
}

TEST_CASE("network plan: mask seeds are splitmix64 of the step seed and the stream", "[plan]") {
    // splitmix64's finaliser, written out again: z += gamma * (stream + 1), then mix.
    auto reference = [](uint64_t seed, uint64_t stream) {
        uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    };
    const NetworkPlan plan = make_network_plan(preset("b0"), 1, 32, 32);
    std::set<uint64_t> seeds;
    for (const Layer& l : plan.layers) {
        if (l.drop_rate <= 0.0f) continue;
        for (uint64_t step : {0ull, 1ull, 123456789ull})
            CHECK(mask_seed(step, l) == reference(step, l.mask_stream));
        seeds.insert(mask_seed(7, l));
    }
    CHECK(seeds.size() == 10); // B0's 9 residual blocks (all past block 0: drop rate > 0) and the dropout
}

TEST_CASE("network plan: bad input sizes name the problem", "[plan]") {
    const ModelConfig c = preset("b0");
    CHECK_THROWS_WITH(make_network_plan(c, 0, 224, 224),
                      Catch::Contains("batch, height and width must be >= 1"));
    CHECK_THROWS_WITH(make_network_plan(c, 1, 0, 224), Catch::Contains("got 1, 0, 224"));
    ModelConfig broken = c;
    broken.blocks[3].in_channels += 1;
    CHECK_THROWS_WITH(make_network_plan(broken, 1, 224, 224), Catch::Contains("block 3"));
    // The smallest input still gives a 1x1 map everywhere (padding keeps every output >= 1).
    const NetworkPlan tiny = make_network_plan(c, 1, 1, 1);
    for (const Layer& l : tiny.layers) CHECK(l.out.height == 1);
}
