#include "effnet/config.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "effnet/error.hpp"
#include "effnet/model.hpp"

namespace effnet {

namespace {

// The EfficientNet-B0 stage table: expand ratio, kernel, stride, in, out, repeats.
struct StageSpec {
    int expand, kernel, stride, in, out, repeats;
};
constexpr StageSpec kB0Stages[7] = {
    {1, 3, 1, 32, 16, 1},  {6, 3, 2, 16, 24, 2},   {6, 5, 2, 24, 40, 2},   {6, 3, 2, 40, 80, 3},
    {6, 5, 1, 80, 112, 3}, {6, 5, 2, 112, 192, 4}, {6, 3, 1, 192, 320, 1},
};

struct PresetSpec {
    const char* name;
    double width, depth;
    int resolution;
    float dropout;
    bool lite;
    int resize; // preprocessing: shorter side, then center crop to `resolution`
};
constexpr PresetSpec kPresets[] = {
    // torchvision IMAGENET1K weights' transforms (bicubic).
    {"b0", 1.0, 1.0, 224, 0.2f, false, 256},
    {"b1", 1.0, 1.1, 240, 0.2f, false, 256},
    {"b2", 1.1, 1.2, 288, 0.3f, false, 288},
    {"b3", 1.2, 1.4, 300, 0.3f, false, 320},
    {"b4", 1.4, 1.8, 380, 0.4f, false, 384},
    {"b5", 1.6, 2.2, 456, 0.4f, false, 456},
    {"b6", 1.8, 2.6, 528, 0.5f, false, 528},
    {"b7", 2.0, 3.1, 600, 0.5f, false, 600},
    // TF EfficientNet-Lite (timm's crop fractions 0.882/0.882/0.890/0.904/0.920).
    {"lite0", 1.0, 1.0, 224, 0.2f, true, 253},
    {"lite1", 1.0, 1.1, 240, 0.2f, true, 272},
    {"lite2", 1.1, 1.2, 260, 0.3f, true, 292},
    {"lite3", 1.2, 1.4, 300, 0.3f, true, 331},
    {"lite4", 1.4, 1.8, 380, 0.3f, true, 413},
};

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
}

struct BuildOptions {
    double width, depth;
    bool lite; // fixed stem/head, first and last stage depth unscaled, no SE
    bool squeeze_excite;
};

// Fills stem/head/blocks with torchvision's scaling rules (and the Lite exceptions).
void build_blocks(ModelConfig& c, const BuildOptions& o) {
    c.stem_channels = o.lite ? 32 : round_channels(32, o.width);
    c.blocks.clear();
    int in = c.stem_channels;
    for (int s = 0; s < 7; ++s) {
        const StageSpec& st = kB0Stages[s];
        const bool fixed_depth = o.lite && (s == 0 || s == 6);
        const int repeats = fixed_depth ? st.repeats : int(std::ceil(st.repeats * o.depth));
        const int out = round_channels(st.out, o.width);
        for (int r = 0; r < repeats; ++r) {
            BlockConfig b;
            b.in_channels = in;
            // torchvision computes expanded channels from the (rounded) input channels.
            b.expand_channels = round_channels(in * st.expand, 1.0);
            b.out_channels = out;
            b.kernel = st.kernel;
            b.stride = r == 0 ? st.stride : 1;
            b.se_channels = o.squeeze_excite ? std::max(1, in / 4) : 0;
            b.stage = s;
            b.index_in_stage = r;
            c.blocks.push_back(b);
            in = out;
        }
    }
    c.head_channels = o.lite ? 1280 : 4 * round_channels(320, o.width);
    const int total = int(c.blocks.size());
    for (int i = 0; i < total; ++i) c.blocks[i].drop_path = c.stochastic_depth * float(i) / total;
}

} // namespace

const char* activation_name(Activation a) {
    return a == Activation::SiLU ? "silu" : "relu6";
}
const char* padding_name(Padding p) {
    return p == Padding::Symmetric ? "symmetric" : "tf_same";
}

Activation parse_activation(const std::string& s) {
    const std::string l = lower(s);
    if (l == "silu" || l == "swish") return Activation::SiLU;
    if (l == "relu6") return Activation::ReLU6;
    throw Error("unknown activation '" + s + "' (expected silu or relu6)");
}

Padding parse_padding(const std::string& s) {
    const std::string l = lower(s);
    if (l == "symmetric") return Padding::Symmetric;
    if (l == "tf_same" || l == "same") return Padding::TfSame;
    throw Error("unknown padding '" + s + "' (expected symmetric or tf_same)");
}

int round_channels(double channels, double width, int divisor) {
    const double v = channels * width;
    int r = std::max(divisor, int(v + divisor / 2.0) / divisor * divisor);
    if (r < 0.9 * v) r += divisor;
    return r;
}

void conv_padding(int in, int kernel, int stride, Padding padding, int& before, int& after) {
    if (padding == Padding::Symmetric) {
        before = after = (kernel - 1) / 2;
        return;
    }
    const int out = (in + stride - 1) / stride;
    const int total = std::max((out - 1) * stride + kernel - in, 0);
    before = total / 2;
    after = total - before;
}

int conv_output_size(int in, int kernel, int stride, Padding padding) {
    int before, after;
    conv_padding(in, kernel, stride, padding, before, after);
    return (in + before + after - kernel) / stride + 1;
}

std::vector<std::string> preset_names() {
    std::vector<std::string> names;
    for (const PresetSpec& p : kPresets) names.push_back(p.name);
    return names;
}

ModelConfig preset(const std::string& name, int num_classes) {
    std::string n = lower(name);
    for (const char* prefix : {"efficientnet_", "efficientnet-", "tf_efficientnet_"})
        if (n.rfind(prefix, 0) == 0) n = n.substr(std::string(prefix).size());
    for (const PresetSpec& p : kPresets) {
        if (n != p.name) continue;
        EFFNET_CHECK(num_classes > 0, "num_classes must be positive, got " + std::to_string(num_classes));
        ModelConfig c;
        c.name = p.name;
        c.num_classes = num_classes;
        c.resolution = p.resolution;
        c.dropout = p.dropout;
        c.stochastic_depth = 0.2f;
        const bool tf_ported = p.lite || n == "b5" || n == "b6" || n == "b7";
        c.bn_eps = tf_ported ? 1e-3f : 1e-5f;
        c.bn_momentum = (!p.lite && tf_ported) ? 0.01f : 0.1f;
        if (p.lite) {
            c.activation = Activation::ReLU6;
            c.padding = Padding::TfSame;
            c.preprocess.interpolation = "bicubic";
            for (int i = 0; i < 3; ++i) c.preprocess.mean[i] = c.preprocess.std[i] = 0.5f;
        } else {
            c.preprocess.interpolation = "bicubic";
        }
        c.preprocess.crop = p.resolution;
        c.preprocess.resize = p.resize;
        build_blocks(c, {p.width, p.depth, p.lite, !p.lite});
        c.validate();
        return c;
    }
    std::string known;
    for (const PresetSpec& p : kPresets) known += std::string(known.empty() ? "" : ", ") + p.name;
    throw Error("unknown preset '" + name + "' (known: " + known + ")");
}

ModelConfig custom_config(const CustomOptions& o) {
    EFFNET_CHECK(o.width > 0 && o.width <= 16,
                 "custom width must be in (0, 16], got " + std::to_string(o.width));
    EFFNET_CHECK(o.depth > 0 && o.depth <= 16,
                 "custom depth must be in (0, 16], got " + std::to_string(o.depth));
    EFFNET_CHECK(o.num_classes > 0, "num_classes must be positive");
    EFFNET_CHECK(o.resolution >= 8, "resolution must be at least 8");
    ModelConfig c;
    c.name = "custom";
    c.num_classes = o.num_classes;
    c.padding = o.padding;
    c.activation = o.activation;
    c.bn_eps = o.bn_eps;
    c.resolution = o.resolution;
    c.preprocess.crop = o.resolution;
    c.preprocess.resize = int(o.resolution * 256.0 / 224.0);
    build_blocks(c, {o.width, o.depth, false, o.squeeze_excite});
    c.validate();
    return c;
}

void ModelConfig::validate() const {
    EFFNET_CHECK(in_channels > 0 && stem_channels > 0 && head_channels > 0 && num_classes > 0,
                 "config '" + name + "': channel counts and num_classes must be positive");
    EFFNET_CHECK(!blocks.empty(), "config '" + name + "' has no blocks");
    EFFNET_CHECK(bn_eps > 0, "config '" + name + "': bn_eps must be positive");
    int in = stem_channels;
    for (size_t i = 0; i < blocks.size(); ++i) {
        const BlockConfig& b = blocks[i];
        const std::string where = "config '" + name + "' block " + std::to_string(i) + ": ";
        EFFNET_CHECK(b.in_channels == in, where + "in_channels " + std::to_string(b.in_channels) +
                                              " does not match previous output " + std::to_string(in));
        EFFNET_CHECK(b.expand_channels > 0 && b.out_channels > 0, where + "channels must be positive");
        EFFNET_CHECK(b.kernel == 3 || b.kernel == 5, where + "kernel must be 3 or 5");
        EFFNET_CHECK(b.stride == 1 || b.stride == 2, where + "stride must be 1 or 2");
        EFFNET_CHECK(b.se_channels >= 0, where + "se_channels must be >= 0");
        EFFNET_CHECK(i == 0 || b.stage >= blocks[i - 1].stage, where + "stages must not decrease");
        in = b.out_channels;
    }
}

int64_t parameter_count(const ModelConfig& c) {
    int64_t n = 0;
    for (const ParamSpec& spec : parameter_specs(c))
        if (spec.trainable) n += shape_numel(spec.shape);
    return n;
}

} // namespace effnet
