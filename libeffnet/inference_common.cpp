// Parts of the inference API that exist in every build: precision names, and, in a build
// without CUDA, cuda_available() == false and an InferenceSession that refuses to be built.
#include <algorithm>
#include <cctype>
#include <string>

#include "effnet/error.hpp"
#include "effnet/inference.hpp"

namespace effnet {

const char* precision_name(Precision p) {
    switch (p) {
    case Precision::FP32:
        return "fp32";
    case Precision::FP16:
        return "fp16";
    case Precision::BF16:
        return "bf16";
    }
    return "unknown";
}

Precision parse_precision(const std::string& s) {
    std::string n = s;
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (n == "fp32" || n == "float32" || n == "float") return Precision::FP32;
    if (n == "fp16" || n == "float16" || n == "half") return Precision::FP16;
    if (n == "bf16" || n == "bfloat16") return Precision::BF16;
    throw Error("unknown precision '" + s + "' (expected fp32, fp16 or bf16)");
}

const char* gemm_backend_name(GemmBackend b) {
    switch (b) {
    case GemmBackend::Auto:
        return "auto";
    case GemmBackend::Handwritten:
        return "handwritten";
    case GemmBackend::CublasLt:
        return "cublaslt";
    }
    return "unknown";
}

GemmBackend parse_gemm_backend(const std::string& s) {
    if (s == "auto") return GemmBackend::Auto;
    if (s == "handwritten") return GemmBackend::Handwritten;
    if (s == "cublaslt") return GemmBackend::CublasLt;
    throw Error("unknown GEMM backend '" + s + "' (expected auto, handwritten or cublaslt)");
}

const char* cudnn_candidate_name(CudnnCandidate c) {
    switch (c) {
    case CudnnCandidate::Auto:
        return "auto";
    case CudnnCandidate::Off:
        return "off";
    case CudnnCandidate::Force:
        return "force";
    }
    return "unknown";
}

CudnnCandidate parse_cudnn_candidate(const std::string& s) {
    if (s == "auto") return CudnnCandidate::Auto;
    if (s == "off") return CudnnCandidate::Off;
    if (s == "force") return CudnnCandidate::Force;
    throw Error("unknown cuDNN candidate mode '" + s + "' (expected off, auto or force)");
}

#ifndef EFFNET_WITH_CUDA
bool cuda_available() {
    return false;
}
std::string cuda_device_description() {
    return "no CUDA: effnet was built without CUDA support";
}

struct InferenceSession::Impl {};

InferenceSession::InferenceSession(const Model&, int, int, int, Precision, const SessionOptions&) {
    throw Error("InferenceSession: effnet was built without CUDA support (EFFNET_ENABLE_CUDA=OFF)");
}
InferenceSession::~InferenceSession() = default;
InferenceSession::InferenceSession(InferenceSession&&) noexcept = default;
InferenceSession& InferenceSession::operator=(InferenceSession&&) noexcept = default;
void InferenceSession::run(const float*, float*, bool) {
    throw Error("InferenceSession: built without CUDA");
}
void InferenceSession::synchronize() {}
int InferenceSession::batch() const {
    return 0;
}
int InferenceSession::height() const {
    return 0;
}
int InferenceSession::width() const {
    return 0;
}
int InferenceSession::num_classes() const {
    return 0;
}
Precision InferenceSession::precision() const {
    return Precision::FP32;
}
size_t InferenceSession::peak_device_memory() const {
    return 0;
}
size_t InferenceSession::activation_arena_bytes() const {
    return 0;
}
void* InferenceSession::stream() const {
    return nullptr;
}
std::vector<StepProfile> InferenceSession::profile_steps(int) {
    throw Error("InferenceSession: built without CUDA");
}
void InferenceSession::run_features(const float*, float* const*, float*, bool) {
    throw Error("InferenceSession: built without CUDA");
}
const std::vector<FeatureInfo>& InferenceSession::features() const {
    static const std::vector<FeatureInfo> none; // never reached: no session can be built
    return none;
}
#endif

} // namespace effnet
