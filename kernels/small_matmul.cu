#include "kernels/small_matmul.cuh"

#include <cstdlib>
#include <string>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;                                 // output tile edge and depth of a K slice
constexpr int kRowStep = kThreads / kTile;                // 8: thread (tx, ty) owns rows ty + 8q, column tx
constexpr int kOutPerThread = kTile / kRowStep;           // 4
constexpr int kLoadsPerThread = kTile * kTile / kThreads; // 4 elements of each operand per slice

// Block = one 32x32 output tile [i0, i0 + 32) x [j0, j0 + 32). K runs in 32-deep slices of A
// [32 rows, 32 k] and B [32 k, 32 cols] staged in shared memory (the next slice is loaded into
// registers while the current one is used). A slice element is loaded by lane tx along the
// operand's fast dimension (a_k_fast: along k, else along i; b_k_fast: along k, else along j)
// and warp ty + 8q along the other, so a warp reads 32 consecutive floats when that stride is 1.
// Each output keeps the serial order: acc = fmaf(a_k, b_k, acc) for k = 0..K-1. B == null is
// B = 1 (fmaf(a, 1, acc) == acc + a exactly); with row_sum the column j = cols is a virtual
// column of ones whose sums go to row_sum.
__global__ void __launch_bounds__(kThreads)
    small_matmul_kernel(SmallMatmulArgs s, bool a_k_fast, bool b_k_fast) {
    __shared__ float as[kTile][kTile + 1]; // [k][i]; +1: the along-k stores hit 32 banks
    __shared__ float bs[kTile][kTile + 1]; // [k][j]
    const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
    const int i0 = blockIdx.y * kTile, j0 = blockIdx.x * kTile;
    const int rs_col = s.row_sum ? s.cols : -1; // the virtual ones column, if any

    // Load q of this thread: A slice (row, k) = a_k_fast ? (ty + 8q, tx) : (tx, ty + 8q);
    // B slice (k, col) = b_k_fast ? (tx, ty + 8q) : (ty + 8q, tx).
    const int a_r = a_k_fast ? ty : tx, a_k = a_k_fast ? tx : ty;
    const int a_dr = a_k_fast ? kRowStep : 0, a_dk = a_k_fast ? 0 : kRowStep;
    const int b_c = b_k_fast ? ty : tx, b_k = b_k_fast ? tx : ty;
    const int b_dc = b_k_fast ? kRowStep : 0, b_dk = b_k_fast ? 0 : kRowStep;
    const int64_t a_q = a_k_fast ? kRowStep * s.a_row : kRowStep * s.a_col; // address step per q
    const int64_t b_q = b_k_fast ? kRowStep * s.b_col : kRowStep * s.b_row;
    const float* a_p = s.a + int64_t(i0 + a_r) * s.a_row + int64_t(a_k) * s.a_col; // slice k0 = 0
    const float* b_p = s.b ? s.b + int64_t(b_k) * s.b_row + int64_t(j0 + b_c) * s.b_col : nullptr;

    float ra[kLoadsPerThread], rb[kLoadsPerThread];
    // Slice k0 into registers; out-of-range elements are 0 (rows/cols past the edge are never
    // stored, k past the end is never read).
    auto load = [&](int k0) {
#pragma unroll
        for (int q = 0; q < kLoadsPerThread; ++q) {
            const bool a_ok = i0 + a_r + q * a_dr < s.rows && k0 + a_k + q * a_dk < s.inner;
            ra[q] = a_ok ? a_p[q * a_q] : 0.0f;
            const int j = j0 + b_c + q * b_dc;
            const bool k_ok = k0 + b_k + q * b_dk < s.inner;
            if (k_ok && j < s.cols)
                rb[q] = b_p ? b_p[q * b_q] : 1.0f;
            else
                rb[q] = k_ok && j == rs_col ? 1.0f : 0.0f;
        }
    };
    float acc[kOutPerThread];
#pragma unroll
    for (int q = 0; q < kOutPerThread; ++q) acc[q] = 0.0f;
    auto step = [&](int kk) {
        const float b = bs[kk][tx];
#pragma unroll
        for (int q = 0; q < kOutPerThread; ++q) acc[q] = fmaf(as[kk][ty + q * kRowStep], b, acc[q]);
    };

    load(0);
    for (int k0 = 0; k0 < s.inner; k0 += kTile) {
#pragma unroll
        for (int q = 0; q < kLoadsPerThread; ++q) {
            as[a_k + q * a_dk][a_r + q * a_dr] = ra[q];
            bs[b_k + q * b_dk][b_c + q * b_dc] = rb[q];
        }
        __syncthreads();
        if (k0 + kTile < s.inner) {
            a_p += kTile * s.a_col;
            if (b_p) b_p += kTile * s.b_row;
            load(k0 + kTile);
        }
        const int kn = min(kTile, s.inner - k0);
        if (kn == kTile) {
#pragma unroll
            for (int kk = 0; kk < kTile; ++kk) step(kk);
        } else {
            for (int kk = 0; kk < kn; ++kk) step(kk);
        }
        __syncthreads(); // before the next slice overwrites the tiles
    }

    const int j = j0 + tx;
#pragma unroll
    for (int q = 0; q < kOutPerThread; ++q) {
        const int i = i0 + ty + q * kRowStep;
        if (i >= s.rows) break;
        if (j == rs_col) {
            s.row_sum[i] = acc[q];
            continue;
        }
        if (j >= s.cols) continue;
        float v = acc[q];
        if (s.bias) v += s.bias[j];
        const int64_t t = int64_t(i) * s.cols + j;
        if (s.out_pre) s.out_pre[t] = v;
        if (s.post == SmallMatmulPost::Activation)
            v = act_forward(v, s.act);
        else if (s.post == SmallMatmulPost::Sigmoid)
            v = sigmoid(v);
        else if (s.post == SmallMatmulPost::ActivationGrad)
            v = act_backward(s.act_x[t], v, s.act);
        s.out[t] = v;
    }
}

} // namespace

void launch_small_matmul(const SmallMatmulArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.a && a.out, "small_matmul: null pointer argument");
    EFFNET_CHECK(a.rows >= 1 && a.cols >= 1 && a.inner >= 1 && a.rows <= 65535 * kTile && a.cols < (1 << 30),
                 "small_matmul: bad shape " + std::to_string(a.rows) + "x" + std::to_string(a.cols) + "x" +
                     std::to_string(a.inner));
    EFFNET_CHECK(a.post != SmallMatmulPost::ActivationGrad || a.act_x,
                 "small_matmul: ActivationGrad needs act_x");
    // Blocks read A/B tiles while others store outputs: no output may be an input.
    for (const float* o : {static_cast<const float*>(a.out), static_cast<const float*>(a.out_pre),
                           static_cast<const float*>(a.row_sum)})
        EFFNET_CHECK(!o || (o != a.a && o != a.b && o != a.bias && o != a.act_x),
                     "small_matmul: an output aliases an input");
    // Load along the smaller stride (coalesced), unless that dimension has one element.
    const bool a_k_fast = a.inner > 1 && (a.rows == 1 || std::llabs(a.a_col) <= std::llabs(a.a_row));
    const bool b_k_fast = a.inner > 1 && (a.cols == 1 || std::llabs(a.b_row) <= std::llabs(a.b_col));
    const int cols_ext = a.cols + (a.row_sum ? 1 : 0);
    const dim3 grid(unsigned((cols_ext + kTile - 1) / kTile), unsigned((a.rows + kTile - 1) / kTile));
    small_matmul_kernel<<<grid, kThreads, 0, stream>>>(a, a_k_fast, b_k_fast);
    EFFNET_LAUNCH_CHECK("small_matmul_kernel");
}

} // namespace effnet::kernels
