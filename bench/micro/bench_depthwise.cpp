// Depthwise KxK over the real layer shapes: our kernel (BN folded, activation and, where the
// block has squeeze-excite, the squeeze fused) against cuDNN's grouped convolution (group count
// = C, NHWC, fastest algorithm by cudnnFindConvolutionForwardAlgorithm; convolution only, so
// the comparison favours cuDNN).
#include <memory>
#include <string>

#include "bench/micro/bench_env.hpp"
#include "kernels/depthwise_conv.cuh"

namespace effnet::bench {
namespace {

std::string shape_name(const ModelShapes& m, const DepthwiseShape& d) {
    return "depthwise/" + m.model + "/" + std::to_string(d.h) + "x" + std::to_string(d.w) + "xC" + std::to_string(d.c) + "/k" +
           std::to_string(d.k) + "s" + std::to_string(d.s);
}

double depthwise_bytes(const DepthwiseShape& d, int batch, size_t es) {
    return double(batch) * (double(d.h) * d.w + double(d.ho) * d.wo) * d.c * double(es) + double(d.k * d.k + 1) * d.c * 4;
}
double depthwise_flops(const DepthwiseShape& d, int batch) { return 2.0 * batch * d.ho * d.wo * double(d.c) * d.k * d.k; }

void bench_ours(benchmark::State& state, BenchEnv& env, DepthwiseShape d) {
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
        a.input = x.data(); a.weight = wgt.as<float>(); a.bias = bias.as<float>(); a.output = y.data();
        a.pooled_sum = d.se ? pooled.as<float>() : nullptr;
        a.batch = N; a.height = d.h; a.width = d.w; a.channels = d.c; a.kernel = d.k; a.stride = d.s;
        a.pad_top = d.pad; a.pad_left = d.pad; a.out_height = d.ho; a.out_width = d.wo; a.act = kernels::Act::SiLU;
        const double total = env.time_launches(state, [&](cudaStream_t s) { kernels::launch_depthwise_conv(a, p, s); });
        set_counters(state, env, depthwise_bytes(d, N, es), depthwise_flops(d, N), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

// RAII for the cuDNN descriptors of one benchmark.
struct CudnnConv {
    cudnnTensorDescriptor_t x = nullptr, y = nullptr;
    cudnnFilterDescriptor_t w = nullptr;
    cudnnConvolutionDescriptor_t conv = nullptr;
    ~CudnnConv() {
        if (x) cudnnDestroyTensorDescriptor(x);
        if (y) cudnnDestroyTensorDescriptor(y);
        if (w) cudnnDestroyFilterDescriptor(w);
        if (conv) cudnnDestroyConvolutionDescriptor(conv);
    }
};

void bench_cudnn(benchmark::State& state, BenchEnv& env, DepthwiseShape d) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        const cudnnDataType_t type = p == Precision::FP32 ? CUDNN_DATA_FLOAT : p == Precision::FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
        cudnnHandle_t h = env.ctx().cudnn();
        CudnnConv c;
        EFFNET_CUDNN_CHECK(cudnnCreateTensorDescriptor(&c.x));
        EFFNET_CUDNN_CHECK(cudnnCreateTensorDescriptor(&c.y));
        EFFNET_CUDNN_CHECK(cudnnCreateFilterDescriptor(&c.w));
        EFFNET_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c.conv));
        EFFNET_CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.x, CUDNN_TENSOR_NHWC, type, N, d.c, d.h, d.w));
        EFFNET_CUDNN_CHECK(cudnnSetFilter4dDescriptor(c.w, type, CUDNN_TENSOR_NHWC, d.c, 1, d.k, d.k));
        // cuDNN's legacy API has symmetric padding only: the torchvision presets are symmetric.
        EFFNET_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c.conv, d.pad, d.pad, d.s, d.s, 1, 1, CUDNN_CROSS_CORRELATION,
                                                           CUDNN_DATA_FLOAT));
        EFFNET_CUDNN_CHECK(cudnnSetConvolutionGroupCount(c.conv, d.c));
        EFFNET_CUDNN_CHECK(cudnnSetConvolutionMathType(c.conv, CUDNN_DEFAULT_MATH));
        int on, oc, oh, ow;
        EFFNET_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(c.conv, c.x, c.w, &on, &oc, &oh, &ow));
        EFFNET_CHECK(oh == d.ho && ow == d.wo, "cuDNN output size differs from ours for " + std::to_string(d.h));
        EFFNET_CUDNN_CHECK(cudnnSetTensor4dDescriptor(c.y, CUDNN_TENSOR_NHWC, type, N, d.c, d.ho, d.wo));
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * d.h * d.w * d.c * es, "cudnn input");
        cuda::DeviceBuffer y(size_t(N) * d.ho * d.wo * d.c * es, "cudnn output");
        cuda::DeviceBuffer wgt = filled_buffer(size_t(d.k) * d.k * d.c * es, "cudnn weight");
        cudnnConvolutionFwdAlgoPerf_t perf[8];
        int returned = 0;
        EFFNET_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, c.x, c.w, c.conv, c.y, 8, &returned, perf));
        int best = -1;
        for (int i = 0; i < returned; ++i)
            if (perf[i].status == CUDNN_STATUS_SUCCESS) { best = i; break; }
        EFFNET_CHECK(best >= 0, "cuDNN found no algorithm");
        const cudnnConvolutionFwdAlgo_t algo = perf[best].algo;
        const size_t ws_bytes = perf[best].memory;
        void* ws = ws_bytes ? env.ctx().workspace(ws_bytes) : nullptr;
        const float alpha = 1.0f, beta = 0.0f;
        const double total = env.time_launches(state, [&](cudaStream_t) {
            EFFNET_CUDNN_CHECK(cudnnConvolutionForward(h, &alpha, c.x, x.data(), c.w, wgt.data(), c.conv, algo, ws, ws_bytes,
                                                       &beta, c.y, y.data()));
        });
        set_counters(state, env, depthwise_bytes(d, N, es), depthwise_flops(d, N), total, false);
        state.SetLabel("algo " + std::to_string(int(algo)));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_depthwise_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    for (const DepthwiseShape& d : shapes.depthwise) {
        const std::string base = shape_name(shapes, d);
        benchmark::RegisterBenchmark((base + "/ours_" + prec).c_str(),
                                     [&env, d](benchmark::State& st) { bench_ours(st, env, d); })
            ->UseManualTime()->Iterations(env.options().iterations)->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark((base + "/cudnn_" + prec).c_str(),
                                     [&env, d](benchmark::State& st) { bench_cudnn(st, env, d); })
            ->UseManualTime()->Iterations(env.options().iterations)->Unit(benchmark::kMicrosecond);
    }
}

} // namespace effnet::bench
