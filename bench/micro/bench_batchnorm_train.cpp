// Training-mode batch norm and the standalone activation passes on the shapes the training step
// runs them: the BN after each unique depthwise (rows = N*Ho*Wo, C = expanded channels) and the
// head's BN. Our statistics + apply against cuDNN's training batch norm (NHWC spatial
// persistent mode, which computes the same statistics and normalisation, without the fused
// SiLU), and our backward against cuDNN's backward.
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "bench/micro/bench_env.hpp"
#include "kernels/activation.cuh"
#include "kernels/batchnorm.cuh"

namespace effnet::bench {
namespace {

struct BnShape {
    int64_t pixels; // H*W per image
    int c;
};

std::vector<BnShape> bn_shapes(const ModelShapes& m) {
    std::vector<BnShape> out;
    std::set<std::pair<int64_t, int>> seen;
    for (const DepthwiseShape& d : m.depthwise)
        if (seen.insert({int64_t(d.ho) * d.wo, d.c}).second) out.push_back({int64_t(d.ho) * d.wo, d.c});
    const DepthwiseShape& last = m.depthwise.back();
    if (seen.insert({int64_t(last.ho) * last.wo, m.config.head_channels}).second)
        out.push_back({int64_t(last.ho) * last.wo, m.config.head_channels});
    return out;
}

// Per-element traffic and arithmetic of each pass over x [rows, C] (es bytes an element); the
// [C] float32 vectors and the partial sums are negligible and not counted.
//   stats:    x read once; Welford: about 4 FLOPs an element (delta, mean update, M2 update).
//   apply:    x read, y written; 2 FLOPs (x * scale + shift) + 4 for SiLU (exp, add, divide, and
//             the negation), 6 an element.
//   backward: pass 1 reads x and dy (dbeta, dgamma), pass 2 reads x and dy again and writes dx;
//             recomputing SiLU' (about 8) twice plus the sums and dx (about 8): ~24 an element.
double stats_bytes(double elems, size_t es) {
    return elems * double(es);
}
double apply_bytes(double elems, size_t es) {
    return 2.0 * elems * double(es);
}
double backward_bytes(double elems, size_t es) {
    return 5.0 * elems * double(es);
}
// Activation: forward x read, y written (4 FLOPs for SiLU); backward x and dy read, dx written
// (about 8 FLOPs for SiLU').
double act_forward_bytes(double elems, size_t es) {
    return 2.0 * elems * double(es);
}
double act_backward_bytes(double elems, size_t es) {
    return 3.0 * elems * double(es);
}

// Device buffers of one batch-norm layer.
struct BnBuffers {
    cuda::DeviceBuffer x, y, dy, dx, gamma, beta, mean, invstd, run_mean, run_var, dgamma, dbeta, workspace;
    BnBuffers(int64_t rows, int c, size_t es) {
        const size_t act = size_t(rows) * c * es, vec = size_t(c) * 4;
        x = filled_buffer(act, "bn x");
        y = cuda::DeviceBuffer(act, "bn y");
        dy = filled_buffer(act, "bn dy");
        dx = cuda::DeviceBuffer(act, "bn dx");
        gamma = filled_buffer(vec, "bn gamma");
        beta = filled_buffer(vec, "bn beta");
        mean = filled_buffer(vec, "bn mean");
        invstd = filled_buffer(vec, "bn invstd");
        run_mean = filled_buffer(vec, "bn running mean");
        run_var = filled_buffer(vec, "bn running var");
        dgamma = cuda::DeviceBuffer(vec, "bn dgamma");
        dbeta = cuda::DeviceBuffer(vec, "bn dbeta");
        workspace = cuda::DeviceBuffer(kernels::batchnorm_workspace_floats(rows, c) * 4, "bn workspace");
    }
};

enum class BnPass { Stats, Apply, Backward, ActForward, ActBackward };

void bench_ours(benchmark::State& state, BenchEnv& env, BnShape t, BnPass pass) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        const int64_t rows = int64_t(N) * t.pixels;
        const double elems = double(rows) * t.c;
        BnBuffers b(rows, t.c, es);
        kernels::BatchNormStatsArgs sa;
        sa.x = b.x.data();
        sa.rows = rows;
        sa.channels = t.c;
        sa.running_mean = b.run_mean.as<float>();
        sa.running_var = b.run_var.as<float>();
        sa.save_mean = b.mean.as<float>();
        sa.save_invstd = b.invstd.as<float>();
        sa.workspace = b.workspace.as<float>();
        kernels::BatchNormApplyArgs aa;
        aa.x = b.x.data();
        aa.mean = b.mean.as<float>();
        aa.invstd = b.invstd.as<float>();
        aa.gamma = b.gamma.as<float>();
        aa.beta = b.beta.as<float>();
        aa.y = b.y.data();
        aa.rows = rows;
        aa.channels = t.c;
        aa.act = kernels::Act::SiLU;
        kernels::BatchNormBackwardArgs ba;
        ba.x = b.x.data();
        ba.dy = b.dy.data();
        ba.mean = b.mean.as<float>();
        ba.invstd = b.invstd.as<float>();
        ba.gamma = b.gamma.as<float>();
        ba.beta = b.beta.as<float>();
        ba.act = kernels::Act::SiLU;
        ba.dgamma = b.dgamma.as<float>();
        ba.dbeta = b.dbeta.as<float>();
        ba.dx = b.dx.data();
        ba.rows = rows;
        ba.channels = t.c;
        ba.workspace = b.workspace.as<float>();
        double bytes = 0.0, flops = 0.0;
        std::function<void(cudaStream_t)> launch;
        switch (pass) {
        case BnPass::Stats:
            launch = [&](cudaStream_t s) { kernels::launch_batchnorm_stats(sa, p, s); };
            bytes = stats_bytes(elems, es), flops = 4.0 * elems;
            break;
        case BnPass::Apply:
            launch = [&](cudaStream_t s) { kernels::launch_batchnorm_apply(aa, p, s); };
            bytes = apply_bytes(elems, es), flops = 6.0 * elems;
            break;
        case BnPass::Backward:
            launch = [&](cudaStream_t s) { kernels::launch_batchnorm_backward(ba, p, s); };
            bytes = backward_bytes(elems, es), flops = 24.0 * elems;
            break;
        case BnPass::ActForward:
            launch = [&](cudaStream_t s) {
                kernels::launch_activation_forward(b.x.data(), b.y.data(), rows * t.c, kernels::Act::SiLU, p,
                                                   s);
            };
            bytes = act_forward_bytes(elems, es), flops = 4.0 * elems;
            break;
        case BnPass::ActBackward:
            launch = [&](cudaStream_t s) {
                kernels::launch_activation_backward(b.x.data(), b.dy.data(), b.dx.data(), rows * t.c,
                                                    kernels::Act::SiLU, p, s);
            };
            bytes = act_backward_bytes(elems, es), flops = 8.0 * elems;
            break;
        }
        const double total = env.time_launches(state, launch);
        set_counters(state, env, bytes, flops, total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

// RAII for cuDNN's batch-norm descriptors.
struct CudnnBn {
    cudnnTensorDescriptor_t x = nullptr, param = nullptr;
    ~CudnnBn() {
        if (x) cudnnDestroyTensorDescriptor(x);
        if (param) cudnnDestroyTensorDescriptor(param);
    }
};

// cuDNN's training batch norm: forward (statistics + normalise, no activation: in our terms
// stats + apply) or backward (no activation). Bytes as ours: forward 3 passes' worth (x read
// for the statistics, x read and y written), backward as ours.
void bench_cudnn(benchmark::State& state, BenchEnv& env, BnShape t, bool backward) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        const cudnnDataType_t type = p == Precision::FP32   ? CUDNN_DATA_FLOAT
                                     : p == Precision::FP16 ? CUDNN_DATA_HALF
                                                            : CUDNN_DATA_BFLOAT16;
        const int64_t rows = int64_t(N) * t.pixels;
        const double elems = double(rows) * t.c;
        BnBuffers b(rows, t.c, es);
        cudnnHandle_t h = env.cudnn();
        CudnnBn d;
        EFFNET_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.x));
        EFFNET_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d.param));
        // [N, C, 1, pixels] in NHWC: the same memory as our [rows, C].
        EFFNET_CUDNN_CHECK(
            cudnnSetTensor4dDescriptor(d.x, CUDNN_TENSOR_NHWC, type, N, t.c, 1, int(t.pixels)));
        const cudnnBatchNormMode_t mode = CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
        EFFNET_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(d.param, d.x, mode));
        const float one = 1.0f, zero = 0.0f;
        const double eps = 1e-5;
        std::function<void(cudaStream_t)> launch;
        if (!backward)
            launch = [&](cudaStream_t) {
                EFFNET_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
                    h, mode, &one, &zero, d.x, b.x.data(), d.x, b.y.data(), d.param, b.gamma.data(),
                    b.beta.data(), 0.1, b.run_mean.data(), b.run_var.data(), eps, b.mean.data(),
                    b.invstd.data()));
            };
        else
            launch = [&](cudaStream_t) {
                EFFNET_CUDNN_CHECK(cudnnBatchNormalizationBackward(
                    h, mode, &one, &zero, &one, &zero, d.x, b.x.data(), d.x, b.dy.data(), d.x, b.dx.data(),
                    d.param, b.gamma.data(), b.dgamma.data(), b.dbeta.data(), eps, b.mean.data(),
                    b.invstd.data()));
            };
        const double total = env.time_launches(state, launch);
        if (!backward)
            set_counters(state, env, stats_bytes(elems, es) + apply_bytes(elems, es), 6.0 * elems, total,
                         false);
        else
            set_counters(state, env, backward_bytes(elems, es), 16.0 * elems, total, false);
        state.SetLabel("no activation");
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_batchnorm_train_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    for (const BnShape& t : bn_shapes(shapes)) {
        const std::string shape =
            shapes.model + "/HW" + std::to_string(t.pixels) + "_C" + std::to_string(t.c);
        register_timed(env, "bn_stats/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_ours(st, env, t, BnPass::Stats); });
        register_timed(env, "bn_apply_silu/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_ours(st, env, t, BnPass::Apply); });
        register_timed(env, "bn_forward/" + shape + "/cudnn_" + prec,
                       [&env, t](benchmark::State& st) { bench_cudnn(st, env, t, false); });
        register_timed(env, "bn_backward_silu/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_ours(st, env, t, BnPass::Backward); });
        register_timed(env, "bn_backward/" + shape + "/cudnn_" + prec,
                       [&env, t](benchmark::State& st) { bench_cudnn(st, env, t, true); });
        register_timed(env, "silu_forward/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_ours(st, env, t, BnPass::ActForward); });
        register_timed(env, "silu_backward/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_ours(st, env, t, BnPass::ActBackward); });
    }
}

} // namespace effnet::bench
