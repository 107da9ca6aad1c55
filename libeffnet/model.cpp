// Model: parameter specs, seeded random initialisation, parameter lookup and saving.
#include "effnet/model.hpp"

#include <cmath>
#include <cstdio>

#include "effnet/error.hpp"
#include "effnet/safetensors.hpp"

namespace effnet {

namespace {

void add_conv_bn(std::vector<ParamSpec>& specs, const std::string& prefix, Shape conv_shape) {
    const int64_t channels = conv_shape[0];
    specs.push_back({prefix + ".conv.weight", std::move(conv_shape), true});
    specs.push_back({prefix + ".bn.weight", {channels}, true});
    specs.push_back({prefix + ".bn.bias", {channels}, true});
    specs.push_back({prefix + ".bn.running_mean", {channels}, false});
    specs.push_back({prefix + ".bn.running_var", {channels}, false});
}

// splitmix64: a small, portable generator, so that a seed gives the same model everywhere.
struct Rng {
    uint64_t state;
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return double((next() >> 11) + 1) / 9007199254740993.0; } // (0, 1]
    bool has_spare = false;
    double spare = 0;
    double normal() { // Box-Muller: two normals per pair of uniforms
        if (has_spare) {
            has_spare = false;
            return spare;
        }
        const double r = std::sqrt(-2.0 * std::log(uniform())), angle = 6.283185307179586 * uniform();
        spare = r * std::sin(angle);
        has_spare = true;
        return r * std::cos(angle);
    }
};

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string format_float(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v); // 9 significant digits round-trip a float exactly
    return buf;
}

std::string join_ints(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s;
}

} // namespace

std::vector<ParamSpec> parameter_specs(const ModelConfig& c) {
    std::vector<ParamSpec> specs;
    add_conv_bn(specs, "stem", {c.stem_channels, c.in_channels, 3, 3});
    for (size_t i = 0; i < c.blocks.size(); ++i) {
        const BlockConfig& b = c.blocks[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        if (b.has_expand()) add_conv_bn(specs, p + "expand", {b.expand_channels, b.in_channels, 1, 1});
        add_conv_bn(specs, p + "dw", {b.expand_channels, 1, b.kernel, b.kernel});
        if (b.has_se()) {
            specs.push_back({p + "se.reduce.weight", {b.se_channels, b.expand_channels, 1, 1}, true});
            specs.push_back({p + "se.reduce.bias", {b.se_channels}, true});
            specs.push_back({p + "se.expand.weight", {b.expand_channels, b.se_channels, 1, 1}, true});
            specs.push_back({p + "se.expand.bias", {b.expand_channels}, true});
        }
        add_conv_bn(specs, p + "project", {b.out_channels, b.expand_channels, 1, 1});
    }
    const int last = c.blocks.empty() ? c.stem_channels : c.blocks.back().out_channels;
    add_conv_bn(specs, "head", {c.head_channels, last, 1, 1});
    specs.push_back({"classifier.weight", {c.num_classes, c.head_channels}, true});
    specs.push_back({"classifier.bias", {c.num_classes}, true});
    return specs;
}

const Tensor& Model::param(const std::string& name) const {
    auto it = params.find(name);
    EFFNET_CHECK(it != params.end(), "model has no parameter '" + name + "'");
    return it->second;
}

Tensor& Model::param(const std::string& name) {
    auto it = params.find(name);
    EFFNET_CHECK(it != params.end(), "model has no parameter '" + name + "'");
    return it->second;
}

Model random_model(const ModelConfig& config, uint64_t seed) {
    config.validate();
    // Gains on Kaiming-normal (fan_in) weights, std = gain / sqrt(fan_in), so that eval mode
    // with running statistics 0 / 1 keeps activations O(1) through any depth, as in a trained
    // model (torchvision's fan_out init makes them vanish ~4x per block without train-mode BN,
    // down to ~1e-13 logits, useless for comparing engines). A conv followed by the activation
    // gets the gain that keeps E[act(z)^2] = 1 for z ~ N(0, 1); the project conv makes up for
    // the squeeze-excite gate (~0.5); residual branches are damped so that B7's 48 residual
    // sums do not grow without bound. Measured over B0..B7 / Lite and seeds: logits RMS ~0.02-2.
    const double act_gain = config.activation == Activation::SiLU ? 1.558 : 1.413;
    std::map<std::string, double> gain;
    gain["stem.conv.weight"] = act_gain;
    gain["head.conv.weight"] = act_gain;
    for (size_t i = 0; i < config.blocks.size(); ++i) {
        const BlockConfig& b = config.blocks[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        gain[p + "expand.conv.weight"] = act_gain;
        gain[p + "dw.conv.weight"] = act_gain;
        gain[p + "se.reduce.weight"] = act_gain;
        gain[p + "se.expand.weight"] = 1.0;
        gain[p + "project.conv.weight"] = (b.has_se() ? 2.0 : 1.0) * (b.has_residual() ? 0.2 : 1.2);
    }
    Model model;
    model.config = config;
    model.family = "effnet";
    Rng rng{seed};
    for (const ParamSpec& spec : parameter_specs(config)) {
        Tensor t(spec.shape);
        if (spec.shape.size() == 4) { // conv weight [O, I/groups, kh, kw]
            const double fan_in = double(spec.shape[1] * spec.shape[2] * spec.shape[3]);
            const double std = gain.at(spec.name) / std::sqrt(fan_in);
            for (float& v : t.data) v = float(std * rng.normal());
        } else if (spec.name == "classifier.weight") {
            const double std = 1.0 / std::sqrt(double(config.head_channels)); // logits ~ pooled features
            for (float& v : t.data) v = float(std * rng.normal());
        } else if (ends_with(spec.name, ".bn.weight") || ends_with(spec.name, ".running_var")) {
            for (float& v : t.data) v = 1.0f;
        }
        // BN bias, running mean, SE biases and the classifier bias start at zero.
        model.params.emplace(spec.name, std::move(t));
        model.source_names[spec.name] = spec.name;
    }
    return model;
}

void save_weights(const Model& model, const std::string& path) {
    const ModelConfig& c = model.config;
    c.validate();
    SafetensorsWriter writer;
    for (const ParamSpec& spec : parameter_specs(c)) {
        const Tensor& t = model.param(spec.name);
        EFFNET_CHECK(t.shape == spec.shape, "save_weights: parameter '" + spec.name + "' has shape " +
                                                shape_str(t.shape) + ", the config needs " +
                                                shape_str(spec.shape));
        writer.add(spec.name, t);
    }
    // Extra metadata of the source file first; what describes this model overrides it.
    for (const auto& kv : model.metadata) writer.set_metadata(kv.first, kv.second);
    writer.set_metadata("format", "pt");
    writer.set_metadata("effnet.family", "effnet");
    writer.set_metadata("preset", c.name);
    writer.set_metadata("padding", padding_name(c.padding));
    writer.set_metadata("bn_eps", format_float(c.bn_eps));
    writer.set_metadata("activation", activation_name(c.activation));
    writer.set_metadata("bn_momentum", format_float(c.bn_momentum));
    writer.set_metadata("dropout", format_float(c.dropout));
    writer.set_metadata("stochastic_depth", format_float(c.stochastic_depth));
    writer.set_metadata("resolution", std::to_string(c.resolution));
    std::vector<int> stages, strides;
    for (const BlockConfig& b : c.blocks) {
        stages.push_back(b.stage);
        strides.push_back(b.stride);
    }
    writer.set_metadata("effnet.block_stages", join_ints(stages));
    writer.set_metadata("effnet.block_strides", join_ints(strides));
    const Preprocess& p = c.preprocess;
    writer.set_metadata("preprocess.resize", std::to_string(p.resize));
    writer.set_metadata("preprocess.crop", std::to_string(p.crop));
    writer.set_metadata("preprocess.interpolation", p.interpolation);
    writer.set_metadata("preprocess.mean", format_float(p.mean[0]) + "," + format_float(p.mean[1]) + "," +
                                               format_float(p.mean[2]));
    writer.set_metadata("preprocess.std",
                        format_float(p.std[0]) + "," + format_float(p.std[1]) + "," + format_float(p.std[2]));
    writer.write(path);
}

} // namespace effnet
