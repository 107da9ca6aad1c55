#pragma once
// A model: its config plus every parameter and buffer, stored under canonical names in
// PyTorch's layouts (conv [O, I/groups, kh, kw], linear [out, in]):
//   stem.conv.weight                       stem.bn.{weight,bias,running_mean,running_var}
//   blocks.{i}.expand.conv.weight          blocks.{i}.expand.bn.*        (only with an expand 1x1)
//   blocks.{i}.dw.conv.weight              blocks.{i}.dw.bn.*
//   blocks.{i}.se.reduce.{weight,bias}     blocks.{i}.se.expand.{weight,bias}  (only with SE)
//   blocks.{i}.project.conv.weight         blocks.{i}.project.bn.*
//   head.conv.weight                       head.bn.*
//   classifier.{weight,bias}
// where i is the flat block index (0 .. config.blocks.size()-1).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/tensor.hpp"

namespace effnet {

struct ParamSpec {
    std::string name; // canonical
    Shape shape;
    bool trainable; // false for running_mean / running_var
};
// Every parameter and buffer the config needs, in network order.
std::vector<ParamSpec> parameter_specs(const ModelConfig& config);

struct Model {
    ModelConfig config;
    std::map<std::string, Tensor> params;            // canonical name -> tensor
    std::map<std::string, std::string> source_names; // canonical name -> name in the file it came from
    std::string family = "effnet";                   // "torchvision" | "timm" | "lukemelas" | "effnet"
    std::map<std::string, std::string> metadata;     // extra metadata from the weights file

    const Tensor& param(const std::string& name) const; // throws effnet::Error naming it
    Tensor& param(const std::string& name);
};

// The first element of parameter `name` that no model may hold (a NaN or an Inf anywhere, a
// negative value in a BN running variance), or -1 when there is none. One rule for loading
// weights, writing checkpoints and resuming them.
int64_t first_invalid_element(const std::string& name, const Tensor& t);

// Throws effnet::Error naming the first parameter or buffer of parameter_specs(model.config)
// that the model lacks or holds with another shape. The engines call it before using a model.
void check_parameter_shapes(const Model& model);

// Seeded random initialisation: fan-in Kaiming convs with per-role gains chosen so that
// activations stay O(1) through B0..B7 (fp16-safe), BN weight 1, bias 0, running stats 0/1.
Model random_model(const ModelConfig& config, uint64_t seed);

struct LoadOptions {
    std::string preset;             // if set, the inferred architecture must match it
    std::optional<Padding> padding; // overrides what metadata says
    std::optional<float> bn_eps;
    std::optional<Activation> activation;
};
// Loads a safetensors file with torchvision, timm, lukemelas or effnet (canonical) names.
// The architecture is inferred from tensor shapes; padding / BN eps / activation come from
// metadata ("padding", "bn_eps", "activation"), options, or the family's default. Missing,
// unexpected or mis-shaped tensors throw effnet::Error naming them.
Model load_weights(const std::string& path, const LoadOptions& options = {});

// Writes canonical names plus metadata describing the config and preprocessing.
void save_weights(const Model& model, const std::string& path);

} // namespace effnet
