// Parts of the GPU training API that exist in every build: precision names and, in a build
// without CUDA, a GpuTrainer that refuses to be built.
#include <algorithm>
#include <cctype>
#include <string>

#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"

namespace effnet {

const char* train_precision_name(TrainPrecision p) {
    switch (p) {
    case TrainPrecision::FP32:
        return "fp32";
    case TrainPrecision::AmpFP16:
        return "amp-fp16";
    case TrainPrecision::AmpBF16:
        return "amp-bf16";
    }
    return "unknown";
}

TrainPrecision parse_train_precision(const std::string& s) {
    std::string n = s;
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (n == "fp32" || n == "float32") return TrainPrecision::FP32;
    if (n == "amp-fp16" || n == "amp_fp16" || n == "fp16") return TrainPrecision::AmpFP16;
    if (n == "amp-bf16" || n == "amp_bf16" || n == "bf16") return TrainPrecision::AmpBF16;
    throw Error("unknown training precision '" + s + "' (expected fp32, amp-fp16 or amp-bf16)");
}

#ifndef EFFNET_WITH_CUDA
struct GpuTrainer::Impl {};

GpuTrainer::GpuTrainer(Model&, int, int, int, TrainPrecision, const GpuTrainOptions&) {
    throw Error("GpuTrainer: effnet was built without CUDA support (EFFNET_ENABLE_CUDA=OFF)");
}
GpuTrainer::~GpuTrainer() = default;
namespace {
[[noreturn]] void no_cuda() {
    throw Error("GpuTrainer: effnet was built without CUDA support");
}
} // namespace
float GpuTrainer::step(const float*, const int64_t*, double, uint64_t) {
    no_cuda();
}
float GpuTrainer::compute_gradients(const float*, const int64_t*, uint64_t) {
    no_cuda();
}
bool GpuTrainer::apply_update(double) {
    no_cuda();
}
void GpuTrainer::set_loss_scale(float) {
    no_cuda();
}
float GpuTrainer::loss_scale() const {
    no_cuda();
}
bool GpuTrainer::last_step_finite() const {
    no_cuda();
}
cpu::Gradients GpuTrainer::gradients() const {
    no_cuda();
}
Tensor GpuTrainer::logits() const {
    no_cuda();
}
void GpuTrainer::download(Model&) const {
    no_cuda();
}
void GpuTrainer::upload(const Model&) {
    no_cuda();
}
train::ParamMap GpuTrainer::optimizer_state() const {
    no_cuda();
}
int64_t GpuTrainer::optimizer_steps() const {
    no_cuda();
}
void GpuTrainer::set_optimizer_state(const train::ParamMap&, int64_t) {
    no_cuda();
}
double GpuTrainer::last_grad_norm() const {
    no_cuda();
}
float* GpuTrainer::input_staging(int) {
    no_cuda();
}
void GpuTrainer::prefetch(const float*) {
    no_cuda();
}
void GpuTrainer::set_gradient_allreduce(GradientAllReduce*, size_t) {
    no_cuda();
}
int GpuTrainer::batch() const {
    return 0;
}
int GpuTrainer::height() const {
    return 0;
}
int GpuTrainer::width() const {
    return 0;
}
TrainPrecision GpuTrainer::precision() const {
    return TrainPrecision::FP32;
}
size_t GpuTrainer::peak_device_memory() const {
    return 0;
}
#endif

} // namespace effnet
