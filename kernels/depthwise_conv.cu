#include "kernels/depthwise_conv.cuh"

#include <algorithm>
#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/depthwise_conv_tile.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// Tiling. A thread owns V channels (one 16-byte vector: 8 fp16/bf16 or 4 fp32) and a strip of
// TW consecutive output pixels along W, so each input column it loads is converted once and
// reused by up to min(K, TW) outputs from registers. A block is CG channel groups (threadIdx.x)
// x a tile of TR output rows by TS strips (threadIdx.y = r * TS + s), all of one image
// (blockIdx.z): the rows of its input tile + halo are re-read by neighbouring threads through
// L1, so DRAM sees each input byte about once. Weights and the squeeze partial sums go through
// shared memory; the squeeze ends in one atomicAdd per (block, channel).
constexpr int kMaxThreads = 256;
constexpr int kMaxStripsAcross = 4; // TS at most: a tile is at most 4 strips wide

struct Tile {
    int strips_across = 1; // TS
    int rows = 1;          // TR
    int tiles_w = 1;       // tiles along W (blockIdx.x % tiles_w)
};

// K: kernel size. V: channels per thread. TW: output pixels per thread along W. S: the stride
// when TW > 1 (it fixes which loaded columns feed which output); TW == 1 takes any stride.
// Train: the training step's extras may be set (no bias, input affine, residual); a template
// parameter so that inference, which sets none of them, keeps its code and registers.
template <typename T, int K, int V, int TW, int S, bool Train>
__global__ void __launch_bounds__(kMaxThreads) depthwise_conv_kernel(DepthwiseArgs a, Tile t) {
    constexpr int kSpan = (TW - 1) * S + K; // input columns one strip reads per kernel row
    extern __shared__ __align__(16) float smem[];
    const int cg_count = blockDim.x;
    const int slab_channels = cg_count * V;
    float* w_s = smem;                           // [K*K][slab_channels]
    float* red_s = smem + K * K * slab_channels; // [blockDim.y][slab_channels]

    const int C = a.channels;
    const int tile_x = blockIdx.x % t.tiles_w;
    const int slab = blockIdx.x / t.tiles_w;
    const int c_slab = slab * slab_channels;
    const int tid = threadIdx.y * cg_count + threadIdx.x;
    const int nthreads = cg_count * blockDim.y;
    if constexpr (V % 4 == 0) { // slab and C multiples of 4: 16-byte async copies, all in flight
        stage_depthwise_weights(w_s, a.weight, K * K, C, c_slab, slab_channels, tid, nthreads);
        cp_async_commit();
        cp_async_wait<0>();
    } else {
        for (int i = tid; i < K * K * slab_channels; i += nthreads) {
            const int tap = i / slab_channels, c = c_slab + i % slab_channels;
            w_s[i] = c < C ? a.weight[tap * C + c] : 0.0f;
        }
    }
    __syncthreads();

    const int r = threadIdx.y / t.strips_across, s = threadIdx.y % t.strips_across;
    const int oh = blockIdx.y * t.rows + r;
    const int ow0 = (tile_x * t.strips_across + s) * TW;
    const int c0 = c_slab + threadIdx.x * V;
    // C % V == 0, so a channel group is entirely in or out.
    const bool active = c0 < C && oh < a.out_height && ow0 < a.out_width;
    const int n = blockIdx.z;

    float sum[V];
#pragma unroll
    for (int v = 0; v < V; ++v) sum[v] = 0.0f;

    if (active) {
        const T* x = static_cast<const T*>(a.input) + int64_t(n) * a.height * a.width * C + c0;
        float acc[TW][V];
        {
            float bias[V];
#pragma unroll
            for (int v = 0; v < V; ++v) bias[v] = !Train || a.bias != nullptr ? a.bias[c0 + v] : 0.0f;
#pragma unroll
            for (int j = 0; j < TW; ++j)
#pragma unroll
                for (int v = 0; v < V; ++v) acc[j][v] = bias[v];
        }
        // Train: the input affine, x * 1 + 0 (exact) when not given.
        float in_scale[V], in_shift[V];
        if constexpr (Train) {
            const bool affine = a.input_scale != nullptr;
#pragma unroll
            for (int v = 0; v < V; ++v) {
                in_scale[v] = affine ? a.input_scale[c0 + v] : 1.0f;
                in_shift[v] = affine ? a.input_shift[c0 + v] : 0.0f;
            }
        }
        const int ih0 = oh * a.stride - a.pad_top;
        const int iw0 = ow0 * a.stride - a.pad_left;
        const float* w_thread = w_s + threadIdx.x * V;
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
            const int ih = ih0 + kh;
            if (ih < 0 || ih >= a.height) continue; // zero padding rows add nothing
            const T* row = x + int64_t(ih) * a.width * C;
            // All loads of this kernel row first (independent, in flight together), then the FMAs.
            float in[kSpan][V];
#pragma unroll
            for (int c = 0; c < kSpan; ++c) {
                const int iw = iw0 + c;
                if (iw >= 0 && iw < a.width) {
                    load_vec<T, V>(row + int64_t(iw) * C, in[c]);
                    if constexpr (Train) {
#pragma unroll
                        for (int v = 0; v < V; ++v) in[c][v] = fmaf(in[c][v], in_scale[v], in_shift[v]);
                    }
                    if (a.input_act != Act::None) {
#pragma unroll
                        for (int v = 0; v < V; ++v)
                            in[c][v] = act_forward<act_math_for<T>>(in[c][v], a.input_act);
                    }
                } else {
#pragma unroll
                    for (int v = 0; v < V; ++v) in[c][v] = 0.0f;
                }
            }
#pragma unroll
            for (int kw = 0; kw < K; ++kw) {
                float w[V]; // 16-byte words when V % 4 == 0: the slab and thread offset are multiples of 4
                load_f32<V>(w_thread + (kh * K + kw) * slab_channels, w);
#pragma unroll
                for (int j = 0; j < TW; ++j)
#pragma unroll
                    for (int v = 0; v < V; ++v) acc[j][v] = fmaf(in[j * S + kw][v], w[v], acc[j][v]);
            }
        }
        finish_depthwise_strip<T, V, TW, Train>(a, n, oh, ow0, c0, acc, sum);
    }
    if (a.pooled_sum == nullptr) return; // uniform across the grid

    add_squeeze_sums<V>(sum, red_s, a.pooled_sum + int64_t(n) * C, C, c_slab, slab_channels, tid, nthreads);
}

template <typename T, int K, int V, int TW, int S>
void launch_tiled(const DepthwiseArgs& a, cudaStream_t stream) {
    const DepthwiseTiling p = plan_depthwise_tiling(a.channels / V, V == 1 ? 32 : 8, a.out_height,
                                                    a.out_width, TW, kMaxStripsAcross, kMaxThreads);
    Tile t;
    t.strips_across = p.strips_across;
    t.rows = p.rows;
    t.tiles_w = p.tiles_w;
    const int cg = p.cg;
    const dim3 block(unsigned(cg), unsigned(t.strips_across * t.rows));
    const dim3 grid(unsigned(p.slabs * t.tiles_w), unsigned(p.tiles_h), unsigned(a.batch));
    const size_t smem = (size_t(K) * K + block.y) * size_t(cg) * V * sizeof(float);
    if (depthwise_train_extras(a))
        depthwise_conv_kernel<T, K, V, TW, S, true><<<grid, block, smem, stream>>>(a, t);
    else
        depthwise_conv_kernel<T, K, V, TW, S, false><<<grid, block, smem, stream>>>(a, t);
    EFFNET_LAUNCH_CHECK("depthwise_conv_kernel");
}

template <typename T, int K, int V>
void launch_vector(const DepthwiseArgs& a, cudaStream_t stream) {
    // Measured on an H200, fp16, batch 32, every B0/B4/B7 layer (bench_depthwise forces each
    // length): the longest strip wins everywhere, 1.3-2x over one pixel per thread, even on the
    // small late layers where it leaves SMs idle; only at Wo <= 7 is TW = 2 ahead (10-25%).
    // Stride 2 stops at TW = 2: TW = 4 needs (3 * 2 + K) input columns in registers (~160 for
    // fp16, ptxas), which halves the blocks per SM.
    int tw = a.pixels_per_thread;
    if (tw == 0) tw = a.stride == 1 ? (a.out_width >= 8 ? 4 : 2) : a.stride == 2 ? 2 : 1;
    if (tw == 4 && a.stride == 1)
        launch_tiled<T, K, V, 4, 1>(a, stream);
    else if (tw == 2 && a.stride == 1)
        launch_tiled<T, K, V, 2, 1>(a, stream);
    else if (tw == 2 && a.stride == 2)
        launch_tiled<T, K, V, 2, 2>(a, stream);
    else
        launch_tiled<T, K, V, 1, 1>(a, stream);
}

template <typename T>
void launch_typed(const DepthwiseArgs& a, bool vec_ok, cudaStream_t stream) {
    constexpr int kVec = int(16 / sizeof(T));
    if (vec_ok && a.channels % kVec == 0) {
        if (a.kernel == 3)
            launch_vector<T, 3, kVec>(a, stream);
        else
            launch_vector<T, 5, kVec>(a, stream);
    } else { // odd channel counts or unaligned views: scalar, one pixel per thread
        if (a.kernel == 3)
            launch_tiled<T, 3, 1, 1, 1>(a, stream);
        else
            launch_tiled<T, 5, 1, 1, 1>(a, stream);
    }
}

} // namespace

bool depthwise_schedule_supported(const DepthwiseArgs& a, Precision precision, DepthwiseSchedule schedule) {
    return schedule == DepthwiseSchedule::RegisterStrips || depthwise_shared_tile_eligible(a, precision);
}

void launch_depthwise_conv(const DepthwiseArgs& a, Precision precision, cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.weight && a.output, "depthwise_conv: null pointer argument");
    EFFNET_CHECK((a.input_scale == nullptr) == (a.input_shift == nullptr),
                 "depthwise_conv: input_scale and input_shift must be both set or both null");
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
    EFFNET_CHECK(a.pixels_per_thread == 0 || a.pixels_per_thread == 1 ||
                     (a.pixels_per_thread == 2 && a.stride <= 2) ||
                     (a.pixels_per_thread == 4 && a.stride == 1),
                 "depthwise_conv: pixels_per_thread " + std::to_string(a.pixels_per_thread) +
                     " unsupported at stride " + std::to_string(a.stride) + " (0, 1, 2, or 4 at stride 1)");
    if (a.schedule == DepthwiseSchedule::SharedTile || a.schedule == DepthwiseSchedule::SharedTileSmall) {
        launch_depthwise_shared_tile(a, precision,
                                     a.schedule == DepthwiseSchedule::SharedTileSmall ? 128 : 256, stream);
        return;
    }
    const bool vec_ok = aligned16({a.input, a.output, a.weight, a.residual});
    dispatch_storage(precision,
                     [&](auto tag) { launch_typed<typename decltype(tag)::type>(a, vec_ok, stream); });
}

} // namespace effnet::kernels
