#include "kernels/fused_mbconv.cuh"

#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int CC = 32; // expanded channels per block (one per lane)
constexpr int KC = 32; // input channels per shared-memory chunk of the expand GEMM
constexpr int kWarps = kThreads / 32;

// Output tile per block: 8x8 at stride 1, 4x4 at stride 2 (about the same input extent).
__host__ __device__ constexpr int tile_side(int stride) {
    return stride == 1 ? 8 : 4;
}
__host__ __device__ constexpr int in_side(int stride, int k) {
    return (tile_side(stride) - 1) * stride + k;
}

// Block: (chunk of CC expanded channels, output tile, image). Lane = expanded channel.
// Phase 1, expand: E[p][c] = act(x[p, :] . We[c, :] + be[c]) for every input pixel p of the
// tile (halo included); 0 where p is padding (the depthwise sees zero-padded *expanded* input).
//   Warp w owns pixels w, w+8, ...; x chunks are read as broadcasts, We rows per lane.
// Phase 2, depthwise from E, activation, store, and the squeeze sums.
template <typename T, int K, int S>
__global__ void __launch_bounds__(kThreads) fused_expand_dw_kernel(FusedExpandDepthwiseArgs a) {
    constexpr int TS = tile_side(S), IS = in_side(S, K), PIN = IS * IS;
    constexpr int PPW = (PIN + kWarps - 1) / kWarps; // input pixels per warp
    __shared__ float xs[PIN][KC];                    // input chunk
    __shared__ float ws[CC][KC + 1];                 // expand weight chunk (padded: lanes read rows)
    __shared__ float es[PIN][CC];                    // expanded, activated tile
    __shared__ float red[kWarps][CC];                // squeeze partial sums

    const int Cin = a.in_channels, Ce = a.expand_channels;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int c_base = blockIdx.x * CC;
    const int c = c_base + lane;
    const bool c_ok = c < Ce;
    const int tiles_w = (a.out_width + TS - 1) / TS;
    const int oh0 = (blockIdx.y / tiles_w) * TS, ow0 = (blockIdx.y % tiles_w) * TS;
    const int ih0 = oh0 * S - a.pad_top, iw0 = ow0 * S - a.pad_left;
    const int n = blockIdx.z;
    const T* x = static_cast<const T*>(a.input) + int64_t(n) * a.height * a.width * Cin;
    const T* we = static_cast<const T*>(a.expand_weight);

    float acc[PPW];
#pragma unroll
    for (int i = 0; i < PPW; ++i) acc[i] = 0.0f;

    for (int k0 = 0; k0 < Cin; k0 += KC) {
        for (int e = threadIdx.x; e < PIN * KC; e += kThreads) {
            const int p = e / KC, kk = e % KC, k = k0 + kk;
            const int ih = ih0 + p / IS, iw = iw0 + p % IS;
            float v = 0.0f;
            if (k < Cin && ih >= 0 && ih < a.height && iw >= 0 && iw < a.width)
                v = to_float(x[(int64_t(ih) * a.width + iw) * Cin + k]);
            xs[p][kk] = v;
        }
        for (int e = threadIdx.x; e < CC * KC; e += kThreads) {
            const int cc = e / KC, kk = e % KC, k = k0 + kk;
            ws[cc][kk] = (c_base + cc < Ce && k < Cin) ? to_float(we[int64_t(c_base + cc) * Cin + k]) : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < KC; ++kk) {
            const float wv = ws[lane][kk];
#pragma unroll
            for (int i = 0; i < PPW; ++i) {
                const int p = warp + i * kWarps;
                if (p < PIN) acc[i] = fmaf(xs[p][kk], wv, acc[i]);
            }
        }
        __syncthreads();
    }
    const float be = c_ok ? a.expand_bias[c] : 0.0f;
#pragma unroll
    for (int i = 0; i < PPW; ++i) {
        const int p = warp + i * kWarps;
        if (p >= PIN) continue;
        const int ih = ih0 + p / IS, iw = iw0 + p % IS;
        const bool inside = ih >= 0 && ih < a.height && iw >= 0 && iw < a.width;
        // Round through the storage type, as the unfused path stores the expanded tensor.
        es[p][lane] = (inside && c_ok) ? to_float(from_float<T>(act_forward(acc[i] + be, a.act))) : 0.0f;
    }
    __syncthreads();

    // Depthwise: warp w computes output pixels w, w+8, ... of the tile for channel c.
    float wd[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t) wd[t] = c_ok ? a.dw_weight[t * Ce + c] : 0.0f;
    const float bd = c_ok ? a.dw_bias[c] : 0.0f;
    T* y = static_cast<T*>(a.output) + int64_t(n) * a.out_height * a.out_width * Ce;
    float sum = 0.0f;
    for (int q = warp; q < TS * TS; q += kWarps) {
        const int oy = q / TS, ox = q % TS;
        const int oh = oh0 + oy, ow = ow0 + ox;
        if (oh >= a.out_height || ow >= a.out_width || !c_ok) continue;
        float v = bd;
#pragma unroll
        for (int ky = 0; ky < K; ++ky)
#pragma unroll
            for (int kx = 0; kx < K; ++kx)
                v = fmaf(es[(oy * S + ky) * IS + ox * S + kx][lane], wd[ky * K + kx], v);
        v = act_forward(v, a.act);
        sum += v;
        y[(int64_t(oh) * a.out_width + ow) * Ce + c] = from_float<T>(v);
    }
    if (a.pooled_sum == nullptr) return; // uniform across the grid
    red[warp][lane] = sum;
    __syncthreads();
    if (warp == 0 && c_ok) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) s += red[w][lane];
        atomicAdd(a.pooled_sum + int64_t(n) * Ce + c, s);
    }
}

template <typename T, int K, int S>
void launch_typed(const FusedExpandDepthwiseArgs& a, cudaStream_t stream) {
    constexpr int TS = tile_side(S);
    const int tiles = ((a.out_height + TS - 1) / TS) * ((a.out_width + TS - 1) / TS);
    const dim3 grid(unsigned((a.expand_channels + CC - 1) / CC), unsigned(tiles), unsigned(a.batch));
    fused_expand_dw_kernel<T, K, S><<<grid, kThreads, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("fused_expand_dw_kernel");
}

template <typename T>
void launch_shape(const FusedExpandDepthwiseArgs& a, cudaStream_t stream) {
    if (a.kernel == 3 && a.stride == 1)
        launch_typed<T, 3, 1>(a, stream);
    else if (a.kernel == 3 && a.stride == 2)
        launch_typed<T, 3, 2>(a, stream);
    else if (a.kernel == 5 && a.stride == 1)
        launch_typed<T, 5, 1>(a, stream);
    else
        launch_typed<T, 5, 2>(a, stream);
}

} // namespace

bool fused_expand_depthwise_supported(const FusedExpandDepthwiseArgs& a) {
    const int ts = tile_side(a.stride);
    const int64_t tiles = int64_t((a.out_height + ts - 1) / ts) * ((a.out_width + ts - 1) / ts);
    return (a.kernel == 3 || a.kernel == 5) && (a.stride == 1 || a.stride == 2) && tiles <= 65535 &&
           a.batch >= 1 && a.batch <= 65535;
}

void launch_fused_expand_depthwise(const FusedExpandDepthwiseArgs& a, Precision precision,
                                   cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.expand_weight && a.expand_bias && a.dw_weight && a.dw_bias && a.output,
                 "fused_expand_depthwise: null pointer argument");
    EFFNET_CHECK(a.height >= 1 && a.width >= 1 && a.in_channels >= 1 && a.expand_channels >= 1 &&
                     a.out_height >= 1 && a.out_width >= 1 && a.pad_top >= 0 && a.pad_left >= 0 &&
                     a.pad_top < a.kernel && a.pad_left < a.kernel,
                 "fused_expand_depthwise: bad shape H=" + std::to_string(a.height) +
                     " W=" + std::to_string(a.width) + " Cin=" + std::to_string(a.in_channels) +
                     " Ce=" + std::to_string(a.expand_channels));
    EFFNET_CHECK(fused_expand_depthwise_supported(a), "fused_expand_depthwise: unsupported kernel " +
                                                          std::to_string(a.kernel) + " / stride " +
                                                          std::to_string(a.stride) + " / size");
    EFFNET_CHECK((a.out_height - 1) * a.stride - a.pad_top < a.height &&
                     (a.out_width - 1) * a.stride - a.pad_left < a.width,
                 "fused_expand_depthwise: output size inconsistent with input size and padding");
    dispatch_storage(precision, [&](auto tag) { launch_shape<typename decltype(tag)::type>(a, stream); });
}

} // namespace effnet::kernels
