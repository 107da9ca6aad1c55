#include "kernels/pool_classifier.cuh"

#include <string>

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// Thread per (n, channel), looping over pixels: consecutive threads read consecutive channels.
template <typename T>
__global__ void __launch_bounds__(256) global_avg_pool_kernel(const T* x, float* out, int pixels, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int n = blockIdx.y;
    if (c >= C) return;
    const T* p = x + int64_t(n) * pixels * C + c;
    float s = 0.0f;
    for (int i = 0; i < pixels; ++i) s += to_float(p[int64_t(i) * C]);
    out[int64_t(n) * C + c] = s / float(pixels);
}

// One warp per output (n, m): lanes stride over K, then a warp reduction.
__global__ void __launch_bounds__(256)
    linear_kernel(const float* x, const float* w, const float* b, float* y, int N, int K, int M) {
    const int warp = int((int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32);
    const int lane = threadIdx.x % 32;
    if (warp >= N * M) return; // whole warps exit together
    const int n = warp / M, m = warp % M;
    const float* xr = x + int64_t(n) * K;
    const float* wr = w + int64_t(m) * K;
    float s = 0.0f;
    for (int k = lane; k < K; k += 32) s = fmaf(xr[k], wr[k], s);
    s = warp_sum(s);
    if (lane == 0) y[int64_t(n) * M + m] = s + (b ? b[m] : 0.0f);
}

} // namespace

void launch_global_avg_pool(const void* input, float* output, int batch, int pixels, int channels,
                            Precision precision, cudaStream_t stream) {
    EFFNET_CHECK(input && output, "global_avg_pool: null pointer argument");
    EFFNET_CHECK(batch >= 1 && batch <= 65535 && pixels >= 1 && channels >= 1,
                 "global_avg_pool: bad shape N=" + std::to_string(batch) + " HW=" + std::to_string(pixels) +
                     " C=" + std::to_string(channels));
    const dim3 grid(unsigned((channels + 255) / 256), unsigned(batch));
    dispatch_storage(precision, [&](auto tag) {
        using T = typename decltype(tag)::type;
        global_avg_pool_kernel<T>
            <<<grid, 256, 0, stream>>>(static_cast<const T*>(input), output, pixels, channels);
    });
    EFFNET_LAUNCH_CHECK("global_avg_pool_kernel");
}

void launch_linear(const float* input, const float* weight, const float* bias, float* output, int batch,
                   int in_features, int out_features, cudaStream_t stream) {
    EFFNET_CHECK(input && weight && output, "linear: null pointer argument");
    EFFNET_CHECK(batch >= 1 && in_features >= 1 && out_features >= 1 &&
                     int64_t(batch) * out_features <= (int64_t(1) << 26),
                 "linear: bad shape N=" + std::to_string(batch) + " K=" + std::to_string(in_features) +
                     " M=" + std::to_string(out_features));
    const int64_t threads = int64_t(batch) * out_features * 32;
    linear_kernel<<<unsigned((threads + 255) / 256), 256, 0, stream>>>(input, weight, bias, output, batch,
                                                                       in_features, out_features);
    EFFNET_LAUNCH_CHECK("linear_kernel");
}

} // namespace effnet::kernels
