// The network tail on each model's head shape: global average pool, the classifier (our small
// float32 GEMM against cuBLASLt's float32 GEMM of the same Y[N, M] = X[N, K] W[M, K]^T, bias not
// added by cuBLASLt), the training dropout mask multiply and the fused softmax cross-entropy
// forward + backward.
#include <string>

#include "bench/micro/bench_env.hpp"
#include "kernels/cross_entropy.cuh"
#include "kernels/dropout.cuh"
#include "kernels/pool_classifier.cuh"

namespace effnet::bench {
namespace {

struct TailShape {
    int hw, c, classes; // head output pixels and channels, classifier outputs
};

TailShape tail_shape(const ModelConfig& cfg) {
    int h = conv_output_size(cfg.resolution, 3, 2, cfg.padding);
    for (const BlockConfig& b : cfg.blocks) h = conv_output_size(h, b.kernel, b.stride, cfg.padding);
    return {h * h, cfg.head_channels, cfg.num_classes};
}

// Pool: the head output [N, HW, C] read once, [N, C] float32 written. FLOPs: one add an element.
double pool_bytes(const TailShape& t, int n, size_t es) {
    return double(n) * t.hw * t.c * es + double(n) * t.c * 4;
}
double pool_flops(const TailShape& t, int n) {
    return double(n) * t.hw * t.c;
}
// Classifier: features [N, K], weight [M, K], bias [M] read, logits [N, M] written, all float32.
// FLOPs: 2*N*K*M (multiply-adds).
double linear_bytes(const TailShape& t, int n, bool bias) {
    return (double(n) * t.c + double(t.classes) * t.c + (bias ? t.classes : 0) + double(n) * t.classes) * 4;
}
double linear_flops(const TailShape& t, int n) {
    return 2.0 * n * double(t.c) * t.classes;
}
// Dropout: x and mask read, out written, float32 [N, C]. FLOPs: one multiply an element.
double dropout_bytes(const TailShape& t, int n) {
    return 3.0 * n * t.c * 4;
}
// Cross-entropy: logits read, dlogits written (float32 [N, M]), targets and losses negligible.
// FLOPs, about 5 an element: max, exp, sum, the log-sum-exp difference and the gradient.
double cross_entropy_bytes(const TailShape& t, int n) {
    return 2.0 * n * t.classes * 4;
}
double cross_entropy_flops(const TailShape& t, int n) {
    return 5.0 * n * t.classes;
}

void bench_pool(benchmark::State& state, BenchEnv& env, TailShape t) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * t.hw * t.c * es, "pool input");
        cuda::DeviceBuffer y(size_t(N) * t.c * 4, "pool output");
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            kernels::launch_global_avg_pool(x.data(), y.as<float>(), N, t.hw, t.c, p, s);
        });
        set_counters(state, env, pool_bytes(t, N, es), pool_flops(t, N), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bench_linear(benchmark::State& state, BenchEnv& env, TailShape t) {
    try {
        const int N = env.options().batch;
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * t.c * 4, "classifier input");
        cuda::DeviceBuffer w = filled_buffer(size_t(t.classes) * t.c * 4, "classifier weight");
        cuda::DeviceBuffer b = filled_buffer(size_t(t.classes) * 4, "classifier bias");
        cuda::DeviceBuffer y(size_t(N) * t.classes * 4, "classifier output");
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            kernels::launch_linear(x.as<float>(), w.as<float>(), b.as<float>(), y.as<float>(), N, t.c,
                                   t.classes, s);
        });
        set_counters(state, env, linear_bytes(t, N, true), linear_flops(t, N), total, true);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

// RAII for the cuBLASLt descriptors of one benchmark.
struct LtGemm {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~LtGemm() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (la) cublasLtMatrixLayoutDestroy(la);
        if (lb) cublasLtMatrixLayoutDestroy(lb);
        if (lc) cublasLtMatrixLayoutDestroy(lc);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

void bench_linear_cublaslt(benchmark::State& state, BenchEnv& env, TailShape t) {
    try {
        const int N = env.options().batch;
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * t.c * 4, "lt classifier input");
        cuda::DeviceBuffer w = filled_buffer(size_t(t.classes) * t.c * 4, "lt classifier weight");
        cuda::DeviceBuffer y(size_t(N) * t.classes * 4, "lt classifier output");
        LtGemm g;
        // Row-major Y[N, M] = X[N, K] W[M, K]^T is column-major Y^T[M, N] = op(W) X^T, W stored as
        // a K x M column-major matrix (transposed by op) and X as K x N. float32 compute, TF32 off
        // (CUBLAS_COMPUTE_32F): the arithmetic ours does.
        EFFNET_CUBLAS_CHECK(cublasLtMatmulDescCreate(&g.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
        EFFNET_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
        EFFNET_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
        EFFNET_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&g.la, CUDA_R_32F, uint64_t(t.c), uint64_t(t.classes), t.c));
        EFFNET_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g.lb, CUDA_R_32F, uint64_t(t.c), uint64_t(N), t.c));
        EFFNET_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&g.lc, CUDA_R_32F, uint64_t(t.classes), uint64_t(N), t.classes));
        const size_t ws_bytes = 32 << 20;
        void* ws = env.ctx().workspace(ws_bytes);
        EFFNET_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&g.pref));
        EFFNET_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
            g.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
        cublasLtMatmulHeuristicResult_t heur{};
        int found = 0;
        EFFNET_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(env.ctx().cublaslt(), g.op, g.la, g.lb, g.lc, g.lc,
                                                           g.pref, 1, &heur, &found));
        EFFNET_CHECK(found > 0, "cuBLASLt found no algorithm for the classifier");
        const float alpha = 1.0f, beta = 0.0f;
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            EFFNET_CUBLAS_CHECK(cublasLtMatmul(env.ctx().cublaslt(), g.op, &alpha, w.data(), g.la, x.data(),
                                               g.lb, &beta, y.data(), g.lc, y.data(), g.lc, &heur.algo, ws,
                                               ws_bytes, s));
        });
        set_counters(state, env, linear_bytes(t, N, false), linear_flops(t, N), total, true);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bench_dropout(benchmark::State& state, BenchEnv& env, TailShape t) {
    try {
        const int N = env.options().batch;
        const int64_t n = int64_t(N) * t.c;
        cuda::DeviceBuffer x = filled_buffer(size_t(n) * 4, "dropout input");
        cuda::DeviceBuffer mask = filled_buffer(size_t(n) * 4, "dropout mask");
        cuda::DeviceBuffer y(size_t(n) * 4, "dropout output");
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            kernels::launch_mask_multiply_f32(x.as<float>(), mask.as<float>(), y.as<float>(), n, s);
        });
        set_counters(state, env, dropout_bytes(t, N), double(n), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bench_cross_entropy(benchmark::State& state, BenchEnv& env, TailShape t) {
    try {
        const int N = env.options().batch;
        cuda::DeviceBuffer logits = filled_buffer(size_t(N) * t.classes * 4, "ce logits");
        cuda::DeviceBuffer targets(size_t(N) * 4, "ce targets");
        EFFNET_CUDA_CHECK(cudaMemset(targets.data(), 0, targets.size())); // class 0: in range
        cuda::DeviceBuffer loss(size_t(N) * 4, "ce loss");
        cuda::DeviceBuffer dlogits(size_t(N) * t.classes * 4, "ce dlogits");
        kernels::CrossEntropyArgs a;
        a.logits = logits.as<float>();
        a.targets = targets.as<int32_t>();
        a.sample_loss = loss.as<float>();
        a.dlogits = dlogits.as<float>();
        a.batch = N;
        a.classes = t.classes;
        a.label_smoothing = 0.1f;
        const double total =
            env.time_launches(state, [&](cudaStream_t s) { kernels::launch_cross_entropy(a, s); });
        set_counters(state, env, cross_entropy_bytes(t, N), cross_entropy_flops(t, N), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_pool_classifier_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    const TailShape t = tail_shape(shapes.config);
    const std::string pool =
        "global_avg_pool/" + shapes.model + "/HW" + std::to_string(t.hw) + "_C" + std::to_string(t.c);
    const std::string fc =
        "classifier/" + shapes.model + "/K" + std::to_string(t.c) + "_M" + std::to_string(t.classes);
    register_timed(env, pool + "/ours_" + prec, [&env, t](benchmark::State& st) { bench_pool(st, env, t); });
    // The classifier, dropout and cross-entropy are float32 whatever the storage precision; named
    // with the run's precision so that they land on that run's chart (its compute ceiling is that
    // precision's, an upper bound for float32 work).
    register_timed(env, fc + "/ours_" + prec, [&env, t](benchmark::State& st) { bench_linear(st, env, t); });
    register_timed(env, fc + "/cublaslt_" + prec,
                   [&env, t](benchmark::State& st) { bench_linear_cublaslt(st, env, t); });
    register_timed(env, "dropout/" + shapes.model + "/C" + std::to_string(t.c) + "/ours_" + prec,
                   [&env, t](benchmark::State& st) { bench_dropout(st, env, t); });
    register_timed(env, "cross_entropy/" + shapes.model + "/M" + std::to_string(t.classes) + "/ours_" + prec,
                   [&env, t](benchmark::State& st) { bench_cross_entropy(st, env, t); });
}

} // namespace effnet::bench
