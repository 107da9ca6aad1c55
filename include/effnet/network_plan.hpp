#pragma once
// The network plan: EfficientNet as one ordered list of typed layers, built from a config and
// an input size. It is the only place that knows the MBConv block's sub-layer order; the
// parameter list, the CPU engine, the GPU inference session and the GPU trainer all walk it
// (backward in reverse). An engine that runs several consecutive layers as one kernel decides
// so while walking: fusion is a choice of the engine, not a second description.
//
//   stem        conv 3x3 s2 -> BN -> act
//   per block   [expand 1x1 -> BN -> act] -> depthwise kxk -> BN -> act -> [squeeze-excite]
//               -> project 1x1 -> BN -> [stochastic depth -> + block input]
//   head        conv 1x1 -> BN -> act -> global average pool -> dropout -> classifier
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/model.hpp"

namespace effnet {

enum class LayerKind {
    Stem,          // conv 3x3 stride 2 -> BN -> act
    Expand,        // conv 1x1 -> BN -> act
    Depthwise,     // depthwise conv kxk -> BN -> act
    SqueezeExcite, // x * sigmoid(expand(act(reduce(mean(x)))))
    Project,       // conv 1x1 -> BN [-> stochastic depth -> + residual]
    Head,          // conv 1x1 -> BN -> act
    Pool,          // global average pool: [N, C, H, W] -> [N, C, 1, 1]
    Dropout,       // per element, training only
    Classifier,    // linear: [N, C, 1, 1] -> [N, classes, 1, 1]
};

// A feature map, logically NCHW (engines choose their own memory layout).
struct FeatureShape {
    int64_t batch = 0;
    int channels = 0, height = 0, width = 0;

    int64_t pixels() const { return int64_t(height) * width; } // per image
    int64_t rows() const { return batch * pixels(); }          // N * H * W: a GEMM's M
    int64_t numel() const { return rows() * channels; }
};

// A convolution's geometry for this input size (padding already resolved to per-side amounts).
struct ConvGeometry {
    int kernel = 1, stride = 1, groups = 1;
    int pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
};

struct Layer {
    LayerKind kind = LayerKind::Stem;
    std::string name; // parameter prefix: "stem", "blocks.4.dw", "head", "classifier", ...
    int block = -1;   // flat MBConv block index; -1 outside the blocks
    int stage = -1;   // the block's stage; -1 outside the blocks
    int input = -1;   // index of the layer whose output this one reads; -1: the network input
    FeatureShape in, out;
    ConvGeometry conv;                    // Stem, Expand, Depthwise, Project, Head
    bool batch_norm = false;              // a BN follows the conv (its parameters: name.bn.*)
    std::optional<Activation> activation; // applied last; SqueezeExcite: inside its bottleneck
    int reduced_channels = 0;             // SqueezeExcite: the bottleneck width
    int residual = -1;                    // Project: the layer whose output is added; -1: none
    float drop_rate = 0.0f;               // Project: stochastic depth; Dropout: per element
    uint64_t mask_stream = 0;             // which of a step's random streams draws the mask
    std::vector<ParamSpec> params;        // canonical names, as in the weights file

    // A parameter's canonical name: param("conv.weight") -> "blocks.3.dw.conv.weight".
    std::string param(const char* suffix) const { return name + "." + suffix; }
};

struct NetworkPlan {
    ModelConfig config;
    int batch = 0, height = 0, width = 0;
    std::vector<Layer> layers; // in forward order

    // Every parameter and buffer in network order (what parameter_specs returns).
    std::vector<ParamSpec> parameters() const;
    const Layer& classifier() const { return layers.back(); }
    // True when layer i is the last layer of its stage (its output is the stage's feature map).
    bool ends_stage(size_t i) const;
};

// A backbone feature map: the output of the last layer at one stride (timm's features_only).
// Feature i is at stride 2^(i+1): the end of the last stage whose output is at that stride (the
// stem when no stage is), e.g. B0: stages 0, 1, 2, 4, 6 ([16, 24, 40, 112, 320] channels).
struct FeatureInfo {
    int index = 0;  // 0..4
    int stride = 0; // 2, 4, 8, 16, 32 (the input size over the feature's, for sizes divisible by it)
    int layer = -1; // index in NetworkPlan::layers whose output it is
    FeatureShape shape;
    std::string name; // "stage.6" ("stem" for a stride with no stage ending at it)
};
constexpr int kNumFeatures = 5;

// The 5 features of the plan, in stride order. Throws effnet::Error when the config has no
// layer at one of the strides (a custom config with other strides).
std::vector<FeatureInfo> feature_info(const NetworkPlan& plan);
// Validates indices (each in 0..4, strictly increasing, at least one); throws effnet::Error
// naming the bad one.
void check_feature_indices(const std::vector<int>& indices);

// Validates the config and the input size (batch, height, width >= 1; channels as configured)
// and throws effnet::Error naming the problem.
NetworkPlan make_network_plan(const ModelConfig& config, int batch, int height, int width);

// The seed of layer's random mask in a step seeded `step_seed` (splitmix64 of the pair): the
// same masks on every engine for the same step seed.
uint64_t mask_seed(uint64_t step_seed, const Layer& layer);

} // namespace effnet
