#include "kernels/stem_conv.cuh"

#include <algorithm>
#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// Generic: one thread per output element (n, oh, ow, co), co fastest so the NHWC stores coalesce and a
// warp's input reads are broadcasts. The folded weights live in shared memory.
template <typename T>
__global__ void __launch_bounds__(256) stem_conv_kernel(StemConvArgs a) {
    extern __shared__ float smem[]; // [k*k*Cin*Cout] weights
    const int weight_count = a.kernel * a.kernel * a.in_channels * a.out_channels;
    for (int i = threadIdx.x; i < weight_count; i += blockDim.x) smem[i] = a.weight[i];
    __syncthreads();

    const int64_t total = int64_t(a.batch) * a.out_height * a.out_width * a.out_channels;
    T* y = static_cast<T*>(a.output);
    for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x) {
        const int co = int(idx % a.out_channels);
        int64_t pix = idx / a.out_channels;
        const int ow = int(pix % a.out_width);
        pix /= a.out_width;
        const int oh = int(pix % a.out_height);
        const int n = int(pix / a.out_height);
        float acc = a.bias[co];
        for (int kh = 0; kh < a.kernel; ++kh) {
            const int ih = oh * a.stride - a.pad_top + kh;
            if (ih < 0 || ih >= a.height) continue;
            for (int kw = 0; kw < a.kernel; ++kw) {
                const int iw = ow * a.stride - a.pad_left + kw;
                if (iw < 0 || iw >= a.width) continue;
                const float* w = smem + ((kh * a.kernel + kw) * a.in_channels) * a.out_channels + co;
                for (int ci = 0; ci < a.in_channels; ++ci) {
                    const float xv =
                        __ldg(a.input + ((int64_t(n) * a.in_channels + ci) * a.height + ih) * a.width + iw);
                    acc = fmaf(xv, w[ci * a.out_channels], acc);
                }
            }
        }
        y[idx] = from_float<T>(act_forward(acc, a.act));
    }
}

// The EfficientNet stem: 3x3, 3 input channels, COUT a multiple of 8 (32..64 in B0..B7 and
// Lite). One thread per output pixel computes all COUT channels: its 27 inputs are loaded once
// (consecutive threads read neighbouring columns, so the loads coalesce through L1), the folded
// weights are warp-wide broadcasts from shared memory, and the pixel's COUT outputs leave as
// 16-byte stores. The generic kernel above (a thread per output element, 27 loads each) took
// 40% of B0's forward at batch 256 on an H200.
constexpr int kStemThreads = 128;

template <typename T, int COUT>
__global__ void __launch_bounds__(kStemThreads) stem_conv3x3_kernel(StemConvArgs a) {
    constexpr int kTaps = 3 * 3 * 3;                  // (kh, kw, ci)
    __shared__ __align__(16) float w_s[kTaps * COUT]; // [kh][kw][ci][COUT]
    __shared__ float b_s[COUT];
    // 16-byte async copies, all in flight at once (a load-store loop waits on memory once per
    // iteration, and every block pays it).
    for (int i = threadIdx.x; i < kTaps * COUT / 4; i += blockDim.x)
        cp_async16(w_s + 4 * i, a.weight + 4 * i, true);
    cp_async_commit();
    for (int i = threadIdx.x; i < COUT; i += blockDim.x) b_s[i] = a.bias[i];
    cp_async_wait<0>();
    __syncthreads();

    const int64_t pixels = int64_t(a.batch) * a.out_height * a.out_width;
    const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p >= pixels) return;
    const int ow = int(p % a.out_width);
    const int oh = int((p / a.out_width) % a.out_height);
    const int n = int(p / (int64_t(a.out_width) * a.out_height));
    const int64_t plane = int64_t(a.height) * a.width;
    const float* x = a.input + int64_t(n) * 3 * plane;

    float acc[COUT];
#pragma unroll
    for (int c = 0; c < COUT; ++c) acc[c] = b_s[c];
#pragma unroll
    for (int kh = 0; kh < 3; ++kh) {
        const int ih = oh * a.stride - a.pad_top + kh;
        const bool row_ok = ih >= 0 && ih < a.height;
#pragma unroll
        for (int kw = 0; kw < 3; ++kw) {
            const int iw = ow * a.stride - a.pad_left + kw;
            const bool ok = row_ok && iw >= 0 && iw < a.width;
#pragma unroll
            for (int ci = 0; ci < 3; ++ci) {
                const float v = ok ? __ldg(x + ci * plane + int64_t(ih) * a.width + iw) : 0.0f;
                const float* w_tap = w_s + ((kh * 3 + kw) * 3 + ci) * COUT;
#pragma unroll
                for (int c = 0; c < COUT; c += 4) {
                    float w[4];
                    load_f32<4>(w_tap + c, w);
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[c + j] = fmaf(v, w[j], acc[c + j]);
                }
            }
        }
    }
    constexpr int kVec = int(16 / sizeof(T));
    T* y = static_cast<T*>(a.output) + p * COUT;
#pragma unroll
    for (int c = 0; c < COUT; c += kVec) {
        float out[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) out[j] = act_forward(acc[c + j], a.act);
        store_vec<T, kVec>(y + c, out);
    }
}

template <typename T, int COUT>
void launch_stem3x3(const StemConvArgs& a, cudaStream_t stream) {
    const int64_t pixels = int64_t(a.batch) * a.out_height * a.out_width;
    const int64_t blocks = (pixels + kStemThreads - 1) / kStemThreads;
    stem_conv3x3_kernel<T, COUT><<<unsigned(blocks), kStemThreads, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("stem_conv3x3_kernel");
}

// The specialised kernel when the shape allows it, else the generic one. Returns false when no
// specialisation matches.
template <typename T>
bool launch_stem3x3_if_supported(const StemConvArgs& a, cudaStream_t stream) {
    if (a.kernel != 3 || a.in_channels != 3 || !aligned16({a.output, a.weight})) return false;
    switch (a.out_channels) {
    case 32:
        launch_stem3x3<T, 32>(a, stream);
        return true;
    case 40:
        launch_stem3x3<T, 40>(a, stream);
        return true;
    case 48:
        launch_stem3x3<T, 48>(a, stream);
        return true;
    case 56:
        launch_stem3x3<T, 56>(a, stream);
        return true;
    case 64:
        launch_stem3x3<T, 64>(a, stream);
        return true;
    default:
        return false;
    }
}

template <typename T>
void launch_typed(const StemConvArgs& a, bool generic, cudaStream_t stream) {
    if (!generic && launch_stem3x3_if_supported<T>(a, stream)) return;
    const size_t smem = size_t(a.kernel) * a.kernel * a.in_channels * a.out_channels * sizeof(float);
    const int64_t total = int64_t(a.batch) * a.out_height * a.out_width * a.out_channels;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535LL * 16);
    stem_conv_kernel<T><<<unsigned(blocks), threads, smem, stream>>>(a);
    EFFNET_LAUNCH_CHECK("stem_conv_kernel");
}

} // namespace

void launch_stem_conv(const StemConvArgs& a, Precision precision, cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.weight && a.bias && a.output, "stem_conv: null pointer argument");
    EFFNET_CHECK(a.batch >= 1 && a.in_channels >= 1 && a.height >= 1 && a.width >= 1 && a.out_channels >= 1 &&
                     a.kernel >= 1 && a.stride >= 1 && a.out_height >= 1 && a.out_width >= 1,
                 "stem_conv: bad shape N=" + std::to_string(a.batch) +
                     " Cin=" + std::to_string(a.in_channels) + " H=" + std::to_string(a.height) +
                     " W=" + std::to_string(a.width) + " Cout=" + std::to_string(a.out_channels));
    const size_t smem = size_t(a.kernel) * a.kernel * a.in_channels * a.out_channels * sizeof(float);
    EFFNET_CHECK(smem <= 48 * 1024, "stem_conv: weights of " + std::to_string(smem) +
                                        " bytes exceed the 48 KiB shared-memory tile");
    dispatch_storage(
        precision, [&](auto tag) { launch_typed<typename decltype(tag)::type>(a, a.force_generic, stream); });
}

} // namespace effnet::kernels
