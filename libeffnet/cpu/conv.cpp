// 2-D convolution, NCHW, weights [O, C/groups, kh, kw], any kernel/stride/groups and asymmetric
// padding. Two paths:
//   - dense 1x1, stride 1, no padding: per image a GEMM Y[O, HW] = W[O, C] X[C, HW];
//   - everything else (stem 3x3, depthwise 3x3/5x5, general): a direct loop per output plane
//     that walks each kernel tap over the output positions whose input is inside the image,
//     so the inner loop has no bounds checks.
// Accumulation is in double. Every output element (and every weight gradient) is written by
// exactly one thread, so results do not depend on the thread count.
#include <algorithm>
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "cpu/ops_util.hpp"
#include "effnet/error.hpp"

namespace effnet::cpu {

Conv2dParams conv_params(int h, int w, int kernel, int stride, int groups, Padding padding) {
    EFFNET_CHECK(h > 0 && w > 0 && kernel > 0 && stride > 0 && groups > 0,
                 "conv_params: invalid input " + std::to_string(h) + "x" + std::to_string(w) + ", kernel " +
                     std::to_string(kernel) + ", stride " + std::to_string(stride) + ", groups " +
                     std::to_string(groups));
    Conv2dParams p;
    p.stride = stride;
    p.groups = groups;
    conv_padding(h, kernel, stride, padding, p.pad_top, p.pad_bottom);
    conv_padding(w, kernel, stride, padding, p.pad_left, p.pad_right);
    return p;
}

namespace {

struct ConvGeometry {
    int64_t N, C, H, W; // input
    int64_t O, KH, KW;  // weights
    int64_t Cg, Og;     // channels per group, in and out
    int64_t Ho, Wo;     // output
    int64_t s, pt, pl;  // stride, top/left padding
};

std::string conv_desc(const Tensor& x, const Tensor& w, const Conv2dParams& p) {
    return "x " + shape_str(x.shape) + ", w " + shape_str(w.shape) + ", stride " + std::to_string(p.stride) +
           ", groups " + std::to_string(p.groups) + ", pad (t" + std::to_string(p.pad_top) + " b" +
           std::to_string(p.pad_bottom) + " l" + std::to_string(p.pad_left) + " r" +
           std::to_string(p.pad_right) + ")";
}

ConvGeometry conv_geometry(const char* op, const Tensor& x, const Tensor& w, const Conv2dParams& p) {
    detail::check_rank(op, "x", x, 4);
    detail::check_rank(op, "w", w, 4);
    const std::string where = std::string(op) + ": ";
    EFFNET_CHECK(p.stride >= 1 && p.groups >= 1 && p.pad_top >= 0 && p.pad_bottom >= 0 && p.pad_left >= 0 &&
                     p.pad_right >= 0,
                 where + "invalid parameters, " + conv_desc(x, w, p));
    ConvGeometry g;
    g.N = x.shape[0], g.C = x.shape[1], g.H = x.shape[2], g.W = x.shape[3];
    g.O = w.shape[0], g.KH = w.shape[2], g.KW = w.shape[3];
    EFFNET_CHECK(g.C % p.groups == 0 && g.O % p.groups == 0,
                 where + "channels not divisible by groups, " + conv_desc(x, w, p));
    g.Cg = g.C / p.groups;
    g.Og = g.O / p.groups;
    EFFNET_CHECK(w.shape[1] == g.Cg, where + "weight has " + std::to_string(w.shape[1]) +
                                         " input channels per group, expected " + std::to_string(g.Cg) +
                                         ", " + conv_desc(x, w, p));
    EFFNET_CHECK(g.KH >= 1 && g.KW >= 1 && g.O >= 1, where + "empty weight, " + conv_desc(x, w, p));
    const int64_t hp = g.H + p.pad_top + p.pad_bottom, wp = g.W + p.pad_left + p.pad_right;
    EFFNET_CHECK(hp >= g.KH && wp >= g.KW, where + "kernel larger than padded input, " + conv_desc(x, w, p));
    g.Ho = (hp - g.KH) / p.stride + 1;
    g.Wo = (wp - g.KW) / p.stride + 1;
    g.s = p.stride, g.pt = p.pad_top, g.pl = p.pad_left;
    return g;
}

// Output positions [lo, hi) along one axis whose input position o*s - pad + k is in [0, in).
void valid_range(int64_t in, int64_t out, int64_t s, int64_t pad, int64_t k, int64_t& lo, int64_t& hi) {
    const int64_t a = pad - k;          // need o*s >= a
    const int64_t b = in - 1 + pad - k; // need o*s <= b
    lo = a <= 0 ? 0 : (a + s - 1) / s;
    hi = b < 0 ? 0 : std::min(out, b / s + 1);
    if (hi < lo) hi = lo;
}

// Below this many multiply-adds a conv runs on one thread (fork and barrier cost more).
constexpr int64_t kParallelMinMacs = 1 << 16;

int64_t direct_macs(const ConvGeometry& g) {
    return g.N * g.O * g.Cg * g.KH * g.KW * g.Ho * g.Wo;
}

bool is_pointwise_gemm(const ConvGeometry& g, const Conv2dParams& p) {
    return g.KH == 1 && g.KW == 1 && g.s == 1 && p.groups == 1 && p.pad_top == 0 && p.pad_bottom == 0 &&
           p.pad_left == 0 && p.pad_right == 0;
}

// The hot loops below are compiled twice, plain x86-64 and AVX2+FMA, the CPU picks at load
// time (GCC function multiversioning): the double accumulation then runs 4 lanes wide.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define EFFNET_CPU_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define EFFNET_CPU_CLONES
#endif

// C[M, T] = A[M, K] * B[K, T] (+ bias[m]) for one image, accumulated in double.
// A element (m, k) is at a[m * a_m + k * a_k] (so A may be a transposed view).
// Work is split into (column tile x block of 4 rows) tasks, each output owned by one thread.
// A task packs its 4 rows of A as doubles [K][4], then for every 8 columns runs a register
// micro-kernel: 4 x 8 double accumulators over the whole K, one B load feeding 4 FMAs.
EFFNET_CPU_CLONES void gemm_rows(const float* a, int64_t a_m, int64_t a_k, const float* b, const float* bias,
                                 float* c, int64_t M, int64_t K, int64_t T) {
    constexpr int64_t kTile = 64; // columns per task: the B slab [K, 64] stays in L2
    constexpr int64_t kRows = 4;  // rows per task
    constexpr int64_t kCols = 8;  // columns per micro-kernel step
    const int64_t tiles = (T + kTile - 1) / kTile;
    const int64_t blocks = (M + kRows - 1) / kRows;
#pragma omp parallel if (M * K * T > kParallelMinMacs)
    {
        std::vector<double> packed(K * kRows); // [K][4], rows past M are zero
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tiles * blocks; ++task) {
            const int64_t t0 = (task / blocks) * kTile, m0 = (task % blocks) * kRows;
            const int64_t tn = std::min(kTile, T - t0), mn = std::min(kRows, M - m0);
            for (int64_t k = 0; k < K; ++k)
                for (int64_t r = 0; r < kRows; ++r)
                    packed[k * kRows + r] = r < mn ? double(a[(m0 + r) * a_m + k * a_k]) : 0.0;
            double init[kRows];
            for (int64_t r = 0; r < kRows; ++r) init[r] = (bias && r < mn) ? double(bias[m0 + r]) : 0.0;

            int64_t t = 0;
            for (; t + kCols <= tn; t += kCols) {
                double acc[kRows][kCols];
                for (int64_t r = 0; r < kRows; ++r)
                    for (int64_t j = 0; j < kCols; ++j) acc[r][j] = init[r];
                const float* bcol = b + t0 + t;
                for (int64_t k = 0; k < K; ++k) {
                    double bv[kCols];
                    for (int64_t j = 0; j < kCols; ++j) bv[j] = bcol[k * T + j];
                    const double* ak = packed.data() + k * kRows;
                    for (int64_t r = 0; r < kRows; ++r)
                        for (int64_t j = 0; j < kCols; ++j) acc[r][j] += ak[r] * bv[j];
                }
                for (int64_t r = 0; r < mn; ++r)
                    for (int64_t j = 0; j < kCols; ++j) c[(m0 + r) * T + t0 + t + j] = float(acc[r][j]);
            }
            for (; t < tn; ++t) { // remainder columns
                double acc[kRows];
                for (int64_t r = 0; r < kRows; ++r) acc[r] = init[r];
                for (int64_t k = 0; k < K; ++k) {
                    const double bv = b[k * T + t0 + t];
                    for (int64_t r = 0; r < kRows; ++r) acc[r] += packed[k * kRows + r] * bv;
                }
                for (int64_t r = 0; r < mn; ++r) c[(m0 + r) * T + t0 + t] = float(acc[r]);
            }
        }
    }
}

// dW[o, c] = sum_n sum_hw dY[n, o, hw] X[n, c, hw] for a dense 1x1 conv; one thread per o.
// Each dot product runs 8 independent partial sums (fixed order: deterministic, vectorisable).
EFFNET_CPU_CLONES void pointwise_weight_grad(const float* x, const float* dy, float* dw,
                                             const ConvGeometry& g) {
    const int64_t hw = g.H * g.W;
#pragma omp parallel for schedule(static) if (g.N * g.O * g.C * hw > kParallelMinMacs)
    for (int64_t o = 0; o < g.O; ++o) {
        for (int64_t c = 0; c < g.C; ++c) {
            double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            double tail = 0;
            for (int64_t n = 0; n < g.N; ++n) {
                const float* d = dy + (n * g.O + o) * hw;
                const float* xr = x + (n * g.C + c) * hw;
                int64_t i = 0;
                for (; i + 8 <= hw; i += 8)
                    for (int j = 0; j < 8; ++j) part[j] += double(d[i + j]) * double(xr[i + j]);
                for (; i < hw; ++i) tail += double(d[i]) * double(xr[i]);
            }
            double sum = tail;
            for (int j = 0; j < 8; ++j) sum += part[j];
            dw[o * g.C + c] = float(sum);
        }
    }
}

// Direct convolution: one thread per (n, o) output plane, accumulated in a double plane.
// For each input channel of o's group and each kernel tap, the tap is swept over the output
// positions whose input lies inside the image (valid_range), so there are no bounds tests.
EFFNET_CPU_CLONES void direct_forward(const float* x, const float* w, const float* bias, float* y,
                                      const ConvGeometry& g) {
    const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
#pragma omp parallel if (direct_macs(g) > kParallelMinMacs)
    {
        std::vector<double> acc(plane_out);
#pragma omp for schedule(static)
        for (int64_t no = 0; no < g.N * g.O; ++no) {
            const int64_t n = no / g.O, o = no % g.O, grp = o / g.Og;
            std::fill(acc.begin(), acc.end(), bias ? double(bias[o]) : 0.0);
            for (int64_t cl = 0; cl < g.Cg; ++cl) {
                const float* xp = x + (n * g.C + grp * g.Cg + cl) * plane_in;
                const float* wp = w + (o * g.Cg + cl) * g.KH * g.KW;
                for (int64_t kh = 0; kh < g.KH; ++kh) {
                    int64_t oh0, oh1;
                    valid_range(g.H, g.Ho, g.s, g.pt, kh, oh0, oh1);
                    for (int64_t kw = 0; kw < g.KW; ++kw) {
                        int64_t ow0, ow1;
                        valid_range(g.W, g.Wo, g.s, g.pl, kw, ow0, ow1);
                        const double wv = wp[kh * g.KW + kw];
                        for (int64_t oh = oh0; oh < oh1; ++oh) {
                            // input index of output column ow: base + ow * s
                            const int64_t base = (oh * g.s - g.pt + kh) * g.W - g.pl + kw;
                            double* arow = acc.data() + oh * g.Wo;
                            if (g.s == 1) {
                                for (int64_t ow = ow0; ow < ow1; ++ow) arow[ow] += wv * xp[base + ow];
                            } else {
                                for (int64_t ow = ow0; ow < ow1; ++ow) arow[ow] += wv * xp[base + ow * g.s];
                            }
                        }
                    }
                }
            }
            float* yp = y + no * plane_out;
            for (int64_t i = 0; i < plane_out; ++i) yp[i] = float(acc[i]);
        }
    }
}

// dX of the direct convolution: one thread per (n, c) input plane, gathering from the output
// channels of c's group (the transpose of direct_forward's loops).
EFFNET_CPU_CLONES void direct_input_grad(const float* w, const float* dy, float* dx, const ConvGeometry& g) {
    const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
#pragma omp parallel if (direct_macs(g) > kParallelMinMacs)
    {
        std::vector<double> acc(plane_in);
#pragma omp for schedule(static)
        for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
            const int64_t n = nc / g.C, c = nc % g.C, grp = c / g.Cg, cl = c % g.Cg;
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t o = grp * g.Og; o < (grp + 1) * g.Og; ++o) {
                const float* dp = dy + (n * g.O + o) * plane_out;
                const float* wp = w + (o * g.Cg + cl) * g.KH * g.KW;
                for (int64_t kh = 0; kh < g.KH; ++kh) {
                    int64_t oh0, oh1;
                    valid_range(g.H, g.Ho, g.s, g.pt, kh, oh0, oh1);
                    for (int64_t kw = 0; kw < g.KW; ++kw) {
                        int64_t ow0, ow1;
                        valid_range(g.W, g.Wo, g.s, g.pl, kw, ow0, ow1);
                        const double wv = wp[kh * g.KW + kw];
                        for (int64_t oh = oh0; oh < oh1; ++oh) {
                            const int64_t base = (oh * g.s - g.pt + kh) * g.W - g.pl + kw;
                            const float* drow = dp + oh * g.Wo;
                            if (g.s == 1) {
                                for (int64_t ow = ow0; ow < ow1; ++ow) acc[base + ow] += wv * drow[ow];
                            } else {
                                for (int64_t ow = ow0; ow < ow1; ++ow) acc[base + ow * g.s] += wv * drow[ow];
                            }
                        }
                    }
                }
            }
            float* xp = dx + nc * plane_in;
            for (int64_t i = 0; i < plane_in; ++i) xp[i] = float(acc[i]);
        }
    }
}

// dW of the direct convolution: one thread per output channel, so each weight gradient is a
// single-threaded sum over n and the output positions (deterministic, no atomics).
EFFNET_CPU_CLONES void direct_weight_grad(const float* x, const float* dy, float* dw, const ConvGeometry& g) {
    const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
#pragma omp parallel for schedule(static) if (direct_macs(g) > kParallelMinMacs)
    for (int64_t o = 0; o < g.O; ++o) {
        const int64_t grp = o / g.Og;
        for (int64_t cl = 0; cl < g.Cg; ++cl)
            for (int64_t kh = 0; kh < g.KH; ++kh) {
                int64_t oh0, oh1;
                valid_range(g.H, g.Ho, g.s, g.pt, kh, oh0, oh1);
                for (int64_t kw = 0; kw < g.KW; ++kw) {
                    int64_t ow0, ow1;
                    valid_range(g.W, g.Wo, g.s, g.pl, kw, ow0, ow1);
                    double part[4] = {0, 0, 0, 0}; // independent partial sums: no add-latency chain
                    for (int64_t n = 0; n < g.N; ++n) {
                        const float* dp = dy + (n * g.O + o) * plane_out;
                        const float* xp = x + (n * g.C + grp * g.Cg + cl) * plane_in;
                        for (int64_t oh = oh0; oh < oh1; ++oh) {
                            const int64_t base = (oh * g.s - g.pt + kh) * g.W - g.pl + kw;
                            const float* drow = dp + oh * g.Wo;
                            int64_t ow = ow0;
                            for (; ow + 4 <= ow1; ow += 4)
                                for (int j = 0; j < 4; ++j)
                                    part[j] += double(drow[ow + j]) * xp[base + (ow + j) * g.s];
                            for (; ow < ow1; ++ow) part[0] += double(drow[ow]) * xp[base + ow * g.s];
                        }
                    }
                    dw[((o * g.Cg + cl) * g.KH + kh) * g.KW + kw] =
                        float((part[0] + part[1]) + (part[2] + part[3]));
                }
            }
    }
}

} // namespace

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p) {
    const ConvGeometry g = conv_geometry("conv2d_forward", x, w, p);
    if (bias) detail::check_shape("conv2d_forward", "bias", *bias, {g.O});
    Tensor y({g.N, g.O, g.Ho, g.Wo});
    const float* bptr = bias ? bias->ptr() : nullptr;
    if (is_pointwise_gemm(g, p)) {
        // per image: Y[O, HW] = W[O, C] X[C, HW]
        const int64_t hw = g.H * g.W;
        for (int64_t n = 0; n < g.N; ++n)
            gemm_rows(w.ptr(), g.C, 1, x.ptr() + n * g.C * hw, bptr, y.ptr() + n * g.O * hw, g.O, g.C, hw);
    } else {
        direct_forward(x.ptr(), w.ptr(), bptr, y.ptr(), g);
    }
    return y;
}

void conv2d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& p, Tensor* dx,
                     Tensor* dw, Tensor* dbias) {
    const ConvGeometry g = conv_geometry("conv2d_backward", x, w, p);
    detail::check_shape("conv2d_backward", "dy", dy, {g.N, g.O, g.Ho, g.Wo});
    const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
    const bool pointwise = is_pointwise_gemm(g, p);

    if (dbias) {
        *dbias = Tensor({g.O});
#pragma omp parallel for schedule(static) if (dy.numel() > detail::kParallelMinWork)
        for (int64_t o = 0; o < g.O; ++o) {
            double sum = 0;
            for (int64_t n = 0; n < g.N; ++n) {
                const float* d = dy.ptr() + (n * g.O + o) * plane_out;
                for (int64_t i = 0; i < plane_out; ++i) sum += d[i];
            }
            dbias->data[o] = float(sum);
        }
    }
    if (dx) {
        *dx = Tensor(x.shape);
        if (pointwise) {
            // per image: dX[C, HW] = W^T[C, O] dY[O, HW], with W^T(c, o) = w[o * C + c]
            for (int64_t n = 0; n < g.N; ++n)
                gemm_rows(w.ptr(), 1, g.C, dy.ptr() + n * g.O * plane_out, nullptr,
                          dx->ptr() + n * g.C * plane_in, g.C, g.O, plane_in);
        } else {
            direct_input_grad(w.ptr(), dy.ptr(), dx->ptr(), g);
        }
    }
    if (dw) {
        *dw = Tensor(w.shape);
        if (pointwise)
            pointwise_weight_grad(x.ptr(), dy.ptr(), dw->ptr(), g);
        else
            direct_weight_grad(x.ptr(), dy.ptr(), dw->ptr(), g);
    }
}

} // namespace effnet::cpu
