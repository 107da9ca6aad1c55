#pragma once
// The fast CPU path's kernels, compiled once per instruction set (kernels_portable.cpp,
// kernels_avx2.cpp, kernels_avx512.cpp include kernels_impl.hpp with different flags) and
// reached through a table picked at run time. Activations are NHWC float32 with the channel
// stride padded to a multiple of the vector width (padded channels hold zeros), so every
// channel loop is whole vectors.
#include <cstdint>

namespace effnet::cpu_fast {

enum class Act : int { None, SiLU, ReLU6 };

// Cache blocking of the GEMM: a task covers at most kGemmMC rows of A, read in chunks of
// kGemmKC columns (an L2-sized block reused across the task's B panels); each packed B chunk
// (kGemmKC x nr) stays in L1 across the block's register tiles.
constexpr int kGemmMC = 96;
constexpr int kGemmKC = 256;

// C[m, n] = epilogue(sum_k A[m, k] * gate[m / rows_per_image, k] * B[k, n]):
//   v = acc + bias[n]; v = act(v); v += residual[m, n].
struct GemmArgs {
    const float* a = nullptr; // [m, lda]
    int64_t lda = 0;
    int64_t m = 0;
    int k = 0;
    int n = 0;                       // columns written: a multiple of the table's vector width
    const float* b_packed = nullptr; // [ceil(n / nr)][k][nr], zero beyond the real columns
    const float* bias = nullptr;     // [ceil(n / nr) * nr]
    Act act = Act::None;
    const float* gate = nullptr; // [images, ld_gate] or null
    int64_t rows_per_image = 1, ld_gate = 0;
    const float* residual = nullptr; // [m, ld_residual] or null
    int64_t ld_residual = 0;
    float* c = nullptr; // [m, ldc]
    int64_t ldc = 0;
};

// y = act(depthwise(x) + bias) for output rows [oy0, oy1) of one image; optionally the sum of
// each output row over its pixels (the squeeze-excite pool, reduced later).
struct DepthwiseArgs {
    // Input row iy of image i: x + i * x_image_stride + (iy - x_row0) * w * cs. A whole tensor
    // [images, h, w, cs] has x_image_stride = h * w * cs and x_row0 = 0; a band of rows computed
    // just before (the fused expand) has x_image_stride = 0 and x_row0 = its first row.
    const float* x = nullptr;
    int64_t x_image_stride = 0;
    int x_row0 = 0;
    int h = 0, w = 0, cs = 0;      // cs: channel stride, a multiple of the vector width
    const float* weight = nullptr; // [k * k, cs]
    const float* bias = nullptr;   // [cs]
    int k = 3, stride = 1, pad_top = 0, pad_left = 0;
    Act act = Act::None;
    float* y = nullptr; // [images, ho, wo, cs]
    int ho = 0, wo = 0;
    float* row_sums = nullptr; // [images, ho, cs] or null
};

// One image's squeeze-excite gate: gate = sigmoid(expand(act(reduce(mean)))), the mean from the
// per-row sums the depthwise left. Weights padded with zeros: reduce [cs][rs], expand [r][cs].
struct SqueezeExciteArgs {
    const float* row_sums = nullptr; // [images, rows, cs]
    int rows = 0, cs = 0, c = 0;     // c: real channels
    int r = 0, rs = 0;               // reduced channels, and padded to the vector width
    float inv_pixels = 0;
    const float* reduce = nullptr;      // [c][rs]
    const float* reduce_bias = nullptr; // [rs]
    const float* expand = nullptr;      // [r][cs]
    const float* expand_bias = nullptr; // [cs]
    Act act = Act::SiLU;
    float* gate = nullptr; // [images, cs]
};

struct KernelTable {
    const char* name;
    int vector_width; // floats per vector
    int mr, nr;       // GEMM register tile (nr = 2 vectors)
    // The GEMM for rows [m0, m1) (m1 - m0 <= kGemmMC; with a gate, all of one image) and B
    // panels [p0, p1); scratch holds kGemmKC * nr floats private to the calling thread (the
    // gated B chunk).
    void (*gemm)(const GemmArgs& args, int64_t m0, int64_t m1, int p0, int p1, float* scratch);
    // Output rows [oy0, oy1), channels [c0, c1) (multiples of the vector width).
    void (*depthwise)(const DepthwiseArgs& args, int image, int oy0, int oy1, int c0, int c1);
    // scratch: cs + rs floats private to the calling thread.
    void (*squeeze_excite)(const SqueezeExciteArgs& args, int image, float* scratch);
};

const KernelTable& kernels_portable();
#if defined(__x86_64__)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif

} // namespace effnet::cpu_fast
