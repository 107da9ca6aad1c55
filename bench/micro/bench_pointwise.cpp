// 1x1 convolutions as GEMMs over B0's real shapes: our tensor-core kernel (the tile the engine
// picks, then each tile forced, to check the choice) and our SIMT kernel (bias + act / gate /
// residual fused, as the engine runs them) against cuBLASLt doing the bare GEMM
// Y[M, N] = X[M, K] W[N, K]^T (no epilogue: the comparison favours cuBLASLt).
#include <string>

#include "bench/micro/bench_env.hpp"
#include "kernels/pointwise_conv.cuh"
#include "kernels/pointwise_conv_tc.cuh"

namespace effnet::bench {
namespace {

std::string shape_name(const ModelShapes& m, const GemmShape& g) {
    return "gemm/" + m.model + "/" + g.role + "/M" + std::to_string(g.m) + "_K" + std::to_string(g.k) + "_N" +
           std::to_string(g.n) + (g.gate ? "_gate" : "") + (g.residual ? "_res" : "");
}

double gemm_bytes(const GemmShape& g, size_t es) {
    return double(g.m) * (g.k + g.n * (g.residual ? 2 : 1)) * double(es) + double(g.n) * g.k * double(es);
}
double gemm_flops(const GemmShape& g) {
    return 2.0 * double(g.m) * g.k * g.n;
}

// tile < 0: the launcher's own choice (GemmKernel `which`); else that PointwiseTile forced.
void bench_ours(benchmark::State& state, BenchEnv& env, GemmShape g, kernels::GemmKernel which,
                int tile = -1) {
    try {
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        const int images = int(g.m / g.rows_per_image);
        cuda::DeviceBuffer x = filled_buffer(size_t(g.m) * g.k * es, "gemm input");
        cuda::DeviceBuffer w = filled_buffer(size_t(g.n) * g.k * es, "gemm weight");
        cuda::DeviceBuffer bias = filled_buffer(size_t(g.n) * 4, "gemm bias");
        cuda::DeviceBuffer gate = filled_buffer(size_t(images) * g.k * 4, "gemm gate");
        cuda::DeviceBuffer res = filled_buffer(size_t(g.m) * g.n * es, "gemm residual");
        cuda::DeviceBuffer y(size_t(g.m) * g.n * es, "gemm output");
        kernels::PointwiseArgs a;
        a.input = x.data();
        a.weight = w.data();
        a.bias = bias.as<float>();
        a.gate = g.gate ? gate.as<float>() : nullptr;
        a.residual = g.residual ? res.data() : nullptr;
        a.output = y.data();
        a.rows = g.m;
        a.out_channels = g.n;
        a.in_channels = g.k;
        a.rows_per_image = g.rows_per_image;
        a.act = g.act ? kernels::Act::SiLU : kernels::Act::None;
        if (which == kernels::GemmKernel::TensorCore && !kernels::pointwise_tensor_core_eligible(a, p)) {
            state.SkipWithError("tensor-core kernel not eligible (fp32 or K/N not multiples of 8)");
            return;
        }
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            if (tile < 0)
                kernels::launch_pointwise_conv(a, p, which, s);
            else
                kernels::launch_pointwise_mma(a, p, kernels::PointwiseTile(tile), s);
        });
        set_counters(state, env, gemm_bytes(g, es), gemm_flops(g), total, true);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bench_cublaslt(benchmark::State& state, BenchEnv& env, GemmShape g) {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    try {
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        const cudaDataType_t type = p == Precision::FP32   ? CUDA_R_32F
                                    : p == Precision::FP16 ? CUDA_R_16F
                                                           : CUDA_R_16BF;
        cuda::DeviceBuffer x = filled_buffer(size_t(g.m) * g.k * es, "lt input");
        cuda::DeviceBuffer w = filled_buffer(size_t(g.n) * g.k * es, "lt weight");
        cuda::DeviceBuffer y(size_t(g.m) * g.n * es, "lt output");
        // Row-major Y[M,N] = X[M,K] W[N,K]^T is column-major Y^T[N,M] = op(W) X^T with
        // W stored as a K x N column-major matrix (transposed by op) and X as K x M.
        EFFNET_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
        EFFNET_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
        EFFNET_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
        EFFNET_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&la, type, uint64_t(g.k), uint64_t(g.n), int64_t(g.k)));
        EFFNET_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&lb, type, uint64_t(g.k), uint64_t(g.m), int64_t(g.k)));
        EFFNET_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&lc, type, uint64_t(g.n), uint64_t(g.m), int64_t(g.n)));
        const size_t ws_bytes = 32 << 20;
        void* ws = env.ctx().workspace(ws_bytes);
        EFFNET_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        EFFNET_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
        cublasLtMatmulHeuristicResult_t heur{};
        int found = 0;
        EFFNET_CUBLAS_CHECK(
            cublasLtMatmulAlgoGetHeuristic(env.ctx().cublaslt(), op, la, lb, lc, lc, pref, 1, &heur, &found));
        EFFNET_CHECK(found > 0, "cuBLASLt found no algorithm");
        const float alpha = 1.0f, beta = 0.0f;
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            EFFNET_CUBLAS_CHECK(cublasLtMatmul(env.ctx().cublaslt(), op, &alpha, w.data(), la, x.data(), lb,
                                               &beta, y.data(), lc, y.data(), lc, &heur.algo, ws, ws_bytes,
                                               s));
        });
        GemmShape bare = g;
        bare.residual = false;
        set_counters(state, env, gemm_bytes(bare, es), gemm_flops(g), total, true);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (op) cublasLtMatmulDescDestroy(op);
}

} // namespace

void register_pointwise_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    for (const GemmShape& g : shapes.gemms) {
        const std::string base = shape_name(shapes, g);
        if (env.options().precision != Precision::FP32)
            register_timed(env, base + "/ours_tc_" + prec, [&env, g](benchmark::State& st) {
                bench_ours(st, env, g, kernels::GemmKernel::TensorCore);
            });
        if (env.options().precision != Precision::FP32) {
            const char* tiles[] = {"128x32", "128x64", "64x64", "32x64"}; // PointwiseTile order
            for (int t = 0; t < 4; ++t)
                register_timed(env, base + "/ours_tile" + tiles[t] + "_" + prec,
                               [&env, g, t](benchmark::State& st) {
                                   bench_ours(st, env, g, kernels::GemmKernel::TensorCore, t);
                               });
        }
        register_timed(env, base + "/ours_simt_" + prec, [&env, g](benchmark::State& st) {
            bench_ours(st, env, g, kernels::GemmKernel::Simt);
        });
        register_timed(env, base + "/cublaslt_" + prec,
                       [&env, g](benchmark::State& st) { bench_cublaslt(st, env, g); });
    }
}

} // namespace effnet::bench
