#pragma once
// Shared state of one microbenchmark run: the CUDA context, the cuDNN handle of the baselines
// (cuDNN is linked into the microbenchmarks only, not into the library), an L2-flush buffer, the
// device's measured ceilings (device-to-device copy bandwidth, cuBLASLt large-GEMM rate), the
// run's options, and the timing loop (CUDA events around each launch, L2 flushed before each).
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <functional>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/inference.hpp"
#include "libeffnet/cuda/context.hpp"

#define EFFNET_CUDNN_CHECK(expr)                                                                             \
    do {                                                                                                     \
        const cudnnStatus_t effnet_st_ = (expr);                                                             \
        if (effnet_st_ != CUDNN_STATUS_SUCCESS)                                                              \
            throw ::effnet::Error(std::string("cuDNN error: ") + #expr + " returned " +                      \
                                  cudnnGetErrorString(effnet_st_) + " at " + __FILE__ + ":" +                \
                                  std::to_string(__LINE__));                                                 \
    } while (0)

namespace effnet::bench {

struct BenchOptions {
    int batch = 32;
    Precision precision = Precision::FP16;
    int iterations = 30; // timed launches per benchmark
};

class BenchEnv {
public:
    explicit BenchEnv(const BenchOptions& options);
    ~BenchEnv();
    BenchEnv(const BenchEnv&) = delete;
    BenchEnv& operator=(const BenchEnv&) = delete;

    cuda::Context& ctx() { return ctx_; }
    cudaStream_t stream() const { return ctx_.stream(); }
    cudnnHandle_t cudnn(); // created on first call, bound to stream()
    const BenchOptions& options() const { return options_; }
    double copy_gbps() const { return copy_gbps_; }     // read + write bytes per second / 1e9
    double gemm_tflops() const { return gemm_tflops_; } // cuBLASLt 8192^3, options.precision (fp32: TF32 off)
    std::string description() const;

    // Writes a buffer twice the L2 size, so the next launch starts with a cold cache.
    void flush_l2();
    // Times `launch` over state's iterations (one warm-up launch first); returns total seconds.
    double time_launches(benchmark::State& state, const std::function<void(cudaStream_t)>& launch);

private:
    void measure_copy_bandwidth();
    void measure_gemm_rate();
    BenchOptions options_;
    cuda::Context ctx_;
    cudnnHandle_t cudnn_ = nullptr;
    cuda::DeviceBuffer flush_;
    cudaEvent_t start_ = nullptr, stop_ = nullptr;
    double copy_gbps_ = 0.0, gemm_tflops_ = 0.0;
};

// Registers a benchmark timed by time_launches: manual time, the run's iteration count, in
// microseconds.
void register_timed(BenchEnv& env, const std::string& name, std::function<void(benchmark::State&)> fn);

// Bytes, FLOPs and the rates derived from the measured total time, with the run's ceilings
// (ceiling_GB/s, ceiling_TFLOP/s) on every benchmark; TFLOP/s always, tc_frac for matrix ops.
void set_counters(benchmark::State& state, const BenchEnv& env, double bytes, double flops,
                  double total_seconds, bool matrix_op);

// The descriptors of one cuDNN forward convolution of a baseline, created together and
// destroyed with it; the benchmark sets them.
struct CudnnConvDescriptors {
    CudnnConvDescriptors();
    ~CudnnConvDescriptors();
    CudnnConvDescriptors(const CudnnConvDescriptors&) = delete;
    CudnnConvDescriptors& operator=(const CudnnConvDescriptors&) = delete;
    cudnnTensorDescriptor_t x = nullptr, y = nullptr;
    cudnnFilterDescriptor_t w = nullptr;
    cudnnConvolutionDescriptor_t conv = nullptr;

private:
    void destroy();
};

// Times cuDNN's fastest successful algorithm for c (cudnnFindConvolutionForwardAlgorithm) on
// x, w -> y as time_launches does; returns the total seconds and the algorithm in `algo`.
double time_cudnn_forward(benchmark::State& state, BenchEnv& env, const CudnnConvDescriptors& c,
                          const void* x, const void* w, void* y, cudnnConvolutionFwdAlgo_t& algo);

// A device buffer filled with 0x3C bytes (about 1.06 in fp16, 0.0115 in fp32, 0.0115 in bf16):
// finite, non-zero data.
cuda::DeviceBuffer filled_buffer(size_t bytes, const char* what);

// Layer shapes of a preset at its native resolution.
struct DepthwiseShape {
    int h, w, c, k, s, ho, wo, pad;
    bool se;
};
struct GemmShape {
    std::string role; // expand | project | head
    int64_t m;
    int k, n, rows_per_image;
    bool gate, residual, act;
};
struct FusedShape {
    int h, w, cin, ce, k, s, ho, wo, pad;
    bool se;
};
struct ModelShapes {
    std::string model;
    ModelConfig config;
    std::vector<DepthwiseShape> depthwise; // unique shapes, network order
    std::vector<GemmShape> gemms;
    std::vector<FusedShape> fused;
};
ModelShapes model_shapes(const std::string& preset_name, int batch);

void register_depthwise_benchmarks(BenchEnv& env, const ModelShapes& shapes);
void register_pointwise_benchmarks(BenchEnv& env, const ModelShapes& shapes);
void register_fused_benchmarks(BenchEnv& env, const ModelShapes& shapes);
void register_session_benchmarks(BenchEnv& env, const std::string& model_name);
// The kernels outside the MBConv main path, on the listed models' shapes (bench_stem.cpp,
// bench_excite.cpp, bench_pool_classifier.cpp, bench_batchnorm_train.cpp, bench_optimizers.cpp).
void register_stem_benchmarks(BenchEnv& env, const ModelShapes& shapes);
void register_excite_benchmarks(BenchEnv& env, const ModelShapes& shapes);
void register_pool_classifier_benchmarks(BenchEnv& env, const ModelShapes& shapes);
void register_batchnorm_train_benchmarks(BenchEnv& env, const ModelShapes& shapes);
void register_optimizer_benchmarks(BenchEnv& env, const ModelShapes& shapes);

} // namespace effnet::bench
