#include "kernels/depthwise_conv_tile.cuh"

#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kMaxStripsAcross = 8; // strips of TW outputs side by side in a tile (SW)

// Geometry of one launch, the same for every block.
struct TileShape {
    int cg = 1;      // channel groups (16-byte vectors) per block: threadIdx.x
    int sw = 1;      // strips across the tile; threadIdx.y = row * sw + strip
    int th = 1;      // output rows per tile
    int tiles_w = 1; // tiles along W (blockIdx.x % tiles_w)
    int in_h = 1;    // staged input rows:    (th - 1) * S + K
    int in_w = 1;    // staged input columns: (sw * TW - 1) * S + K
};

// Shared memory: [in_h][in_w][cg * V] input elements (T), then [K*K][cg * V] float weights.
// After the convolution the input region is reused for the squeeze's partial sums.
// Train: the training step's extras may be set (see depthwise_train_extras).
template <typename T, int K, int V, int TW, int S, bool Train>
__global__ void __launch_bounds__(kMaxThreads) depthwise_tile_kernel(DepthwiseArgs a, TileShape t) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int slab_channels = t.cg * V;
    T* in_s = reinterpret_cast<T*>(smem);
    const size_t in_bytes = size_t(t.in_h) * t.in_w * slab_channels * sizeof(T);
    float* w_s = reinterpret_cast<float*>(smem + (in_bytes + 15) / 16 * 16);

    const int C = a.channels;
    const int tile_x = blockIdx.x % t.tiles_w, slab = blockIdx.x / t.tiles_w;
    const int c_slab = slab * slab_channels;
    const int n = blockIdx.z;
    const int oh0 = blockIdx.y * t.th, ow0 = tile_x * t.sw * TW;
    const int ih0 = oh0 * S - a.pad_top, iw0 = ow0 * S - a.pad_left;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nthreads = blockDim.x * blockDim.y;

    // 1. Stage the input tile: one 16-byte cp.async per (row, column, channel group), all in
    //    flight together; outside the image (padding) or past C they write zeros.
    const T* x = static_cast<const T*>(a.input) + int64_t(n) * a.height * a.width * C;
    const int vectors = t.in_h * t.in_w * t.cg;
    for (int i = tid; i < vectors; i += nthreads) {
        const int g = i % t.cg, pix = i / t.cg;
        const int r = pix / t.in_w, col = pix % t.in_w;
        const int ih = ih0 + r, iw = iw0 + col, c = c_slab + g * V;
        const bool ok = ih >= 0 && ih < a.height && iw >= 0 && iw < a.width && c < C;
        const T* src = ok ? x + (int64_t(ih) * a.width + iw) * C + c : x;
        cp_async16(in_s + size_t(pix) * slab_channels + g * V, src, ok);
    }
    stage_depthwise_weights(w_s, a.weight, K * K, C, c_slab, slab_channels, tid, nthreads); // same group
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (Train && a.input_scale != nullptr) {
        // The input affine (+ activation), once per staged element inside the image: the padding
        // must stay zero. nthreads is a multiple of cg, so a thread's channel group is fixed.
        const int g = tid % t.cg, c = c_slab + g * V;
        if (c < C) {
            float sc[V], sh[V];
#pragma unroll
            for (int v = 0; v < V; ++v) {
                sc[v] = a.input_scale[c + v];
                sh[v] = a.input_shift[c + v];
            }
            for (int i = tid; i < vectors; i += nthreads) {
                const int pix = i / t.cg;
                const int r = pix / t.in_w, col = pix % t.in_w;
                const int ih = ih0 + r, iw = iw0 + col;
                if (ih < 0 || ih >= a.height || iw < 0 || iw >= a.width) continue;
                T* p = in_s + size_t(i) * V;
                float v[V];
                load_vec<T, V>(p, v);
#pragma unroll
                for (int j = 0; j < V; ++j)
                    v[j] = act_forward<act_math_for<T>>(fmaf(v[j], sc[j], sh[j]), a.input_act);
                store_vec<T, V>(p, v);
            }
        }
        __syncthreads();
    } else if (a.input_act != Act::None) {
        // The producer's activation, once per staged element (act(0) == 0 keeps the padding).
        for (int i = tid; i < vectors; i += nthreads) {
            T* p = in_s + size_t(i) * V;
            float v[V];
            load_vec<T, V>(p, v);
#pragma unroll
            for (int j = 0; j < V; ++j) v[j] = act_forward<act_math_for<T>>(v[j], a.input_act);
            store_vec<T, V>(p, v);
        }
        __syncthreads();
    }

    // 2. Each thread: V channels x a strip of TW outputs along W, from shared memory.
    const int row = threadIdx.y / t.sw, strip = threadIdx.y % t.sw;
    const int oh = oh0 + row, ow = ow0 + strip * TW;
    const int c0 = c_slab + threadIdx.x * V;
    const bool active = row < t.th && oh < a.out_height && ow < a.out_width && c0 < C;
    float sum[V];
#pragma unroll
    for (int v = 0; v < V; ++v) sum[v] = 0.0f;
    if (active) {
        float acc[TW][V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const float b = !Train || a.bias != nullptr ? a.bias[c0 + v] : 0.0f;
#pragma unroll
            for (int j = 0; j < TW; ++j) acc[j][v] = b;
        }
        constexpr int kSpan = (TW - 1) * S + K; // staged columns one strip reads per kernel row
        const T* base = in_s + (size_t(row * S) * t.in_w + strip * TW * S) * slab_channels + threadIdx.x * V;
        const float* w_thread = w_s + threadIdx.x * V;
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
            float w[K][V]; // this kernel row's weights for the thread's channels
#pragma unroll
            for (int kw = 0; kw < K; ++kw) load_f32<V>(w_thread + (kh * K + kw) * slab_channels, w[kw]);
            const T* in_row = base + size_t(kh) * t.in_w * slab_channels;
            // Column by column: each staged vector is converted once and feeds every output
            // of the strip whose window covers it.
#pragma unroll
            for (int col = 0; col < kSpan; ++col) {
                float in[V];
                load_vec<T, V>(in_row + col * slab_channels, in);
#pragma unroll
                for (int j = 0; j < TW; ++j) {
                    const int kw = col - j * S;
                    if (kw < 0 || kw >= K) continue; // resolved at compile time
#pragma unroll
                    for (int v = 0; v < V; ++v) acc[j][v] = fmaf(in[v], w[kw][v], acc[j][v]);
                }
            }
        }
        finish_depthwise_strip<T, V, TW, Train>(a, n, oh, ow, c0, acc, sum);
    }
    if (a.pooled_sum == nullptr) return; // uniform across the grid

    // 3. Squeeze, through the (now free) input region.
    __syncthreads();
    add_squeeze_sums<V>(sum, reinterpret_cast<float*>(smem), a.pooled_sum + int64_t(n) * C, C, c_slab,
                        slab_channels, tid, nthreads);
}

template <typename T, int K, int V, int TW, int S>
void launch_shape(const DepthwiseArgs& a, int max_threads, cudaStream_t stream) {
    const DepthwiseTiling p = plan_depthwise_tiling(a.channels / V, 8, a.out_height, a.out_width, TW,
                                                    kMaxStripsAcross, max_threads);
    TileShape t;
    t.cg = p.cg;
    t.sw = p.strips_across;
    t.th = p.rows;
    t.tiles_w = p.tiles_w;
    t.in_h = (t.th - 1) * S + K;
    t.in_w = (t.sw * TW - 1) * S + K;
    const size_t in_bytes = size_t(t.in_h) * t.in_w * t.cg * V * sizeof(T);
    const size_t w_bytes = size_t(K) * K * t.cg * V * sizeof(float);
    const size_t red_bytes = size_t(t.th) * t.sw * t.cg * V * sizeof(float);
    const size_t smem = std::max((in_bytes + 15) / 16 * 16 + w_bytes, red_bytes);
    EFFNET_CHECK(smem <= 200 * 1024, "depthwise_conv: shared-memory tile of " + std::to_string(smem) +
                                         " bytes exceeds the 200 KiB budget");
    auto kernel = depthwise_train_extras(a) ? depthwise_tile_kernel<T, K, V, TW, S, true>
                                            : depthwise_tile_kernel<T, K, V, TW, S, false>;
    if (smem > 48 * 1024)
        EFFNET_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const dim3 block(unsigned(t.cg), unsigned(t.th * t.sw));
    const dim3 grid(unsigned(p.slabs * t.tiles_w), unsigned(p.tiles_h), unsigned(a.batch));
    kernel<<<grid, block, smem, stream>>>(a, t);
    EFFNET_LAUNCH_CHECK("depthwise_tile_kernel");
}

// Outputs per thread along W: 4 at stride 1, 2 at stride 2 (as the register-strip schedule,
// whose measurements chose them); 2 at stride 1 on maps narrower than 8.
template <typename T, int K>
void launch_kernel_size(const DepthwiseArgs& a, int max_threads, cudaStream_t stream) {
    constexpr int V = int(16 / sizeof(T));
    if (a.stride == 2)
        launch_shape<T, K, V, 2, 2>(a, max_threads, stream);
    else if (a.out_width >= 8)
        launch_shape<T, K, V, 4, 1>(a, max_threads, stream);
    else
        launch_shape<T, K, V, 2, 1>(a, max_threads, stream);
}

template <typename T>
void launch_typed(const DepthwiseArgs& a, int max_threads, cudaStream_t stream) {
    if (a.kernel == 3)
        launch_kernel_size<T, 3>(a, max_threads, stream);
    else
        launch_kernel_size<T, 5>(a, max_threads, stream);
}

} // namespace

bool depthwise_shared_tile_eligible(const DepthwiseArgs& a, Precision precision) {
    const int vec = int(16 / storage_size(precision));
    return (a.kernel == 3 || a.kernel == 5) && (a.stride == 1 || a.stride == 2) &&
           vectors_fit(a.channels, vec, {a.input, a.output, a.weight, a.residual});
}

void launch_depthwise_shared_tile(const DepthwiseArgs& a, Precision precision, int max_threads,
                                  cudaStream_t stream) {
    EFFNET_CHECK(max_threads == 128 || max_threads == 256,
                 "depthwise_conv: tile block budget " + std::to_string(max_threads) + " (128 or 256)");
    EFFNET_CHECK(
        depthwise_shared_tile_eligible(a, precision),
        "depthwise_conv: the shared-tile schedule needs k 3 or 5, stride 1 or 2, channels a multiple "
        "of the 16-byte vector and 16-byte aligned tensors (C=" +
            std::to_string(a.channels) + " stride=" + std::to_string(a.stride) + ")");
    dispatch_storage(precision,
                     [&](auto tag) { launch_typed<typename decltype(tag)::type>(a, max_threads, stream); });
}

} // namespace effnet::kernels
