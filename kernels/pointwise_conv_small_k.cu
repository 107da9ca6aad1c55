#include "kernels/pointwise_conv_small_k.cuh"

#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 32; // output channels per thread (blockIdx.y selects the chunk)

// x: [M, K], w: [N, K] (storage precision), y: [M, N]. Block: kThreads rows x one chunk.
template <typename T, int K>
__global__ void __launch_bounds__(kThreads) pointwise_small_k_kernel(PointwiseArgs a) {
    constexpr int kVec = int(16 / sizeof(T));
    __shared__ __align__(16) float w_s[K][kChunk]; // transposed: a k's 32 weights are contiguous
    __shared__ float b_s[kChunk];
    const int N = a.out_channels;
    const int n0 = blockIdx.y * kChunk;
    const T* w = static_cast<const T*>(a.weight);
    for (int i = threadIdx.x; i < K * kChunk; i += blockDim.x) {
        const int k = i % K, j = i / K; // consecutive threads read consecutive k of one weight row
        w_s[k][j] = n0 + j < N ? to_float(w[int64_t(n0 + j) * K + k]) : 0.0f;
    }
    for (int j = threadIdx.x; j < kChunk; j += blockDim.x) b_s[j] = n0 + j < N ? a.bias[n0 + j] : 0.0f;
    __syncthreads();

    const int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (m >= a.rows) return;
    float x[K];
    const T* xr = static_cast<const T*>(a.input) + m * K;
#pragma unroll
    for (int k = 0; k < K; k += kVec) {
        float v[kVec];
        load_vec<T, kVec>(xr + k, v);
#pragma unroll
        for (int j = 0; j < kVec; ++j) x[k + j] = v[j];
    }
    float acc[kChunk];
#pragma unroll
    for (int j = 0; j < kChunk; ++j) acc[j] = b_s[j];
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int j = 0; j < kChunk; j += 4) {
            float wv[4];
            load_f32<4>(&w_s[k][j], wv);
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[j + i] = fmaf(x[k], wv[i], acc[j + i]);
        }
    }
    T* y = static_cast<T*>(a.output) + m * N + n0;
#pragma unroll
    for (int j = 0; j < kChunk; j += kVec) {
        if (n0 + j >= N) break; // N % 8 == 0: vectors are whole
        float out[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = act_forward(acc[j + i], a.act);
        store_vec<T, kVec>(y + j, out);
    }
}

template <typename T, int K>
void launch_k(const PointwiseArgs& a, cudaStream_t stream) {
    const dim3 grid(unsigned((a.rows + kThreads - 1) / kThreads),
                    unsigned((a.out_channels + kChunk - 1) / kChunk));
    pointwise_small_k_kernel<T, K><<<grid, kThreads, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("pointwise_small_k_kernel");
}

template <typename T>
void launch_typed(const PointwiseArgs& a, cudaStream_t stream) {
    switch (a.in_channels) {
    case 8:
        return launch_k<T, 8>(a, stream);
    case 16:
        return launch_k<T, 16>(a, stream);
    case 24:
        return launch_k<T, 24>(a, stream);
    case 32:
        return launch_k<T, 32>(a, stream);
    case 40:
        return launch_k<T, 40>(a, stream);
    case 48:
        return launch_k<T, 48>(a, stream);
    case 56:
        return launch_k<T, 56>(a, stream);
    case 64:
        return launch_k<T, 64>(a, stream);
    }
}

} // namespace

bool pointwise_small_k_eligible(const PointwiseArgs& a, Precision) {
    return a.in_channels >= 8 && a.in_channels <= 64 && a.in_channels % 8 == 0 && a.out_channels % 8 == 0 &&
           a.gate == nullptr && a.residual == nullptr && aligned16({a.input, a.output, a.weight});
}

void launch_pointwise_small_k(const PointwiseArgs& a, Precision precision, cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.weight && a.bias && a.output, "pointwise_small_k: null pointer argument");
    EFFNET_CHECK(a.rows >= 1 && a.out_channels >= 1 && a.rows / 128 < (int64_t(1) << 31) &&
                     a.out_channels / kChunk < 65535,
                 "pointwise_small_k: bad shape M=" + std::to_string(a.rows) +
                     " N=" + std::to_string(a.out_channels));
    EFFNET_CHECK(
        pointwise_small_k_eligible(a, precision),
        "pointwise_small_k: needs K in {8, 16, ..., 64}, N % 8 == 0, no gate or residual and 16-byte "
        "aligned pointers (K=" +
            std::to_string(a.in_channels) + " N=" + std::to_string(a.out_channels) + ")");
    dispatch_storage(precision, [&](auto tag) { launch_typed<typename decltype(tag)::type>(a, stream); });
}

} // namespace effnet::kernels
