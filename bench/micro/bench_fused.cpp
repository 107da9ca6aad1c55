// Fused expand 1x1 + act + depthwise + act (one kernel, expanded tile in shared memory) against
// the unfused pair (expand GEMM writing the expanded tensor, then the depthwise kernel reading
// it), over the real shapes. Three variants per shape: the tensor-core fused kernel
// (fused_mbconv_tc.cuh, "fused_tc"), the first fused kernel (fused_mbconv.cuh, SIMT expand,
// "fused") and the unfused sequence ("unfused"), each with the squeeze when the block has one.
// Bytes counted are the fused kernel's compulsory traffic for all three, so GB/s compares like
// with like. Run at --batch=32 and --batch=256 for the B0 fp16 stage shapes.
#include <string>

#include "bench/micro/bench_env.hpp"
#include "kernels/depthwise_conv.cuh"
#include "kernels/fused_mbconv.cuh"
#include "kernels/fused_mbconv_tc.cuh"
#include "kernels/pointwise_conv.cuh"

namespace effnet::bench {
namespace {

enum class Variant { FusedTc, Fused, Unfused };

const char* variant_name(Variant v) {
    return v == Variant::FusedTc ? "fused_tc" : v == Variant::Fused ? "fused" : "unfused";
}

std::string shape_name(const ModelShapes& m, const FusedShape& f) {
    return "expand_dw/" + m.model + "/" + std::to_string(f.h) + "x" + std::to_string(f.w) + "_" +
           std::to_string(f.cin) + "to" + std::to_string(f.ce) + "/k" + std::to_string(f.k) + "s" +
           std::to_string(f.s);
}

void bench_variant(benchmark::State& state, BenchEnv& env, FusedShape f, Variant variant) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * f.h * f.w * f.cin * es, "input");
        cuda::DeviceBuffer we = filled_buffer(size_t(f.ce) * f.cin * es, "expand weight");
        cuda::DeviceBuffer be = filled_buffer(size_t(f.ce) * 4, "expand bias");
        cuda::DeviceBuffer wd = filled_buffer(size_t(f.k) * f.k * f.ce * 4, "dw weight");
        cuda::DeviceBuffer bd = filled_buffer(size_t(f.ce) * 4, "dw bias");
        cuda::DeviceBuffer y(size_t(N) * f.ho * f.wo * f.ce * es, "output");
        cuda::DeviceBuffer pooled(size_t(N) * f.ce * 4, "pooled");
        cuda::DeviceBuffer expanded;
        if (variant == Variant::Unfused)
            expanded = cuda::DeviceBuffer(size_t(N) * f.h * f.w * f.ce * es, "expanded");
        kernels::FusedExpandDepthwiseArgs fa;
        fa.input = x.data();
        fa.expand_weight = we.data();
        fa.expand_bias = be.as<float>();
        fa.dw_weight = wd.as<float>();
        fa.dw_bias = bd.as<float>();
        fa.output = y.data();
        fa.pooled_sum = f.se ? pooled.as<float>() : nullptr;
        fa.batch = N;
        fa.height = f.h;
        fa.width = f.w;
        fa.in_channels = f.cin;
        fa.expand_channels = f.ce;
        fa.kernel = f.k;
        fa.stride = f.s;
        fa.pad_top = f.pad;
        fa.pad_left = f.pad;
        fa.out_height = f.ho;
        fa.out_width = f.wo;
        fa.act = kernels::Act::SiLU;
        kernels::PointwiseArgs pa;
        pa.input = x.data();
        pa.weight = we.data();
        pa.bias = be.as<float>();
        pa.output = expanded.data();
        pa.rows = int64_t(N) * f.h * f.w;
        pa.out_channels = f.ce;
        pa.in_channels = f.cin;
        pa.rows_per_image = f.h * f.w;
        pa.act = kernels::Act::SiLU;
        kernels::DepthwiseArgs da;
        da.input = expanded.data();
        da.weight = wd.as<float>();
        da.bias = bd.as<float>();
        da.output = y.data();
        da.pooled_sum = fa.pooled_sum;
        da.batch = N;
        da.height = f.h;
        da.width = f.w;
        da.channels = f.ce;
        da.kernel = f.k;
        da.stride = f.s;
        da.pad_top = f.pad;
        da.pad_left = f.pad;
        da.out_height = f.ho;
        da.out_width = f.wo;
        da.act = kernels::Act::SiLU;
        if (variant == Variant::FusedTc) {
            const std::string why = kernels::fused_mbconv_tc_ineligible_reason(fa, p);
            if (!why.empty()) {
                state.SkipWithError(("not eligible: " + why).c_str());
                return;
            }
        }
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            switch (variant) {
            case Variant::FusedTc:
                kernels::launch_fused_mbconv_tc(fa, p, s);
                break;
            case Variant::Fused:
                kernels::launch_fused_expand_depthwise(fa, p, s);
                break;
            case Variant::Unfused:
                kernels::launch_pointwise_conv(pa, p, kernels::GemmKernel::Auto, s);
                kernels::launch_depthwise_conv(da, p, s);
                break;
            }
        });
        const double bytes =
            double(N) * (double(f.h) * f.w * f.cin + double(f.ho) * f.wo * f.ce) * double(es);
        const double flops =
            2.0 * N * (double(f.h) * f.w * f.cin * f.ce + double(f.ho) * f.wo * f.ce * f.k * f.k);
        set_counters(state, env, bytes, flops, total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_fused_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    for (const FusedShape& f : shapes.fused) {
        const std::string base = shape_name(shapes, f);
        for (Variant v : {Variant::FusedTc, Variant::Fused, Variant::Unfused})
            register_timed(env, base + "/" + variant_name(v) + "_" + prec,
                           [&env, f, v](benchmark::State& st) { bench_variant(st, env, f, v); });
    }
}

} // namespace effnet::bench
