#include "kernels/depthwise_conv.cuh"

#include <algorithm>
#include <string>

#include "kernels/common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kPixelsPerThread = 4; // output pixels each thread computes per block

// Block: threadIdx.x over groups of V channels (TX = blockDim.x of them), threadIdx.y over
// output pixels of one image (blockIdx.z). Each thread keeps its channel group, so the fused
// squeeze sums in registers and the block reduces them before one atomicAdd per channel.
// Warp reads are contiguous: TX groups x consecutive pixels of an NHWC row.
template <typename T, int K, int V>
__global__ void __launch_bounds__(kThreads) depthwise_conv_kernel(DepthwiseArgs a, int pixels_per_block) {
    extern __shared__ float smem[];
    const int tx_count = blockDim.x;
    const int lane_channels = tx_count * V;          // channels this block covers
    float* w_s = smem;                               // [K*K][lane_channels]
    float* red_s = smem + K * K * lane_channels;     // [blockDim.y][lane_channels]

    const int C = a.channels;
    const int c_block = blockIdx.x * lane_channels;
    const int tid = threadIdx.y * tx_count + threadIdx.x;
    for (int i = tid; i < K * K * lane_channels; i += tx_count * blockDim.y) {
        const int tap = i / lane_channels, c = c_block + i % lane_channels;
        w_s[i] = c < C ? a.weight[tap * C + c] : 0.0f;
    }
    __syncthreads();

    const int c0 = c_block + threadIdx.x * V;
    const bool active = c0 < C; // C % V == 0, so a group is either fully in or out
    const int n = blockIdx.z;
    const int P = a.out_height * a.out_width;
    const int p_begin = blockIdx.y * pixels_per_block;
    const int p_end = min(P, p_begin + pixels_per_block);
    const T* x = static_cast<const T*>(a.input) + int64_t(n) * a.height * a.width * C;
    T* y = static_cast<T*>(a.output) + int64_t(n) * P * C;

    float bias[V], sum[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
        bias[v] = active ? a.bias[c0 + v] : 0.0f;
        sum[v] = 0.0f;
    }
    if (active) {
        for (int p = p_begin + threadIdx.y; p < p_end; p += blockDim.y) {
            const int oh = p / a.out_width, ow = p % a.out_width;
            float acc[V];
#pragma unroll
            for (int v = 0; v < V; ++v) acc[v] = bias[v];
#pragma unroll
            for (int kh = 0; kh < K; ++kh) {
                const int ih = oh * a.stride - a.pad_top + kh;
                if (ih < 0 || ih >= a.height) continue;
#pragma unroll
                for (int kw = 0; kw < K; ++kw) {
                    const int iw = ow * a.stride - a.pad_left + kw;
                    if (iw < 0 || iw >= a.width) continue;
                    float in[V];
                    load_vec<T, V>(x + (int64_t(ih) * a.width + iw) * C + c0, in);
                    const float* w = w_s + (kh * K + kw) * lane_channels + threadIdx.x * V;
#pragma unroll
                    for (int v = 0; v < V; ++v) acc[v] = fmaf(in[v], w[v], acc[v]);
                }
            }
#pragma unroll
            for (int v = 0; v < V; ++v) {
                acc[v] = apply_act(acc[v], a.act);
                sum[v] += acc[v];
            }
            store_vec<T, V>(y + int64_t(p) * C + c0, acc);
        }
    }
    if (a.pooled_sum == nullptr) return; // uniform across the grid

    // Squeeze: reduce the per-thread sums over threadIdx.y, then one atomicAdd per channel.
#pragma unroll
    for (int v = 0; v < V; ++v) red_s[threadIdx.y * lane_channels + threadIdx.x * V + v] = sum[v];
    __syncthreads();
    for (int i = tid; i < lane_channels; i += tx_count * blockDim.y) {
        const int c = c_block + i;
        if (c >= C) continue;
        float s = 0.0f;
        for (int r = 0; r < int(blockDim.y); ++r) s += red_s[r * lane_channels + i];
        atomicAdd(a.pooled_sum + int64_t(n) * C + c, s);
    }
}

template <typename T, int K, int V>
void launch_typed(const DepthwiseArgs& a, cudaStream_t stream) {
    const int groups = a.channels / V;
    const int tx = std::min(groups, 32);
    const int ty = kThreads / tx;
    const int pixels_per_block = ty * kPixelsPerThread;
    const int P = a.out_height * a.out_width;
    const dim3 grid(unsigned((groups + tx - 1) / tx), unsigned((P + pixels_per_block - 1) / pixels_per_block),
                    unsigned(a.batch));
    const size_t smem = (size_t(K) * K * tx * V + size_t(ty) * tx * V) * sizeof(float);
    depthwise_conv_kernel<T, K, V><<<grid, dim3(unsigned(tx), unsigned(ty)), smem, stream>>>(a, pixels_per_block);
    EFFNET_LAUNCH_CHECK("depthwise_conv_kernel");
}

template <typename T, int V>
void launch_kernel_size(const DepthwiseArgs& a, cudaStream_t stream) {
    if (a.kernel == 3) launch_typed<T, 3, V>(a, stream);
    else launch_typed<T, 5, V>(a, stream);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

} // namespace

void launch_depthwise_conv(const DepthwiseArgs& a, Precision precision, cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.weight && a.bias && a.output, "depthwise_conv: null pointer argument");
    EFFNET_CHECK(a.kernel == 3 || a.kernel == 5,
                 "depthwise_conv: kernel " + std::to_string(a.kernel) + " unsupported (3 or 5)");
    EFFNET_CHECK(a.batch >= 1 && a.batch <= 65535 && a.height >= 1 && a.width >= 1 && a.channels >= 1 &&
                     a.stride >= 1 && a.out_height >= 1 && a.out_width >= 1 && a.pad_top >= 0 &&
                     a.pad_left >= 0 && a.pad_top < a.kernel && a.pad_left < a.kernel,
                 "depthwise_conv: bad shape N=" + std::to_string(a.batch) + " H=" + std::to_string(a.height) +
                     " W=" + std::to_string(a.width) + " C=" + std::to_string(a.channels) +
                     " stride=" + std::to_string(a.stride));
    // Every output window must start inside the padded input.
    EFFNET_CHECK((a.out_height - 1) * a.stride - a.pad_top < a.height &&
                     (a.out_width - 1) * a.stride - a.pad_left < a.width,
                 "depthwise_conv: output size inconsistent with input size and padding");
    const bool vec_ok = aligned16(a.input) && aligned16(a.output);
    switch (precision) {
    case Precision::FP32:
        if (vec_ok && a.channels % 4 == 0) launch_kernel_size<float, 4>(a, stream);
        else launch_kernel_size<float, 1>(a, stream);
        break;
    case Precision::FP16:
        if (vec_ok && a.channels % 8 == 0) launch_kernel_size<__half, 8>(a, stream);
        else launch_kernel_size<__half, 1>(a, stream);
        break;
    case Precision::BF16:
        if (vec_ok && a.channels % 8 == 0) launch_kernel_size<__nv_bfloat16, 8>(a, stream);
        else launch_kernel_size<__nv_bfloat16, 1>(a, stream);
        break;
    }
}

} // namespace effnet::kernels
