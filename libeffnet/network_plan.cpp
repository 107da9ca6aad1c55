// The network plan: the one place that lays out EfficientNet's layers (network_plan.hpp).
#include "effnet/network_plan.hpp"

#include <string>

#include "effnet/error.hpp"
#include "splitmix64.hpp"

namespace effnet {
namespace {

std::vector<ParamSpec> conv_bn_params(const std::string& prefix, Shape conv_shape) {
    const int64_t channels = conv_shape[0];
    return {{prefix + ".conv.weight", std::move(conv_shape), true},
            {prefix + ".bn.weight", {channels}, true},
            {prefix + ".bn.bias", {channels}, true},
            {prefix + ".bn.running_mean", {channels}, false},
            {prefix + ".bn.running_var", {channels}, false}};
}

// Appends layers and keeps track of the feature map they produce.
class PlanBuilder {
public:
    explicit PlanBuilder(NetworkPlan& plan) : plan_(plan) {
        const ModelConfig& c = plan.config;
        shape_ = {plan.batch, c.in_channels, plan.height, plan.width};
    }

    // The index the next layer gets.
    int next_index() const { return int(plan_.layers.size()); }

    // conv -> BN [-> act]; a depthwise conv has one group per channel.
    Layer& conv_bn(LayerKind kind, const std::string& name, int out_channels, int kernel, int stride,
                   bool depthwise, bool activated) {
        const ModelConfig& c = plan_.config;
        Layer& l = append(kind, name);
        l.conv.kernel = kernel;
        l.conv.stride = stride;
        l.conv.groups = depthwise ? shape_.channels : 1;
        conv_padding(shape_.height, kernel, stride, c.padding, l.conv.pad_top, l.conv.pad_bottom);
        conv_padding(shape_.width, kernel, stride, c.padding, l.conv.pad_left, l.conv.pad_right);
        l.out = {shape_.batch, out_channels, conv_output_size(shape_.height, kernel, stride, c.padding),
                 conv_output_size(shape_.width, kernel, stride, c.padding)};
        EFFNET_CHECK(l.out.height >= 1 && l.out.width >= 1,
                     "network plan: input " + std::to_string(plan_.height) + "x" +
                         std::to_string(plan_.width) + " is too small: " + name +
                         " would have an empty output");
        l.batch_norm = true;
        if (activated) l.activation = c.activation;
        l.params = conv_bn_params(name, {out_channels, depthwise ? 1 : shape_.channels, kernel, kernel});
        return finish(l);
    }

    Layer& squeeze_excite(const std::string& name, int reduced) {
        Layer& l = append(LayerKind::SqueezeExcite, name);
        const int channels = shape_.channels;
        l.out = shape_;
        l.activation = plan_.config.activation;
        l.reduced_channels = reduced;
        l.params = {{name + ".reduce.weight", {reduced, channels, 1, 1}, true},
                    {name + ".reduce.bias", {reduced}, true},
                    {name + ".expand.weight", {channels, reduced, 1, 1}, true},
                    {name + ".expand.bias", {channels}, true}};
        return finish(l);
    }

    Layer& pool() {
        Layer& l = append(LayerKind::Pool, "pool");
        l.out = {shape_.batch, shape_.channels, 1, 1};
        return finish(l);
    }

    Layer& dropout(float rate, uint64_t mask_stream) {
        Layer& l = append(LayerKind::Dropout, "dropout");
        l.out = shape_;
        l.drop_rate = rate;
        l.mask_stream = mask_stream;
        return finish(l);
    }

    Layer& classifier(int classes) {
        Layer& l = append(LayerKind::Classifier, "classifier");
        l.out = {shape_.batch, classes, 1, 1};
        l.params = {{"classifier.weight", {classes, shape_.channels}, true},
                    {"classifier.bias", {classes}, true}};
        return finish(l);
    }

private:
    Layer& append(LayerKind kind, const std::string& name) {
        Layer l;
        l.kind = kind;
        l.name = name;
        l.input = next_index() - 1;
        l.in = shape_;
        plan_.layers.push_back(std::move(l));
        return plan_.layers.back();
    }
    Layer& finish(Layer& l) {
        shape_ = l.out;
        return l;
    }

    NetworkPlan& plan_;
    FeatureShape shape_; // the output of the last layer appended
};

} // namespace

NetworkPlan make_network_plan(const ModelConfig& config, int batch, int height, int width) {
    config.validate();
    EFFNET_CHECK(batch >= 1 && height >= 1 && width >= 1,
                 "network plan: batch, height and width must be >= 1, got " + std::to_string(batch) + ", " +
                     std::to_string(height) + ", " + std::to_string(width));
    NetworkPlan plan;
    plan.config = config;
    plan.batch = batch;
    plan.height = height;
    plan.width = width;
    PlanBuilder add(plan);
    const bool activated = true;

    add.conv_bn(LayerKind::Stem, "stem", config.stem_channels, 3, 2, false, activated);
    for (size_t i = 0; i < config.blocks.size(); ++i) {
        const BlockConfig& b = config.blocks[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        const int block_input = add.next_index() - 1;
        const size_t first = plan.layers.size();
        if (b.has_expand())
            add.conv_bn(LayerKind::Expand, p + "expand", b.expand_channels, 1, 1, false, activated);
        add.conv_bn(LayerKind::Depthwise, p + "dw", b.expand_channels, b.kernel, b.stride, true, activated);
        if (b.has_se()) add.squeeze_excite(p + "se", b.se_channels);
        Layer& project =
            add.conv_bn(LayerKind::Project, p + "project", b.out_channels, 1, 1, false, !activated);
        if (b.has_residual()) {
            project.residual = block_input;
            project.drop_rate = b.drop_path;
            project.mask_stream = i;
        }
        for (size_t l = first; l < plan.layers.size(); ++l) {
            plan.layers[l].block = int(i);
            plan.layers[l].stage = b.stage;
        }
    }
    add.conv_bn(LayerKind::Head, "head", config.head_channels, 1, 1, false, activated);
    add.pool();
    add.dropout(config.dropout, config.blocks.size());
    add.classifier(config.num_classes);
    return plan;
}

std::vector<ParamSpec> NetworkPlan::parameters() const {
    std::vector<ParamSpec> specs;
    for (const Layer& l : layers) specs.insert(specs.end(), l.params.begin(), l.params.end());
    return specs;
}

bool NetworkPlan::ends_stage(size_t i) const {
    if (i >= layers.size() || layers[i].block < 0) return false;
    return i + 1 == layers.size() || layers[i + 1].block < 0 || layers[i + 1].stage != layers[i].stage;
}

std::vector<FeatureInfo> feature_info(const NetworkPlan& plan) {
    std::vector<FeatureInfo> features(kNumFeatures);
    int stride = 1; // of the current layer's output: the product of the conv strides so far
    for (size_t i = 0; i < plan.layers.size(); ++i) {
        const Layer& l = plan.layers[i];
        if (l.kind == LayerKind::Head) break; // timm's features stop at the last block
        stride *= l.conv.stride;
        // Only stage ends (and the stem): a stride-2 block's expand conv is still at the old
        // stride, but its output is not a feature.
        if (l.kind != LayerKind::Stem && !plan.ends_stage(i)) continue;
        int index = -1;
        for (int k = 0; k < kNumFeatures; ++k)
            if (stride == 2 << k) index = k;
        if (index < 0) continue;
        FeatureInfo& f = features[size_t(index)];
        f.index = index;
        f.stride = stride;
        f.layer = int(i);
        f.shape = l.out;
        f.name = l.kind == LayerKind::Stem ? l.name : "stage." + std::to_string(l.stage);
    }
    for (int k = 0; k < kNumFeatures; ++k)
        EFFNET_CHECK(features[size_t(k)].layer >= 0,
                     "feature_info: the network has no stage output at stride " + std::to_string(2 << k) +
                         " (feature " + std::to_string(k) + ")");
    return features;
}

void check_feature_indices(const std::vector<int>& indices) {
    EFFNET_CHECK(!indices.empty(), "features: no feature index given (indices are 0.." +
                                       std::to_string(kNumFeatures - 1) + ")");
    for (size_t k = 0; k < indices.size(); ++k) {
        const int i = indices[k];
        EFFNET_CHECK(i >= 0 && i < kNumFeatures,
                     "features: index " + std::to_string(i) + " is out of range: indices are 0.." +
                         std::to_string(kNumFeatures - 1) + " (strides 2, 4, 8, 16, 32)");
        EFFNET_CHECK(k == 0 || i > indices[k - 1], "features: index " + std::to_string(i) + " after " +
                                                       std::to_string(indices[k - 1]) +
                                                       ": indices must be strictly increasing");
    }
}

uint64_t mask_seed(uint64_t step_seed, const Layer& layer) {
    return splitmix64_mix(step_seed + kSplitmixGamma * (layer.mask_stream + 1));
}

} // namespace effnet
