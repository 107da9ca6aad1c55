#pragma once
// Non-finite logits are an error, never an answer. Programs check every batch's logits (a scan
// of [N, classes], free next to the forward) rather than probing the model once at load: a probe
// image cannot show that real images stay finite, and it would cost a whole CPU forward per
// load. When a row is non-finite, the diagnosis re-runs that one image on the CPU reference
// engine in fp32 and names the first layer whose output went non-finite.
#include <cstdint>
#include <functional>
#include <string>

#include "effnet/model.hpp"
#include "effnet/tensor.hpp"

namespace effnet {

// The first row of logits [rows, classes] that holds a NaN or an Inf, or -1.
int64_t first_non_finite_row(const float* logits, int64_t rows, int64_t classes);

// Why image [1, C, H, W] gives non-finite logits, as one sentence: the first layer whose output
// is non-finite on the CPU reference engine (fp32) and the largest magnitude among that layer's
// parameters, or that the fp32 forward is finite (then the engine that produced the logits
// overflowed its own precision).
std::string diagnose_non_finite(const Model& model, const Tensor& image);

// Throws effnet::Error when logits [rows, classes] (from input [rows, C, H, W], computed by
// `engine`, e.g. "the GPU in fp16") hold a non-finite value, naming `what(row)` (the image)
// and the diagnosis above.
void check_logits_finite(const Model& model, const float* input, const Shape& input_shape,
                         const float* logits, int64_t classes, const std::string& engine,
                         const std::function<std::string(int64_t)>& what);

} // namespace effnet
