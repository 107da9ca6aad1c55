// Presets and custom configs: parameter counts against torchvision's models, per-preset
// settings, TF "SAME" padding arithmetic, and the errors for bad names and options.
#include <catch2/catch.hpp>

#include <string>

#include "effnet/config.hpp"
#include "effnet/error.hpp"
#include "effnet/model.hpp"

using namespace effnet;

namespace {

// Trainable parameters counted from the block list alone, written independently of the
// network plan that parameter_count walks: conv + BN (weight, bias) per unit, SE's two 1x1
// convs with biases, the classifier.
int64_t count_from_blocks(const ModelConfig& c) {
    auto conv_bn = [](int64_t weights, int64_t channels) { return weights + 2 * channels; };
    int64_t n = conv_bn(int64_t(c.stem_channels) * c.in_channels * 9, c.stem_channels);
    for (const BlockConfig& b : c.blocks) {
        const int64_t e = b.expand_channels, s = b.se_channels;
        if (b.has_expand()) n += conv_bn(e * b.in_channels, e);
        n += conv_bn(e * b.kernel * b.kernel, e);
        if (b.has_se()) n += s * e + s + e * s + e;
        n += conv_bn(int64_t(b.out_channels) * e, b.out_channels);
    }
    n += conv_bn(int64_t(c.head_channels) * c.blocks.back().out_channels, c.head_channels);
    return n + int64_t(c.num_classes) * c.head_channels + c.num_classes;
}

std::vector<int> stage_repeats(const ModelConfig& c) {
    std::vector<int> r(c.num_stages(), 0);
    for (const BlockConfig& b : c.blocks) ++r[b.stage];
    return r;
}

} // namespace

TEST_CASE("config: parameter counts equal torchvision's", "[config]") {
    // sum(p.numel() for p in torchvision.models.efficientnet_bN().parameters())
    const std::pair<const char*, int64_t> expected[] = {
        {"b0", 5288548},  {"b1", 7794184},  {"b2", 9109994},  {"b3", 12233232},   {"b4", 19341616},
        {"b5", 30389784}, {"b6", 43040704}, {"b7", 66347960}, {"lite0", 4652008}, // timm
                                                                                  // tf_efficientnet_lite0
    };
    for (const auto& [name, count] : expected) {
        INFO(name);
        const ModelConfig c = preset(name);
        CHECK(parameter_count(c) == count);
        CHECK(count_from_blocks(c) == count);
    }
}

TEST_CASE("config: per-preset resolution, BN eps, momentum, dropout", "[config]") {
    struct Row {
        const char* name;
        int resolution;
        float eps, momentum, dropout;
    };
    const Row rows[] = {
        {"b0", 224, 1e-5f, 0.1f, 0.2f},    {"b1", 240, 1e-5f, 0.1f, 0.2f},
        {"b2", 288, 1e-5f, 0.1f, 0.3f},    {"b3", 300, 1e-5f, 0.1f, 0.3f},
        {"b4", 380, 1e-5f, 0.1f, 0.4f},    {"b5", 456, 1e-3f, 0.01f, 0.4f},
        {"b6", 528, 1e-3f, 0.01f, 0.5f},   {"b7", 600, 1e-3f, 0.01f, 0.5f},
        {"lite0", 224, 1e-3f, 0.1f, 0.2f}, {"lite1", 240, 1e-3f, 0.1f, 0.2f},
        {"lite2", 260, 1e-3f, 0.1f, 0.3f}, {"lite3", 300, 1e-3f, 0.1f, 0.3f},
        {"lite4", 380, 1e-3f, 0.1f, 0.3f},
    };
    for (const Row& r : rows) {
        INFO(r.name);
        const ModelConfig c = preset(r.name);
        CHECK(c.name == r.name);
        CHECK(c.resolution == r.resolution);
        CHECK(c.preprocess.crop == r.resolution);
        CHECK(c.bn_eps == r.eps);
        CHECK(c.bn_momentum == r.momentum);
        CHECK(c.dropout == r.dropout);
        CHECK(c.num_stages() == 7);
        const bool lite = std::string(r.name).rfind("lite", 0) == 0;
        CHECK(c.activation == (lite ? Activation::ReLU6 : Activation::SiLU));
        CHECK(c.padding == (lite ? Padding::TfSame : Padding::Symmetric));
        for (const BlockConfig& b : c.blocks) CHECK(b.has_se() == !lite);
        if (lite) {
            CHECK(c.stem_channels == 32);
            CHECK(c.head_channels == 1280);
        }
    }
}

TEST_CASE("config: B0 block table", "[config]") {
    const ModelConfig c = preset("b0");
    REQUIRE(c.blocks.size() == 16);
    CHECK(stage_repeats(c) == std::vector<int>{1, 2, 2, 3, 3, 4, 1});
    const int stride[7] = {1, 2, 2, 2, 1, 2, 1}, kernel[7] = {3, 3, 5, 3, 5, 5, 3},
              out[7] = {16, 24, 40, 80, 112, 192, 320};
    for (const BlockConfig& b : c.blocks) {
        INFO("stage " << b.stage << " block " << b.index_in_stage);
        CHECK(b.stride == (b.index_in_stage == 0 ? stride[b.stage] : 1));
        CHECK(b.kernel == kernel[b.stage]);
        CHECK(b.out_channels == out[b.stage]);
        CHECK(b.expand_channels == (b.stage == 0 ? b.in_channels : 6 * b.in_channels));
        CHECK(b.se_channels == std::max(1, b.in_channels / 4));
    }
    CHECK(c.stem_channels == 32);
    CHECK(c.head_channels == 1280);
    // B7: width 2.0 -> stem 64, head 2560; depth 3.1 -> 55 blocks.
    const ModelConfig b7 = preset("b7");
    CHECK(b7.stem_channels == 64);
    CHECK(b7.head_channels == 2560);
    CHECK(b7.blocks.size() == 55);
    // Lite keeps the first and last stage at one block: lite4 (depth 1.8) has 1 and 1.
    const std::vector<int> lite4 = stage_repeats(preset("lite4"));
    CHECK(lite4.front() == 1);
    CHECK(lite4.back() == 1);
    CHECK(lite4 == std::vector<int>{1, 4, 4, 6, 6, 8, 1});
}

TEST_CASE("config: preset names accept prefixes and case, reject unknown ones", "[config]") {
    CHECK(preset("efficientnet_b3").name == "b3");
    CHECK(preset("EfficientNet-B3").name == "b3");
    CHECK(preset("LITE2").name == "lite2");
    CHECK(preset("b0", 10).num_classes == 10);
    for (const char* bad : {"b8", "lite5", "", "resnet50", "b0 "}) {
        INFO("'" << bad << "'");
        CHECK_THROWS_AS(preset(bad), Error);
        CHECK_THROWS_WITH(preset(bad), Catch::Contains("unknown preset") && Catch::Contains("b0"));
    }
    CHECK_THROWS_AS(preset("b0", 0), Error);
    CHECK(preset_names().size() == 13);
}

TEST_CASE("config: TF SAME padding sizes", "[config]") {
    struct Row {
        int in, kernel, stride, before, after, out;
    };
    // total = max((ceil(in/s) - 1) * s + k - in, 0), before = total / 2.
    const Row rows[] = {
        {224, 3, 2, 0, 1, 112}, {225, 3, 2, 1, 1, 113}, {64, 5, 2, 1, 2, 32},
        {65, 5, 2, 2, 2, 33},   {7, 3, 1, 1, 1, 7},     {1, 5, 1, 2, 2, 1},
        {1, 3, 2, 1, 1, 1},     {2, 3, 2, 0, 1, 1},     {112, 5, 1, 2, 2, 112},
    };
    for (const Row& r : rows) {
        INFO("in " << r.in << " k " << r.kernel << " s " << r.stride);
        int before = -1, after = -1;
        conv_padding(r.in, r.kernel, r.stride, Padding::TfSame, before, after);
        CHECK(before == r.before);
        CHECK(after == r.after);
        CHECK(conv_output_size(r.in, r.kernel, r.stride, Padding::TfSame) == r.out);
    }
    // Symmetric: (k-1)/2 each side; a 65-wide input with stride 2 gives 33 either way.
    int before = -1, after = -1;
    conv_padding(64, 5, 2, Padding::Symmetric, before, after);
    CHECK(before == 2);
    CHECK(after == 2);
    CHECK(conv_output_size(224, 3, 2, Padding::Symmetric) == 112);
    CHECK(conv_output_size(65, 3, 2, Padding::Symmetric) == 33);
}

TEST_CASE("config: custom configs", "[config]") {
    CustomOptions o;
    // Width 1, depth 1 is B0's architecture.
    const ModelConfig b0 = custom_config(o);
    CHECK(b0.name == "custom");
    CHECK(parameter_count(b0) == 5288548);

    // The golden fixtures' tiny model: width 0.25, depth 0.34, 10 classes.
    o.width = 0.25;
    o.depth = 0.34;
    o.num_classes = 10;
    const ModelConfig tiny = custom_config(o);
    CHECK(tiny.stem_channels == 8);
    CHECK(tiny.head_channels == 320);
    CHECK(stage_repeats(tiny) == std::vector<int>{1, 1, 1, 2, 2, 2, 1});
    CHECK(parameter_count(tiny) == count_from_blocks(tiny));

    // No squeeze-excite, TF padding, ReLU6: the options land in the config.
    o.squeeze_excite = false;
    o.padding = Padding::TfSame;
    o.activation = Activation::ReLU6;
    o.bn_eps = 1e-3f;
    const ModelConfig plain = custom_config(o);
    for (const BlockConfig& b : plain.blocks) CHECK_FALSE(b.has_se());
    CHECK(plain.padding == Padding::TfSame);
    CHECK(plain.activation == Activation::ReLU6);
    CHECK(plain.bn_eps == 1e-3f);
    CHECK(parameter_count(plain) == count_from_blocks(plain));
    CHECK(parameter_count(plain) < parameter_count(tiny));

    // Stochastic depth grows linearly with the block index.
    const ModelConfig c = preset("b0");
    CHECK(c.blocks[0].drop_path == 0.0f);
    CHECK(c.blocks[8].drop_path == Approx(0.2 * 8 / 16));

    CustomOptions bad;
    bad.width = 0;
    CHECK_THROWS_AS(custom_config(bad), Error);
    bad = CustomOptions{};
    bad.depth = -1;
    CHECK_THROWS_AS(custom_config(bad), Error);
    bad = CustomOptions{};
    bad.num_classes = 0;
    CHECK_THROWS_AS(custom_config(bad), Error);
}

TEST_CASE("config: validate names the broken block", "[config]") {
    ModelConfig c = preset("b0");
    c.blocks[3].in_channels += 1;
    CHECK_THROWS_WITH(c.validate(), Catch::Contains("block 3"));
    c = preset("b0");
    c.blocks[5].kernel = 4;
    CHECK_THROWS_WITH(c.validate(), Catch::Contains("block 5"));
    CHECK_THROWS_AS(parse_padding("valid"), Error);
    CHECK_THROWS_AS(parse_activation("gelu"), Error);
    CHECK(parse_padding("same") == Padding::TfSame);
    CHECK(parse_activation("swish") == Activation::SiLU);
}

TEST_CASE("config: parameter_specs names and order", "[config]") {
    const ModelConfig c = preset("b0", 10);
    const std::vector<ParamSpec> specs = parameter_specs(c);
    REQUIRE(!specs.empty());
    CHECK(specs.front().name == "stem.conv.weight");
    CHECK(specs.front().shape == Shape{32, 3, 3, 3});
    CHECK(specs.back().name == "classifier.bias");
    CHECK(specs.back().shape == Shape{10});
    int buffers = 0;
    bool has_block0_expand = false;
    for (const ParamSpec& s : specs) {
        if (!s.trainable) {
            ++buffers;
            CHECK((s.name.find("running_mean") != std::string::npos ||
                   s.name.find("running_var") != std::string::npos));
        }
        has_block0_expand = has_block0_expand || s.name.rfind("blocks.0.expand", 0) == 0;
        if (s.name == "blocks.1.dw.conv.weight") CHECK(s.shape == Shape{96, 1, 3, 3});
        if (s.name == "blocks.1.se.reduce.weight") CHECK(s.shape == Shape{4, 96, 1, 1});
    }
    CHECK_FALSE(has_block0_expand); // expand ratio 1: no expand convolution
    // One BN after the stem, each conv of each block and the head; two buffers each.
    int convs = 2;
    for (const BlockConfig& b : c.blocks) convs += b.has_expand() ? 3 : 2;
    CHECK(buffers == 2 * convs);
}
