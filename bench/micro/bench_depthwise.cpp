// Depthwise KxK over the real layer shapes: our kernel (BN folded, activation and, where the
// block has squeeze-excite, the squeeze fused) against cuDNN's grouped convolution (group count
// = C, NHWC, fastest algorithm by cudnnFindConvolutionForwardAlgorithm; convolution only, so
// the comparison favours cuDNN). Our kernel runs in each of its schedules (register strips,
// shared-memory tiles of 256 and 128 threads; the session keeps the fastest per layer). Before
// the timings, a check per shape runs every strip length and schedule of our kernel (the tests
// only reach small shapes) on random data at batch 2, both paddings, against a float64 CPU
// reference.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/micro/bench_env.hpp"
#include "kernels/depthwise_conv.cuh"
#include "libeffnet/cuda/cuda_check.hpp"
#include "libeffnet/cuda/folded_weights.hpp"

namespace effnet::bench {
namespace {

std::string shape_name(const ModelShapes& m, const DepthwiseShape& d) {
    return "depthwise/" + m.model + "/" + std::to_string(d.h) + "x" + std::to_string(d.w) + "xC" +
           std::to_string(d.c) + "/k" + std::to_string(d.k) + "s" + std::to_string(d.s);
}

double depthwise_bytes(const DepthwiseShape& d, int batch, size_t es) {
    return double(batch) * (double(d.h) * d.w + double(d.ho) * d.wo) * d.c * double(es) +
           double(d.k * d.k + 1) * d.c * 4;
}
double depthwise_flops(const DepthwiseShape& d, int batch) {
    return 2.0 * batch * d.ho * d.wo * double(d.c) * d.k * d.k;
}

// schedule: register strips (the launcher's strip length) or the shared-memory tile (256- or
// 128-thread blocks); the session times them per layer and keeps the fastest.
void bench_ours(benchmark::State& state, BenchEnv& env, DepthwiseShape d,
                kernels::DepthwiseSchedule schedule) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * d.h * d.w * d.c * es, "dw input");
        cuda::DeviceBuffer y(size_t(N) * d.ho * d.wo * d.c * es, "dw output");
        cuda::DeviceBuffer wgt = filled_buffer(size_t(d.k) * d.k * d.c * 4, "dw weight");
        cuda::DeviceBuffer bias = filled_buffer(size_t(d.c) * 4, "dw bias");
        cuda::DeviceBuffer pooled(size_t(N) * d.c * 4, "dw pooled");
        kernels::DepthwiseArgs a;
        a.input = x.data();
        a.weight = wgt.as<float>();
        a.bias = bias.as<float>();
        a.output = y.data();
        a.pooled_sum = d.se ? pooled.as<float>() : nullptr;
        a.batch = N;
        a.height = d.h;
        a.width = d.w;
        a.channels = d.c;
        a.kernel = d.k;
        a.stride = d.s;
        a.pad_top = d.pad;
        a.pad_left = d.pad;
        a.out_height = d.ho;
        a.out_width = d.wo;
        a.act = kernels::Act::SiLU;
        a.schedule = schedule;
        if (!kernels::depthwise_schedule_supported(a, p, schedule)) {
            state.SkipWithError("schedule not supported for this shape");
            return;
        }
        const double total =
            env.time_launches(state, [&](cudaStream_t s) { kernels::launch_depthwise_conv(a, p, s); });
        set_counters(state, env, depthwise_bytes(d, N, es), depthwise_flops(d, N), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bench_cudnn(benchmark::State& state, BenchEnv& env, DepthwiseShape d) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        const cudnnDataType_t type = p == Precision::FP32   ? CUDNN_DATA_FLOAT
                                     : p == Precision::FP16 ? CUDNN_DATA_HALF
                                                            : CUDNN_DATA_BFLOAT16;
        CudnnConvDescriptors c;
        EFFNET_CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.x, CUDNN_TENSOR_NHWC, type, N, d.c, d.h, d.w));
        EFFNET_CUDNN_CHECK(cudnnSetFilter4dDescriptor(c.w, type, CUDNN_TENSOR_NHWC, d.c, 1, d.k, d.k));
        // cuDNN's legacy API has symmetric padding only: the torchvision presets are symmetric.
        EFFNET_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c.conv, d.pad, d.pad, d.s, d.s, 1, 1,
                                                           CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        EFFNET_CUDNN_CHECK(cudnnSetConvolutionGroupCount(c.conv, d.c));
        EFFNET_CUDNN_CHECK(cudnnSetConvolutionMathType(c.conv, CUDNN_DEFAULT_MATH));
        int on, oc, oh, ow;
        EFFNET_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(c.conv, c.x, c.w, &on, &oc, &oh, &ow));
        EFFNET_CHECK(oh == d.ho && ow == d.wo,
                     "cuDNN output size differs from ours for " + std::to_string(d.h));
        EFFNET_CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.y, CUDNN_TENSOR_NHWC, type, N, d.c, d.ho, d.wo));
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * d.h * d.w * d.c * es, "cudnn input");
        cuda::DeviceBuffer y(size_t(N) * d.ho * d.wo * d.c * es, "cudnn output");
        cuda::DeviceBuffer wgt = filled_buffer(size_t(d.k) * d.k * d.c * es, "cudnn weight");
        cudnnConvolutionFwdAlgo_t algo;
        const double total = time_cudnn_forward(state, env, c, x.data(), wgt.data(), y.data(), algo);
        set_counters(state, env, depthwise_bytes(d, N, es), depthwise_flops(d, N), total, false);
        state.SetLabel("algo " + std::to_string(int(algo)));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

// Uniform values in [lo, hi) from a fixed seed (xorshift): reproducible, non-constant data.
std::vector<float> random_values(size_t count, uint64_t seed, float lo, float hi) {
    std::vector<float> v(count);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (float& e : v) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        e = lo + (hi - lo) * float(double(x >> 11) * (1.0 / 9007199254740992.0));
    }
    return v;
}

double rel_norm_error(const std::vector<float>& got, const std::vector<double>& want) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY; // poisoned (unwritten) or overflowed
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

// Our kernel at every strip length vs float64 on the CPU: NHWC [2, h, w, c], SiLU, squeeze.
void check_ours(benchmark::State& state, BenchEnv& env, DepthwiseShape d) {
    try {
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        const int N = 2;
        const size_t in_count = size_t(N) * d.h * d.w * d.c, out_count = size_t(N) * d.ho * d.wo * d.c;
        const std::vector<float> x = cuda::round_to_storage(random_values(in_count, 11, -2.0f, 2.0f), p);
        const std::vector<float> w = random_values(size_t(d.k) * d.k * d.c, 12, -0.5f, 0.5f); // [k*k, C]
        const std::vector<float> b = random_values(size_t(d.c), 13, -0.5f, 0.5f);
        const std::vector<uint8_t> x_bytes = cuda::to_storage(x, p);
        cuda::DeviceBuffer d_x(x_bytes.size(), "check input"), d_w(w.size() * 4, "check weight"),
            d_b(b.size() * 4, "check bias"), d_y(out_count * es, "check output"),
            d_pool(size_t(N) * d.c * 4, "check pool");
        EFFNET_CUDA_CHECK(cudaMemcpy(d_x.data(), x_bytes.data(), x_bytes.size(), cudaMemcpyHostToDevice));
        EFFNET_CUDA_CHECK(cudaMemcpy(d_w.data(), w.data(), w.size() * 4, cudaMemcpyHostToDevice));
        EFFNET_CUDA_CHECK(cudaMemcpy(d_b.data(), b.data(), b.size() * 4, cudaMemcpyHostToDevice));
        // fp32 agrees to rounding of the sum order (1e-5); fp16/bf16 outputs are rounded to 11/8
        // significant bits (relative norm ~3e-4 / ~2e-3), so 1e-2 as in the GPU tests.
        const double tol = p == Precision::FP32 ? 1e-5 : 1e-2;
        double worst = 0.0;
        std::string worst_name;
        for (bool tf_same : {false, true}) {
            // TF SAME puts the odd padding pixel at the bottom/right: top/left = total / 2.
            const int pad_t = tf_same ? std::max((d.ho - 1) * d.s + d.k - d.h, 0) / 2 : d.pad;
            const int pad_l = tf_same ? std::max((d.wo - 1) * d.s + d.k - d.w, 0) / 2 : d.pad;
            std::vector<double> ref(out_count), ref_pool(size_t(N) * d.c, 0.0);
            for (int n = 0; n < N; ++n)
                for (int oh = 0; oh < d.ho; ++oh)
                    for (int ow = 0; ow < d.wo; ++ow)
                        for (int c = 0; c < d.c; ++c) {
                            double acc = b[size_t(c)];
                            for (int kh = 0; kh < d.k; ++kh) {
                                const int ih = oh * d.s - pad_t + kh;
                                if (ih < 0 || ih >= d.h) continue;
                                for (int kw = 0; kw < d.k; ++kw) {
                                    const int iw = ow * d.s - pad_l + kw;
                                    if (iw < 0 || iw >= d.w) continue;
                                    acc += double(x[((size_t(n) * d.h + ih) * d.w + iw) * d.c + c]) *
                                           w[size_t(kh * d.k + kw) * d.c + c];
                                }
                            }
                            const double y = acc / (1.0 + std::exp(-acc));
                            ref[((size_t(n) * d.ho + oh) * d.wo + ow) * d.c + c] = y;
                            ref_pool[size_t(n) * d.c + c] += y;
                        }
            // Every strip length (ppt 1, 2, 4, and the launcher's 0), then the two tile schedules
            // (ppt 10: 256-thread tiles, 11: 128-thread tiles).
            for (int ppt : {0, 1, 2, 4, 10, 11}) {
                if ((ppt == 2 && d.s > 2) || (ppt == 4 && d.s != 1)) continue;
                EFFNET_CUDA_CHECK(cudaMemset(d_y.data(), 0xFF, out_count * es)); // NaN: unwritten fails
                EFFNET_CUDA_CHECK(cudaMemset(d_pool.data(), 0, size_t(N) * d.c * 4));
                kernels::DepthwiseArgs a;
                a.input = d_x.data();
                a.weight = d_w.as<float>();
                a.bias = d_b.as<float>();
                a.output = d_y.data();
                a.pooled_sum = d_pool.as<float>();
                a.batch = N;
                a.height = d.h;
                a.width = d.w;
                a.channels = d.c;
                a.kernel = d.k;
                a.stride = d.s;
                a.pad_top = pad_t;
                a.pad_left = pad_l;
                a.out_height = d.ho;
                a.out_width = d.wo;
                a.act = kernels::Act::SiLU;
                a.pixels_per_thread = ppt < 10 ? ppt : 0;
                a.schedule = ppt == 10   ? kernels::DepthwiseSchedule::SharedTile
                             : ppt == 11 ? kernels::DepthwiseSchedule::SharedTileSmall
                                         : kernels::DepthwiseSchedule::RegisterStrips;
                if (!kernels::depthwise_schedule_supported(a, p, a.schedule)) continue;
                kernels::launch_depthwise_conv(a, p, nullptr);
                EFFNET_CUDA_CHECK(cudaDeviceSynchronize());
                std::vector<uint8_t> y_bytes(out_count * es);
                std::vector<float> pool(size_t(N) * d.c);
                EFFNET_CUDA_CHECK(
                    cudaMemcpy(y_bytes.data(), d_y.data(), y_bytes.size(), cudaMemcpyDeviceToHost));
                EFFNET_CUDA_CHECK(
                    cudaMemcpy(pool.data(), d_pool.data(), pool.size() * 4, cudaMemcpyDeviceToHost));
                const std::string name =
                    std::string(tf_same ? "tf_same" : "symmetric") + " ppt" + std::to_string(ppt);
                const double err = std::max(rel_norm_error(cuda::from_storage(y_bytes, p), ref),
                                            rel_norm_error(pool, ref_pool));
                state.counters["err_" + std::string(tf_same ? "tf" : "sym") + "_ppt" + std::to_string(ppt)] =
                    err;
                if (!(err <= worst)) {
                    worst = err;
                    worst_name = name;
                }
            }
        }
        state.counters["max_err"] = worst;
        if (!(worst <= tol))
            state.SkipWithError(("MISMATCH " + worst_name + ": rel err " + std::to_string(worst) + " > " +
                                 std::to_string(tol))
                                    .c_str());
        for (auto _ : state) {
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_depthwise_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    for (const DepthwiseShape& d : shapes.depthwise) {
        const std::string base = shape_name(shapes, d);
        benchmark::RegisterBenchmark((base + "/check_" + prec).c_str(),
                                     [&env, d](benchmark::State& st) { check_ours(st, env, d); })
            ->Iterations(1)
            ->Unit(benchmark::kMicrosecond);
        const std::pair<const char*, kernels::DepthwiseSchedule> schedules[] = {
            {"strips", kernels::DepthwiseSchedule::RegisterStrips},
            {"tile", kernels::DepthwiseSchedule::SharedTile},
            {"tile128", kernels::DepthwiseSchedule::SharedTileSmall}};
        for (const auto& [label, schedule] : schedules)
            register_timed(
                env, base + "/ours_" + label + "_" + prec,
                [&env, d, schedule = schedule](benchmark::State& st) { bench_ours(st, env, d, schedule); });
        register_timed(env, base + "/cudnn_" + prec,
                       [&env, d](benchmark::State& st) { bench_cudnn(st, env, d); });
    }
}

} // namespace effnet::bench
