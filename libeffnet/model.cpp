// Model: parameter specs, seeded random initialisation, parameter lookup and saving.
#include "effnet/model.hpp"

#include <cmath>
#include <cstdio>

#include "effnet/error.hpp"
#include "effnet/network_plan.hpp"
#include "effnet/safetensors.hpp"
#include "splitmix64.hpp"

namespace effnet {

namespace {

// splitmix64: a small, portable generator, so that a seed gives the same model everywhere.
struct Rng {
    uint64_t state;
    uint64_t next() { return splitmix64_next(state); }
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
    // Parameters do not depend on the input size: any size gives them, the smallest is cheapest.
    return make_network_plan(c, 1, 1, 1).parameters();
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

int64_t first_invalid_element(const std::string& name, const Tensor& t) {
    const bool variance = ends_with(name, "running_var");
    for (size_t i = 0; i < t.data.size(); ++i)
        if (!std::isfinite(t.data[i]) || (variance && t.data[i] < 0)) return int64_t(i);
    return -1;
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
    std::map<std::string, double> gain; // conv weight name -> gain
    const NetworkPlan plan = make_network_plan(config, 1, 1, 1);
    for (const Layer& l : plan.layers) {
        if (l.kind == LayerKind::SqueezeExcite) {
            gain[l.param("reduce.weight")] = act_gain;
            gain[l.param("expand.weight")] = 1.0;
        } else if (l.kind == LayerKind::Project) {
            const bool gated = plan.layers[size_t(l.input)].kind == LayerKind::SqueezeExcite;
            gain[l.param("conv.weight")] = (gated ? 2.0 : 1.0) * (l.residual >= 0 ? 0.2 : 1.2);
        } else if (l.batch_norm) {
            gain[l.param("conv.weight")] = act_gain;
        }
    }
    Model model;
    model.config = config;
    model.family = "effnet";
    Rng rng{seed};
    for (const ParamSpec& spec : plan.parameters()) {
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

void check_parameter_shapes(const Model& model) {
    for (const ParamSpec& spec : parameter_specs(model.config)) {
        const Tensor& t = model.param(spec.name);
        EFFNET_CHECK(t.shape == spec.shape && t.numel() == shape_numel(spec.shape),
                     "model parameter '" + spec.name + "' has shape " + shape_str(t.shape) +
                         ", the config needs " + shape_str(spec.shape));
    }
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
