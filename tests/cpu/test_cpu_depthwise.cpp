// The fast CPU path's depthwise kernel (libeffnet/cpu_fast/kernels_impl.hpp) against a direct
// double-precision loop, on every instruction set this CPU runs: kernel sizes 3, 5, 7, strides
// 1 and 2, symmetric and TF-"same" (asymmetric) padding, maps from 1x1 (every tap a border) to
// wider than two strips, a band of rows (x_row0), row and channel sub-ranges, and the
// squeeze-excite row sums. The network tests reach the kernel only through EfficientNet's
// shapes (kernels 3 and 5, maps 7 wide or more); these reach every strip and border path.
//
// Tolerance: each output is a sum of at most 49 fp32 products plus a bias, in a different order
// from the reference: error <= 1e-6 * (|bias| + sum |x * w|), measured <= 2.4e-7 of that scale
// (a few fp32 roundings; the bound leaves 4x for other compilers' contraction choices, and a
// wrong or missing tap is off by ~1e-2 of it). Row sums add up to `wo` activations: bound 1e-6 *
// the sum of their scales, measured <= 6.6e-8.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cpu_fast/aligned_buffer.hpp"
#include "cpu_fast/isa.hpp"

using namespace effnet;
using cpu_fast::Act;

namespace {

double activate(double v, Act act) {
    switch (act) {
    case Act::SiLU:
        return v / (1.0 + std::exp(-v));
    case Act::ReLU6:
        return std::min(6.0, std::max(0.0, v));
    case Act::None:
        break;
    }
    return v;
}

struct Case {
    int h, w, c, k, stride, pad_top, pad_left, ho, wo;
    Act act;
};

// Output size of a convolution with `before` padding on one side and the rest on the other
// (PyTorch's symmetric padding or TF's "same", whose extra row or column is at the end).
int out_size(int in, int k, int stride, bool tf_same, int& before) {
    if (!tf_same) {
        before = k / 2;
        return (in + 2 * before - k) / stride + 1;
    }
    const int out = (in + stride - 1) / stride;
    const int total = std::max(0, (out - 1) * stride + k - in);
    before = total / 2;
    return out;
}

void check_case(const cpu_fast::KernelTable& t, const Case& c, std::mt19937& rng) {
    const int vw = t.vector_width;
    const int cs = (c.c + vw - 1) / vw * vw;
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    // The input as a band of rows [row0, h) of a taller image, like the fused expand leaves it:
    // the kernel must read row iy at (iy - row0).
    const int row0 = c.h > 4 ? 2 : 0;
    cpu_fast::AlignedFloats x(size_t(c.h - row0) * c.w * cs);
    cpu_fast::AlignedFloats weight(size_t(c.k) * c.k * cs);
    cpu_fast::AlignedFloats bias(static_cast<size_t>(cs));
    for (int i = 0; i < (c.h - row0) * c.w; ++i)
        for (int ch = 0; ch < c.c; ++ch) x.data()[size_t(i) * cs + ch] = u(rng);
    for (int i = 0; i < c.k * c.k; ++i)
        for (int ch = 0; ch < c.c; ++ch) weight.data()[size_t(i) * cs + ch] = u(rng);
    for (int ch = 0; ch < c.c; ++ch) bias.data()[ch] = u(rng);
    cpu_fast::AlignedFloats y(size_t(c.ho) * c.wo * cs), sums(size_t(c.ho) * cs);
    std::fill(y.data(), y.data() + y.size(), -7.0f); // outputs outside the call's range stay -7
    cpu_fast::DepthwiseArgs d;
    d.x = x.data();
    d.x_image_stride = 0;
    d.x_row0 = row0;
    d.h = c.h;
    d.w = c.w;
    d.cs = cs;
    d.weight = weight.data();
    d.bias = bias.data();
    d.k = c.k;
    d.stride = c.stride;
    d.pad_top = c.pad_top;
    d.pad_left = c.pad_left;
    d.act = c.act;
    d.y = y.data();
    d.ho = c.ho;
    d.wo = c.wo;
    d.row_sums = sums.data();
    // Output rows whose taps stay inside the band, and channels from the second vector when
    // there are several (a task's share).
    int oy0 = 0;
    while (oy0 < c.ho && oy0 * c.stride - c.pad_top < row0) ++oy0;
    const int c0 = cs > vw ? vw : 0;
    if (oy0 >= c.ho) return;
    t.depthwise(d, 0, oy0, c.ho, c0, cs);

    for (int oy = 0; oy < c.ho; ++oy)
        for (int ch = 0; ch < cs; ++ch) {
            const bool inside = oy >= oy0 && ch >= c0;
            double row_sum = 0, row_scale = 0;
            for (int ox = 0; ox < c.wo; ++ox) {
                const float got = y.data()[(size_t(oy) * c.wo + ox) * cs + ch];
                if (!inside) {
                    REQUIRE(got == -7.0f);
                    continue;
                }
                double acc = bias.data()[ch];
                double scale = std::abs(acc);
                for (int ky = 0; ky < c.k; ++ky)
                    for (int kx = 0; kx < c.k; ++kx) {
                        const int iy = oy * c.stride - c.pad_top + ky, ix = ox * c.stride - c.pad_left + kx;
                        if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
                        const double p = double(x.data()[(size_t(iy - row0) * c.w + ix) * cs + ch]) *
                                         weight.data()[size_t(ky * c.k + kx) * cs + ch];
                        acc += p;
                        scale += std::abs(p);
                    }
                const double want = activate(acc, c.act);
                if (ch >= c.c) REQUIRE(got == 0.0f); // padded channels: zero weights and bias
                REQUIRE(std::abs(got - want) <= 1e-6 * scale);
                row_sum += want;
                row_scale += scale + std::abs(want); // each output carries its own error
            }
            if (!inside) continue;
            const double got_sum = sums.data()[size_t(oy) * cs + ch];
            REQUIRE(std::abs(got_sum - row_sum) <= 1e-6 * row_scale + 1e-30);
        }
}

} // namespace

TEST_CASE("fast CPU depthwise matches a direct loop on every kernel, stride, border and ISA",
          "[cpu_session]") {
    std::mt19937 rng(11);
    for (CpuIsa isa : {CpuIsa::Portable, CpuIsa::Avx2, CpuIsa::Avx512}) {
        if (!cpu_supports(isa)) continue;
        const cpu_fast::KernelTable& t = cpu_fast::kernel_table(isa);
        for (int k : {3, 5, 7})
            for (int stride : {1, 2})
                for (bool tf_same : {false, true})
                    for (int size : {1, 2, 3, 5, 7, 9, 14, 19, 37}) {
                        Case c{};
                        c.k = k;
                        c.stride = stride;
                        c.h = size + 3; // not square: rows and columns take different paths
                        c.w = size;
                        c.c = size % 2 ? 20 : 40; // 20: one padded vector (AVX-512), 40: several
                        c.ho = out_size(c.h, k, stride, tf_same, c.pad_top);
                        c.wo = out_size(c.w, k, stride, tf_same, c.pad_left);
                        c.act = size % 3 == 0 ? Act::SiLU : size % 3 == 1 ? Act::ReLU6 : Act::None;
                        INFO(cpu_isa_name(isa) << " k" << k << " s" << stride << (tf_same ? " tf-same " : " ")
                                               << c.h << "x" << c.w << " -> " << c.ho << "x" << c.wo);
                        check_case(t, c, rng);
                    }
    }
}
