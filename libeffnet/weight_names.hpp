#pragma once
// Weight names of the checkpoint families effnet reads, mapped to and from its canonical names
// (include/effnet/model.hpp), and the inference of an architecture from tensor shapes.
//
//   family        stem                      block i (stage s, j-th in stage)          head / classifier
//   torchvision   features.0.{0,1}          features.{s+1}.{j}.block.{k}...            features.{S+1}.{0,1},
//   classifier.1 timm          conv_stem, bn1            blocks.{s}.{j}.{conv_pw,conv_dw,se,...} conv_head,
//   bn2, classifier lukemelas     _conv_stem, _bn0          _blocks.{i}._{expand,depthwise,...} _conv_head,
//   _bn1, _fc effnet        stem.{conv,bn}            blocks.{i}.{expand,dw,se,project}... head.{conv,bn},
//   classifier
#include <map>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/tensor.hpp"

namespace effnet::weights {

// The stage table of EfficientNet-B0 that every preset scales: stride of the first block and
// depthwise kernel of each of the 7 stages.
constexpr int kNumStages = 7;
constexpr int kStageStride[kNumStages] = {1, 2, 2, 2, 1, 2, 1};
constexpr int kStageKernel[kNumStages] = {3, 3, 5, 3, 5, 5, 3};

// "torchvision" | "timm" | "lukemelas" | "effnet", recognised from the names; throws
// effnet::Error (naming `file` and a few of the names) when none fits.
std::string detect_family(const std::vector<std::string>& names, const std::string& file);

// For every entry of parameter_specs(config): canonical name -> the name `family` gives it.
std::map<std::string, std::string> source_names(const ModelConfig& config, const std::string& family);

// The architecture the tensor shapes describe: stem / head channels, classes, and each block's
// in / expand / out channels, kernel, squeeze-excite width, stage and stride. Activation,
// padding, BN eps and the training settings keep ModelConfig's defaults. `block_stages`, when
// not empty, gives the stage of each block for flat-numbered families (lukemelas, effnet);
// otherwise stages are inferred with infer_stages. Throws effnet::Error naming the file and
// the tensor at fault.
ModelConfig infer_architecture(const std::string& family, const std::map<std::string, Shape>& shapes,
                               const std::vector<int>& block_stages, const std::string& file);

// Splits flat-numbered blocks (only channels, kernel and expand/SE presence set) into the 7 B0
// stages: a stage starts where the output channels, kernel, or expand/SE presence change;
// when that finds fewer than 7 stages, the presets' repeat counts are tried. The stages'
// kernels must match the B0 table. Throws effnet::Error when nothing fits.
std::vector<int> infer_stages(const std::vector<BlockConfig>& blocks, const std::string& file);

// Fills stride, stage, index_in_stage and drop_path of blocks from their stages (B0 strides).
void assign_stages(std::vector<BlockConfig>& blocks, const std::vector<int>& stages, float stochastic_depth);

} // namespace effnet::weights
