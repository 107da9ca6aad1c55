#include "kernels/pointwise_conv.cuh"

#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/pointwise_conv_tc.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// Shared epilogue for one output element: bias, activation, residual.
template <typename T>
__device__ __forceinline__ float epilogue_value(const PointwiseArgs& a, float acc, int64_t m, int n) {
    float v = act_forward(acc + a.bias[n], a.act);
    if (a.residual) v += to_float(static_cast<const T*>(a.residual)[m * a.out_channels + n]);
    return v;
}

// ---------------------------------------------------------------------------------------------
// SIMT: 64x64 output tile per block of 256 threads, each thread a 4x4 register tile, BK = 16.
// Tiles are stored k-major in shared memory as float so the inner loop reads 16-byte rows.
namespace simt {
constexpr int BM = 64, BN = 64, BK = 16, PAD = 4;

template <typename T>
__global__ void __launch_bounds__(256) pointwise_simt_kernel(PointwiseArgs a) {
    __shared__ __align__(16) float As[BK][BM + PAD];
    __shared__ __align__(16) float Bs[BK][BN + PAD];
    const T* x = static_cast<const T*>(a.input);
    const T* w = static_cast<const T*>(a.weight);
    const int64_t M = a.rows;
    const int N = a.out_channels, K = a.in_channels;
    const int64_t m0 = int64_t(blockIdx.x) * BM;
    const int n0 = blockIdx.y * BN;
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;

    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int i = 0; i < (BM * BK) / 256; ++i) {
            const int e = tid + i * 256;
            const int r = e / BK, kk = e % BK;
            const int64_t m = m0 + r;
            const int k = k0 + kk;
            float v = 0.0f;
            if (m < M && k < K) {
                v = to_float(x[m * K + k]);
                if (a.gate) v *= a.gate[(m / a.rows_per_image) * K + k];
            }
            As[kk][r] = v;
        }
#pragma unroll
        for (int i = 0; i < (BN * BK) / 256; ++i) {
            const int e = tid + i * 256;
            const int c = e / BK, kk = e % BK;
            const int n = n0 + c;
            const int k = k0 + kk;
            Bs[kk][c] = (n < N && k < K) ? to_float(w[int64_t(n) * K + k]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float ar[4], br[4];
            load_f32<4>(&As[kk][ty * 4], ar);
            load_f32<4>(&Bs[kk][tx * 4], br);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
        }
        __syncthreads();
    }
    T* y = static_cast<T*>(a.output);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + ty * 4 + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n < N) y[m * N + n] = from_float<T>(epilogue_value<T>(a, acc[i][j], m, n));
        }
    }
}
} // namespace simt

template <typename T>
void launch_simt(const PointwiseArgs& a, cudaStream_t stream) {
    const dim3 grid(unsigned((a.rows + simt::BM - 1) / simt::BM),
                    unsigned((a.out_channels + simt::BN - 1) / simt::BN));
    simt::pointwise_simt_kernel<T><<<grid, 256, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("pointwise_simt_kernel");
}

} // namespace

bool pointwise_tensor_core_eligible(const PointwiseArgs& a, Precision precision) {
    return precision != Precision::FP32 && a.in_channels % 8 == 0 && a.out_channels % 8 == 0 &&
           aligned16({a.input, a.weight, a.output, a.residual, a.gate});
}

void launch_pointwise_conv(const PointwiseArgs& a, Precision precision, GemmKernel kernel,
                           cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.weight && a.bias && a.output, "pointwise_conv: null pointer argument");
    EFFNET_CHECK(a.rows >= 1 && a.out_channels >= 1 && a.in_channels >= 1 && a.rows_per_image >= 1 &&
                     a.rows % a.rows_per_image == 0,
                 "pointwise_conv: bad shape M=" + std::to_string(a.rows) +
                     " N=" + std::to_string(a.out_channels) + " K=" + std::to_string(a.in_channels) +
                     " rows_per_image=" + std::to_string(a.rows_per_image));
    EFFNET_CHECK((a.rows + simt::BM - 1) / simt::BM < (int64_t(1) << 31) &&
                     a.out_channels <= 65535 * simt::BN,
                 "pointwise_conv: shape too large M=" + std::to_string(a.rows));
    const bool eligible = pointwise_tensor_core_eligible(a, precision);
    if (kernel == GemmKernel::TensorCore && !eligible)
        throw Error("pointwise_conv: tensor-core kernel needs fp16/bf16, K and N multiples of 8 and 16-byte "
                    "aligned pointers (K=" +
                    std::to_string(a.in_channels) + " N=" + std::to_string(a.out_channels) + ")");
    if (eligible && kernel != GemmKernel::Simt) { // eligible: fp16 or bf16
        launch_pointwise_mma(a, precision, stream);
        return;
    }
    dispatch_storage(precision, [&](auto tag) { launch_simt<typename decltype(tag)::type>(a, stream); });
}

} // namespace effnet::kernels
