#pragma once
// Helpers for the GPU tests: seeded random tensors, NCHW <-> NHWC, upload/download in a storage
// precision, NaN poisoning of outputs, and a one-line report of each measured error (the GPU run
// is rare, so every comparison prints its number, pass or fail).
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "effnet/inference.hpp"
#include "effnet/tensor.hpp"
#include "libeffnet/cuda/cuda_check.hpp"
#include "libeffnet/cuda/device_buffer.hpp"
#include "libeffnet/cuda/folded_weights.hpp"

namespace effnet::gpu_test {

#define EFFNET_SKIP_WITHOUT_GPU()                                                                            \
    do {                                                                                                     \
        if (!::effnet::cuda_available()) {                                                                   \
            WARN("no GPU: skipped (" << ::effnet::cuda_device_description() << ")");                         \
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

// Tolerances (relative norm error against the float64-accumulating CPU reference):
//   fp32: fp32 accumulation over at most a few thousand terms, true fp32 (no TF32): ~1e-6 seen in
//         practice, 1e-5 leaves room for expf and summation order.
//   fp16/bf16: storage rounding of inputs/outputs (2^-11 / 2^-9 relative per element), fp32
//         accumulation: 1e-2.
inline double kernel_tolerance(Precision p) {
    return p == Precision::FP32 ? 1e-5 : 1e-2;
}

inline const Precision kAllPrecisions[] = {Precision::FP32, Precision::FP16, Precision::BF16};

} // namespace effnet::gpu_test
