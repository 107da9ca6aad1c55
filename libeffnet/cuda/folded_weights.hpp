#pragma once
// Host-side weight preparation for the GPU engine: batch norm folded into the preceding
// convolution (in double), relayout for the kernels, conversion to the storage precision.
// Host-only (no CUDA calls), so tests can build the same arrays the session uploads.
#include <cstdint>
#include <string>
#include <vector>

#include "effnet/inference.hpp"
#include "effnet/model.hpp"

namespace effnet::cuda {

// w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps), per output channel.
struct FoldedConv {
    std::vector<float> weight; // same layout as the conv weight: [O, I/groups, kh, kw]
    std::vector<float> bias;   // [O]
    Shape shape;               // the conv weight's shape
};
FoldedConv fold_batchnorm(const Tensor& conv_weight, const Tensor& gamma, const Tensor& beta,
                          const Tensor& running_mean, const Tensor& running_var, float eps);
// From a model: "<prefix>.conv.weight" and "<prefix>.bn.*" (prefix e.g. "blocks.3.expand").
FoldedConv fold_batchnorm(const Model& model, const std::string& prefix);

// [O, I, k, k] -> [k, k, I, O] (stem kernel).
std::vector<float> stem_layout(const FoldedConv& conv);
// [C, 1, k, k] -> [k*k, C] (depthwise kernel).
std::vector<float> depthwise_layout(const FoldedConv& conv);
// [rows, cols] -> [cols, rows].
std::vector<float> transpose(const std::vector<float>& m, int64_t rows, int64_t cols);

// float -> storage bytes (fp32 copy, or fp16/bf16 rounded to nearest even).
std::vector<uint8_t> to_storage(const std::vector<float>& values, Precision precision);
// storage bytes -> float.
std::vector<float> from_storage(const std::vector<uint8_t>& bytes, Precision precision);
// Rounds each value through the storage precision (what the GPU will see).
std::vector<float> round_to_storage(const std::vector<float>& values, Precision precision);

} // namespace effnet::cuda
