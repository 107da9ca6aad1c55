#include "kernels/channel_gate.cuh"

#include <string>

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

// V channels per thread (16 bytes when vectorised, else 1). Grid-stride over vectors of one
// row-major [rows, channels] tensor; channels % V == 0, so a vector never straddles two rows.
template <typename T, int V>
__global__ void channel_gate_kernel(T* x, const float* gate, int64_t rows, int channels, int rows_per_image) {
    const int groups = channels / V;
    const int64_t count = rows * groups;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t m = i / groups;
        const int k = int(i % groups) * V;
        const float* g = gate + (m / rows_per_image) * channels + k;
        T* p = x + m * channels + k;
        float v[V];
        load_vec<T, V>(p, v);
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] *= g[j];
        store_vec<T, V>(p, v);
    }
}

} // namespace

void launch_channel_gate(void* x, const float* gate, int64_t rows, int channels, int rows_per_image,
                         Precision precision, cudaStream_t stream) {
    EFFNET_CHECK(x && gate, "channel_gate: null pointer argument");
    EFFNET_CHECK(rows >= 1 && channels >= 1 && rows_per_image >= 1 && rows % rows_per_image == 0,
                 "channel_gate: bad shape rows=" + std::to_string(rows) + " channels=" +
                     std::to_string(channels) + " rows_per_image=" + std::to_string(rows_per_image));
    dispatch_storage(precision, [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int kVec = int(16 / sizeof(T));
        T* xt = static_cast<T*>(x);
        if (vectors_fit(channels, kVec, {x})) {
            const int64_t count = rows * (channels / kVec);
            channel_gate_kernel<T, kVec><<<grid_for(count, kThreads, 1 << 20), kThreads, 0, stream>>>(
                xt, gate, rows, channels, rows_per_image);
        } else {
            channel_gate_kernel<T, 1><<<grid_for(rows * channels, kThreads, 1 << 20), kThreads, 0, stream>>>(
                xt, gate, rows, channels, rows_per_image);
        }
    });
    EFFNET_LAUNCH_CHECK("channel_gate_kernel");
}

} // namespace effnet::kernels
