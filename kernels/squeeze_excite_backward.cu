#include "kernels/squeeze_excite_backward.cuh"

#include <string>

#include "kernels/common.cuh"
#include "kernels/small_matmul.cuh"
#include "kernels/train_dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kChannelsPerBlock = 32;
constexpr int kRowThreads = 8;
constexpr int kThreads = 256;

// Block (32 channels, 8 row threads) per (channel tile, image): each thread sums every 8th
// position, then thread row 0 adds the 8 in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    spatial_sum_kernel(const T* x, const T* y, float* out, int64_t hw, int C, float scale) {
    __shared__ float smem[kRowThreads][kChannelsPerBlock];
    const int c = blockIdx.x * kChannelsPerBlock + threadIdx.x;
    const int64_t n = blockIdx.y;
    float acc = 0.0f;
    if (c < C) {
        const int64_t base = n * hw * C + c;
        for (int64_t p = threadIdx.y; p < hw; p += kRowThreads) {
            const float v = to_float(x[base + p * C]);
            acc += y ? v * to_float(y[base + p * C]) : v;
        }
    }
    smem[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float s = 0.0f;
        for (int j = 0; j < kRowThreads; ++j) s += smem[j][threadIdx.x];
        out[n * C + c] = s * scale;
    }
}

// y = x * gate[n, c]
template <typename T>
__global__ void gate_apply_kernel(const T* x, const float* gate, T* y, int64_t hw, int C, int64_t total) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t c = i % C, n = i / (hw * C);
        y[i] = from_float<T>(to_float(x[i]) * gate[n * C + c]);
    }
}

// dx = dy * gate[n, c] + dsqueezed[n, c] * inv_hw
template <typename T>
__global__ void se_dx_kernel(const T* dy, const float* gate, const float* dsq, float inv_hw, T* dx,
                             int64_t hw, int C, int64_t total) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t c = i % C, n = i / (hw * C);
        dx[i] = from_float<T>(to_float(dy[i]) * gate[n * C + c] + dsq[n * C + c] * inv_hw);
    }
}

void check_args(const char* op, const SqueezeExciteTrainArgs& a) {
    EFFNET_CHECK(a.batch >= 1 && a.hw >= 1 && a.channels >= 1 && a.reduced >= 1,
                 std::string(op) + ": bad shape N=" + std::to_string(a.batch) +
                     " HW=" + std::to_string(a.hw) + " C=" + std::to_string(a.channels) +
                     " S=" + std::to_string(a.reduced));
    EFFNET_CHECK(a.x && a.w1 && a.b1 && a.w2 && a.b2 && a.squeezed && a.reduced_pre && a.reduced_out &&
                     a.gate,
                 std::string(op) + ": null pointer argument");
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

} // namespace

void launch_spatial_sum(const void* x, const void* y, float* out, int batch, int64_t hw, int channels,
                        float scale, Precision storage, cudaStream_t stream) {
    EFFNET_CHECK(x && out && batch >= 1 && batch <= 65535 && hw >= 1 && channels >= 1,
                 "spatial_sum: null pointer or bad shape N=" + std::to_string(batch) +
                     " HW=" + std::to_string(hw) + " C=" + std::to_string(channels));
    const dim3 block(kChannelsPerBlock, kRowThreads);
    const dim3 grid(unsigned((channels + kChannelsPerBlock - 1) / kChannelsPerBlock), unsigned(batch));
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        spatial_sum_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(y),
                                                          out, hw, channels, scale);
    });
    EFFNET_LAUNCH_CHECK("spatial_sum_kernel");
}

void launch_squeeze_excite_train_forward(const SqueezeExciteTrainArgs& a, void* y, Precision storage,
                                         cudaStream_t stream) {
    check_args("squeeze_excite_train_forward", a);
    EFFNET_CHECK(y && y != a.x, "squeeze_excite_train_forward: null or aliased output");
    const int N = a.batch, C = a.channels, S = a.reduced;
    launch_spatial_sum(a.x, nullptr, a.squeezed, N, a.hw, C, float(1.0 / double(a.hw)), storage, stream);
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
    const int64_t total = int64_t(N) * a.hw * C;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        gate_apply_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(a.x), a.gate, static_cast<T*>(y), a.hw, C, total);
    });
    EFFNET_LAUNCH_CHECK("gate_apply_kernel");
}

size_t squeeze_excite_workspace_floats(int batch, int channels, int reduced) {
    return size_t(batch) * (2 * size_t(channels) + size_t(reduced));
}

void launch_squeeze_excite_backward(const SqueezeExciteTrainArgs& a, const void* dy, void* dx, float* dw1,
                                    float* db1, float* dw2, float* db2, float* workspace, Precision storage,
                                    cudaStream_t stream) {
    check_args("squeeze_excite_backward", a);
    EFFNET_CHECK(dy && dx && dx != dy && dw1 && db1 && dw2 && db2 && workspace,
                 "squeeze_excite_backward: null or aliased pointer argument");
    const int N = a.batch, C = a.channels, S = a.reduced;
    float* dgate = workspace;             // [N, C], becomes dgate_pre
    float* dred = dgate + int64_t(N) * C; // [N, S], becomes dreduced_pre
    float* dsq = dred + int64_t(N) * S;   // [N, C]

    launch_spatial_sum(a.x, dy, dgate, N, a.hw, C, 1.0f, storage, stream);
    launch_pointwise_grad_f32(dgate, nullptr, a.gate, int64_t(N) * C, Act::None, stream);
    // db2[c] = sum_n dgate_pre[n, c]
    SmallMatmulArgs m;
    m.a = dgate;
    m.a_row = 1;
    m.a_col = C;
    m.rows = C;
    m.cols = 1;
    m.inner = N;
    m.out = db2;
    launch_small_matmul(m, stream);
    // dW2[c, s] = sum_n dgate_pre[n, c] reduced[n, s]
    m = SmallMatmulArgs{};
    m.a = dgate;
    m.a_row = 1;
    m.a_col = C;
    m.b = a.reduced_out;
    m.b_row = S;
    m.b_col = 1;
    m.rows = C;
    m.cols = S;
    m.inner = N;
    m.out = dw2;
    launch_small_matmul(m, stream);
    // dreduced[n, s] = sum_c dgate_pre[n, c] W2[c, s]
    m = SmallMatmulArgs{};
    m.a = dgate;
    m.a_row = C;
    m.a_col = 1;
    m.b = a.w2;
    m.b_row = S;
    m.b_col = 1;
    m.rows = N;
    m.cols = S;
    m.inner = C;
    m.out = dred;
    launch_small_matmul(m, stream);
    launch_pointwise_grad_f32(dred, a.reduced_pre, nullptr, int64_t(N) * S, a.act, stream);
    // db1[s] = sum_n dred_pre[n, s]
    m = SmallMatmulArgs{};
    m.a = dred;
    m.a_row = 1;
    m.a_col = S;
    m.rows = S;
    m.cols = 1;
    m.inner = N;
    m.out = db1;
    launch_small_matmul(m, stream);
    // dW1[s, c] = sum_n dred_pre[n, s] squeezed[n, c]
    m = SmallMatmulArgs{};
    m.a = dred;
    m.a_row = 1;
    m.a_col = S;
    m.b = a.squeezed;
    m.b_row = C;
    m.b_col = 1;
    m.rows = S;
    m.cols = C;
    m.inner = N;
    m.out = dw1;
    launch_small_matmul(m, stream);
    // dsqueezed[n, c] = sum_s dred_pre[n, s] W1[s, c]
    m = SmallMatmulArgs{};
    m.a = dred;
    m.a_row = S;
    m.a_col = 1;
    m.b = a.w1;
    m.b_row = C;
    m.b_col = 1;
    m.rows = N;
    m.cols = C;
    m.inner = S;
    m.out = dsq;
    launch_small_matmul(m, stream);

    const int64_t total = int64_t(N) * a.hw * C;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        se_dx_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(dy), a.gate, dsq, float(1.0 / double(a.hw)), static_cast<T*>(dx), a.hw, C,
            total);
    });
    EFFNET_LAUNCH_CHECK("se_dx_kernel");
}

} // namespace effnet::kernels
