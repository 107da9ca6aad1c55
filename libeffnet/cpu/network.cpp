// The CPU reference network: EfficientNet forward (eval and train) and backward, composed from
// the reference ops of ops.hpp by walking the network plan (effnet/network_plan.hpp), backward
// in reverse. Activations are NCHW float32.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"
#include "effnet/network_plan.hpp"
#include "host_memory.hpp"

namespace effnet::cpu {

namespace {

// What one layer saw in the forward, for its backward.
struct LayerSaved {
    Tensor x;          // input (convolutions, squeeze-excite, classifier)
    Tensor z;          // conv output = BN input
    BatchNormSaved bn; // batch statistics (train forward only)
    Tensor y;          // BN output = activation input (only when an activation follows)
    SqueezeExciteSaved se;
    std::vector<float> mask; // stochastic depth per sample / dropout per element; empty: not applied
    Shape in_shape;          // pool input
};

Conv2dParams conv2d_params(const ConvGeometry& g) {
    Conv2dParams p;
    p.stride = g.stride;
    p.groups = g.groups;
    p.pad_top = g.pad_top;
    p.pad_bottom = g.pad_bottom;
    p.pad_left = g.pad_left;
    p.pad_right = g.pad_right;
    return p;
}

// How many residual connections read each layer's output: those outputs are kept until then.
std::vector<int> residual_readers(const NetworkPlan& plan) {
    std::vector<int> readers(plan.layers.size(), 0);
    for (const Layer& l : plan.layers)
        if (l.residual >= 0) ++readers[size_t(l.residual)];
    return readers;
}

bool all_finite(const Tensor& t) {
    return std::all_of(t.data.begin(), t.data.end(), [](float v) { return std::isfinite(v); });
}

} // namespace

uint64_t forward_memory_bytes(const NetworkPlan& plan, bool train) {
    // A layer holds its input, its conv output, the BN output and the activation output at
    // once; train keeps them all for backward, eval only the widest layer's and the residuals.
    uint64_t all = 0, widest = 0, residuals = 0;
    for (const Layer& l : plan.layers) {
        const uint64_t layer = uint64_t(l.in.numel()) + 3 * uint64_t(l.out.numel());
        all += layer;
        widest = std::max(widest, layer);
        if (l.residual >= 0) residuals = std::max(residuals, uint64_t(l.out.numel()));
    }
    return sizeof(float) * (train ? all : widest + residuals);
}

void check_forward_memory(const NetworkPlan& plan, bool train) {
    const uint64_t needed = forward_memory_bytes(plan, train);
    const uint64_t available = available_host_memory();
    EFFNET_CHECK(available == 0 || needed <= available,
                 "network input [" + std::to_string(plan.batch) + ", " +
                     std::to_string(plan.config.in_channels) + ", " + std::to_string(plan.height) + ", " +
                     std::to_string(plan.width) + "]: the " + (train ? "training" : "inference") +
                     " forward needs about " + format_bytes(needed) + " of memory, and " +
                     format_bytes(available) + " is available; use a smaller batch or image size");
}

struct Network::Impl {
    Model& model;

    // The last forward, kept for backward. An eval forward keeps only its input (activations
    // of a large model at a large batch do not fit twice in memory); backward after it runs
    // the forward again with saving on, which gives the same values since eval changes nothing.
    bool have_forward = false;
    bool saved = false; // activations below are from the last forward
    bool saving = false;
    bool train = false;
    BatchNormReducer* bn_reducer = nullptr; // synchronized BN of the last train forward (its backward too)
    Tensor eval_input;
    ForwardOptions eval_options;
    NetworkPlan plan; // for the last forward's input size
    // The last forward's requested features (options.features order) and where its walk ended.
    std::vector<FeatureInfo> features;
    bool features_only = false;
    std::vector<LayerSaved> layers;

    explicit Impl(Model& m) : model(m) {}

    const ModelConfig& config() const { return model.config; }

    ForwardResult run_forward(const Tensor& input, const ForwardOptions& opt);
    Tensor layer_forward(const Layer& l, const Tensor& x, const Tensor* residual, const ForwardOptions& opt,
                         LayerSaved& s);
    // Returns the gradient of the layer's input; adds its parameters' gradients to g.
    Tensor layer_backward(const Layer& l, const Tensor& dout, const LayerSaved& s, Gradients& g);

    // conv -> BN [-> act].
    Tensor conv_bn_forward(const Layer& l, const Tensor& x, const ForwardOptions& opt, LayerSaved& s) {
        const ModelConfig& c = config();
        Tensor z = conv2d_forward(x, model.param(l.param("conv.weight")), nullptr, conv2d_params(l.conv));
        const Tensor& gamma = model.param(l.param("bn.weight"));
        const Tensor& beta = model.param(l.param("bn.bias"));
        Tensor& mean = model.param(l.param("bn.running_mean"));
        Tensor& var = model.param(l.param("bn.running_var"));
        Tensor y;
        if (opt.train) {
            const int64_t per_channel = z.dim(0) * z.dim(2) * z.dim(3);
            EFFNET_CHECK(per_channel > 1, "train-mode batch norm '" + l.param("bn") +
                                              "' needs more than one value per "
                                              "channel, got activation " +
                                              shape_str(z.shape) + " (use a larger batch or input)");
            const bool update = opt.update_running_stats;
            y = batchnorm_train_forward(z, gamma, beta, c.bn_eps, &s.bn, update ? &mean : nullptr,
                                        update ? &var : nullptr, c.bn_momentum, bn_reducer);
        } else {
            y = batchnorm_eval_forward(z, gamma, beta, mean, var, c.bn_eps);
        }
        if (saving) {
            s.x = x;
            s.z = std::move(z);
        }
        if (!l.activation) return y;
        Tensor out = activation_forward(y, *l.activation);
        if (saving) s.y = std::move(y);
        return out;
    }

    Tensor conv_bn_backward(const Layer& l, const Tensor& dout, const LayerSaved& s, Gradients& g) {
        const ModelConfig& c = config();
        const Tensor dy = l.activation ? activation_backward(s.y, dout, *l.activation) : dout;
        const Tensor& gamma = model.param(l.param("bn.weight"));
        Tensor dz, dgamma, dbeta;
        if (train) {
            batchnorm_train_backward(s.z, gamma, s.bn, dy, &dz, &dgamma, &dbeta, bn_reducer);
        } else {
            batchnorm_eval_backward(s.z, gamma, model.param(l.param("bn.running_mean")),
                                    model.param(l.param("bn.running_var")), c.bn_eps, dy, &dz, &dgamma,
                                    &dbeta);
        }
        Tensor dx, dw;
        conv2d_backward(s.x, model.param(l.param("conv.weight")), dz, conv2d_params(l.conv), &dx, &dw,
                        nullptr);
        g.params[l.param("conv.weight")] = std::move(dw);
        g.params[l.param("bn.weight")] = std::move(dgamma);
        g.params[l.param("bn.bias")] = std::move(dbeta);
        return dx;
    }
};

Network::Network(Model& model) : impl_(std::make_unique<Impl>(model)) {
    model.config.validate();
    check_parameter_shapes(model);
}

Network::~Network() = default;

ForwardResult Network::forward(const Tensor& input, const ForwardOptions& opt) {
    Impl& m = *impl_;
    const ModelConfig& c = m.config();
    EFFNET_CHECK(input.rank() == 4,
                 "network input must be NCHW (rank 4), got shape " + shape_str(input.shape));
    EFFNET_CHECK(input.dim(0) >= 1 && input.dim(2) >= 1 && input.dim(3) >= 1 &&
                     input.numel() == shape_numel(input.shape),
                 "network input " + shape_str(input.shape) + " must have batch, height and width >= 1");
    EFFNET_CHECK(input.dim(1) == c.in_channels,
                 "network input " + shape_str(input.shape) + " has " + std::to_string(input.dim(1)) +
                     " channels, the model takes " + std::to_string(c.in_channels));
    EFFNET_CHECK(input.dim(0) <= std::numeric_limits<int>::max() &&
                     input.dim(2) <= std::numeric_limits<int>::max() &&
                     input.dim(3) <= std::numeric_limits<int>::max(),
                 "network input " + shape_str(input.shape) + " is too large");
    const NetworkPlan plan = make_network_plan(c, int(input.dim(0)), int(input.dim(2)), int(input.dim(3)));
    EFFNET_CHECK(!opt.features_only || !opt.features.empty(),
                 "Network::forward: features_only needs at least one index in options.features");
    std::vector<FeatureInfo> features;
    if (!opt.features.empty()) {
        check_feature_indices(opt.features);
        const std::vector<FeatureInfo> all = feature_info(plan);
        for (int index : opt.features) features.push_back(all[size_t(index)]);
    }
    check_forward_memory(plan, opt.train);
    m.have_forward = false;
    m.train = opt.train;
    m.bn_reducer = opt.train ? opt.bn_reducer : nullptr;
    m.saving = opt.train;
    m.plan = plan;
    m.features = std::move(features);
    m.features_only = opt.features_only;
    m.eval_input = opt.train ? Tensor() : input;
    m.eval_options = opt;
    m.eval_options.record_stages = false;
    m.layers.assign(m.plan.layers.size(), LayerSaved{});
    ForwardResult result = m.run_forward(input, opt);
    m.saved = m.saving;
    m.have_forward = true;
    return result;
}

ForwardResult Network::Impl::run_forward(const Tensor& input, const ForwardOptions& opt) {
    ForwardResult result;
    std::vector<int> readers = residual_readers(plan);
    std::map<int, Tensor> kept; // outputs a later residual reads
    Tensor x = input;
    // features_only: the walk ends at the last requested feature's layer.
    const size_t end = opt.features_only ? size_t(features.back().layer) + 1 : plan.layers.size();
    result.features.resize(features.size());
    for (size_t i = 0; i < end; ++i) {
        const Layer& l = plan.layers[i];
        const Tensor* residual = l.residual >= 0 ? &kept.at(l.residual) : nullptr;
        x = layer_forward(l, x, residual, opt, layers[i]);
        if (opt.find_non_finite && result.first_non_finite.empty() && !all_finite(x))
            result.first_non_finite = l.name;
        if (residual && --readers[size_t(l.residual)] == 0) kept.erase(l.residual);
        if (readers[i] > 0) kept[int(i)] = x;
        for (size_t k = 0; k < features.size(); ++k)
            if (features[k].layer == int(i)) result.features[k] = x;
        if (!opt.record_stages) continue;
        if (l.kind == LayerKind::Stem || l.kind == LayerKind::Head || l.kind == LayerKind::Pool)
            result.stages[l.name] = x;
        if (plan.ends_stage(i)) result.stages["stage." + std::to_string(l.stage)] = x;
    }
    if (end == plan.layers.size()) result.logits = std::move(x);
    return result;
}

Tensor Network::Impl::layer_forward(const Layer& l, const Tensor& x, const Tensor* residual,
                                    const ForwardOptions& opt, LayerSaved& s) {
    const bool masks = opt.train && opt.dropout && l.drop_rate > 0.0f;
    switch (l.kind) {
    case LayerKind::Stem:
    case LayerKind::Expand:
    case LayerKind::Depthwise:
    case LayerKind::Head:
        return conv_bn_forward(l, x, opt, s);
    case LayerKind::Project: {
        Tensor h = conv_bn_forward(l, x, opt, s);
        if (!residual) return h;
        s.mask.clear();
        if (masks) h = stochastic_depth_forward(h, l.drop_rate, mask_seed(opt.seed, l), &s.mask);
        return add(h, *residual);
    }
    case LayerKind::SqueezeExcite: {
        Tensor out = squeeze_excite_forward(
            x, model.param(l.param("reduce.weight")), model.param(l.param("reduce.bias")),
            model.param(l.param("expand.weight")), model.param(l.param("expand.bias")), *l.activation,
            saving ? &s.se : nullptr);
        if (saving) s.x = x;
        return out;
    }
    case LayerKind::Pool:
        s.in_shape = x.shape;
        return global_avg_pool_forward(x); // [N, C]
    case LayerKind::Dropout:
        s.mask.clear();
        return masks ? dropout_forward(x, l.drop_rate, mask_seed(opt.seed, l), &s.mask) : x;
    case LayerKind::Classifier:
        s.x = x; // kept after an eval forward too: it is small
        return linear_forward(x, model.param(l.param("weight")), &model.param(l.param("bias")));
    }
    throw Error("cpu::Network: unknown layer kind of " + l.name);
}

Gradients Network::backward(const Tensor& dlogits) {
    return backward(dlogits, {});
}

Gradients Network::backward(const Tensor& dlogits, const std::vector<Tensor>& dfeatures) {
    Impl& m = *impl_;
    const ModelConfig& c = m.config();
    EFFNET_CHECK(m.have_forward, "Network::backward called without a forward before it");
    const bool from_logits = !dlogits.empty() || dlogits.rank() > 0;
    EFFNET_CHECK(!(from_logits && m.features_only),
                 "Network::backward: the last forward was features_only (no logits), so dlogits must be an "
                 "empty Tensor");
    if (from_logits) {
        const Shape expected = {int64_t(m.plan.batch), c.num_classes};
        EFFNET_CHECK(dlogits.shape == expected && dlogits.numel() == shape_numel(expected),
                     "Network::backward: dlogits has shape " + shape_str(dlogits.shape) + ", expected " +
                         shape_str(expected));
    }
    EFFNET_CHECK(dfeatures.empty() || dfeatures.size() == m.features.size(),
                 "Network::backward: " + std::to_string(dfeatures.size()) +
                     " feature gradients for a forward that returned " + std::to_string(m.features.size()) +
                     " features");
    // The walk starts at the classifier, or without dlogits at the last feature with a gradient.
    int start = from_logits ? int(m.plan.layers.size()) - 1 : -1;
    std::map<int, Tensor> feature_grads; // layer -> gradient entering at its output
    for (size_t k = 0; k < dfeatures.size(); ++k) {
        const Tensor& df = dfeatures[k];
        if (df.empty() && df.rank() == 0) continue;
        const FeatureShape& fs = m.features[k].shape;
        const Shape expected = {fs.batch, fs.channels, fs.height, fs.width};
        EFFNET_CHECK(df.shape == expected && df.numel() == shape_numel(expected),
                     "Network::backward: gradient of feature " + std::to_string(m.features[k].index) + " (" +
                         m.features[k].name + ") has shape " + shape_str(df.shape) + ", expected " +
                         shape_str(expected));
        feature_grads.emplace(m.features[k].layer, df);
        start = std::max(start, m.features[k].layer);
    }
    EFFNET_CHECK(start >= 0, "Network::backward: no gradient given (dlogits and every feature gradient are "
                             "empty)");
    if (!m.saved) { // after an eval forward: run it again, keeping what backward needs
        m.saving = true;
        m.run_forward(m.eval_input, m.eval_options);
        m.saved = true;
    }
    Gradients g;
    std::map<int, Tensor> residual_grads; // gradient reaching a layer's output through a residual
    Tensor d = dlogits; // empty until the walk reaches the first feature gradient without dlogits
    for (int i = start; i >= 0; --i) {
        const auto feature = feature_grads.find(i);
        if (feature != feature_grads.end()) d = d.empty() ? feature->second : add(d, feature->second);
        const auto skip = residual_grads.find(i);
        if (skip != residual_grads.end()) {
            d = add(d, skip->second);
            residual_grads.erase(skip);
        }
        const Layer& l = m.plan.layers[size_t(i)];
        if (l.residual >= 0) { // d also reaches the residual's source
            const auto [it, first] = residual_grads.emplace(l.residual, d);
            if (!first) it->second = add(it->second, d);
        }
        d = m.layer_backward(l, d, m.layers[size_t(i)], g);
    }
    g.input = std::move(d);
    return g;
}

Tensor Network::Impl::layer_backward(const Layer& l, const Tensor& dout, const LayerSaved& s, Gradients& g) {
    switch (l.kind) {
    case LayerKind::Stem:
    case LayerKind::Expand:
    case LayerKind::Depthwise:
    case LayerKind::Head:
        return conv_bn_backward(l, dout, s, g);
    case LayerKind::Project:
        return conv_bn_backward(l, s.mask.empty() ? dout : stochastic_depth_backward(dout, s.mask), s, g);
    case LayerKind::SqueezeExcite: {
        Tensor dx, dw1, db1, dw2, db2;
        squeeze_excite_backward(s.x, model.param(l.param("reduce.weight")),
                                model.param(l.param("expand.weight")), *l.activation, s.se, dout, &dx, &dw1,
                                &db1, &dw2, &db2);
        g.params[l.param("reduce.weight")] = std::move(dw1);
        g.params[l.param("reduce.bias")] = std::move(db1);
        g.params[l.param("expand.weight")] = std::move(dw2);
        g.params[l.param("expand.bias")] = std::move(db2);
        return dx;
    }
    case LayerKind::Pool:
        return global_avg_pool_backward(s.in_shape, dout);
    case LayerKind::Dropout:
        return s.mask.empty() ? dout : dropout_backward(dout, s.mask);
    case LayerKind::Classifier: {
        Tensor dx, dw, db;
        linear_backward(s.x, model.param(l.param("weight")), dout, &dx, &dw, &db);
        g.params[l.param("weight")] = std::move(dw);
        g.params[l.param("bias")] = std::move(db);
        return dx;
    }
    }
    throw Error("cpu::Network: unknown layer kind of " + l.name);
}

} // namespace effnet::cpu
