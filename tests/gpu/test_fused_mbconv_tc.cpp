// The tensor-core fused expand + depthwise kernel (kernels/fused_mbconv_tc.cuh) against the CPU
// reference ops (libeffnet/cpu/ops.hpp: the 1x1 conv, the depthwise conv, the activation, the
// global average pool as the squeeze) on odd shapes, fp16 and bf16 (the kernel has no fp32: an
// fp32 session keeps the unfused path, checked below as ineligible), and against the unfused
// GPU sequence it replaces in a session (expand GEMM, then depthwise + squeeze).
//
// The reference sees what the GPU sees: the input and the expand weights rounded to the storage
// type, and the expanded tensor rounded to it too (the unfused path stores it, the fused kernel
// rounds it into shared memory the same way). Weights are taken as already BN-folded (folding
// is checked in test_kernels.cpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "effnet/config.hpp"
#include "effnet/inference.hpp"
#include "gpu/gpu_test_util.hpp"
#include "kernels/depthwise_conv.cuh"
#include "kernels/fused_mbconv_tc.cuh"
#include "kernels/pointwise_conv.cuh"
#include "libeffnet/cuda/folded_weights.hpp"

using namespace effnet;
using namespace effnet::gpu_test;

namespace {

// Not yet measured on a GPU: the generic kernel bound (gpu_test_util.hpp, kernel_tolerance):
// fp32-accumulated products of rounded inputs, one rounding of the output to fp16 (2^-11) or
// bf16 (2^-8), so a relative norm error of about 3e-4 / 2e-3 is expected, 1e-2 allowed.
// The squeeze sums are fp32 sums of the unrounded outputs (expected ~1e-6 in both precisions;
// an occasional one-ulp difference in the rounded expanded value, where the tensor cores' sum
// order and the CPU's land on either side of a rounding boundary, adds a little); same bound.
// fused vs unfused GPU sequence: the same rounded expanded values up to those one-ulp flips and
// the fast / accurate SiLU of the two GEMM schedules (~1e-6), then one output rounding each.
double fused_tolerance(Precision p) {
    return kernel_tolerance(p);
}

struct Problem {
    int n, h, w, cin, ce;
};

struct Weights {
    Tensor we; // [Ce, Cin, 1, 1], rounded to the storage type
    Tensor be; // [Ce]
    Tensor wd; // [Ce, 1, k, k]
    Tensor bd; // [Ce]
};

Weights random_weights(const Problem& pr, int k, Precision prec, uint64_t seed) {
    const float a = 1.5f / std::sqrt(float(pr.cin)); // expand outputs of order 1 for any Cin
    Weights w;
    w.we = rounded(random_tensor({pr.ce, pr.cin, 1, 1}, seed, -a, a), prec);
    w.be = random_tensor({pr.ce}, seed + 1, -0.5f, 0.5f);
    w.wd = random_tensor({pr.ce, 1, k, k}, seed + 2, -0.5f, 0.5f);
    w.bd = random_tensor({pr.ce}, seed + 3, -0.5f, 0.5f);
    return w;
}

// The CPU reference of expand -> (rounded) -> depthwise, and the squeeze of the result.
struct Reference {
    Tensor y;      // [N, Ce, Ho, Wo] fp32, before the output's rounding
    Tensor pooled; // [N, Ce] mean over Ho * Wo
};

Reference reference(const Tensor& x, const Weights& w, int k, int s, Padding pad, Activation act,
                    Precision prec) {
    const int H = int(x.dim(2)), W = int(x.dim(3)), ce = int(w.we.dim(0));
    const Tensor e = cpu::activation_forward(
        cpu::conv2d_forward(x, w.we, &w.be, cpu::conv_params(H, W, 1, 1, 1, pad)), act);
    const Tensor e_stored = rounded(e, prec);
    Reference r;
    r.y = cpu::activation_forward(
        cpu::conv2d_forward(e_stored, w.wd, &w.bd, cpu::conv_params(H, W, k, s, ce, pad)), act);
    r.pooled = cpu::global_avg_pool_forward(r.y);
    return r;
}

// Device copies of one problem's operands and the kernel arguments over them.
struct DeviceProblem {
    cuda::DeviceBuffer x, we, be, wd, bd, y, pooled;
    kernels::FusedExpandDepthwiseArgs args;
    size_t out_count = 0, pooled_count = 0;
};

DeviceProblem upload_problem(const Problem& pr, const Tensor& x, const Weights& w, int k, int s, Padding pad,
                             Activation act, Precision prec, int ho, int wo) {
    DeviceProblem d;
    d.x = upload(nchw_to_nhwc(x), prec);
    d.we = upload(w.we.data, prec); // [Ce, Cin]: the layout of a 1x1 conv weight
    d.be = upload_f32(w.be.data);
    cuda::FoldedConv dw;
    dw.weight = w.wd.data;
    dw.bias = w.bd.data;
    dw.shape = w.wd.shape;
    d.wd = upload_f32(cuda::depthwise_layout(dw)); // [k*k, Ce]
    d.bd = upload_f32(w.bd.data);
    d.out_count = size_t(pr.n) * ho * wo * pr.ce;
    d.pooled_count = size_t(pr.n) * pr.ce;
    d.y = poisoned(d.out_count, prec);
    d.pooled = upload_f32(std::vector<float>(d.pooled_count, 0.0f));
    const cpu::Conv2dParams cp = cpu::conv_params(pr.h, pr.w, k, s, pr.ce, pad);
    kernels::FusedExpandDepthwiseArgs& a = d.args;
    a.input = d.x.data();
    a.expand_weight = d.we.data();
    a.expand_bias = d.be.as<float>();
    a.dw_weight = d.wd.as<float>();
    a.dw_bias = d.bd.as<float>();
    a.output = d.y.data();
    a.pooled_sum = d.pooled.as<float>();
    a.batch = pr.n;
    a.height = pr.h;
    a.width = pr.w;
    a.in_channels = pr.cin;
    a.expand_channels = pr.ce;
    a.kernel = k;
    a.stride = s;
    a.pad_top = cp.pad_top;
    a.pad_left = cp.pad_left;
    a.out_height = ho;
    a.out_width = wo;
    a.act = kernels::to_act(act);
    return d;
}

// Re-poisons the output and zeroes the squeeze sums between launches.
void reset_outputs(DeviceProblem& d, Precision prec) {
    EFFNET_CUDA_CHECK(cudaMemset(d.y.data(), 0xFF, d.out_count * kernels::storage_size(prec)));
    EFFNET_CUDA_CHECK(cudaMemset(d.pooled.data(), 0, d.pooled_count * sizeof(float)));
}

std::vector<float> mean_of_sums(const DeviceProblem& d, int pixels) {
    std::vector<float> pool = download(d.pooled, d.pooled_count, Precision::FP32);
    for (float& v : pool) v /= float(pixels);
    return pool;
}

// The unfused sequence a session runs: expand GEMM into a buffer, then depthwise + squeeze.
void launch_unfused(const DeviceProblem& d, const cuda::DeviceBuffer& expanded, Precision prec) {
    const kernels::FusedExpandDepthwiseArgs& f = d.args;
    kernels::PointwiseArgs pa;
    pa.input = f.input;
    pa.weight = f.expand_weight;
    pa.bias = f.expand_bias;
    pa.output = expanded.data();
    pa.rows = int64_t(f.batch) * f.height * f.width;
    pa.out_channels = f.expand_channels;
    pa.in_channels = f.in_channels;
    pa.rows_per_image = f.height * f.width;
    pa.act = f.act;
    kernels::launch_pointwise_conv(pa, prec, kernels::GemmKernel::Auto, nullptr);
    kernels::DepthwiseArgs da;
    da.input = expanded.data();
    da.weight = f.dw_weight;
    da.bias = f.dw_bias;
    da.output = f.output;
    da.pooled_sum = f.pooled_sum;
    da.batch = f.batch;
    da.height = f.height;
    da.width = f.width;
    da.channels = f.expand_channels;
    da.kernel = f.kernel;
    da.stride = f.stride;
    da.pad_top = f.pad_top;
    da.pad_left = f.pad_left;
    da.out_height = f.out_height;
    da.out_width = f.out_width;
    da.act = f.act;
    kernels::launch_depthwise_conv(da, prec, nullptr);
}

} // namespace

// Not [sanitize]: 240 launches and their CPU references are too many for the sanitizer's time
// cap; the next test case runs the kernel under it.
TEST_CASE("fused MBConv (tensor cores) matches CPU expand conv+act then depthwise conv+act and squeeze",
          "[gpu]") {
    EFFNET_SKIP_WITHOUT_GPU();
    // 17x34 (odd H), 7x7 (the late stages: one tile larger than the map), 9x13, 14x15. Cin 16 /
    // 24 / 40 / 8 / 200: one, two (24 and 40 pad K to 32 and 48) or 13 k16 steps; Ce 96 (three
    // whole slices of 32), 144 and 248 (a last slice of 16 and 24: warps with no channels and a
    // zero-padded n8 fragment), 8 (one slice, mostly empty), 72.
    const Problem problems[] = {
        {2, 17, 34, 16, 96}, {2, 17, 34, 24, 144}, {3, 7, 7, 40, 248}, {1, 9, 13, 8, 8}, {2, 14, 15, 200, 72},
    };
    uint64_t seed = 11000;
    for (const Problem& pr : problems)
        for (int k : {3, 5})
            for (int s : {1, 2})
                for (Padding pad : {Padding::Symmetric, Padding::TfSame})
                    for (Precision prec : {Precision::FP16, Precision::BF16}) {
                        seed += 10;
                        const Activation act =
                            pad == Padding::Symmetric ? Activation::SiLU : Activation::ReLU6;
                        const Tensor x =
                            rounded(random_tensor({pr.n, pr.cin, pr.h, pr.w}, seed, -2.0f, 2.0f), prec);
                        const Weights w = random_weights(pr, k, prec, seed + 1);
                        const Reference ref = reference(x, w, k, s, pad, act, prec);
                        const int ho = int(ref.y.dim(2)), wo = int(ref.y.dim(3));
                        DeviceProblem d = upload_problem(pr, x, w, k, s, pad, act, prec, ho, wo);
                        const std::string name =
                            "fused tc N=" + std::to_string(pr.n) + " " + std::to_string(pr.h) + "x" +
                            std::to_string(pr.w) + " Cin=" + std::to_string(pr.cin) +
                            " Ce=" + std::to_string(pr.ce) + " k" + std::to_string(k) + " s" +
                            std::to_string(s) + " " + padding_name(pad) + " " + precision_name(prec);
                        INFO(name);
                        REQUIRE(kernels::fused_mbconv_tc_eligible(d.args, prec));
                        const double tol = fused_tolerance(prec);
                        // 0: the launcher's choice; 1: every block one slice (many groups); 3: blocks
                        // that loop over slices through the weight ring, with a partial last group.
                        for (int slices_per_block : {0, 1, 3}) {
                            reset_outputs(d, prec);
                            kernels::launch_fused_mbconv_tc(d.args, prec, nullptr, slices_per_block);
                            const Tensor got =
                                nhwc_to_nchw(download(d.y, d.out_count, prec), pr.n, ho, wo, pr.ce);
                            const std::string label = name + " spb=" + std::to_string(slices_per_block);
                            CHECK(report(label, rel_error(got.data, ref.y.data), tol) <= tol);
                            CHECK(report(label + " squeeze",
                                         rel_error(mean_of_sums(d, ho * wo), ref.pooled.data), tol) <= tol);
                        }
                    }
}

TEST_CASE("fused MBConv (tensor cores) matches the unfused GPU sequence, with and without the squeeze",
          "[gpu][sanitize]") {
    EFFNET_SKIP_WITHOUT_GPU();
    // B0-like stage shapes at a small batch, odd sizes kept: the stride-2 k5 block at 28x28
    // (24 -> 144), the stride-1 k3 block at 14x14 (80 -> 480), the last stage at 7x7 (192 -> 1152);
    // and a small odd one whose last slice is partial (248 = 7 x 32 + 24), for the sanitizer.
    struct Case {
        Problem pr;
        int k, s;
    };
    const Case cases[] = {{{3, 27, 29, 24, 144}, 5, 2},
                          {{2, 14, 14, 80, 480}, 3, 1},
                          {{2, 7, 7, 192, 1152}, 5, 1},
                          {{1, 9, 13, 40, 248}, 3, 2}};
    uint64_t seed = 12000;
    for (const Case& cs : cases)
        for (Precision prec : {Precision::FP16, Precision::BF16}) {
            seed += 10;
            const Problem& pr = cs.pr;
            const Padding pad = Padding::TfSame;
            const Activation act = Activation::SiLU;
            const cpu::Conv2dParams cp = cpu::conv_params(pr.h, pr.w, cs.k, cs.s, pr.ce, pad);
            const int ho = (pr.h + cp.pad_top + cp.pad_bottom - cs.k) / cs.s + 1;
            const int wo = (pr.w + cp.pad_left + cp.pad_right - cs.k) / cs.s + 1;
            const Tensor x = rounded(random_tensor({pr.n, pr.cin, pr.h, pr.w}, seed, -2.0f, 2.0f), prec);
            const Weights w = random_weights(pr, cs.k, prec, seed + 1);
            DeviceProblem d = upload_problem(pr, x, w, cs.k, cs.s, pad, act, prec, ho, wo);
            const std::string name = "fused tc vs unfused " + std::to_string(pr.h) + "x" +
                                     std::to_string(pr.w) + " " + std::to_string(pr.cin) + "->" +
                                     std::to_string(pr.ce) + " k" + std::to_string(cs.k) + " s" +
                                     std::to_string(cs.s) + " " + precision_name(prec);
            INFO(name);
            REQUIRE(kernels::fused_mbconv_tc_eligible(d.args, prec));

            cuda::DeviceBuffer expanded(size_t(pr.n) * pr.h * pr.w * pr.ce * kernels::storage_size(prec),
                                        "expanded");
            reset_outputs(d, prec);
            launch_unfused(d, expanded, prec);
            const std::vector<float> want = download(d.y, d.out_count, prec);
            const std::vector<float> want_pool = mean_of_sums(d, ho * wo);

            reset_outputs(d, prec);
            kernels::launch_fused_mbconv_tc(d.args, prec, nullptr);
            const std::vector<float> got = download(d.y, d.out_count, prec);
            const double tol = fused_tolerance(prec);
            CHECK(report(name, rel_error(got, want), tol) <= tol);
            CHECK(report(name + " squeeze", rel_error(mean_of_sums(d, ho * wo), want_pool), tol) <= tol);

            // Without the squeeze: the same output, and the sums left untouched.
            reset_outputs(d, prec);
            kernels::FusedExpandDepthwiseArgs no_squeeze = d.args;
            no_squeeze.pooled_sum = nullptr;
            kernels::launch_fused_mbconv_tc(no_squeeze, prec, nullptr);
            const std::vector<float> got_plain = download(d.y, d.out_count, prec);
            CHECK(report(name + " no squeeze", rel_error(got_plain, want), tol) <= tol);
            const std::vector<float> untouched = download(d.pooled, d.pooled_count, Precision::FP32);
            CHECK(std::all_of(untouched.begin(), untouched.end(), [](float v) { return v == 0.0f; }));
        }
}

TEST_CASE("fused MBConv (tensor cores) eligibility and launcher checks", "[gpu]") {
    EFFNET_SKIP_WITHOUT_GPU();
    const Problem pr{1, 9, 13, 16, 96};
    const Tensor x = rounded(random_tensor({pr.n, pr.cin, pr.h, pr.w}, 13000), Precision::FP16);
    const Weights w = random_weights(pr, 3, Precision::FP16, 13001);
    DeviceProblem d =
        upload_problem(pr, x, w, 3, 1, Padding::Symmetric, Activation::SiLU, Precision::FP16, 9, 13);
    const kernels::FusedExpandDepthwiseArgs good = d.args;
    REQUIRE(kernels::fused_mbconv_tc_eligible(good, Precision::FP16));
    CHECK(kernels::fused_mbconv_tc_eligible(good, Precision::BF16));

    // fp32: no tensor-core kernel (the session keeps the unfused path).
    CHECK_FALSE(kernels::fused_mbconv_tc_eligible(good, Precision::FP32));
    CHECK_THROWS_AS(kernels::launch_fused_mbconv_tc(good, Precision::FP32, nullptr), Error);

    // The launcher refuses (throws effnet::Error) ...
    auto refused = [&](auto change) {
        kernels::FusedExpandDepthwiseArgs a = good;
        change(a);
        try {
            kernels::launch_fused_mbconv_tc(a, Precision::FP16, nullptr);
        } catch (const Error&) {
            return true;
        }
        return false;
    };
    // ... and eligible() says no first, so the session never offers these to the kernel.
    auto ineligible = [&](auto change) {
        kernels::FusedExpandDepthwiseArgs a = good;
        change(a);
        return !kernels::fused_mbconv_tc_eligible(a, Precision::FP16) && refused(change);
    };
    CHECK(ineligible([](auto& a) { a.in_channels = 12; }));     // Cin % 8
    CHECK(ineligible([](auto& a) { a.expand_channels = 92; })); // Ce % 8
    CHECK(ineligible([](auto& a) { a.kernel = 7; }));
    CHECK(ineligible([](auto& a) { a.stride = 3; }));
    CHECK(ineligible([](auto& a) { a.pad_top = 3; })); // >= kernel
    CHECK(ineligible([](auto& a) { a.batch = 70000; }));
    CHECK(ineligible([&](auto& a) { a.input = static_cast<const char*>(d.x.data()) + 2; })); // alignment
    CHECK(ineligible([&](auto& a) { a.output = static_cast<char*>(d.y.data()) + 4; }));
    CHECK(ineligible([](auto& a) { a.in_channels = 4000; })); // shared memory past the device's limit
    // Eligible shapes with arguments no kernel can run: the launcher's own checks.
    CHECK(refused([](auto& a) { a.expand_weight = nullptr; }));
    CHECK(refused([](auto& a) { a.out_height = 20; })); // inconsistent with H = 9 and the padding
    CHECK(refused([](auto& a) { a.height = 0; }));
    CHECK_NOTHROW(kernels::launch_fused_mbconv_tc(good, Precision::FP16, nullptr));
    EFFNET_CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(kernels::fused_mbconv_tc_smem_bytes(3, 1, 4000) > 227u * 1024u);
    CHECK(kernels::fused_mbconv_tc_smem_bytes(7, 1, 16) == 0);
}
