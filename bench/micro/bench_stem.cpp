// The stem (3x3 stride-2 convolution of the NCHW float32 input, BN folded, SiLU fused, NHWC
// output in the storage precision) on each model's native resolution, against cuDNN's
// convolution of the same input (float32 NCHW in and out, convolution only: no bias, no
// activation, no layout change, so the comparison favours cuDNN).
#include <string>

#include "bench/micro/bench_env.hpp"
#include "kernels/stem_conv.cuh"

namespace effnet::bench {
namespace {

struct StemShape {
    int cin, h, w, cout, k, s, ho, wo, pad;
};

StemShape stem_shape(const ModelConfig& cfg) {
    StemShape t{};
    t.cin = cfg.in_channels;
    t.h = t.w = cfg.resolution;
    t.cout = cfg.stem_channels;
    t.k = 3;
    t.s = 2;
    t.ho = t.wo = conv_output_size(cfg.resolution, 3, 2, cfg.padding);
    int pad_after = 0;
    conv_padding(cfg.resolution, 3, 2, cfg.padding, t.pad, pad_after);
    return t;
}

// Bytes: the float32 input read once, the output written once (out_es bytes an element), the
// float32 weights and bias read once.
double stem_bytes(const StemShape& t, int batch, size_t out_es) {
    return double(batch) * t.cin * t.h * t.w * 4.0 + double(batch) * t.ho * t.wo * t.cout * double(out_es) +
           (double(t.k) * t.k * t.cin * t.cout + t.cout) * 4.0;
}
// FLOPs: one multiply-add (2 FLOPs) per output element and filter tap (bias, activation not counted).
double stem_flops(const StemShape& t, int batch) {
    return 2.0 * batch * t.ho * t.wo * double(t.cout) * t.cin * t.k * t.k;
}

void bench_ours(benchmark::State& state, BenchEnv& env, StemShape t) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * t.cin * t.h * t.w * 4, "stem input");
        cuda::DeviceBuffer w = filled_buffer(size_t(t.k) * t.k * t.cin * t.cout * 4, "stem weight");
        cuda::DeviceBuffer b = filled_buffer(size_t(t.cout) * 4, "stem bias");
        cuda::DeviceBuffer y(size_t(N) * t.ho * t.wo * t.cout * es, "stem output");
        kernels::StemConvArgs a;
        a.input = x.as<float>();
        a.weight = w.as<float>();
        a.bias = b.as<float>();
        a.output = y.data();
        a.batch = N;
        a.in_channels = t.cin;
        a.height = t.h;
        a.width = t.w;
        a.out_channels = t.cout;
        a.out_height = t.ho;
        a.out_width = t.wo;
        a.kernel = t.k;
        a.stride = t.s;
        a.pad_top = a.pad_left = t.pad;
        a.act = kernels::Act::SiLU;
        const double total =
            env.time_launches(state, [&](cudaStream_t s) { kernels::launch_stem_conv(a, p, s); });
        set_counters(state, env, stem_bytes(t, N, es), stem_flops(t, N), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bench_cudnn(benchmark::State& state, BenchEnv& env, StemShape t) {
    try {
        const int N = env.options().batch;
        CudnnConvDescriptors c;
        EFFNET_CUDNN_CHECK(
            cudnnSetTensor4dDescriptor(c.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, t.cin, t.h, t.w));
        EFFNET_CUDNN_CHECK(
            cudnnSetFilter4dDescriptor(c.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, t.cout, t.cin, t.k, t.k));
        // Symmetric padding only in the legacy API: a TF-SAME preset with an odd total pad gets a
        // different output size, caught below.
        EFFNET_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c.conv, t.pad, t.pad, t.s, t.s, 1, 1,
                                                           CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        // TF32 off: the same float32 arithmetic as ours.
        EFFNET_CUDNN_CHECK(cudnnSetConvolutionMathType(c.conv, CUDNN_FMA_MATH));
        int on, oc, oh, ow;
        EFFNET_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(c.conv, c.x, c.w, &on, &oc, &oh, &ow));
        EFFNET_CHECK(oh == t.ho && ow == t.wo,
                     "cuDNN stem output size differs from ours (asymmetric padding)");
        EFFNET_CUDNN_CHECK(
            cudnnSetTensor4dDescriptor(c.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, t.cout, t.ho, t.wo));
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * t.cin * t.h * t.w * 4, "cudnn stem input");
        cuda::DeviceBuffer w = filled_buffer(size_t(t.k) * t.k * t.cin * t.cout * 4, "cudnn stem weight");
        cuda::DeviceBuffer y(size_t(N) * t.ho * t.wo * t.cout * 4, "cudnn stem output");
        cudnnConvolutionFwdAlgo_t algo;
        const double total = time_cudnn_forward(state, env, c, x.data(), w.data(), y.data(), algo);
        // fp32 output, and no bias read.
        set_counters(state, env, stem_bytes(t, N, 4) - t.cout * 4.0, stem_flops(t, N), total, false);
        state.SetLabel("algo " + std::to_string(int(algo)) + ", fp32 out");
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_stem_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    const StemShape t = stem_shape(shapes.config);
    const std::string base = "stem/" + shapes.model + "/" + std::to_string(t.h) + "x" + std::to_string(t.w) +
                             "xC" + std::to_string(t.cin) + "_to_C" + std::to_string(t.cout);
    register_timed(env, base + "/ours_" + prec, [&env, t](benchmark::State& st) { bench_ours(st, env, t); });
    // cuDNN computes in fp32 whatever --precision is; named by what it computes.
    register_timed(env, base + "/cudnn_fp32io_" + prec,
                   [&env, t](benchmark::State& st) { bench_cudnn(st, env, t); });
}

} // namespace effnet::bench
