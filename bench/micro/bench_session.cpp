// The whole forward (InferenceSession, CUDA graph replay, device pointers) at the preset's
// resolution: end-to-end time per batch and images per second, fused vs unfused.
#include <string>

#include "bench/micro/bench_env.hpp"
#include "effnet/model.hpp"

namespace effnet::bench {
namespace {

void bench_session(benchmark::State& state, BenchEnv& env, std::string model_name, bool fused) {
    try {
        const int N = env.options().batch;
        const Model model = random_model(preset(model_name), 1);
        const int res = model.config.resolution;
        SessionOptions opt;
        opt.fused_mbconv = fused;
        InferenceSession session(model, N, res, res, env.options().precision, opt);
        cuda::DeviceBuffer input = filled_buffer(size_t(N) * 3 * res * res * 4, "session input");
        cuda::DeviceBuffer logits(size_t(N) * model.config.num_classes * 4, "session logits");
        // The session has its own stream: run on it, then order the timing stream after it.
        cudaEvent_t done = nullptr;
        EFFNET_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
        const double total = env.time_launches(state, [&](cudaStream_t s) {
            EFFNET_CUDA_CHECK(cudaEventRecord(done, s)); // session work starts after the L2 flush
            EFFNET_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(session.stream()), done, 0));
            session.run(input.as<float>(), logits.as<float>(), true);
            EFFNET_CUDA_CHECK(cudaEventRecord(done, static_cast<cudaStream_t>(session.stream())));
            EFFNET_CUDA_CHECK(cudaStreamWaitEvent(s, done, 0));
        });
        cudaEventDestroy(done);
        const double per_batch = total / double(state.iterations());
        state.counters["img/s"] = double(N) / per_batch;
        state.counters["arena_MB"] = double(session.activation_arena_bytes()) / 1e6;
        state.counters["peak_MB"] = double(session.peak_device_memory()) / 1e6;
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

} // namespace

void register_session_benchmarks(BenchEnv& env, const std::string& model_name) {
    const std::string prec = precision_name(env.options().precision);
    for (bool fused : {false, true}) {
        const std::string name = "network/" + model_name + "/batch" + std::to_string(env.options().batch) +
                                 "/" + (fused ? "fused_" : "unfused_") + prec;
        register_timed(env, name, [&env, model_name, fused](benchmark::State& st) {
            bench_session(st, env, model_name, fused);
        });
    }
}

} // namespace effnet::bench
