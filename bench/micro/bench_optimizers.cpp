// The optimizer updates over every parameter of the model as one flat float32 buffer (as the
// trainer runs them: one launch for all tensors): AdamW, SGD with momentum, RMSProp. Pure
// streaming kernels, so bytes/s against the copy bandwidth is the figure that matters.
#include <string>

#include "bench/micro/bench_env.hpp"
#include "kernels/adamw.cuh"
#include "kernels/rmsprop.cuh"
#include "kernels/sgd.cuh"

namespace effnet::bench {
namespace {

enum class Optimizer { AdamW, Sgd, RmsProp };

// Float32 arrays streamed per parameter, and the arithmetic per parameter (counted as the
// double-precision operations the kernels do, rounded to whole operations):
//   AdamW:   reads p, g, m, v; writes p, m, v (7 arrays); ~14 FLOPs (scale, decay, 2 moments,
//            2 corrections, sqrt, add eps, divide, update).
//   SGD:     reads p, g, buf; writes p, buf (5 arrays); ~6 FLOPs (scale, decay, momentum, update).
//   RMSProp: reads p, g, ms, mom; writes p, ms, mom (7 arrays); ~11 FLOPs.
double optimizer_bytes(Optimizer o, int64_t n) {
    const int arrays = o == Optimizer::Sgd ? 5 : 7;
    return double(arrays) * double(n) * 4.0;
}
double optimizer_flops(Optimizer o, int64_t n) {
    const double per = o == Optimizer::AdamW ? 14.0 : o == Optimizer::Sgd ? 6.0 : 11.0;
    return per * double(n);
}

void bench_optimizer(benchmark::State& state, BenchEnv& env, int64_t n, Optimizer o) {
    try {
        cuda::DeviceBuffer param = filled_buffer(size_t(n) * 4, "optimizer params");
        cuda::DeviceBuffer grad = filled_buffer(size_t(n) * 4, "optimizer grads");
        cuda::DeviceBuffer s1 = filled_buffer(size_t(n) * 4, "optimizer state 1");
        cuda::DeviceBuffer s2 = filled_buffer(size_t(n) * 4, "optimizer state 2");
        std::function<void(cudaStream_t)> launch;
        kernels::AdamWArgs adam;
        kernels::SgdArgs sgd;
        kernels::RmsPropArgs rms;
        switch (o) {
        case Optimizer::AdamW:
            adam.param = param.as<float>();
            adam.grad = grad.as<float>();
            adam.exp_avg = s1.as<float>();
            adam.exp_avg_sq = s2.as<float>();
            adam.count = n;
            adam.lr = 1e-3;
            adam.weight_decay = 1e-2;
            adam.step = 10;
            launch = [&](cudaStream_t s) { kernels::launch_adamw_update(adam, s); };
            break;
        case Optimizer::Sgd:
            sgd.param = param.as<float>();
            sgd.grad = grad.as<float>();
            sgd.momentum_buffer = s1.as<float>();
            sgd.count = n;
            sgd.lr = 0.1;
            sgd.momentum = 0.9;
            sgd.weight_decay = 1e-5;
            launch = [&](cudaStream_t s) { kernels::launch_sgd_update(sgd, s); };
            break;
        case Optimizer::RmsProp:
            rms.param = param.as<float>();
            rms.grad = grad.as<float>();
            rms.mean_square = s1.as<float>();
            rms.momentum_buffer = s2.as<float>();
            rms.count = n;
            rms.lr = 0.016;
            rms.weight_decay = 1e-5;
            launch = [&](cudaStream_t s) { kernels::launch_rmsprop_update(rms, s); };
            break;
        }
        const double total = env.time_launches(state, launch);
        set_counters(state, env, optimizer_bytes(o, n), optimizer_flops(o, n), total, false);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_optimizer_benchmarks(BenchEnv& env, const ModelShapes& shapes) {
    const std::string prec = precision_name(env.options().precision);
    const int64_t n = parameter_count(shapes.config);
    const struct {
        const char* name;
        Optimizer o;
    } kinds[] = {{"adamw", Optimizer::AdamW}, {"sgd", Optimizer::Sgd}, {"rmsprop", Optimizer::RmsProp}};
    for (const auto& k : kinds) {
        const Optimizer o = k.o;
        // float32 master weights whatever the storage precision; named with the run's precision
        // so that they land on that run's chart.
        register_timed(env,
                       std::string(k.name) + "/" + shapes.model + "/P" + std::to_string(n) + "/ours_" + prec,
                       [&env, n, o](benchmark::State& st) { bench_optimizer(st, env, n, o); });
    }
}

} // namespace effnet::bench
