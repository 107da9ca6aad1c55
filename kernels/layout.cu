#include "kernels/layout.cuh"

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kTile = 32; // a 32x32 tile through shared memory: reads and writes both coalesced
constexpr int kRows = 8;  // threads per tile column: each thread moves kTile / kRows elements

// grid: (pixel tiles, channel tiles, batch). Reads src[n][p][c] along c, writes dst[n][c][p]
// along p.
template <typename T>
__global__ void nhwc_to_nchw_kernel(const T* __restrict__ src, float* __restrict__ dst, int64_t pixels,
                                    int channels) {
    __shared__ float tile[kTile][kTile + 1]; // +1: no bank conflicts on the transposed read
    const int64_t n = blockIdx.z;
    const int64_t p0 = int64_t(blockIdx.x) * kTile;
    const int c0 = blockIdx.y * kTile;
    const T* s = src + n * pixels * channels;
    float* d = dst + n * pixels * channels;
    for (int r = threadIdx.y; r < kTile; r += kRows) {
        const int64_t p = p0 + r;
        const int c = c0 + threadIdx.x;
        if (p < pixels && c < channels) tile[r][threadIdx.x] = to_float(s[p * channels + c]);
    }
    __syncthreads();
    for (int r = threadIdx.y; r < kTile; r += kRows) {
        const int c = c0 + r;
        const int64_t p = p0 + threadIdx.x;
        if (p < pixels && c < channels) d[int64_t(c) * pixels + p] = tile[threadIdx.x][r];
    }
}

} // namespace

void launch_nhwc_to_nchw_f32(const void* src, float* dst, int64_t batch, int64_t pixels, int channels,
                             Precision storage, cudaStream_t stream) {
    EFFNET_CHECK(src && dst, "nhwc_to_nchw_f32: null pointer argument");
    EFFNET_CHECK(batch >= 1 && batch <= 65535 && pixels >= 1 && channels >= 1,
                 "nhwc_to_nchw_f32: batch must be in [1, 65535] and pixels, channels >= 1");
    const dim3 grid(unsigned((pixels + kTile - 1) / kTile), unsigned((channels + kTile - 1) / kTile),
                    unsigned(batch));
    const dim3 block(kTile, kRows);
    dispatch_storage(storage, [&](auto tag) {
        using T = typename decltype(tag)::type;
        nhwc_to_nchw_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(src), dst, pixels, channels);
    });
    EFFNET_LAUNCH_CHECK("nhwc_to_nchw_kernel");
}

} // namespace effnet::kernels
