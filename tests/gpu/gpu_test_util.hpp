#pragma once
// Helpers for the GPU tests: seeded random tensors, NCHW <-> NHWC, upload/download in a storage
// precision, NaN poisoning of outputs, and a one-line report of each measured error (the GPU run
// is rare, so every comparison prints its number, pass or fail).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "effnet/tensor.hpp"
#include "libeffnet/cuda/cuda_check.hpp"
#include "libeffnet/cuda/device_buffer.hpp"
#include "libeffnet/cuda/folded_weights.hpp"

namespace effnet::gpu_test {

// The odd-shaped network of the session tests: width and depth 0.5, TF "same" padding, 17 classes.
inline ModelConfig small_config() {
    CustomOptions o;
    o.width = 0.5;
    o.depth = 0.5;
    o.num_classes = 17;
    o.padding = Padding::TfSame;
    o.bn_eps = 1e-3f;
    return custom_config(o);
}

// random_model leaves batch norm at identity statistics; random ones make a mis-folded BN (or a
// bias added in a separate pass) show up in the logits.
inline void randomise_batchnorm(Model& model, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (auto& [name, t] : model.params) {
        const auto ends_with = [&](const std::string& suffix) {
            return name.size() >= suffix.size() &&
                   name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
        };
        if (ends_with(".bn.weight"))
            for (float& v : t.data) v = 0.6f + 0.8f * u(rng);
        else if (ends_with(".bn.bias"))
            for (float& v : t.data) v = -0.2f + 0.4f * u(rng);
        else if (ends_with(".bn.running_mean"))
            for (float& v : t.data) v = -0.2f + 0.4f * u(rng);
        else if (ends_with(".bn.running_var"))
            for (float& v : t.data) v = 0.5f + 1.0f * u(rng);
    }
}

// Test cases that needed a GPU and found none: counted here, so that the GPU test binary's main
// (tests/gpu_main.cpp) can exit with kSkipExitCode when every test case it ran was skipped, and
// ctest (SKIP_RETURN_CODE) reports them as skipped rather than passed.
inline int& skipped_test_cases() {
    static int count = 0;
    return count;
}
constexpr int kSkipExitCode = 77;

#define EFFNET_SKIP_WITHOUT_GPU()                                                                            \
    do {                                                                                                     \
        if (!::effnet::cuda_available()) {                                                                   \
            ++::effnet::gpu_test::skipped_test_cases();                                                      \
            WARN("skipped: no usable GPU (" << ::effnet::cuda_device_description() << ")");                  \
            return;                                                                                          \
        }                                                                                                    \
    } while (0)

inline Tensor random_tensor(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    Tensor t(shape);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    for (float& v : t.data) v = dist(rng);
    return t;
}

// Rounds every element through the storage precision (so the CPU reference sees what the GPU sees).
inline Tensor rounded(const Tensor& t, Precision p) {
    Tensor r = t;
    r.data = cuda::round_to_storage(t.data, p);
    return r;
}

// [N, C, H, W] -> NHWC flat
inline std::vector<float> nchw_to_nhwc(const Tensor& t) {
    const int64_t N = t.dim(0), C = t.dim(1), H = t.dim(2), W = t.dim(3);
    std::vector<float> out(size_t(t.numel()));
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t h = 0; h < H; ++h)
                for (int64_t w = 0; w < W; ++w)
                    out[size_t(((n * H + h) * W + w) * C + c)] =
                        t.data[size_t(((n * C + c) * H + h) * W + w)];
    return out;
}

// NHWC flat -> [N, C, H, W]
inline Tensor nhwc_to_nchw(const std::vector<float>& v, int64_t N, int64_t H, int64_t W, int64_t C) {
    Tensor t({N, C, H, W});
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t h = 0; h < H; ++h)
                for (int64_t w = 0; w < W; ++w)
                    t.data[size_t(((n * C + c) * H + h) * W + w)] = v[size_t(((n * H + h) * W + w) * C + c)];
    return t;
}

inline cuda::DeviceBuffer upload(const std::vector<float>& v, Precision p) {
    const std::vector<uint8_t> bytes = cuda::to_storage(v, p);
    cuda::DeviceBuffer buf(bytes.size(), "test upload");
    EFFNET_CUDA_CHECK(cudaMemcpy(buf.data(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
    return buf;
}
inline cuda::DeviceBuffer upload_f32(const std::vector<float>& v) {
    return upload(v, Precision::FP32);
}

// Allocates `count` elements and fills them with 0xFF bytes: NaN in fp32, fp16 and bf16, so
// any element a kernel fails to write fails the comparison.
inline cuda::DeviceBuffer poisoned(size_t count, Precision p) {
    const size_t bytes = count * (p == Precision::FP32 ? 4 : 2);
    cuda::DeviceBuffer buf(bytes, "test output");
    EFFNET_CUDA_CHECK(cudaMemset(buf.data(), 0xFF, bytes));
    return buf;
}

inline std::vector<float> download(const cuda::DeviceBuffer& buf, size_t count, Precision p) {
    EFFNET_CUDA_CHECK(cudaDeviceSynchronize()); // surfaces execution errors of the kernel under test
    std::vector<uint8_t> bytes(count * (p == Precision::FP32 ? 4 : 2));
    EFFNET_CUDA_CHECK(cudaMemcpy(bytes.data(), buf.data(), bytes.size(), cudaMemcpyDeviceToHost));
    return cuda::from_storage(bytes, p);
}

// Relative norm error that treats any non-finite element as a failure (1e30).
inline double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
    if (got.size() != want.size()) return 1e30;
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return 1e30;
        const double d = double(got[i]) - double(want[i]);
        num += d * d;
        den += double(want[i]) * double(want[i]);
    }
    return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline double report(const std::string& what, double err, double tol) {
    std::printf("[gpu] %-72s rel err %.3e (tol %.0e) %s\n", what.c_str(), err, tol,
                err <= tol ? "ok" : "FAIL");
    std::fflush(stdout);
    return err;
}

// Bounds on a relative norm error, one per storage precision.
//
// Every bound in the GPU tests is at most ~30x the largest error the GPU runs measured for the
// same check, with the measured value in a comment next to it, and never above the bound it
// replaced. "Measured" is the largest value over the three H200 runs of 2026-11-27, whose test
// output is committed: bench/results/2026-11-27-h200-b/gpu_tests.log and
// bench/results/2026-11-27-h200-train/run-a/ and run-b/gpu_tests.log (run-b, at 537f86e, is the
// last). A check that no GPU run has measured yet keeps its bound and says
// "not yet measured on a GPU".
struct Bounds {
    double fp32, fp16, bf16;
    double operator()(Precision p) const {
        return p == Precision::FP32 ? fp32 : p == Precision::FP16 ? fp16 : bf16;
    }
};

// The generic kernel bound, for a new check until a GPU run has measured it (mark such a use
// "not yet measured on a GPU"): fp32 accumulation, true fp32 (no TF32): 1e-5; fp16/bf16 storage
// rounding of inputs and outputs (2^-11 / 2^-9 relative per element), fp32 accumulation: 1e-2.
inline double kernel_tolerance(Precision p) {
    return p == Precision::FP32 ? 1e-5 : 1e-2;
}

inline const Precision kAllPrecisions[] = {Precision::FP32, Precision::FP16, Precision::BF16};

// A lower bound on the activation arena from the shapes alone (NHWC, `elem` bytes per value): a
// depthwise conv cannot run in place, so each one's whole output is in the arena (a stride-2
// block's expand + depthwise may run in chunks of the batch, but its output is whole), and the
// first block (no expand conv) reads the stem's whole output while it writes its own.
inline size_t arena_lower_bound(const ModelConfig& c, int N, int H, int W, size_t elem) {
    int64_t h = (H + 1) / 2, w = (W + 1) / 2; // the stem: 3x3, stride 2, "same" output size
    const size_t stem = size_t(N) * size_t(c.stem_channels) * size_t(h * w) * elem;
    size_t bound = 0;
    for (size_t i = 0; i < c.blocks.size(); ++i) {
        const BlockConfig& b = c.blocks[i];
        h = (h + b.stride - 1) / b.stride;
        w = (w + b.stride - 1) / b.stride;
        size_t live = size_t(N) * size_t(b.expand_channels) * size_t(h * w) * elem;
        if (i == 0 && !b.has_expand()) live += stem;
        bound = std::max(bound, live);
    }
    return bound;
}

// The bytes of the conv and linear weights (batch norm folded into them), in `elem` bytes each.
inline size_t weight_bytes(const ModelConfig& c, size_t elem) {
    size_t count = 0;
    for (const ParamSpec& spec : parameter_specs(c))
        if (spec.name.find(".bn.") == std::string::npos && spec.name.find("bn.") != 0 &&
            spec.name.size() > 7 && spec.name.compare(spec.name.size() - 7, 7, ".weight") == 0)
            count += size_t(shape_numel(spec.shape));
    return count * elem;
}

} // namespace effnet::gpu_test
