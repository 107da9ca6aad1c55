#include "kernels/depthwise_conv_backward.cuh"

#include <string>

#include "kernels/common.cuh"
#include "kernels/train_dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerBlock = 32;
constexpr int kRowThreads = 8;

struct Chunks {
    int64_t count, rows_per_chunk;
};
Chunks weight_grad_chunks(const DepthwiseShape& s) {
    const int64_t rows = int64_t(s.batch) * s.out_height * s.out_width;
    int64_t count = (rows + 511) / 512;
    if (count > 256) count = 256;
    if (count < 1) count = 1;
    return {count, (rows + count - 1) / count};
}

template <typename T>
__global__ void depthwise_forward_kernel(const T* x, const float* w, T* y, DepthwiseShape s) {
    const int C = s.channels, k = s.kernel;
    const int64_t n_out = int64_t(s.batch) * s.out_height * s.out_width * C;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_out;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        int64_t pos = i / C;
        const int wo = int(pos % s.out_width);
        pos /= s.out_width;
        const int ho = int(pos % s.out_height);
        const int64_t n = pos / s.out_height;
        const float* wc = w + int64_t(c) * k * k;
        float acc = 0.0f;
        for (int kh = 0; kh < k; ++kh) {
            const int hi = ho * s.stride - s.pad_top + kh;
            if (hi < 0 || hi >= s.height) continue;
            for (int kw = 0; kw < k; ++kw) {
                const int wi = wo * s.stride - s.pad_left + kw;
                if (wi < 0 || wi >= s.width) continue;
                acc = fmaf(to_float(x[((n * s.height + hi) * s.width + wi) * C + c]), wc[kh * k + kw], acc);
            }
        }
        y[i] = from_float<T>(acc);
    }
}

template <typename T>
__global__ void depthwise_backward_data_kernel(const T* dy, const float* w, const T* add, T* dx,
                                               DepthwiseShape s) {
    const int C = s.channels, k = s.kernel, st = s.stride;
    const int64_t n_in = int64_t(s.batch) * s.height * s.width * C;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_in;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        int64_t pos = i / C;
        const int wi = int(pos % s.width);
        pos /= s.width;
        const int hi = int(pos % s.height);
        const int64_t n = pos / s.height;
        const float* wc = w + int64_t(c) * k * k;
        float acc = 0.0f;
        for (int kh = 0; kh < k; ++kh) {
            const int th = hi + s.pad_top - kh; // = ho * stride
            if (th < 0 || th % st != 0) continue;
            const int ho = th / st;
            if (ho >= s.out_height) continue;
            for (int kw = 0; kw < k; ++kw) {
                const int tw = wi + s.pad_left - kw;
                if (tw < 0 || tw % st != 0) continue;
                const int wo = tw / st;
                if (wo >= s.out_width) continue;
                acc = fmaf(to_float(dy[((n * s.out_height + ho) * s.out_width + wo) * C + c]),
                           wc[kh * k + kw], acc);
            }
        }
        if (add) acc += to_float(add[i]);
        dx[i] = from_float<T>(acc);
    }
}

// partial[chunk, c, tap] = sum over the chunk's output positions of dy * x(tap).
template <typename T, int K>
__global__ void __launch_bounds__(kChannelsPerBlock* kRowThreads)
    depthwise_weight_partial_kernel(const T* x, const T* dy, float* partial, DepthwiseShape s,
                                    int64_t rows_per_chunk) {
    __shared__ float smem[kRowThreads][kChannelsPerBlock];
    const int C = s.channels;
    const int c = blockIdx.x * kChannelsPerBlock + threadIdx.x;
    const int64_t rows = int64_t(s.batch) * s.out_height * s.out_width;
    const int64_t begin = blockIdx.y * rows_per_chunk;
    const int64_t end = min(rows, begin + rows_per_chunk);
    float acc[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t) acc[t] = 0.0f;
    if (c < C) {
        for (int64_t r = begin + threadIdx.y; r < end; r += kRowThreads) {
            const int wo = int(r % s.out_width);
            const int ho = int((r / s.out_width) % s.out_height);
            const int64_t n = r / (int64_t(s.out_width) * s.out_height);
            const float g = to_float(dy[r * C + c]);
#pragma unroll
            for (int kh = 0; kh < K; ++kh) {
                const int hi = ho * s.stride - s.pad_top + kh;
                if (hi < 0 || hi >= s.height) continue;
#pragma unroll
                for (int kw = 0; kw < K; ++kw) {
                    const int wi = wo * s.stride - s.pad_left + kw;
                    if (wi < 0 || wi >= s.width) continue;
                    acc[kh * K + kw] =
                        fmaf(g, to_float(x[((n * s.height + hi) * s.width + wi) * C + c]), acc[kh * K + kw]);
                }
            }
        }
    }
    // Fixed-order sum of the kRowThreads row threads, tap by tap.
#pragma unroll
    for (int t = 0; t < K * K; ++t) {
        smem[threadIdx.y][threadIdx.x] = acc[t];
        __syncthreads();
        if (threadIdx.y == 0 && c < C) {
            float sum = 0.0f;
            for (int j = 0; j < kRowThreads; ++j) sum += smem[j][threadIdx.x];
            partial[(blockIdx.y * int64_t(C) + c) * (K * K) + t] = sum;
        }
        __syncthreads();
    }
}

__global__ void depthwise_weight_finalize_kernel(const float* partial, int64_t chunks, int64_t weights,
                                                 float* dw) {
    const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; // c * k*k + tap
    if (i >= weights) return;
    double sum = 0.0;
    for (int64_t p = 0; p < chunks; ++p) sum += partial[p * weights + i];
    dw[i] = float(sum);
}

void check_shape(const char* op, const DepthwiseShape& s) {
    const bool ok = s.batch >= 1 && s.height >= 1 && s.width >= 1 && s.channels >= 1 && s.kernel >= 1 &&
                    s.stride >= 1 && s.pad_top >= 0 && s.pad_left >= 0 && s.out_height >= 1 &&
                    s.out_width >= 1 && (s.out_height - 1) * s.stride - s.pad_top < s.height &&
                    (s.out_width - 1) * s.stride - s.pad_left < s.width;
    EFFNET_CHECK(ok, std::string(op) + ": bad shape N=" + std::to_string(s.batch) +
                         " H=" + std::to_string(s.height) + " W=" + std::to_string(s.width) +
                         " C=" + std::to_string(s.channels) + " k=" + std::to_string(s.kernel) +
                         " s=" + std::to_string(s.stride) + " pad=(" + std::to_string(s.pad_top) + "," +
                         std::to_string(s.pad_left) + ") out=" + std::to_string(s.out_height) + "x" +
                         std::to_string(s.out_width));
}

} // namespace

void launch_depthwise_train_forward(const void* x, const float* w, void* y, const DepthwiseShape& s,
                                    Precision storage, cudaStream_t stream) {
    check_shape("depthwise_train_forward", s);
    EFFNET_CHECK(x && w && y && x != y, "depthwise_train_forward: null or aliased pointer argument");
    const int64_t n = int64_t(s.batch) * s.out_height * s.out_width * s.channels;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        depthwise_forward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<const T*>(x),
                                                                                    w, static_cast<T*>(y), s);
    });
    EFFNET_LAUNCH_CHECK("depthwise_forward_kernel");
}

void launch_depthwise_backward_data(const void* dy, const float* w, const void* add, void* dx,
                                    const DepthwiseShape& s, Precision storage, cudaStream_t stream) {
    check_shape("depthwise_backward_data", s);
    EFFNET_CHECK(dy && w && dx && dx != dy, "depthwise_backward_data: null or aliased pointer argument");
    const int64_t n = int64_t(s.batch) * s.height * s.width * s.channels;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        depthwise_backward_data_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(dy), w, static_cast<const T*>(add), static_cast<T*>(dx), s);
    });
    EFFNET_LAUNCH_CHECK("depthwise_backward_data_kernel");
}

size_t depthwise_weight_grad_workspace_floats(const DepthwiseShape& s) {
    return size_t(weight_grad_chunks(s).count) * size_t(s.channels) * size_t(s.kernel) * size_t(s.kernel);
}

void launch_depthwise_backward_weight(const void* x, const void* dy, float* dw, float* workspace,
                                      const DepthwiseShape& s, Precision storage, cudaStream_t stream) {
    check_shape("depthwise_backward_weight", s);
    EFFNET_CHECK(s.kernel == 3 || s.kernel == 5,
                 "depthwise_backward_weight: kernel " + std::to_string(s.kernel) + " (supported: 3, 5)");
    EFFNET_CHECK(x && dy && dw && workspace, "depthwise_backward_weight: null pointer argument");
    const Chunks ch = weight_grad_chunks(s);
    const dim3 block(kChannelsPerBlock, kRowThreads);
    const dim3 grid(unsigned((s.channels + kChannelsPerBlock - 1) / kChannelsPerBlock), unsigned(ch.count));
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T* xt = static_cast<const T*>(x);
        const T* dyt = static_cast<const T*>(dy);
        if (s.kernel == 3)
            depthwise_weight_partial_kernel<T, 3>
                <<<grid, block, 0, stream>>>(xt, dyt, workspace, s, ch.rows_per_chunk);
        else
            depthwise_weight_partial_kernel<T, 5>
                <<<grid, block, 0, stream>>>(xt, dyt, workspace, s, ch.rows_per_chunk);
    });
    EFFNET_LAUNCH_CHECK("depthwise_weight_partial_kernel");
    const int64_t weights = int64_t(s.channels) * s.kernel * s.kernel;
    depthwise_weight_finalize_kernel<<<unsigned((weights + 255) / 256), 256, 0, stream>>>(workspace, ch.count,
                                                                                          weights, dw);
    EFFNET_LAUNCH_CHECK("depthwise_weight_finalize_kernel");
}

} // namespace effnet::kernels
