#include "kernels/activation.cuh"

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void activation_forward_kernel(const T* x, T* y, int64_t n, Act act) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        y[i] = from_float<T>(act_forward(to_float(x[i]), act));
}

// 16-byte vectors (n % V == 0, aligned): the inference path runs this in place after a vendor
// GEMM, where it is a full read + write of the tensor.
template <typename T, int V>
__global__ void activation_forward_vec_kernel(const T* x, T* y, int64_t n_vec, Act act) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_vec;
         i += int64_t(gridDim.x) * blockDim.x) {
        float v[V];
        load_vec<T, V>(x + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = act_forward(v[j], act);
        store_vec<T, V>(y + i * V, v);
    }
}

template <typename T>
__global__ void activation_backward_kernel(const T* x, const T* dy, T* dx, int64_t n, Act act) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dx[i] = from_float<T>(act_backward(to_float(x[i]), to_float(dy[i]), act));
}

} // namespace

void launch_activation_forward(const void* x, void* y, int64_t n, Act act, Precision storage,
                               cudaStream_t stream) {
    EFFNET_CHECK(x && y && n >= 0, "activation_forward: null pointer or negative size");
    if (n == 0) return;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int kVec = int(16 / sizeof(T));
        if (vectors_fit(n, kVec, {x, y}))
            activation_forward_vec_kernel<T, kVec>
                <<<grid_for(n / kVec, kThreads, 1 << 20), kThreads, 0, stream>>>(
                    static_cast<const T*>(x), static_cast<T*>(y), n / kVec, act);
        else
            activation_forward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
                static_cast<const T*>(x), static_cast<T*>(y), n, act);
    });
    EFFNET_LAUNCH_CHECK("activation_forward_kernel");
}

void launch_activation_backward(const void* x, const void* dy, void* dx, int64_t n, Act act,
                                Precision storage, cudaStream_t stream) {
    EFFNET_CHECK(x && dy && dx && n >= 0, "activation_backward: null pointer or negative size");
    if (n == 0) return;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        activation_backward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(dx), n, act);
    });
    EFFNET_LAUNCH_CHECK("activation_backward_kernel");
}

} // namespace effnet::kernels
