#include "kernels/pointwise_conv.cuh"

#include <mma.h>

#include <string>

#include "kernels/common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// Shared epilogue for one output element: bias, activation, residual.
template <typename T>
__device__ __forceinline__ float epilogue_value(const PointwiseArgs& a, float acc, int64_t m, int n) {
    float v = apply_act(acc + a.bias[n], a.act);
    if (a.residual) v += to_float(static_cast<const T*>(a.residual)[m * a.out_channels + n]);
    return v;
}

// ---------------------------------------------------------------------------------------------
// SIMT: 64x64 output tile per block of 256 threads, each thread a 4x4 register tile, BK = 16.
// Tiles are stored k-major in shared memory as float so the inner loop reads float4 rows.
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
            const float4 av = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            const float4 bv = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            const float ar[4] = {av.x, av.y, av.z, av.w};
            const float br[4] = {bv.x, bv.y, bv.z, bv.w};
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

// ---------------------------------------------------------------------------------------------
// Tensor cores (WMMA 16x16x16, fp32 accumulate): 128x64 tile per block of 8 warps (4 along M x 2
// along N, each 32x32 = 2x2 fragments), BK = 32. The next K tile is loaded into registers while
// the current one is multiplied. The gate is applied in fp32 on load, then rounded back to T.
// After the K loop the accumulators go through shared memory (reusing the A/B tiles) so the
// epilogue can write 16-byte vectors of 8 channels.
namespace tc {
constexpr int BM = 128, BN = 64, BK = 32, LDS = BK + 8, LDC = BN + 4;
constexpr int kAVecs = BM * BK / 8 / 256; // 16-byte vectors per thread per tile: 2
constexpr int kBVecs = BN * BK / 8 / 256; // 1
constexpr size_t kTileBytes = size_t(BM + BN) * LDS * 2;
constexpr size_t kOutBytes = size_t(BM) * LDC * sizeof(float);
constexpr size_t kSmemBytes = kTileBytes > kOutBytes ? kTileBytes : kOutBytes;

template <typename T>
__device__ __forceinline__ void load_a(const PointwiseArgs& a, int64_t m0, int k0, uint4 (&regs)[kAVecs]) {
    const T* x = static_cast<const T*>(a.input);
    const int K = a.in_channels;
#pragma unroll
    for (int i = 0; i < kAVecs; ++i) {
        const int v = threadIdx.x + i * 256;
        const int r = v / (BK / 8), kc = (v % (BK / 8)) * 8;
        const int64_t m = m0 + r;
        const int k = k0 + kc;
        uint4 raw = make_uint4(0, 0, 0, 0);
        if (m < a.rows && k < K) { // K % 8 == 0: the vector is wholly in or out
            raw = *reinterpret_cast<const uint4*>(x + m * K + k);
            if (a.gate) {
                const float* g = a.gate + (m / a.rows_per_image) * K + k;
                const float4 g0 = *reinterpret_cast<const float4*>(g);
                const float4 g1 = *reinterpret_cast<const float4*>(g + 4);
                const float gs[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
                T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
                for (int j = 0; j < 8; ++j) e[j] = from_float<T>(to_float(e[j]) * gs[j]);
            }
        }
        regs[i] = raw;
    }
}

template <typename T>
__device__ __forceinline__ void load_b(const PointwiseArgs& a, int n0, int k0, uint4 (&regs)[kBVecs]) {
    const T* w = static_cast<const T*>(a.weight);
    const int K = a.in_channels;
#pragma unroll
    for (int i = 0; i < kBVecs; ++i) {
        const int v = threadIdx.x + i * 256;
        const int c = v / (BK / 8), kc = (v % (BK / 8)) * 8;
        const int n = n0 + c;
        const int k = k0 + kc;
        regs[i] = (n < a.out_channels && k < K) ? *reinterpret_cast<const uint4*>(w + int64_t(n) * K + k)
                                                : make_uint4(0, 0, 0, 0);
    }
}

template <typename T>
__device__ __forceinline__ void store_tiles(T* As, T* Bs, const uint4 (&ar)[kAVecs], const uint4 (&br)[kBVecs]) {
#pragma unroll
    for (int i = 0; i < kAVecs; ++i) {
        const int v = threadIdx.x + i * 256;
        *reinterpret_cast<uint4*>(As + (v / (BK / 8)) * LDS + (v % (BK / 8)) * 8) = ar[i];
    }
#pragma unroll
    for (int i = 0; i < kBVecs; ++i) {
        const int v = threadIdx.x + i * 256;
        *reinterpret_cast<uint4*>(Bs + (v / (BK / 8)) * LDS + (v % (BK / 8)) * 8) = br[i];
    }
}

template <typename T>
__global__ void __launch_bounds__(256) pointwise_tc_kernel(PointwiseArgs a) {
    using namespace nvcuda;
    __shared__ __align__(128) unsigned char smem[kSmemBytes];
    T* As = reinterpret_cast<T*>(smem);      // [BM][LDS]
    T* Bs = As + BM * LDS;                   // [BN][LDS]
    float* Cs = reinterpret_cast<float*>(smem); // [BM][LDC], after the K loop

    const int64_t m0 = int64_t(blockIdx.x) * BM;
    const int n0 = blockIdx.y * BN;
    const int K = a.in_channels, N = a.out_channels;
    const int warp = threadIdx.x / 32;
    const int wm = (warp % 4) * 32, wn = (warp / 4) * 32;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    uint4 ar[kAVecs], br[kBVecs];
    load_a<T>(a, m0, 0, ar);
    load_b<T>(a, n0, 0, br);
    store_tiles<T>(As, Bs, ar, br);
    __syncthreads();
    for (int k0 = 0; k0 < K; k0 += BK) {
        const bool has_next = k0 + BK < K;
        if (has_next) {
            load_a<T>(a, m0, k0 + BK, ar);
            load_b<T>(a, n0, k0 + BK, br);
        }
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm + i * 16) * LDS + kk, LDS);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (wn + j * 16) * LDS + kk, LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
        if (has_next) {
            store_tiles<T>(As, Bs, ar, br);
            __syncthreads();
        }
    }
    // The last __syncthreads above guarantees no warp still reads As/Bs.
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(Cs + (wm + i * 16) * LDC + wn + j * 16, acc[i][j], LDC, wmma::mem_row_major);
    __syncthreads();

    // Epilogue: 8 consecutive channels per item (N % 8 == 0), 16-byte stores.
    T* y = static_cast<T*>(a.output);
    const T* res = static_cast<const T*>(a.residual);
    for (int item = threadIdx.x; item < BM * (BN / 8); item += 256) {
        const int r = item / (BN / 8), cv = (item % (BN / 8)) * 8;
        const int64_t m = m0 + r;
        const int n = n0 + cv;
        if (m >= a.rows || n >= N) continue;
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = apply_act(Cs[r * LDC + cv + j] + a.bias[n + j], a.act);
        if (res) {
            float rv[8];
            load_vec<T, 8>(res + m * N + n, rv);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] += rv[j];
        }
        store_vec<T, 8>(y + m * N + n, v);
    }
}
} // namespace tc

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
void launch_simt(const PointwiseArgs& a, cudaStream_t stream) {
    const dim3 grid(unsigned((a.rows + simt::BM - 1) / simt::BM), unsigned((a.out_channels + simt::BN - 1) / simt::BN));
    simt::pointwise_simt_kernel<T><<<grid, 256, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("pointwise_simt_kernel");
}

template <typename T>
void launch_tc(const PointwiseArgs& a, cudaStream_t stream) {
    const dim3 grid(unsigned((a.rows + tc::BM - 1) / tc::BM), unsigned((a.out_channels + tc::BN - 1) / tc::BN));
    tc::pointwise_tc_kernel<T><<<grid, 256, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("pointwise_tc_kernel");
}

} // namespace

bool pointwise_tensor_core_eligible(const PointwiseArgs& a, Precision precision) {
    return precision != Precision::FP32 && a.in_channels % 8 == 0 && a.out_channels % 8 == 0 &&
           aligned16(a.input) && aligned16(a.weight) && aligned16(a.output) &&
           (a.residual == nullptr || aligned16(a.residual)) && (a.gate == nullptr || aligned16(a.gate));
}

void launch_pointwise_conv(const PointwiseArgs& a, Precision precision, GemmKernel kernel, cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.weight && a.bias && a.output, "pointwise_conv: null pointer argument");
    EFFNET_CHECK(a.rows >= 1 && a.out_channels >= 1 && a.in_channels >= 1 && a.rows_per_image >= 1 &&
                     a.rows % a.rows_per_image == 0,
                 "pointwise_conv: bad shape M=" + std::to_string(a.rows) + " N=" + std::to_string(a.out_channels) +
                     " K=" + std::to_string(a.in_channels) + " rows_per_image=" + std::to_string(a.rows_per_image));
    EFFNET_CHECK((a.rows + simt::BM - 1) / simt::BM < (int64_t(1) << 31) && a.out_channels <= 65535 * tc::BN,
                 "pointwise_conv: shape too large M=" + std::to_string(a.rows));
    const bool eligible = pointwise_tensor_core_eligible(a, precision);
    if (kernel == GemmKernel::TensorCore && !eligible)
        throw Error("pointwise_conv: tensor-core kernel needs fp16/bf16, K and N multiples of 8 and 16-byte "
                    "aligned pointers (K=" + std::to_string(a.in_channels) + " N=" + std::to_string(a.out_channels) + ")");
    const bool use_tc = eligible && kernel != GemmKernel::Simt;
    switch (precision) {
    case Precision::FP32: launch_simt<float>(a, stream); break;
    case Precision::FP16:
        if (use_tc) launch_tc<__half>(a, stream);
        else launch_simt<__half>(a, stream);
        break;
    case Precision::BF16:
        if (use_tc) launch_tc<__nv_bfloat16>(a, stream);
        else launch_simt<__nv_bfloat16>(a, stream);
        break;
    }
}

} // namespace effnet::kernels
