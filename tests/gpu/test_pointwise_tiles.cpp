// Every tile shape and both schedules of the tensor-core 1x1 GEMM (kernels/pointwise_conv_tc.cuh) on shapes
// that leave partial tiles in M, N and K, with images (gate rows) straddling M tiles, against an independent
// float64 reference written here in NHWC: the engine picks the tile per layer, so each tile must be right on
// any shape, not only on the one a small test would select.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.hpp"
#include "kernels/pointwise_conv_tc.cuh"

using namespace effnet;
using namespace effnet::gpu_test;

namespace {

double act_ref(double v, kernels::Act act) {
    if (act == kernels::Act::SiLU) return v / (1.0 + std::exp(-v));
    if (act == kernels::Act::ReLU6) return std::fmin(std::fmax(v, 0.0), 6.0);
    return v;
}

const char* tile_name(kernels::PointwiseTile t) {
    switch (t) {
    case kernels::PointwiseTile::M128_N32:
        return "128x32";
    case kernels::PointwiseTile::M128_N64:
        return "128x64";
    case kernels::PointwiseTile::M64_N64:
        return "64x64";
    case kernels::PointwiseTile::M32_N64:
        return "32x64";
    }
    return "?";
}

} // namespace

// [slow]: racecheck needs more than 45 s for this sweep (H200, 2026-11-27); memcheck runs it.
TEST_CASE("tensor-core 1x1 GEMM: every tile, partial tiles, gate across images, residual",
          "[gpu][sanitize][slow]") {
    EFFNET_SKIP_WITHOUT_GPU();
    struct Case {
        int images, rows_per_image, k, n;
        bool gate, residual;
        kernels::Act act;
    };
    // K = 200: 7 K tiles, the ring of 4 wraps and the last tile is 8 wide; K = 16 / 40 / 8: one
    // or two tiles, mostly padding. M = 147, 300, 155, 260: tails for BM 32, 64 and 128.
    const Case cases[] = {{3, 49, 200, 72, true, true, kernels::Act::SiLU},
                          {2, 150, 16, 24, false, false, kernels::Act::ReLU6},
                          {5, 31, 40, 136, true, false, kernels::Act::None},
                          {1, 260, 8, 8, true, true, kernels::Act::SiLU}};
    const kernels::PointwiseTile tiles[] = {kernels::PointwiseTile::M128_N32,
                                            kernels::PointwiseTile::M128_N64, kernels::PointwiseTile::M64_N64,
                                            kernels::PointwiseTile::M32_N64};
    for (const Case& cs : cases)
        for (Precision prec : {Precision::FP16, Precision::BF16}) {
            const int64_t M = int64_t(cs.images) * cs.rows_per_image;
            const uint64_t seed = 9000 + uint64_t(cs.k) * 31 + uint64_t(cs.n);
            // Inputs rounded to the storage precision: the reference sees what the GPU reads.
            const std::vector<float> x =
                cuda::round_to_storage(random_tensor({M, cs.k}, seed, -2.0f, 2.0f).data, prec);
            const std::vector<float> w =
                cuda::round_to_storage(random_tensor({cs.n, cs.k}, seed + 1, -0.5f, 0.5f).data, prec);
            const std::vector<float> bias = random_tensor({cs.n}, seed + 2, -0.5f, 0.5f).data;
            const std::vector<float> gate = random_tensor({cs.images, cs.k}, seed + 3, 0.0f, 1.0f).data;
            const std::vector<float> res =
                cuda::round_to_storage(random_tensor({M, cs.n}, seed + 4).data, prec);
            std::vector<float> ref(size_t(M) * cs.n);
            for (int64_t m = 0; m < M; ++m)
                for (int n = 0; n < cs.n; ++n) {
                    double acc = 0.0;
                    for (int k = 0; k < cs.k; ++k) {
                        const double g = cs.gate ? gate[size_t((m / cs.rows_per_image) * cs.k + k)] : 1.0;
                        acc += double(x[size_t(m * cs.k + k)]) * g * double(w[size_t(n) * cs.k + k]);
                    }
                    double v = act_ref(acc + bias[size_t(n)], cs.act);
                    if (cs.residual) v += res[size_t(m * cs.n + n)];
                    ref[size_t(m * cs.n + n)] = float(v);
                }
            auto d_x = upload(x, prec);
            auto d_w = upload(w, prec);
            auto d_b = upload_f32(bias);
            auto d_g = upload_f32(gate);
            auto d_r = upload(res, prec);
            // max_blocks -1: one tile per block; 0: the launcher's choice of kernel; 3: the
            // persistent kernel with each block walking several tiles, its copy ring running across
            // tile boundaries.
            for (kernels::PointwiseTile tile : tiles)
                for (int max_blocks : {-1, 0, 3}) {
                    auto d_y = poisoned(size_t(M) * cs.n, prec);
                    kernels::PointwiseArgs a;
                    a.input = d_x.data();
                    a.weight = d_w.data();
                    a.bias = d_b.as<float>();
                    a.gate = cs.gate ? d_g.as<float>() : nullptr;
                    a.residual = cs.residual ? d_r.data() : nullptr;
                    a.output = d_y.data();
                    a.rows = M;
                    a.out_channels = cs.n;
                    a.in_channels = cs.k;
                    a.rows_per_image = cs.rows_per_image;
                    a.act = cs.act;
                    kernels::launch_pointwise_mma(a, prec, tile, nullptr, max_blocks);
                    const std::vector<float> got = download(d_y, size_t(M) * cs.n, prec);
                    const std::string name = std::string("pointwise-mma tile ") + tile_name(tile) +
                                             (max_blocks < 0   ? " per-block"
                                              : max_blocks > 0 ? " persistent-3"
                                                               : "") +
                                             " M=" + std::to_string(M) + " K=" + std::to_string(cs.k) +
                                             " N=" + std::to_string(cs.n) + (cs.gate ? " gate" : "") +
                                             (cs.residual ? " residual" : "") +
                                             (prec == Precision::FP16 ? " fp16" : " bf16");
                    // Storage rounding of the gated input and of the output (2^-11 fp16, 2^-8 bf16
                    // relative per element) with fp32 accumulation. Measured (gpu_test_util.hpp,
                    // Bounds): fp16 2.9e-4, bf16 2.3e-3.
                    const double tol = Bounds{0.0 /* no fp32 kernel */, 8e-3, 1e-2}(prec);
                    CHECK(report(name, rel_error(got, ref), tol) <= tol);
                }
        }
}
