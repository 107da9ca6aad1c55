#include "kernels/im2col.cuh"

#include <string>

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void im2col_kernel(Im2colArgs a) {
    T* cols = static_cast<T*>(a.columns);
    const int kk = a.kernel * a.kernel, taps = a.channels * kk;
    const int64_t total = int64_t(a.batch) * a.out_height * a.out_width * a.ld;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int col = int(i % a.ld);
        const int64_t row = i / a.ld;
        float v = 0.0f;
        if (col < taps) {
            const int ci = col / kk, kh = (col % kk) / a.kernel, kw = col % a.kernel;
            const int wo = int(row % a.out_width);
            const int ho = int((row / a.out_width) % a.out_height);
            const int64_t n = row / (int64_t(a.out_width) * a.out_height);
            const int hi = ho * a.stride - a.pad_top + kh, wi = wo * a.stride - a.pad_left + kw;
            if (hi >= 0 && hi < a.height && wi >= 0 && wi < a.width)
                v = a.input[((n * a.channels + ci) * a.height + hi) * a.width + wi];
        }
        cols[i] = from_float<T>(v);
    }
}

} // namespace

void launch_im2col(const Im2colArgs& a, Precision storage, cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.columns, "im2col: null pointer argument");
    EFFNET_CHECK(
        a.batch >= 1 && a.channels >= 1 && a.height >= 1 && a.width >= 1 && a.kernel >= 1 && a.stride >= 1 &&
            a.out_height >= 1 && a.out_width >= 1 && a.ld >= a.channels * a.kernel * a.kernel,
        "im2col: bad shape N=" + std::to_string(a.batch) + " C=" + std::to_string(a.channels) + " " +
            std::to_string(a.height) + "x" + std::to_string(a.width) + " ld=" + std::to_string(a.ld));
    const int64_t total = int64_t(a.batch) * a.out_height * a.out_width * a.ld;
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        im2col_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
    });
    EFFNET_LAUNCH_CHECK("im2col_kernel");
}

} // namespace effnet::kernels
