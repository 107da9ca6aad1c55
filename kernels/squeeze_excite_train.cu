#include "kernels/squeeze_excite_train.cuh"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/small_matmul.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxVecsPerBlock = 32; // channel vectors across threadIdx.x
constexpr int kPixelsPerThread = 4;  // elementwise kernels: pixels each thread visits (about)

// The channel-vector kernels: a thread owns one vector of V channels (V = 8 halfs / 4 floats,
// one 16-byte access, when C % V == 0 and the pointers are aligned; else V = 1) for its whole
// life and strides over the pixels of one image, so no per-element division. threadIdx.x is the
// vector (the C / V vectors split evenly over `tiles` blocks in x, at most 32 per block: a warp
// reads whole pixel rows when they fit), threadIdx.y the first pixel.
struct VecPlan {
    int vx, py, tiles;
};
VecPlan vec_plan(int vectors) {
    const int tiles = (vectors + kMaxVecsPerBlock - 1) / kMaxVecsPerBlock;
    const int vx = (vectors + tiles - 1) / tiles;
    return {vx, kThreads / vx, tiles};
}

// Calls f(std::integral_constant<int, V>{}) with V = 16 / sizeof(T) when rows of C channels at
// the given pointers can be read as 16-byte vectors, else V = 1.
template <typename T, typename F>
void with_vec(int C, std::initializer_list<const void*> ptrs, F&& f) {
    if (vectors_fit(C, int(16 / sizeof(T)), ptrs))
        f(std::integral_constant<int, int(16 / sizeof(T))>{});
    else
        f(std::integral_constant<int, 1>{});
}

// Block (vx vectors, py pixel rows) per (channel tile, image): thread (tx, ty) sums pixels ty,
// ty + py, ... of its vector (4 loads in flight, added in pixel order), then a fixed tree over
// the py rows; no atomics, so the result is the same every run. out = scale * sum, times
// gate * (1 - gate) when gate is given (the sigmoid's gradient, fused for the SE backward).
// (256, 4): allows 64 registers, enough for the 4 (x, y) vector loads in flight without a spill
// (ptxas otherwise picks 40 and spills in the loop).
template <typename T, int V, bool HasY>
__global__ void __launch_bounds__(kThreads, 4)
    spatial_sum_kernel(const T* x, const T* y, const float* gate, float* out, int64_t hw, int C,
                       float scale) {
    __shared__ float red[V][kThreads];
    const int vx = blockDim.x, py = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * vx + tx;
    const int c = (blockIdx.x * vx + tx) * V; // first channel of the vector
    const int64_t n = blockIdx.y;
    float acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = 0.0f;
    // Pixels p .. p + (U - 1) * py at element offset off: all loads first, then added in order.
    auto accumulate = [&](auto unroll, int64_t off, int64_t step) {
        constexpr int U = decltype(unroll)::value;
        float xv[U][V];
        [[maybe_unused]] float yv[U][HasY ? V : 1];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            load_vec<T, V>(x + off + u * step, xv[u]);
            if constexpr (HasY) load_vec<T, V>(y + off + u * step, yv[u]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int v = 0; v < V; ++v) {
                if constexpr (HasY)
                    acc[v] += xv[u][v] * yv[u][v];
                else
                    acc[v] += xv[u][v];
            }
    };
    if (c < C) {
        const int64_t step = int64_t(py) * C;
        int64_t p = ty, off = (n * hw + ty) * C + c;
        for (; p + 3 * py < hw; p += 4 * py, off += 4 * step)
            accumulate(std::integral_constant<int, 4>{}, off, step);
        for (; p < hw; p += py, off += step) accumulate(std::integral_constant<int, 1>{}, off, step);
    }
#pragma unroll
    for (int v = 0; v < V; ++v) red[v][tid] = acc[v];
    __syncthreads();
    // Rows [half, len) onto [0, len - half): the fixed pairing makes the sum deterministic.
    for (int len = py; len > 1;) {
        const int half = (len + 1) / 2;
        if (ty < len - half) {
#pragma unroll
            for (int v = 0; v < V; ++v) red[v][tid] += red[v][tid + half * vx];
        }
        len = half;
        __syncthreads();
    }
    if (ty == 0 && c < C) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            float s = red[v][tx] * scale;
            if (gate) {
                const float g = gate[n * C + c + v];
                s = s * g * (1.0f - g);
            }
            out[n * C + c + v] = s;
        }
    }
}

// Grid (tiles, N, pixel splits) for the elementwise kernels: about kPixelsPerThread pixels per
// thread.
dim3 elementwise_grid(const VecPlan& p, int batch, int64_t hw) {
    const int64_t per_block = int64_t(p.py) * kPixelsPerThread;
    const int64_t splits = std::min<int64_t>(std::max<int64_t>((hw + per_block - 1) / per_block, 1), 65535);
    return dim3(unsigned(p.tiles), unsigned(batch), unsigned(splits));
}

// out = f(in, v) elementwise over the pixels of one image for the thread's V channels (v: the
// channel within the vector); grid (tiles, N, splits), block (vx, py). in == out is fine: every
// element is read, then written, by the one thread that owns it.
template <typename T, int V, typename F>
__device__ __forceinline__ void map_pixels(const T* in, T* out, int64_t hw, int C, int c, int64_t n, F&& f) {
    const int64_t pstep = int64_t(gridDim.z) * blockDim.y, step = pstep * C;
    int64_t p = int64_t(blockIdx.z) * blockDim.y + threadIdx.y, off = (n * hw + p) * C + c;
    // Two pixels per iteration, both loaded before either is stored: without restrict the
    // compiler would not move the second load above the first store.
    for (; p + pstep < hw; p += 2 * pstep, off += 2 * step) {
        float u[V], w[V];
        load_vec<T, V>(in + off, u);
        load_vec<T, V>(in + off + step, w);
#pragma unroll
        for (int v = 0; v < V; ++v) {
            u[v] = f(u[v], v);
            w[v] = f(w[v], v);
        }
        store_vec<T, V>(out + off, u);
        store_vec<T, V>(out + off + step, w);
    }
    if (p < hw) {
        float u[V];
        load_vec<T, V>(in + off, u);
#pragma unroll
        for (int v = 0; v < V; ++v) u[v] = f(u[v], v);
        store_vec<T, V>(out + off, u);
    }
}

// y = x * gate[n, c].
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    gate_apply_kernel(const T* x, const float* gate, T* y, int64_t hw, int C) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c >= C) return;
    const int64_t n = blockIdx.y;
    float g[V];
#pragma unroll
    for (int v = 0; v < V; ++v) g[v] = gate[n * C + c + v];
    map_pixels<T, V>(x, y, hw, C, c, n, [&](float u, int v) { return u * g[v]; });
}

// dx = dy * gate[n, c] + dsqueezed[n, c] * inv_hw, in place (dx == dy) or not: no other kernel
// of the backward reads dy after this one.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    se_dx_kernel(const T* dy, const float* gate, const float* dsq, float inv_hw, T* dx, int64_t hw, int C) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c >= C) return;
    const int64_t n = blockIdx.y;
    float g[V], d[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
        g[v] = gate[n * C + c + v];
        d[v] = dsq[n * C + c + v] * inv_hw;
    }
    map_pixels<T, V>(dy, dx, hw, C, c, n, [&](float u, int v) { return u * g[v] + d[v]; });
}

void check_args(const char* op, const SqueezeExciteTrainArgs& a) {
    EFFNET_CHECK(a.batch >= 1 && a.batch <= 65535 && a.hw >= 1 && a.channels >= 1 && a.reduced >= 1,
                 std::string(op) + ": bad shape N=" + std::to_string(a.batch) +
                     " HW=" + std::to_string(a.hw) + " C=" + std::to_string(a.channels) +
                     " S=" + std::to_string(a.reduced));
    EFFNET_CHECK(a.x && a.w1 && a.b1 && a.w2 && a.b2 && a.squeezed && a.reduced_pre && a.reduced_out &&
                     a.gate,
                 std::string(op) + ": null pointer argument");
}

// out [rows, cols] = A B, B [inner, cols] row-major, A [rows, inner] row-major or, when
// a_transposed, stored as its transpose [inner, rows].
SmallMatmulArgs matmul(const float* a, bool a_transposed, const float* b, int rows, int cols, int inner,
                       float* out) {
    SmallMatmulArgs m;
    m.a = a;
    m.a_row = a_transposed ? 1 : inner;
    m.a_col = a_transposed ? rows : 1;
    m.b = b;
    m.b_row = cols;
    m.b_col = 1;
    m.rows = rows;
    m.cols = cols;
    m.inner = inner;
    m.out = out;
    return m;
}

// out = A B with A [I, K] row-major and B given as W [J, K] (so B = W^T), plus bias.
SmallMatmulArgs linear(const float* x, int64_t I, int64_t K, const float* w, int64_t J, const float* bias) {
    SmallMatmulArgs m;
    m.a = x;
    m.a_row = K;
    m.a_col = 1;
    m.b = w;
    m.b_row = 1;
    m.b_col = K;
    m.bias = bias;
    m.rows = int(I);
    m.cols = int(J);
    m.inner = int(K);
    return m;
}

// out [N, C] = scale * sum_hw x (* y), times gate * (1 - gate) when gate is non-null.
void spatial_sum(const void* x, const void* y, const float* gate, float* out, int batch, int64_t hw,
                 int channels, float scale, Precision storage, cudaStream_t stream) {
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T* xt = static_cast<const T*>(x);
        const T* yt = static_cast<const T*>(y);
        with_vec<T>(channels, {x, y}, [&](auto vec) {
            constexpr int V = decltype(vec)::value;
            const VecPlan p = vec_plan(channels / V);
            const dim3 block(unsigned(p.vx), unsigned(p.py)), grid(unsigned(p.tiles), unsigned(batch));
            if (y)
                spatial_sum_kernel<T, V, true>
                    <<<grid, block, 0, stream>>>(xt, yt, gate, out, hw, channels, scale);
            else
                spatial_sum_kernel<T, V, false>
                    <<<grid, block, 0, stream>>>(xt, nullptr, gate, out, hw, channels, scale);
        });
    });
    EFFNET_LAUNCH_CHECK("spatial_sum_kernel");
}

} // namespace

void launch_spatial_sum(const void* x, const void* y, float* out, int batch, int64_t hw, int channels,
                        float scale, Precision storage, cudaStream_t stream) {
    EFFNET_CHECK(x && out && batch >= 1 && batch <= 65535 && hw >= 1 && channels >= 1,
                 "spatial_sum: null pointer or bad shape N=" + std::to_string(batch) +
                     " HW=" + std::to_string(hw) + " C=" + std::to_string(channels));
    spatial_sum(x, y, nullptr, out, batch, hw, channels, scale, storage, stream);
}

void launch_squeeze_excite_train_forward(const SqueezeExciteTrainArgs& a, void* y, Precision storage,
                                         cudaStream_t stream) {
    check_args("squeeze_excite_train_forward", a);
    EFFNET_CHECK(y && y != a.x, "squeeze_excite_train_forward: null or aliased output");
    const int N = a.batch, C = a.channels, S = a.reduced;
    spatial_sum(a.x, nullptr, nullptr, a.squeezed, N, a.hw, C, float(1.0 / double(a.hw)), storage, stream);
    SmallMatmulArgs r = linear(a.squeezed, N, C, a.w1, S, a.b1);
    r.out_pre = a.reduced_pre;
    r.out = a.reduced_out;
    r.post = SmallMatmulPost::Activation;
    r.act = a.act;
    launch_small_matmul(r, stream);
    SmallMatmulArgs g = linear(a.reduced_out, N, S, a.w2, C, a.b2);
    g.out = a.gate;
    g.post = SmallMatmulPost::Sigmoid;
    launch_small_matmul(g, stream);
    launch_squeeze_excite_gate(a.x, a.gate, y, N, a.hw, C, storage, stream);
}

void launch_squeeze_excite_gate(const void* x, const float* gate, void* y, int batch, int64_t hw,
                                int channels, Precision storage, cudaStream_t stream) {
    EFFNET_CHECK(x && gate && y && x != y && batch >= 1 && batch <= 65535 && hw >= 1 && channels >= 1,
                 "squeeze_excite_gate: null or aliased pointer, or bad shape N=" + std::to_string(batch) +
                     " HW=" + std::to_string(hw) + " C=" + std::to_string(channels));
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        with_vec<T>(channels, {x, y}, [&](auto vec) {
            constexpr int V = decltype(vec)::value;
            const VecPlan p = vec_plan(channels / V);
            gate_apply_kernel<T, V>
                <<<elementwise_grid(p, batch, hw), dim3(unsigned(p.vx), unsigned(p.py)), 0, stream>>>(
                    static_cast<const T*>(x), gate, static_cast<T*>(y), hw, channels);
        });
    });
    EFFNET_LAUNCH_CHECK("gate_apply_kernel");
}

size_t squeeze_excite_workspace_floats(int batch, int channels, int reduced) {
    return size_t(batch) * (2 * size_t(channels) + size_t(reduced));
}

// 6 launches: the sigmoid's gradient is fused into the spatial sum, the activation's into the
// dreduced matmul, and the bias gradients ride on the weight-gradient matmuls (row sums).
void launch_squeeze_excite_backward(const SqueezeExciteTrainArgs& a, const void* dy, void* dx, float* dw1,
                                    float* db1, float* dw2, float* db2, float* workspace, Precision storage,
                                    cudaStream_t stream) {
    check_args("squeeze_excite_backward", a);
    EFFNET_CHECK(dy && dx && dw1 && db1 && dw2 && db2 && workspace,
                 "squeeze_excite_backward: null pointer argument");
    const int N = a.batch, C = a.channels, S = a.reduced;
    // dx == dy is allowed (se_dx_kernel reads each element before writing it, and is the last
    // reader of dy); a partial overlap is not.
    const size_t bytes = size_t(N) * size_t(a.hw) * size_t(C) * storage_size(storage);
    const char* dy_b = static_cast<const char*>(dy);
    const char* dx_b = static_cast<const char*>(dx);
    EFFNET_CHECK(dx_b == dy_b || dx_b + bytes <= dy_b || dy_b + bytes <= dx_b,
                 "squeeze_excite_backward: dx overlaps dy without being dy");
    float* dgate = workspace;             // [N, C] dgate_pre
    float* dred = dgate + int64_t(N) * C; // [N, S] dreduced_pre
    float* dsq = dred + int64_t(N) * S;   // [N, C]

    // dgate_pre[n, c] = (sum_hw dy * x) * gate * (1 - gate)
    spatial_sum(a.x, dy, a.gate, dgate, N, a.hw, C, 1.0f, storage, stream);
    // dW2[c, s] = sum_n dgate_pre[n, c] reduced[n, s]; db2[c] = sum_n dgate_pre[n, c]
    SmallMatmulArgs dw2_args = matmul(dgate, true, a.reduced_out, C, S, N, dw2);
    dw2_args.row_sum = db2;
    launch_small_matmul(dw2_args, stream);
    // dreduced_pre[n, s] = act'(reduced_pre[n, s]) * sum_c dgate_pre[n, c] W2[c, s]
    SmallMatmulArgs dred_args = matmul(dgate, false, a.w2, N, S, C, dred);
    dred_args.post = SmallMatmulPost::ActivationGrad;
    dred_args.act = a.act;
    dred_args.act_x = a.reduced_pre;
    launch_small_matmul(dred_args, stream);
    // dW1[s, c] = sum_n dred_pre[n, s] squeezed[n, c]; db1[s] = sum_n dred_pre[n, s]
    SmallMatmulArgs dw1_args = matmul(dred, true, a.squeezed, S, C, N, dw1);
    dw1_args.row_sum = db1;
    launch_small_matmul(dw1_args, stream);
    // dsqueezed[n, c] = sum_s dred_pre[n, s] W1[s, c]
    launch_small_matmul(matmul(dred, false, a.w1, N, C, S, dsq), stream);

    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        with_vec<T>(C, {dy, dx}, [&](auto vec) {
            constexpr int V = decltype(vec)::value;
            const VecPlan p = vec_plan(C / V);
            se_dx_kernel<T, V>
                <<<elementwise_grid(p, N, a.hw), dim3(unsigned(p.vx), unsigned(p.py)), 0, stream>>>(
                    static_cast<const T*>(dy), a.gate, dsq, float(1.0 / double(a.hw)), static_cast<T*>(dx),
                    a.hw, C);
        });
    });
    EFFNET_LAUNCH_CHECK("se_dx_kernel");
}

} // namespace effnet::kernels
