// The CPU reference network: EfficientNet forward (eval and train) and backward, composed from
// the reference ops of ops.hpp. Activations are NCHW float32.
//
//   stem:  conv 3x3 s2 -> BN -> act
//   block: [expand 1x1 -> BN -> act] -> depthwise kxk -> BN -> act -> [squeeze-excite]
//          -> project 1x1 -> BN -> [stochastic depth -> + input]   (residual: stride 1, in == out)
//   head:  conv 1x1 -> BN -> act -> global average pool -> dropout -> linear
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"

namespace effnet::cpu {

namespace {

// What one conv -> BN [-> act] unit saw in the forward, for its backward.
struct ConvBnSaved {
    Tensor x; // conv input [N, Ci, H, W]
    Conv2dParams conv;
    Tensor z;          // conv output = BN input [N, Co, Ho, Wo]
    BatchNormSaved bn; // batch statistics (train forward only)
    Tensor y;          // BN output = activation input (only when an activation follows)
};

struct BlockSaved {
    ConvBnSaved expand, dw, project;
    Tensor se_x; // squeeze-excite input
    SqueezeExciteSaved se;
    std::vector<float> drop_mask; // stochastic depth per sample; empty when not applied
};

// A per-use seed from the forward's seed (splitmix64 of seed and use).
uint64_t derive_seed(uint64_t seed, uint64_t use) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (use + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void accumulate(Tensor& into, const Tensor& t) {
    if (into.empty()) {
        into = t;
        return;
    }
    into = add(into, t);
}

} // namespace

struct Network::Impl {
    Model& model;

    // The last forward, kept for backward. An eval forward keeps only its input (activations
    // of a large model at a large batch do not fit twice in memory); backward after it runs
    // the forward again with saving on, which gives the same values since eval changes nothing.
    bool have_forward = false;
    bool saved = false; // activations below are from the last forward
    bool saving = false;
    bool train = false;
    Tensor eval_input;
    ForwardOptions eval_options;
    Shape input_shape;
    ConvBnSaved stem, head;
    std::vector<BlockSaved> blocks;
    Shape head_out_shape;            // [N, head_channels, h, w]
    Tensor classifier_input;         // [N, head_channels] after dropout
    std::vector<float> dropout_mask; // empty when dropout was not applied

    explicit Impl(Model& m) : model(m) {}

    ForwardResult run_forward(const Tensor& input, const ForwardOptions& opt);

    const ModelConfig& config() const { return model.config; }

    // conv -> BN [-> act] under prefix ("stem" -> "stem.conv.weight", "stem.bn.*").
    Tensor conv_bn_forward(const std::string& prefix, const Tensor& x, int kernel, int stride, int groups,
                           bool act, const ForwardOptions& opt, ConvBnSaved& s) {
        const ModelConfig& c = config();
        s.conv = conv_params(int(x.dim(2)), int(x.dim(3)), kernel, stride, groups, c.padding);
        Tensor z = conv2d_forward(x, model.param(prefix + ".conv.weight"), nullptr, s.conv);
        const Tensor& gamma = model.param(prefix + ".bn.weight");
        const Tensor& beta = model.param(prefix + ".bn.bias");
        Tensor& mean = model.param(prefix + ".bn.running_mean");
        Tensor& var = model.param(prefix + ".bn.running_var");
        Tensor y;
        if (opt.train) {
            const int64_t per_channel = z.dim(0) * z.dim(2) * z.dim(3);
            EFFNET_CHECK(per_channel > 1, "train-mode batch norm '" + prefix +
                                              ".bn' needs more than one value per "
                                              "channel, got activation " +
                                              shape_str(z.shape) + " (use a larger batch or input)");
            const bool update = opt.update_running_stats;
            y = batchnorm_train_forward(z, gamma, beta, c.bn_eps, &s.bn, update ? &mean : nullptr,
                                        update ? &var : nullptr, c.bn_momentum);
        } else {
            y = batchnorm_eval_forward(z, gamma, beta, mean, var, c.bn_eps);
        }
        if (saving) {
            s.x = x;
            s.z = std::move(z);
        }
        if (!act) return y;
        Tensor out = activation_forward(y, c.activation);
        if (saving) s.y = std::move(y);
        return out;
    }

    // Returns d(unit input); adds the conv weight and BN gradients to g.
    Tensor conv_bn_backward(const std::string& prefix, const Tensor& dout, bool act, const ConvBnSaved& s,
                            Gradients& g) {
        const ModelConfig& c = config();
        const Tensor dy = act ? activation_backward(s.y, dout, c.activation) : dout;
        const Tensor& gamma = model.param(prefix + ".bn.weight");
        Tensor dz, dgamma, dbeta;
        if (train) {
            batchnorm_train_backward(s.z, gamma, s.bn, dy, &dz, &dgamma, &dbeta);
        } else {
            batchnorm_eval_backward(s.z, gamma, model.param(prefix + ".bn.running_mean"),
                                    model.param(prefix + ".bn.running_var"), c.bn_eps, dy, &dz, &dgamma,
                                    &dbeta);
        }
        Tensor dx, dw;
        conv2d_backward(s.x, model.param(prefix + ".conv.weight"), dz, s.conv, &dx, &dw, nullptr);
        g.params[prefix + ".conv.weight"] = std::move(dw);
        g.params[prefix + ".bn.weight"] = std::move(dgamma);
        g.params[prefix + ".bn.bias"] = std::move(dbeta);
        return dx;
    }

    Tensor block_forward(int i, const Tensor& x, const ForwardOptions& opt, BlockSaved& s) {
        const ModelConfig& c = config();
        const BlockConfig& b = c.blocks[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        Tensor h = b.has_expand() ? conv_bn_forward(p + "expand", x, 1, 1, 1, true, opt, s.expand) : x;
        h = conv_bn_forward(p + "dw", h, b.kernel, b.stride, b.expand_channels, true, opt, s.dw);
        if (b.has_se()) {
            Tensor se_out = squeeze_excite_forward(
                h, model.param(p + "se.reduce.weight"), model.param(p + "se.reduce.bias"),
                model.param(p + "se.expand.weight"), model.param(p + "se.expand.bias"), c.activation,
                saving ? &s.se : nullptr);
            if (saving) s.se_x = std::move(h);
            h = std::move(se_out);
        }
        h = conv_bn_forward(p + "project", h, 1, 1, 1, false, opt, s.project);
        if (!b.has_residual()) return h;
        s.drop_mask.clear();
        if (opt.train && opt.dropout && b.drop_path > 0.0f)
            h = stochastic_depth_forward(h, b.drop_path, derive_seed(opt.seed, uint64_t(i)), &s.drop_mask);
        return add(h, x);
    }

    Tensor block_backward(int i, const Tensor& dout, const BlockSaved& s, Gradients& g) {
        const ModelConfig& c = config();
        const BlockConfig& b = c.blocks[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        Tensor d =
            (b.has_residual() && !s.drop_mask.empty()) ? stochastic_depth_backward(dout, s.drop_mask) : dout;
        d = conv_bn_backward(p + "project", d, false, s.project, g);
        if (b.has_se()) {
            Tensor dx, dw1, db1, dw2, db2;
            squeeze_excite_backward(s.se_x, model.param(p + "se.reduce.weight"),
                                    model.param(p + "se.expand.weight"), c.activation, s.se, d, &dx, &dw1,
                                    &db1, &dw2, &db2);
            g.params[p + "se.reduce.weight"] = std::move(dw1);
            g.params[p + "se.reduce.bias"] = std::move(db1);
            g.params[p + "se.expand.weight"] = std::move(dw2);
            g.params[p + "se.expand.bias"] = std::move(db2);
            d = std::move(dx);
        }
        d = conv_bn_backward(p + "dw", d, true, s.dw, g);
        if (b.has_expand()) d = conv_bn_backward(p + "expand", d, true, s.expand, g);
        if (b.has_residual()) accumulate(d, dout);
        return d;
    }
};

Network::Network(Model& model) : impl_(std::make_unique<Impl>(model)) {
    model.config.validate();
    for (const ParamSpec& spec : parameter_specs(model.config)) {
        const Tensor& t = model.param(spec.name);
        EFFNET_CHECK(t.shape == spec.shape && t.numel() == shape_numel(spec.shape),
                     "model parameter '" + spec.name + "' has shape " + shape_str(t.shape) +
                         ", the config needs " + shape_str(spec.shape));
    }
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
    m.have_forward = false;
    m.train = opt.train;
    m.saving = opt.train;
    m.input_shape = input.shape;
    m.eval_input = opt.train ? Tensor() : input;
    m.eval_options = opt;
    m.eval_options.record_stages = false;
    m.blocks.assign(c.blocks.size(), BlockSaved{});
    ForwardResult result = m.run_forward(input, opt);
    m.saved = m.saving;
    m.have_forward = true;
    return result;
}

ForwardResult Network::Impl::run_forward(const Tensor& input, const ForwardOptions& opt) {
    Impl& m = *this;
    const ModelConfig& c = m.config();
    ForwardResult result;

    Tensor x = m.conv_bn_forward("stem", input, 3, 2, 1, true, opt, m.stem);
    if (opt.record_stages) result.stages["stem"] = x;
    for (size_t i = 0; i < c.blocks.size(); ++i) {
        x = m.block_forward(int(i), x, opt, m.blocks[i]);
        const bool last_of_stage = i + 1 == c.blocks.size() || c.blocks[i + 1].stage != c.blocks[i].stage;
        if (opt.record_stages && last_of_stage)
            result.stages["stage." + std::to_string(c.blocks[i].stage)] = x;
    }
    x = m.conv_bn_forward("head", x, 1, 1, 1, true, opt, m.head);
    if (opt.record_stages) result.stages["head"] = x;
    m.head_out_shape = x.shape;
    Tensor pooled = global_avg_pool_forward(x); // [N, head_channels]
    if (opt.record_stages) result.stages["pool"] = pooled;
    m.dropout_mask.clear();
    if (opt.train && opt.dropout && c.dropout > 0.0f)
        pooled = dropout_forward(pooled, c.dropout, derive_seed(opt.seed, c.blocks.size()), &m.dropout_mask);
    m.classifier_input = std::move(pooled);
    result.logits = linear_forward(m.classifier_input, m.model.param("classifier.weight"),
                                   &m.model.param("classifier.bias"));
    return result;
}

Gradients Network::backward(const Tensor& dlogits) {
    Impl& m = *impl_;
    const ModelConfig& c = m.config();
    EFFNET_CHECK(m.have_forward, "Network::backward called without a forward before it");
    const Shape expected = {m.input_shape[0], c.num_classes};
    EFFNET_CHECK(dlogits.shape == expected && dlogits.numel() == shape_numel(expected),
                 "Network::backward: dlogits has shape " + shape_str(dlogits.shape) + ", expected " +
                     shape_str(expected));
    if (!m.saved) { // after an eval forward: run it again, keeping what backward needs
        m.saving = true;
        m.run_forward(m.eval_input, m.eval_options);
        m.saved = true;
    }
    Gradients g;
    Tensor dpool, dw, db;
    linear_backward(m.classifier_input, m.model.param("classifier.weight"), dlogits, &dpool, &dw, &db);
    g.params["classifier.weight"] = std::move(dw);
    g.params["classifier.bias"] = std::move(db);
    if (!m.dropout_mask.empty()) dpool = dropout_backward(dpool, m.dropout_mask);
    Tensor d = global_avg_pool_backward(m.head_out_shape, dpool);
    d = m.conv_bn_backward("head", d, true, m.head, g);
    for (int i = int(c.blocks.size()) - 1; i >= 0; --i) d = m.block_backward(i, d, m.blocks[i], g);
    g.input = m.conv_bn_backward("stem", d, true, m.stem, g);
    return g;
}

} // namespace effnet::cpu
