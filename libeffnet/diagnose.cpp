#include "effnet/diagnose.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"

namespace effnet {

namespace {

// "the model's largest parameter magnitude is 3e+38, in 'blocks.1.project.conv.weight' (file:
// 'features.2.0.block.3.0.weight')": huge weights overflow a layer or more after their own.
std::string largest_parameter(const Model& model) {
    std::string name;
    double largest = -1;
    for (const auto& [canonical, tensor] : model.params)
        for (float v : tensor.data)
            if (std::fabs(double(v)) > largest) {
                largest = std::fabs(double(v));
                name = canonical;
            }
    if (name.empty()) return "the model has no parameters";
    char text[32];
    std::snprintf(text, sizeof text, "%.3g", largest);
    const auto source = model.source_names.find(name);
    const std::string file_name = source == model.source_names.end() || source->second == name
                                      ? ""
                                      : " (file: '" + source->second + "')";
    return "the model's largest parameter magnitude is " + std::string(text) + ", in '" + name + "'" +
           file_name;
}

} // namespace

int64_t first_non_finite_row(const float* logits, int64_t rows, int64_t classes) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < classes; ++c)
            if (!std::isfinite(logits[r * classes + c])) return r;
    return -1;
}

std::string diagnose_non_finite(const Model& model, const Tensor& image) {
    Model copy = model; // the engine takes a mutable model (train mode updates statistics)
    cpu::Network network(copy);
    cpu::ForwardOptions options;
    options.find_non_finite = true;
    const cpu::ForwardResult result = network.forward(image, options);
    if (result.first_non_finite.empty())
        return "the CPU reference forward of this image in fp32 is finite: the engine that produced the "
               "logits overflowed its precision";
    return "the first layer whose output is non-finite (CPU reference engine, fp32) is '" +
           result.first_non_finite + "'; " + largest_parameter(model) +
           ": the weights are damaged or not trained for this input";
}

void check_logits_finite(const Model& model, const float* input, const Shape& input_shape,
                         const float* logits, int64_t classes, const std::string& engine,
                         const std::function<std::string(int64_t)>& what) {
    EFFNET_CHECK(input_shape.size() == 4,
                 "check_logits_finite: input must be [N, C, H, W], got " + shape_str(input_shape));
    const int64_t row = first_non_finite_row(logits, input_shape[0], classes);
    if (row < 0) return;
    Tensor image({1, input_shape[1], input_shape[2], input_shape[3]});
    const size_t floats = size_t(image.numel());
    std::memcpy(image.ptr(), input + size_t(row) * floats, floats * sizeof(float));
    throw Error("non-finite logits for " + what(row) + " on " + engine + ": " +
                diagnose_non_finite(model, image));
}

} // namespace effnet
