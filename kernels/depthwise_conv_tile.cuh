#pragma once
// Shared-memory-tile schedule of the depthwise convolution (see depthwise_conv.cuh for the op).
// A block stages its whole input tile (output tile + halo, a slab of channels) in shared memory
// with cp.async, 16-byte copies, zero-filled padding, every copy in flight at once; then each
// thread computes a strip of outputs along W from shared memory. The register-strip schedule
// (depthwise_conv.cu) instead loads each kernel row from global memory as it goes, so a thread
// waits on memory K times; here a block waits once. Internal to kernels/:
// launch_depthwise_conv() validates the arguments and calls this. Also the pieces the two
// schedules share: the tiling of a launch, the weight staging and the squeeze.
#include <algorithm>

#include "kernels/depthwise_conv.cuh"

namespace effnet::kernels {

// Whether the tile schedule can run these arguments: K 3 or 5, stride 1 or 2, C a multiple of
// the 16-byte vector, 16-byte aligned input, output, weights and residual.
bool depthwise_shared_tile_eligible(const DepthwiseArgs& args, Precision precision);

// max_threads: the block size budget, 256 or 128.
void launch_depthwise_shared_tile(const DepthwiseArgs& args, Precision precision, int max_threads,
                                  cudaStream_t stream);

// Threads across channels in a block: `widest` (8 x 16 B: one 128-byte line per pixel), unless
// that leaves more than a fifth of the last slab's lanes idle and a divisor of `groups` at
// least half as wide exists. Measured on an H200 (B0, batch 32, register strips): 144 fp16
// channels (18 groups: 8 + 8 + 2) run 10-14% faster as 3 slabs of 6; 240, 480 and 672 channels
// (a few percent idle at 8) ran 25-70% slower as slabs of 6 or 7, so they stay at 8.
inline int channel_groups_per_block(int groups, int widest) {
    if (groups <= widest) return groups;
    const int slabs = (groups + widest - 1) / widest;
    if (5 * (slabs * widest - groups) <= slabs * widest) return widest;
    for (int cg = widest - 1; cg * 2 >= widest; --cg)
        if (groups % cg == 0) return cg;
    return widest;
}

// Whether any of the training step's extras is set (no bias, an input affine, a residual): both
// schedules then run a kernel variant that handles them; inference keeps the plain one.
inline bool depthwise_train_extras(const DepthwiseArgs& a) {
    return a.bias == nullptr || a.input_scale != nullptr || a.residual != nullptr;
}

inline int ceil_div(int a, int b) {
    return (a + b - 1) / b;
}

// How a launch of either schedule covers the output: channel slabs of `cg` 16-byte groups
// (threadIdx.x), and tiles of `rows` x `strips_across` strips of TW outputs along W (threadIdx.y),
// balanced: as large as the thread budget allows, split evenly so that none is mostly empty.
struct DepthwiseTiling {
    int cg = 1, slabs = 1;
    int strips_across = 1, tiles_w = 1; // strips side by side in a tile; tiles along W
    int rows = 1, tiles_h = 1;          // output rows in a tile; tiles along H
};

inline DepthwiseTiling plan_depthwise_tiling(int groups, int widest_cg, int out_height, int out_width, int tw,
                                             int max_strips_across, int max_threads) {
    DepthwiseTiling t;
    t.cg = channel_groups_per_block(groups, widest_cg);
    t.slabs = ceil_div(groups, t.cg);
    const int strips_w = ceil_div(out_width, tw);
    t.tiles_w = ceil_div(strips_w, max_strips_across);
    t.strips_across = ceil_div(strips_w, t.tiles_w);
    const int max_rows = std::max(1, max_threads / (t.cg * t.strips_across));
    t.tiles_h = ceil_div(out_height, max_rows);
    t.rows = ceil_div(out_height, t.tiles_h);
    return t;
}

#ifdef __CUDACC__
} // namespace effnet::kernels

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/vector_io.cuh"

namespace effnet::kernels {

// Device pieces both schedules share.

// Issues the 16-byte cp.async copies of a slab's weights, [taps][slab_channels] floats from
// weight [taps][C], zeros past C (C and slab_channels multiples of 4). The caller commits and
// waits: a plain load loop here waited on memory once per iteration, microseconds per block.
__device__ __forceinline__ void stage_depthwise_weights(float* w_s, const float* weight, int taps, int C,
                                                        int c_slab, int slab_channels, int tid,
                                                        int nthreads) {
    for (int i = tid; i < taps * slab_channels / 4; i += nthreads) {
        const int tap = (i * 4) / slab_channels, c = c_slab + (i * 4) % slab_channels;
        const bool ok = c < C;
        cp_async16(w_s + size_t(i) * 4, ok ? weight + tap * C + c : weight, ok);
    }
}

// The epilogue of one output pixel, `offset` elements into the output: the activation, the
// residual (Train only; read before the store, since it may alias the output), the pixel's
// share of the squeeze sums, the store.
template <typename T, int V, bool Train>
__device__ __forceinline__ void finish_depthwise_pixel(const DepthwiseArgs& a, int64_t offset,
                                                       float (&acc)[V], float (&sum)[V]) {
    const bool residual = Train && a.residual != nullptr;
    float r[V];
    if (residual) load_vec<T, V>(static_cast<const T*>(a.residual) + offset, r);
#pragma unroll
    for (int v = 0; v < V; ++v) {
        acc[v] = act_forward<act_math_for<T>>(acc[v], a.act);
        if (residual) acc[v] += r[v];
        sum[v] += acc[v];
    }
    store_vec<T, V>(static_cast<T*>(a.output) + offset, acc);
}

// The epilogue of a strip of TW output pixels along W from (n, oh, ow0), channels c0 .. c0 + V:
// the pixels inside the output.
template <typename T, int V, int TW, bool Train>
__device__ __forceinline__ void finish_depthwise_strip(const DepthwiseArgs& a, int n, int oh, int ow0, int c0,
                                                       float (&acc)[TW][V], float (&sum)[V]) {
    const int64_t y_offset = (int64_t(n) * a.out_height + oh) * a.out_width * a.channels + c0;
#pragma unroll
    for (int j = 0; j < TW; ++j) {
        if (ow0 + j >= a.out_width) break;
        finish_depthwise_pixel<T, V, Train>(a, y_offset + int64_t(ow0 + j) * a.channels, acc[j], sum);
    }
}

// The squeeze: reduces each thread's V per-channel sums over threadIdx.y through red_s
// ([blockDim.y][slab_channels] floats, free for the caller to give), then one atomicAdd per
// channel into pooled_image ([C], the block's image).
template <int V>
__device__ __forceinline__ void add_squeeze_sums(const float (&sum)[V], float* red_s, float* pooled_image,
                                                 int C, int c_slab, int slab_channels, int tid,
                                                 int nthreads) {
#pragma unroll
    for (int v = 0; v < V; ++v) red_s[threadIdx.y * slab_channels + threadIdx.x * V + v] = sum[v];
    __syncthreads();
    for (int i = tid; i < slab_channels; i += nthreads) {
        const int c = c_slab + i;
        if (c >= C) continue;
        float total = 0.0f;
        for (int q = 0; q < int(blockDim.y); ++q) total += red_s[q * slab_channels + i];
        atomicAdd(pooled_image + c, total);
    }
}
#endif

} // namespace effnet::kernels
