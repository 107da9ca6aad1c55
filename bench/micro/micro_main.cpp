// effnet_microbench: one Google Benchmark per kernel over real EfficientNet layer shapes,
// reported against the device's measured ceilings and against cuDNN / cuBLASLt.
//   effnet_microbench [--batch=32] [--precision=fp16|bf16|fp32] [--iterations=30]
//                     [--models=b0,b4,b7] [benchmark flags, e.g. --benchmark_filter=depthwise]
// Depthwise, stem, excite, pool + classifier, batch-norm training, optimizers: the models listed
// (default B0, B4, B7); GEMMs and fused expand+dw: B0 only;
// whole network (session, graph replay): B0 and B4 at their resolutions.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/micro/bench_env.hpp"

namespace {

bool take_flag(const char* arg, const char* name, std::string& value) {
    const size_t n = std::strlen(name);
    if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
    value = arg + n + 1;
    return true;
}

} // namespace

int main(int argc, char** argv) {
    try {
        effnet::bench::BenchOptions options;
        std::vector<std::string> models = {"b0", "b4", "b7"};
        std::vector<char*> rest = {argv[0]};
        for (int i = 1; i < argc; ++i) {
            std::string v;
            if (take_flag(argv[i], "--batch", v))
                options.batch = std::stoi(v);
            else if (take_flag(argv[i], "--precision", v))
                options.precision = effnet::parse_precision(v);
            else if (take_flag(argv[i], "--iterations", v))
                options.iterations = std::stoi(v);
            else if (take_flag(argv[i], "--models", v)) {
                models.clear();
                std::stringstream ss(v);
                for (std::string m; std::getline(ss, m, ',');) models.push_back(m);
            } else
                rest.push_back(argv[i]);
        }
        if (options.batch < 1 || options.iterations < 1)
            throw effnet::Error("--batch and --iterations must be >= 1");
        if (models.empty()) throw effnet::Error("--models lists no model");
        int rest_argc = int(rest.size());
        benchmark::Initialize(&rest_argc, rest.data());
        if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 1;
        if (!effnet::cuda_available()) {
            std::fprintf(stderr, "error: no GPU: %s\n", effnet::cuda_device_description().c_str());
            return 1;
        }
        auto env = std::make_unique<effnet::bench::BenchEnv>(options);
        benchmark::AddCustomContext("device", effnet::cuda_device_description());
        benchmark::AddCustomContext("ceilings", env->description());
        std::printf("device: %s\nceilings: %s\n", effnet::cuda_device_description().c_str(),
                    env->description().c_str());

        std::vector<effnet::bench::ModelShapes> shapes;
        for (const std::string& m : models) shapes.push_back(effnet::bench::model_shapes(m, options.batch));
        for (const auto& s : shapes) {
            effnet::bench::register_depthwise_benchmarks(*env, s);
            effnet::bench::register_stem_benchmarks(*env, s);
            effnet::bench::register_excite_benchmarks(*env, s);
            effnet::bench::register_pool_classifier_benchmarks(*env, s);
            effnet::bench::register_batchnorm_train_benchmarks(*env, s);
            effnet::bench::register_optimizer_benchmarks(*env, s);
        }
        const effnet::bench::ModelShapes b0 = effnet::bench::model_shapes("b0", options.batch);
        effnet::bench::register_pointwise_benchmarks(*env, b0);
        effnet::bench::register_fused_benchmarks(*env, b0);
        effnet::bench::register_session_benchmarks(*env, "b0");
        effnet::bench::register_session_benchmarks(*env, "b4");
        benchmark::RunSpecifiedBenchmarks();
        benchmark::Shutdown();
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
