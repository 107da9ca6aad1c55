#include "kernels/depthwise_conv_train.cuh"

#include <algorithm>
#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/depthwise_conv.cuh"
#include "kernels/depthwise_conv_tile.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

// ---- Weight layouts ----------------------------------------------------------------------------

// i = tap * C + c: taps[i] = w[c][tap], flipped[(k*k - 1 - tap) * C + c] = w[c][tap]
// ((k-1-kh)*k + (k-1-kw) = k*k - 1 - tap). The writes are coalesced; w is small.
__global__ void depthwise_weight_taps_kernel(const float* w, float* taps, float* flipped, int C, int kk) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= C * kk) return;
    const int tap = i / C, c = i - tap * C;
    const float v = w[c * kk + tap];
    if (taps != nullptr) taps[i] = v;
    if (flipped != nullptr) flipped[(kk - 1 - tap) * C + c] = v;
}

// ---- Data gradient: gather -----------------------------------------------------------------------

// dx[hi][wi] = sum over taps (kh, kw) with hi + pad_top - kh = ho * S and wi + pad_left - kw =
// wo * S of dy[ho][wo] * w[kh][kw]. In padded coordinates th = hi + pad_top = S * a + p, the taps
// reaching row hi are kh = p + S * j (dy row a - j), j < J = ceil(K / S): only those, no modulo
// tests. A thread owns V channels (one 16-byte vector, or 1) of one dx row and a strip of Q * S
// columns whose padded start t0 = wi + pad_left is a multiple of S, so that the column phase q
// of each of its outputs, hence its taps kw = q + S * i, are compile-time: output t0 + m * S + q
// reads dy column t0 / S + m - i. The strip's Q + J - 1 dy columns of a row are loaded once
// (all in flight) and each feeds every output whose window covers it, as in the forward's
// register strips. Blocks: channel groups (threadIdx.x) x rows x strips (threadIdx.y), one image
// (blockIdx.z); the flipped taps of the block's channel slab in shared memory.
struct GatherTile {
    int strips_across = 1; // strips side by side in a tile
    int rows = 1;          // dx rows in a tile
    int tiles_w = 1;       // tiles along W (blockIdx.x % tiles_w)
};

template <typename T, int K, int V, int Q, int S>
__global__ void __launch_bounds__(kThreads)
    depthwise_data_grad_kernel(const T* dy, const float* flipped, const T* add, T* dx, DepthwiseShape s,
                               GatherTile t) {
    constexpr int J = (K + S - 1) / S;           // dy rows (and columns per output) that reach one dx pixel
    constexpr int kCols = Q + J - 1;             // dy columns one strip reads per dy row
    extern __shared__ __align__(16) float w_s[]; // [K*K][slab_channels] flipped taps
    const int cg_count = blockDim.x;
    const int slab_channels = cg_count * V;
    const int C = s.channels;
    const int tile_x = blockIdx.x % t.tiles_w, slab = blockIdx.x / t.tiles_w;
    const int c_slab = slab * slab_channels;
    const int tid = threadIdx.y * cg_count + threadIdx.x;
    const int nthreads = cg_count * blockDim.y;
    if constexpr (V % 4 == 0) { // C and the slab multiples of 4: 16-byte async copies
        stage_depthwise_weights(w_s, flipped, K * K, C, c_slab, slab_channels, tid, nthreads);
        cp_async_commit();
        cp_async_wait<0>();
    } else {
        for (int i = tid; i < K * K * slab_channels; i += nthreads) {
            const int tap = i / slab_channels, c = c_slab + i % slab_channels;
            w_s[i] = c < C ? flipped[tap * C + c] : 0.0f;
        }
    }
    __syncthreads(); // the last barrier: threads may leave from here on

    const int r = threadIdx.y / t.strips_across, strip = threadIdx.y % t.strips_across;
    const int hi = blockIdx.y * t.rows + r;
    const int t0 = (tile_x * t.strips_across + strip) * (Q * S);
    const int c0 = c_slab + threadIdx.x * V;
    if (c0 >= C || hi >= s.height || t0 - s.pad_left >= s.width) return; // C % V == 0
    const int n = blockIdx.z;

    float acc[Q * S][V];
#pragma unroll
    for (int o = 0; o < Q * S; ++o)
#pragma unroll
        for (int v = 0; v < V; ++v) acc[o][v] = 0.0f;

    const int th = hi + s.pad_top;
    const int p = th % S, a = th / S;
    const int wo0 = t0 / S - (J - 1); // dy column of the strip's first loaded column
    const T* dy_n = dy + int64_t(n) * s.out_height * s.out_width * C + c0;
    const float* w_thread = w_s + threadIdx.x * V;
#pragma unroll
    for (int j = 0; j < J; ++j) {
        const int kh = p + S * j, ho = a - j;
        if (kh >= K || ho < 0 || ho >= s.out_height) continue;
        // This row's weights: tap (kh, kw) is flipped tap (K-1-kh, K-1-kw).
        float w[K][V];
        const float* w_row = w_thread + (K - 1 - kh) * K * slab_channels;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) load_f32<V>(w_row + (K - 1 - kw) * slab_channels, w[kw]);
        const T* row = dy_n + int64_t(ho) * s.out_width * C;
        float in[kCols][V];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
            const int wo = wo0 + c;
            if (wo >= 0 && wo < s.out_width) {
                load_vec<T, V>(row + int64_t(wo) * C, in[c]);
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) in[c][v] = 0.0f;
            }
        }
        // Column c is dy column t0 / S + m - i for output (m, q) through tap kw = q + S * i.
#pragma unroll
        for (int c = 0; c < kCols; ++c)
#pragma unroll
            for (int m = 0; m < Q; ++m) {
                const int i = m + J - 1 - c;
                if (i < 0 || i >= J) continue; // resolved at compile time
#pragma unroll
                for (int q = 0; q < S; ++q) {
                    const int kw = q + S * i;
                    if (kw >= K) continue;
#pragma unroll
                    for (int v = 0; v < V; ++v)
                        acc[m * S + q][v] = fmaf(in[c][v], w[kw][v], acc[m * S + q][v]);
                }
            }
    }
    const int64_t row_offset = (int64_t(n) * s.height + hi) * s.width;
#pragma unroll
    for (int o = 0; o < Q * S; ++o) {
        const int wi = t0 + o - s.pad_left;
        if (wi < 0) continue; // the first strip starts left of the image
        if (wi >= s.width) break;
        const int64_t offset = (row_offset + wi) * C + c0;
        if (add != nullptr) { // read before the store: dx may alias add
            float r[V];
            load_vec<T, V>(add + offset, r);
#pragma unroll
            for (int v = 0; v < V; ++v) acc[o][v] += r[v];
        }
        store_vec<T, V>(dx + offset, acc[o]);
    }
}

template <typename T, int K, int V, int S>
void launch_data_grad_gather(const T* dy, const float* flipped, const T* add, T* dx, const DepthwiseShape& s,
                             cudaStream_t stream) {
    constexpr int Q = S == 1 ? 4 : 2; // 4 dx columns per thread, as the forward's strips
    const DepthwiseTiling p = plan_depthwise_tiling(s.channels / V, V == 1 ? 32 : 8, s.height,
                                                    s.width + s.pad_left, Q * S, 4, kThreads);
    GatherTile t;
    t.strips_across = p.strips_across;
    t.rows = p.rows;
    t.tiles_w = p.tiles_w;
    const dim3 block(unsigned(p.cg), unsigned(t.strips_across * t.rows));
    const dim3 grid(unsigned(p.slabs * t.tiles_w), unsigned(p.tiles_h), unsigned(s.batch));
    const size_t smem = size_t(K) * K * p.cg * V * sizeof(float);
    depthwise_data_grad_kernel<T, K, V, Q, S><<<grid, block, smem, stream>>>(dy, flipped, add, dx, s, t);
    EFFNET_LAUNCH_CHECK("depthwise_data_grad_kernel");
}

template <typename T, int V>
void launch_data_grad_vector(const T* dy, const float* flipped, const T* add, T* dx, const DepthwiseShape& s,
                             cudaStream_t stream) {
    if (s.kernel == 3 && s.stride == 1)
        launch_data_grad_gather<T, 3, V, 1>(dy, flipped, add, dx, s, stream);
    else if (s.kernel == 3)
        launch_data_grad_gather<T, 3, V, 2>(dy, flipped, add, dx, s, stream);
    else if (s.stride == 1)
        launch_data_grad_gather<T, 5, V, 1>(dy, flipped, add, dx, s, stream);
    else
        launch_data_grad_gather<T, 5, V, 2>(dy, flipped, add, dx, s, stream);
}

// ---- Weight gradient -----------------------------------------------------------------------------

// The reduction's chunks: whole output rows (n, ho), about 512 output positions each, at most 512
// chunks. A function of the shape only: the trainer sizes the workspace before choosing a
// precision-specific kernel.
struct WeightGradChunks {
    int count = 1, rows_per_chunk = 1;
};
WeightGradChunks weight_grad_chunks(const DepthwiseShape& s) {
    const int64_t rows = int64_t(s.batch) * s.out_height;
    const int64_t positions = rows * s.out_width;
    if (rows < 1 || positions < 1) return {}; // an invalid shape: the launcher rejects it
    const int64_t count = std::clamp<int64_t>((positions + 511) / 512, 1, std::min<int64_t>(rows, 512));
    const int64_t per = (rows + count - 1) / count;
    return {int((rows + per - 1) / per), int(per)};
}

// partial[chunk][kh*K + kw][c] = sum over the chunk's output positions of dy * x'(tap).
// A thread owns V channels (one vector access) and walks items of its block's chunk, an item
// being L consecutive output pixels of one row (threadIdx.y, threadIdx.y + blockDim.y, ...: one
// 32-bit division per item, none per element): it loads the item's L dy vectors once, then per
// kernel row the (L - 1) * S + K input columns the item's windows cover, transformed on load,
// each feeding every (pixel, kw) that reads it. Accumulators: K*K*V floats per thread, hence
// V = 4 at k = 3 and 2 at k = 5 (ptxas: 16 bytes of fp16 channels at k = 5 took ~180 registers,
// one block of 8 warps per SM); launch bounds of 2 blocks keep every variant at <= 128. Then a
// fixed-order sum over threadIdx.y through shared memory, one kernel row at a time:
// deterministic, no atomics.
template <typename T, int K, int V, int L, int S, bool Affine>
__global__ void __launch_bounds__(kThreads, 2)
    depthwise_weight_partial_kernel(const T* x, DepthwiseInputTransform tr, const T* dy, float* partial,
                                    DepthwiseShape s, int rows_per_chunk) {
    constexpr int kSpan = (L - 1) * S + K;
    extern __shared__ __align__(16) float red_s[]; // [blockDim.y][K][slab_channels]
    const int slab_channels = blockDim.x * V;
    const int C = s.channels;
    const int c_slab = blockIdx.x * slab_channels;
    const int c0 = c_slab + threadIdx.x * V;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nthreads = blockDim.x * blockDim.y;

    float acc[K][K][V];
#pragma unroll
    for (int kh = 0; kh < K; ++kh)
#pragma unroll
        for (int kw = 0; kw < K; ++kw)
#pragma unroll
            for (int v = 0; v < V; ++v) acc[kh][kw][v] = 0.0f;

    if (c0 < C) { // C % V == 0: a channel group is entirely in or out
        float sc[V], sh[V];
        if constexpr (Affine) {
#pragma unroll
            for (int v = 0; v < V; ++v) {
                sc[v] = tr.scale[c0 + v];
                sh[v] = tr.shift[c0 + v];
            }
        }
        const int items_per_row = (s.out_width + L - 1) / L;
        const int row_begin = blockIdx.y * rows_per_chunk;
        const int row_end = min(s.batch * s.out_height, row_begin + rows_per_chunk);
        const int items = (row_end - row_begin) * items_per_row;
        for (int item = threadIdx.y; item < items; item += blockDim.y) {
            const int rr = item / items_per_row;
            const int wo0 = (item - rr * items_per_row) * L;
            const int row = row_begin + rr; // n * Ho + ho
            const int n = row / s.out_height, ho = row - n * s.out_height;
            // dy of the item's pixels; zero past the right edge (the FMAs then add exact zeros).
            float g[L][V];
            const T* g_p = dy + (int64_t(row) * s.out_width + wo0) * C + c0;
#pragma unroll
            for (int j = 0; j < L; ++j) {
                if (wo0 + j < s.out_width) {
                    load_vec<T, V>(g_p + int64_t(j) * C, g[j]);
                } else {
#pragma unroll
                    for (int v = 0; v < V; ++v) g[j][v] = 0.0f;
                }
            }
            const int iw0 = wo0 * S - s.pad_left;
            const T* x_n = x + int64_t(n) * s.height * s.width * C + c0;
#pragma unroll
            for (int kh = 0; kh < K; ++kh) {
                const int ih = ho * S - s.pad_top + kh;
                if (ih < 0 || ih >= s.height) continue; // zero padding rows add nothing
                const T* x_row = x_n + int64_t(ih) * s.width * C;
                float in[kSpan][V];
#pragma unroll
                for (int c = 0; c < kSpan; ++c) {
                    const int iw = iw0 + c;
                    if (iw >= 0 && iw < s.width) {
                        load_vec<T, V>(x_row + int64_t(iw) * C, in[c]);
                        if constexpr (Affine) {
#pragma unroll
                            for (int v = 0; v < V; ++v)
                                in[c][v] = act_forward<act_math_for<T>>(fmaf(in[c][v], sc[v], sh[v]), tr.act);
                        }
                    } else {
#pragma unroll
                        for (int v = 0; v < V; ++v) in[c][v] = 0.0f;
                    }
                }
#pragma unroll
                for (int kw = 0; kw < K; ++kw)
#pragma unroll
                    for (int j = 0; j < L; ++j)
#pragma unroll
                        for (int v = 0; v < V; ++v)
                            acc[kh][kw][v] = fmaf(g[j][v], in[j * S + kw][v], acc[kh][kw][v]);
            }
        }
    }

    // Sum over threadIdx.y in order, one kernel row at a time; coalesced partial writes.
    float* out = partial + int64_t(blockIdx.y) * K * K * C;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
#pragma unroll
        for (int kw = 0; kw < K; ++kw)
#pragma unroll
            for (int v = 0; v < V; ++v)
                red_s[(threadIdx.y * K + kw) * slab_channels + threadIdx.x * V + v] = acc[kh][kw][v];
        __syncthreads();
        for (int o = tid; o < K * slab_channels; o += nthreads) {
            const int kw = o / slab_channels, c = c_slab + (o - kw * slab_channels);
            if (c >= C) continue;
            float total = 0.0f;
            for (int y = 0; y < int(blockDim.y); ++y) total += red_s[y * K * slab_channels + o];
            out[(kh * K + kw) * C + c] = total;
        }
        __syncthreads();
    }
}

// dw[c][tap] = sum over chunks of partial[chunk][tap][c] in double, in a fixed order: warp y of
// the block sums chunks y, y + 8, ... for 32 consecutive (tap, c), then one thread adds the 8.
constexpr int kFinalizeWarps = 8;
__global__ void __launch_bounds__(32 * kFinalizeWarps)
    depthwise_weight_finalize_kernel(const float* partial, int chunks, int C, int taps, float* dw) {
    __shared__ double part[kFinalizeWarps][32];
    const int total = C * taps;
    const int i = blockIdx.x * 32 + threadIdx.x; // tap * C + c
    double sum = 0.0;
    if (i < total)
        for (int p = threadIdx.y; p < chunks; p += kFinalizeWarps) sum += partial[int64_t(p) * total + i];
    part[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y != 0 || i >= total) return;
    double t = 0.0;
#pragma unroll
    for (int y = 0; y < kFinalizeWarps; ++y) t += part[y][threadIdx.x];
    const int tap = i / C, c = i - tap * C;
    dw[c * taps + tap] = float(t);
}

template <typename T, int K, int V, int L, int S>
void launch_weight_partial(const T* x, const DepthwiseInputTransform& tr, const T* dy, float* partial,
                           const DepthwiseShape& s, const WeightGradChunks& ch, cudaStream_t stream) {
    // Threads across channels: a 128-byte line per pixel when C allows (at most a warp).
    const int groups = s.channels / V;
    const int cg = channel_groups_per_block(groups, std::min(32, int(128 / (V * sizeof(T)))));
    const int slabs = ceil_div(groups, cg);
    const dim3 block(unsigned(cg), unsigned(kThreads / cg));
    const dim3 grid(unsigned(slabs), unsigned(ch.count));
    const size_t smem = size_t(block.y) * K * cg * V * sizeof(float);
    if (tr.scale != nullptr)
        depthwise_weight_partial_kernel<T, K, V, L, S, true>
            <<<grid, block, smem, stream>>>(x, tr, dy, partial, s, ch.rows_per_chunk);
    else
        depthwise_weight_partial_kernel<T, K, V, L, S, false>
            <<<grid, block, smem, stream>>>(x, tr, dy, partial, s, ch.rows_per_chunk);
    EFFNET_LAUNCH_CHECK("depthwise_weight_partial_kernel");
}

// Pixels per item: 4 at stride 1 (the L + K - 1 loaded columns of a row serve L * K products),
// 2 at stride 2 (an item reads (L - 1) * 2 + K columns per row).
template <typename T, int K, int V>
void launch_weight_stride(const T* x, const DepthwiseInputTransform& tr, const T* dy, float* partial,
                          const DepthwiseShape& s, const WeightGradChunks& ch, cudaStream_t stream) {
    if (s.stride == 1)
        launch_weight_partial<T, K, V, 4, 1>(x, tr, dy, partial, s, ch, stream);
    else
        launch_weight_partial<T, K, V, 2, 2>(x, tr, dy, partial, s, ch, stream);
}

template <typename T, int K>
void launch_weight_typed(const T* x, const DepthwiseInputTransform& tr, const T* dy, float* partial,
                         const DepthwiseShape& s, const WeightGradChunks& ch, cudaStream_t stream) {
    constexpr int V = K == 3 ? 4 : 2; // K*K*V accumulators: 36 or 50 floats
    if (s.channels % V == 0 && aligned_to(x, V * sizeof(T)) && aligned_to(dy, V * sizeof(T)))
        launch_weight_stride<T, K, V>(x, tr, dy, partial, s, ch, stream);
    else // odd channel counts or unaligned views
        launch_weight_stride<T, K, 1>(x, tr, dy, partial, s, ch, stream);
}

// ---- Host checks ---------------------------------------------------------------------------------

void check_shape(const char* op, const DepthwiseShape& s) {
    const bool ok = s.batch >= 1 && s.batch <= 65535 && s.height >= 1 && s.width >= 1 && s.channels >= 1 &&
                    (s.kernel == 3 || s.kernel == 5) && (s.stride == 1 || s.stride == 2) && s.pad_top >= 0 &&
                    s.pad_left >= 0 && s.pad_top < s.kernel && s.pad_left < s.kernel && s.out_height >= 1 &&
                    s.out_width >= 1 && (s.out_height - 1) * s.stride - s.pad_top < s.height &&
                    (s.out_width - 1) * s.stride - s.pad_left < s.width;
    EFFNET_CHECK(ok, std::string(op) + ": bad shape N=" + std::to_string(s.batch) +
                         " H=" + std::to_string(s.height) + " W=" + std::to_string(s.width) +
                         " C=" + std::to_string(s.channels) + " k=" + std::to_string(s.kernel) +
                         " s=" + std::to_string(s.stride) + " pad=(" + std::to_string(s.pad_top) + "," +
                         std::to_string(s.pad_left) + ") out=" + std::to_string(s.out_height) + "x" +
                         std::to_string(s.out_width) + " (kernel 3 or 5, stride 1 or 2, padding < kernel)");
}

void check_transform(const char* op, const DepthwiseInputTransform& in) {
    EFFNET_CHECK(in.scale != nullptr ? in.shift != nullptr : in.shift == nullptr && in.act == Act::None,
                 std::string(op) + ": input transform needs scale and shift both set (or both null, "
                                   "with act None)");
}

// The arguments of the inference kernel for a convolution without bias or output activation.
DepthwiseArgs plain_conv_args(const DepthwiseShape& s) {
    DepthwiseArgs a;
    a.batch = s.batch;
    a.height = s.height;
    a.width = s.width;
    a.channels = s.channels;
    a.kernel = s.kernel;
    a.stride = s.stride;
    a.pad_top = s.pad_top;
    a.pad_left = s.pad_left;
    a.out_height = s.out_height;
    a.out_width = s.out_width;
    a.act = Act::None;
    return a;
}

// The shared-tile schedule (256 threads) where it applies: faster than, or level with, the
// register strips on every B0/B4/B7 layer in bench/results/2026-11-27-h200-b (inference, fp16).
void run_conv(DepthwiseArgs a, Precision storage, cudaStream_t stream) {
    a.schedule = depthwise_schedule_supported(a, storage, DepthwiseSchedule::SharedTile)
                     ? DepthwiseSchedule::SharedTile
                     : DepthwiseSchedule::RegisterStrips;
    launch_depthwise_conv(a, storage, stream);
}

} // namespace

void launch_depthwise_weight_taps(const float* w, float* taps, float* flipped, int channels, int kernel,
                                  cudaStream_t stream) {
    EFFNET_CHECK(w && (taps || flipped) && w != taps && w != flipped && taps != flipped,
                 "depthwise_weight_taps: null or aliased pointer argument");
    EFFNET_CHECK(channels >= 1 && kernel >= 1, "depthwise_weight_taps: bad shape C=" +
                                                   std::to_string(channels) + " k=" + std::to_string(kernel));
    const int n = channels * kernel * kernel;
    depthwise_weight_taps_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(w, taps, flipped, channels,
                                                                                kernel * kernel);
    EFFNET_LAUNCH_CHECK("depthwise_weight_taps_kernel");
}

void launch_depthwise_train_forward(const void* x, const DepthwiseInputTransform& in, const float* taps,
                                    void* y, const DepthwiseShape& s, Precision storage,
                                    cudaStream_t stream) {
    check_shape("depthwise_train_forward", s);
    check_transform("depthwise_train_forward", in);
    EFFNET_CHECK(x && taps && y && x != y, "depthwise_train_forward: null or aliased pointer argument");
    DepthwiseArgs a = plain_conv_args(s);
    a.input = x;
    a.weight = taps;
    a.output = y;
    a.input_scale = in.scale;
    a.input_shift = in.shift;
    a.input_act = in.act;
    run_conv(a, storage, stream);
}

void launch_depthwise_backward_data(const void* dy, const float* flipped, const void* add, void* dx,
                                    const DepthwiseShape& s, Precision storage, cudaStream_t stream) {
    check_shape("depthwise_backward_data", s);
    EFFNET_CHECK(dy && flipped && dx && dx != dy,
                 "depthwise_backward_data: null or aliased pointer argument");
    // Stride 1: dx[hi] = sum over kh of dy[hi + pad_top - kh] * w[kh] = sum over kh' = k-1-kh of
    // dy[hi - (k-1-pad_top) + kh'] * flipped[kh']: a forward convolution of dy (Ho x Wo) into
    // H x W with top/left padding k-1-pad (< k). Its implied bottom padding is H + pad_top - Ho =
    // k-1-pad_bottom, pad_bottom = Ho - H - pad_top + k - 1 being the forward's (<= k-1 by
    // check_shape). The inference kernel wants every window to start inside the padded input,
    // (H - 1) - (k-1-pad_top) < Ho, i.e. pad_bottom >= 0: true for Symmetric and TF-same (at
    // stride 1 both pad k-1 in total); a cropped forward output (pad_bottom < 0) takes the gather.
    const int pt = s.kernel - 1 - s.pad_top, pl = s.kernel - 1 - s.pad_left;
    if (s.stride == 1 && s.height - 1 - pt < s.out_height && s.width - 1 - pl < s.out_width) {
        DepthwiseArgs a = plain_conv_args(s);
        a.input = dy;
        a.height = s.out_height;
        a.width = s.out_width;
        a.pad_top = pt;
        a.pad_left = pl;
        a.out_height = s.height;
        a.out_width = s.width;
        a.weight = flipped;
        a.residual = add;
        a.output = dx;
        run_conv(a, storage, stream);
        return;
    }
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int kVec = int(16 / sizeof(T));
        const T* dyt = static_cast<const T*>(dy);
        const T* addt = static_cast<const T*>(add);
        T* dxt = static_cast<T*>(dx);
        if (vectors_fit(s.channels, kVec, {dy, dx, flipped, add}))
            launch_data_grad_vector<T, kVec>(dyt, flipped, addt, dxt, s, stream);
        else
            launch_data_grad_vector<T, 1>(dyt, flipped, addt, dxt, s, stream);
    });
}

size_t depthwise_weight_grad_workspace_floats(const DepthwiseShape& s) {
    return size_t(weight_grad_chunks(s).count) * size_t(s.channels) * size_t(s.kernel) * size_t(s.kernel);
}

void launch_depthwise_backward_weight(const void* x, const DepthwiseInputTransform& in, const void* dy,
                                      float* dw, float* workspace, const DepthwiseShape& s, Precision storage,
                                      cudaStream_t stream) {
    check_shape("depthwise_backward_weight", s);
    check_transform("depthwise_backward_weight", in);
    EFFNET_CHECK(x && dy && dw && workspace, "depthwise_backward_weight: null pointer argument");
    const WeightGradChunks ch = weight_grad_chunks(s);
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T* xt = static_cast<const T*>(x);
        const T* dyt = static_cast<const T*>(dy);
        if (s.kernel == 3)
            launch_weight_typed<T, 3>(xt, in, dyt, workspace, s, ch, stream);
        else
            launch_weight_typed<T, 5>(xt, in, dyt, workspace, s, ch, stream);
    });
    const int taps = s.kernel * s.kernel;
    const int total = s.channels * taps;
    depthwise_weight_finalize_kernel<<<unsigned((total + 31) / 32), dim3(32, kFinalizeWarps), 0, stream>>>(
        workspace, ch.count, s.channels, taps, dw);
    EFFNET_LAUNCH_CHECK("depthwise_weight_finalize_kernel");
}

} // namespace effnet::kernels
