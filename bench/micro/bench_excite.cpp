// Squeeze-excite outside the depthwise kernel, on every unique SE shape of the model (HW, C, S
// after the block's depthwise): the inference excite (two tiny GEMVs per image), the channel
// gate pass that precedes a vendor GEMM, and the training forward and backward.
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "bench/micro/bench_env.hpp"
#include "kernels/channel_gate.cuh"
#include "kernels/squeeze_excite.cuh"
#include "kernels/squeeze_excite_train.cuh"

namespace effnet::bench {
namespace {

struct SeShape {
    int hw, c, s; // pixels after the depthwise, channels, bottleneck
};

std::vector<SeShape> se_shapes(const ModelConfig& cfg) {
    std::vector<SeShape> out;
    std::set<std::tuple<int, int, int>> seen;
    int h = conv_output_size(cfg.resolution, 3, 2, cfg.padding);
    for (const BlockConfig& b : cfg.blocks) {
        h = conv_output_size(h, b.kernel, b.stride, cfg.padding);
        if (b.has_se() && seen.insert({h * h, b.expand_channels, b.se_channels}).second)
            out.push_back({h * h, b.expand_channels, b.se_channels});
    }
    return out;
}

// Excite: reads the pooled sums [N, C] and zeroes them (write), writes the gate [N, C], reads
// both weights [S, C] and biases once (float32). FLOPs: two GEMVs per image, 2*S*C each.
double excite_bytes(const SeShape& t, int n) {
    return 3.0 * n * t.c * 4 + (2.0 * t.s * t.c + t.s + t.c) * 4;
}
double excite_flops(const SeShape& t, int n) {
    return 4.0 * n * t.s * t.c;
}
// Channel gate in place: the activation read and written once, the gate [N, C] read once.
// FLOPs: one multiply an element.
double gate_bytes(const SeShape& t, int n, size_t es) {
    return 2.0 * n * t.hw * t.c * es + double(n) * t.c * 4;
}
double gate_flops(const SeShape& t, int n) {
    return double(n) * t.hw * t.c;
}
// Training forward: x read twice (the spatial mean, then x * gate), y written once; the saved
// [N, C] / [N, S] tensors are negligible and not counted. FLOPs: an add and a multiply an
// element, plus the two GEMVs.
double train_forward_bytes(const SeShape& t, int n, size_t es) {
    return 3.0 * n * t.hw * t.c * es;
}
double train_forward_flops(const SeShape& t, int n) {
    return 2.0 * n * t.hw * t.c + excite_flops(t, n);
}
// Training backward: dy and x read for dgate = sum dy * x, dy read again and dx written for
// dx = dy * gate + dsqueezed / HW. FLOPs: 2 (dgate) + 2 (dx) an element, plus 4 GEMV-sized
// products (dW2, dreduced, dW1, dsqueezed) of 2*S*C per image.
double train_backward_bytes(const SeShape& t, int n, size_t es) {
    return 4.0 * n * t.hw * t.c * es;
}
double train_backward_flops(const SeShape& t, int n) {
    return 4.0 * n * t.hw * t.c + 8.0 * n * t.s * t.c;
}

void bench_excite(benchmark::State& state, BenchEnv& env, SeShape t) {
    try {
        const int N = env.options().batch;
        cuda::DeviceBuffer pooled = filled_buffer(size_t(N) * t.c * 4, "excite pooled");
        cuda::DeviceBuffer w1 = filled_buffer(size_t(t.s) * t.c * 4, "excite w1");
        cuda::DeviceBuffer b1 = filled_buffer(size_t(t.s) * 4, "excite b1");
        cuda::DeviceBuffer w2t = filled_buffer(size_t(t.s) * t.c * 4, "excite w2t");
        cuda::DeviceBuffer b2 = filled_buffer(size_t(t.c) * 4, "excite b2");
        cuda::DeviceBuffer gate(size_t(N) * t.c * 4, "excite gate");
        kernels::ExciteArgs a;
        a.pooled_sum = pooled.as<float>();
        a.inv_count = 1.0f / float(t.hw);
        a.w_reduce = w1.as<float>();
        a.b_reduce = b1.as<float>();
        a.w_expand_t = w2t.as<float>();
        a.b_expand = b2.as<float>();
        a.gate = gate.as<float>();
        a.batch = N;
        a.channels = t.c;
        a.reduced = t.s;
        a.act = kernels::Act::SiLU;
        // The excite zeroes the sums it reads: later launches see zeros, the same work.
        const double total = env.time_launches(state, [&](cudaStream_t s) { kernels::launch_excite(a, s); });
        set_counters(state, env, excite_bytes(t, N), excite_flops(t, N), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bench_channel_gate(benchmark::State& state, BenchEnv& env, SeShape t) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        cuda::DeviceBuffer x = filled_buffer(size_t(N) * t.hw * t.c * es, "gate activations");
        cuda::DeviceBuffer gate = filled_buffer(size_t(N) * t.c * 4, "gate values");
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            kernels::launch_channel_gate(x.data(), gate.as<float>(), int64_t(N) * t.hw, t.c, t.hw, p, s);
        });
        set_counters(state, env, gate_bytes(t, N, es), gate_flops(t, N), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

// Device buffers of one training-mode squeeze-excite: activations and every saved tensor.
struct SeTrainBuffers {
    cuda::DeviceBuffer x, y, dx, w1, b1, w2, b2, squeezed, reduced_pre, reduced_out, gate;
    cuda::DeviceBuffer dw1, db1, dw2, db2, workspace;
    kernels::SqueezeExciteTrainArgs args;
    SeTrainBuffers(const SeShape& t, int n, size_t es) {
        const size_t act = size_t(n) * t.hw * t.c * es;
        x = filled_buffer(act, "se x");
        y = filled_buffer(act, "se y / dy");
        dx = cuda::DeviceBuffer(act, "se dx");
        w1 = filled_buffer(size_t(t.s) * t.c * 4, "se w1");
        b1 = filled_buffer(size_t(t.s) * 4, "se b1");
        w2 = filled_buffer(size_t(t.c) * t.s * 4, "se w2");
        b2 = filled_buffer(size_t(t.c) * 4, "se b2");
        squeezed = filled_buffer(size_t(n) * t.c * 4, "se squeezed");
        reduced_pre = filled_buffer(size_t(n) * t.s * 4, "se reduced_pre");
        reduced_out = filled_buffer(size_t(n) * t.s * 4, "se reduced_out");
        gate = filled_buffer(size_t(n) * t.c * 4, "se gate");
        dw1 = cuda::DeviceBuffer(size_t(t.s) * t.c * 4, "se dw1");
        db1 = cuda::DeviceBuffer(size_t(t.s) * 4, "se db1");
        dw2 = cuda::DeviceBuffer(size_t(t.c) * t.s * 4, "se dw2");
        db2 = cuda::DeviceBuffer(size_t(t.c) * 4, "se db2");
        workspace =
            cuda::DeviceBuffer(kernels::squeeze_excite_workspace_floats(n, t.c, t.s) * 4, "se workspace");
        args.batch = n;
        args.hw = t.hw;
        args.channels = t.c;
        args.reduced = t.s;
        args.act = kernels::Act::SiLU;
        args.x = x.data();
        args.w1 = w1.as<float>();
        args.b1 = b1.as<float>();
        args.w2 = w2.as<float>();
        args.b2 = b2.as<float>();
        args.squeezed = squeezed.as<float>();
        args.reduced_pre = reduced_pre.as<float>();
        args.reduced_out = reduced_out.as<float>();
        args.gate = gate.as<float>();
    }
};

void bench_train(benchmark::State& state, BenchEnv& env, SeShape t, bool backward) {
    try {
        const int N = env.options().batch;
        const Precision p = env.options().precision;
        const size_t es = kernels::storage_size(p);
        SeTrainBuffers b(t, N, es);
        double total = 0.0;
        if (!backward) {
            total = env.time_launches(state, [&](cudaStream_t s) {
                kernels::launch_squeeze_excite_train_forward(b.args, b.y.data(), p, s);
            });
            set_counters(state, env, train_forward_bytes(t, N, es), train_forward_flops(t, N), total, false);
        } else {
            total = env.time_launches(state, [&](cudaStream_t s) {
                kernels::launch_squeeze_excite_backward(b.args, b.y.data(), b.dx.data(), b.dw1.as<float>(),
                                                        b.db1.as<float>(), b.dw2.as<float>(),
                                                        b.db2.as<float>(), b.workspace.as<float>(), p, s);
            });
            set_counters(state, env, train_backward_bytes(t, N, es), train_backward_flops(t, N), total,
                         false);
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_excite_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    for (const SeShape& t : se_shapes(shapes.config)) {
        const std::string shape = shapes.model + "/HW" + std::to_string(t.hw) + "_C" + std::to_string(t.c) +
                                  "_S" + std::to_string(t.s);
        // The excite is float32 whatever the storage precision; named with the run's precision
        // so that it lands on that run's chart.
        register_timed(env, "excite/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_excite(st, env, t); });
        register_timed(env, "channel_gate/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_channel_gate(st, env, t); });
        register_timed(env, "se_train_forward/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_train(st, env, t, false); });
        register_timed(env, "se_train_backward/" + shape + "/ours_" + prec,
                       [&env, t](benchmark::State& st) { bench_train(st, env, t, true); });
    }
}

} // namespace effnet::bench
