#include "bench/micro/bench_env.hpp"

#include <cstdio>
#include <set>
#include <utility>

namespace effnet::bench {

BenchEnv::BenchEnv(const BenchOptions& options) : options_(options), ctx_(0) {
    flush_ =
        cuda::DeviceBuffer(size_t(std::max(ctx_.properties().l2CacheSize, 1 << 20)) * 2, "L2 flush buffer");
    EFFNET_CUDA_CHECK(cudaEventCreate(&start_));
    EFFNET_CUDA_CHECK(cudaEventCreate(&stop_));
    measure_copy_bandwidth();
    measure_gemm_rate();
}

BenchEnv::~BenchEnv() {
    if (cudnn_) cudnnDestroy(cudnn_);
    if (start_) cudaEventDestroy(start_);
    if (stop_) cudaEventDestroy(stop_);
}

cudnnHandle_t BenchEnv::cudnn() {
    if (!cudnn_) {
        ctx_.activate();
        EFFNET_CUDNN_CHECK(cudnnCreate(&cudnn_));
        EFFNET_CUDNN_CHECK(cudnnSetStream(cudnn_, ctx_.stream()));
    }
    return cudnn_;
}

std::string BenchEnv::description() const {
    char line[256];
    std::snprintf(line, sizeof(line),
                  "D2D copy %.0f GB/s (read+write), cuBLASLt 8192^3 %s %.1f TFLOP/s, batch %d", copy_gbps_,
                  precision_name(options_.precision), gemm_tflops_, options_.batch);
    return line;
}

void BenchEnv::flush_l2() {
    EFFNET_CUDA_CHECK(cudaMemsetAsync(flush_.data(), 0, flush_.size(), stream()));
}

double BenchEnv::time_launches(benchmark::State& state, const std::function<void(cudaStream_t)>& launch) {
    launch(stream()); // warm-up: module loading, first-touch
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream()));
    double total = 0.0;
    for (auto _ : state) {
        flush_l2();
        EFFNET_CUDA_CHECK(cudaEventRecord(start_, stream()));
        launch(stream());
        EFFNET_CUDA_CHECK(cudaEventRecord(stop_, stream()));
        EFFNET_CUDA_CHECK(cudaEventSynchronize(stop_));
        float ms = 0.0f;
        EFFNET_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
        state.SetIterationTime(double(ms) * 1e-3);
        total += double(ms) * 1e-3;
    }
    return total;
}

void BenchEnv::measure_copy_bandwidth() {
    const size_t bytes = size_t(1) << 30;
    cuda::DeviceBuffer a(bytes, "copy source"), b(bytes, "copy destination");
    EFFNET_CUDA_CHECK(cudaMemsetAsync(a.data(), 1, bytes, stream()));
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream()));
    const int reps = 5;
    EFFNET_CUDA_CHECK(cudaEventRecord(start_, stream()));
    for (int i = 0; i < reps; ++i)
        EFFNET_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream()));
    EFFNET_CUDA_CHECK(cudaEventRecord(stop_, stream()));
    EFFNET_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    EFFNET_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    copy_gbps_ = 2.0 * double(bytes) * reps / (double(ms) * 1e-3) / 1e9;
}

void BenchEnv::measure_gemm_rate() {
    const int n = 8192;
    const Precision p = options_.precision;
    const cudaDataType_t type = p == Precision::FP32   ? CUDA_R_32F
                                : p == Precision::FP16 ? CUDA_R_16F
                                                       : CUDA_R_16BF;
    const size_t es = p == Precision::FP32 ? 4 : 2;
    cuda::DeviceBuffer a = filled_buffer(size_t(n) * n * es, "gemm A"),
                       b = filled_buffer(size_t(n) * n * es, "gemm B"), c(size_t(n) * n * es, "gemm C");
    cublasLtHandle_t lt = ctx_.cublaslt();
    const size_t ws_bytes = 64 << 20;
    void* ws = ctx_.workspace(ws_bytes);
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    EFFNET_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    EFFNET_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, type, n, n, n));
    EFFNET_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, type, n, n, n));
    EFFNET_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, type, n, n, n));
    EFFNET_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    EFFNET_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &ws_bytes, sizeof(ws_bytes)));
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    EFFNET_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &heur, &found));
    EFFNET_CHECK(found > 0, "cuBLASLt found no algorithm for the 8192^3 reference GEMM");
    const float alpha = 1.0f, beta = 0.0f;
    auto run = [&] {
        EFFNET_CUBLAS_CHECK(cublasLtMatmul(lt, op, &alpha, a.data(), la, b.data(), lb, &beta, c.data(), lc,
                                           c.data(), lc, &heur.algo, ws, ws_bytes, stream()));
    };
    run();
    const int reps = 5;
    EFFNET_CUDA_CHECK(cudaEventRecord(start_, stream()));
    for (int i = 0; i < reps; ++i) run();
    EFFNET_CUDA_CHECK(cudaEventRecord(stop_, stream()));
    EFFNET_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    EFFNET_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    gemm_tflops_ = 2.0 * double(n) * n * n * reps / (double(ms) * 1e-3) / 1e12;
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
}

void set_counters(benchmark::State& state, const BenchEnv& env, double bytes, double flops,
                  double total_seconds, bool matrix_op) {
    const double iters = double(state.iterations());
    if (iters <= 0 || total_seconds <= 0) return;
    const double per_launch = total_seconds / iters;
    const double gbps = bytes / per_launch / 1e9;
    state.counters["bytes"] = bytes;
    state.counters["FLOPs"] = flops;
    state.counters["GB/s"] = gbps;
    state.counters["bw_frac"] = gbps / env.copy_gbps();
    // The run's ceilings on every benchmark, so that bench/roofline.py needs nothing but the JSON.
    state.counters["ceiling_GB/s"] = env.copy_gbps();
    state.counters["ceiling_TFLOP/s"] = env.gemm_tflops();
    const double tflops = flops / per_launch / 1e12;
    state.counters["TFLOP/s"] = tflops;
    if (matrix_op) state.counters["tc_frac"] = tflops / env.gemm_tflops();
}

void register_timed(BenchEnv& env, const std::string& name, std::function<void(benchmark::State&)> fn) {
    benchmark::RegisterBenchmark(name.c_str(), [fn = std::move(fn)](benchmark::State& st) { fn(st); })
        ->UseManualTime()
        ->Iterations(env.options().iterations)
        ->Unit(benchmark::kMicrosecond);
}

CudnnConvDescriptors::CudnnConvDescriptors() {
    try {
        EFFNET_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
        EFFNET_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
        EFFNET_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
        EFFNET_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    } catch (...) {
        destroy();
        throw;
    }
}

CudnnConvDescriptors::~CudnnConvDescriptors() {
    destroy();
}

void CudnnConvDescriptors::destroy() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    x = y = nullptr;
    w = nullptr;
    conv = nullptr;
}

double time_cudnn_forward(benchmark::State& state, BenchEnv& env, const CudnnConvDescriptors& c,
                          const void* x, const void* w, void* y, cudnnConvolutionFwdAlgo_t& algo) {
    cudnnHandle_t h = env.cudnn();
    cudnnConvolutionFwdAlgoPerf_t perf[8];
    int returned = 0;
    EFFNET_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, c.x, c.w, c.conv, c.y, 8, &returned, perf));
    int best = -1;
    for (int i = 0; i < returned && best < 0; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS) best = i;
    EFFNET_CHECK(best >= 0, "cuDNN found no algorithm");
    algo = perf[best].algo;
    const size_t ws_bytes = perf[best].memory;
    void* ws = ws_bytes ? env.ctx().workspace(ws_bytes) : nullptr;
    const float alpha = 1.0f, beta = 0.0f;
    return env.time_launches(state, [&](cudaStream_t) {
        EFFNET_CUDNN_CHECK(
            cudnnConvolutionForward(h, &alpha, c.x, x, c.w, w, c.conv, algo, ws, ws_bytes, &beta, c.y, y));
    });
}

cuda::DeviceBuffer filled_buffer(size_t bytes, const char* what) {
    cuda::DeviceBuffer b(bytes, what);
    EFFNET_CUDA_CHECK(cudaMemset(b.data(), 0x3C, bytes));
    return b;
}

ModelShapes model_shapes(const std::string& preset_name, int batch) {
    ModelShapes s;
    s.model = preset_name;
    s.config = preset(preset_name);
    const ModelConfig& cfg = s.config;
    const int res = cfg.resolution;
    int h = conv_output_size(res, 3, 2, cfg.padding), w = h;
    std::set<std::string> seen_dw, seen_gemm, seen_fused;
    auto add_gemm = [&](const GemmShape& g) {
        const std::string key = g.role + std::to_string(g.m) + "/" + std::to_string(g.k) + "/" +
                                std::to_string(g.n) + (g.gate ? "g" : "") + (g.residual ? "r" : "");
        if (seen_gemm.insert(key).second) s.gemms.push_back(g);
    };
    for (const BlockConfig& b : cfg.blocks) {
        const int ho = conv_output_size(h, b.kernel, b.stride, cfg.padding);
        const int wo = conv_output_size(w, b.kernel, b.stride, cfg.padding);
        int pt, pb;
        conv_padding(h, b.kernel, b.stride, cfg.padding, pt, pb);
        if (b.has_expand()) {
            add_gemm({"expand", int64_t(batch) * h * w, b.in_channels, b.expand_channels, h * w, false, false,
                      true});
            const std::string fk = std::to_string(h) + "/" + std::to_string(b.in_channels) + "/" +
                                   std::to_string(b.expand_channels) + "/" + std::to_string(b.kernel) +
                                   std::to_string(b.stride);
            if (seen_fused.insert(fk).second)
                s.fused.push_back(
                    {h, w, b.in_channels, b.expand_channels, b.kernel, b.stride, ho, wo, pt, b.has_se()});
        }
        const std::string dk = std::to_string(h) + "/" + std::to_string(b.expand_channels) + "/" +
                               std::to_string(b.kernel) + std::to_string(b.stride);
        if (seen_dw.insert(dk).second)
            s.depthwise.push_back({h, w, b.expand_channels, b.kernel, b.stride, ho, wo, pt, b.has_se()});
        add_gemm({"project", int64_t(batch) * ho * wo, b.expand_channels, b.out_channels, ho * wo, b.has_se(),
                  b.has_residual(), false});
        h = ho;
        w = wo;
    }
    add_gemm({"head", int64_t(batch) * h * w, cfg.blocks.back().out_channels, cfg.head_channels, h * w, false,
              false, true});
    return s;
}

} // namespace effnet::bench
