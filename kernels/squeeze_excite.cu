#include "kernels/squeeze_excite.cuh"

#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// 1024 threads: a block's time is the latency of its serial loops (one block per image, and
// batch 32 fills a quarter of an H200), so more warps share them: measured at 256 threads, the
// 16 excites of B0 took 15% of the forward at batch 32 (22-44 us each at C = 672..1152); at
// 1024 threads with loops unrolled by 4, still ~23 us at C = 1152: the loops are unrolled by 8
// so that more of their weight loads are in flight at once.
constexpr int kThreads = 1024;

// One block per image: mean [C] and hidden [S] in shared memory; each warp computes hidden
// units (lanes stride over C, so the W1 row reads coalesce), then each thread one gate channel
// (W2 transposed so that threads read consecutive channels).
__global__ void __launch_bounds__(kThreads) excite_kernel(ExciteArgs a) {
    extern __shared__ float smem[];
    float* mean = smem;                // [C]
    float* hidden = smem + a.channels; // [S]
    const int n = blockIdx.x, C = a.channels, S = a.reduced;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float* sum = a.pooled_sum + int64_t(n) * C + c;
        mean[c] = *sum * a.inv_count;
        *sum = 0.0f; // the squeeze of the next forward adds into it: no memset launch
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int s = warp; s < S; s += warps) {
        const float* w = a.w_reduce + int64_t(s) * C;
        float dot = 0.0f;
#pragma unroll 8
        for (int c = lane; c < C; c += 32) dot = fmaf(w[c], mean[c], dot);
        dot = warp_sum(dot);
        if (lane == 0) hidden[s] = act_forward(dot + a.b_reduce[s], a.act);
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float z = a.b_expand[c];
#pragma unroll 8
        for (int s = 0; s < S; ++s) z = fmaf(a.w_expand_t[int64_t(s) * C + c], hidden[s], z);
        a.gate[int64_t(n) * C + c] = sigmoid(z);
    }
}

} // namespace

void launch_excite(const ExciteArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.pooled_sum && a.w_reduce && a.b_reduce && a.w_expand_t && a.b_expand && a.gate,
                 "excite: null pointer argument");
    EFFNET_CHECK(a.batch >= 1 && a.channels >= 1 && a.reduced >= 1,
                 "excite: bad shape N=" + std::to_string(a.batch) + " C=" + std::to_string(a.channels) +
                     " S=" + std::to_string(a.reduced));
    const size_t smem = size_t(a.channels + a.reduced) * sizeof(float);
    EFFNET_CHECK(smem <= 48 * 1024,
                 "excite: " + std::to_string(a.channels) + " channels exceed shared memory");
    excite_kernel<<<unsigned(a.batch), kThreads, smem, stream>>>(a);
    EFFNET_LAUNCH_CHECK("excite_kernel");
}

} // namespace effnet::kernels
