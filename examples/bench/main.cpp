// effnet-bench: end-to-end inference throughput and latency of one InferenceSession.
//
//   effnet-bench --variant b0 --batch 256 [--resolution R] [--precision fp16] [--iters N]
//                [--warmup N] [--seed S] [--fused|--unfused] [--no-graph] [--tf32] [--json]
//                [--gemm auto|handwritten|cublaslt] [--no-autotune] [--profile FILE]
//
// Protocol (the same as bench/pytorch_bench.py, so that the two can be compared):
//   random NCHW float32 input already on the device (never zeros), `warmup` untimed runs, then
//   `iters` runs each timed alone with CUDA events on the session's stream (the host waits for
//   each one); images/s = batch / median time. A second figure times `iters` runs issued back to
//   back between one pair of events (pipelined throughput, launch gaps hidden).
// Memory: the session's own accounting (weights + arena + workspaces, and the activation arena)
// and the drop in free device memory seen by cudaMemGetInfo while the session was built.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "effnet/config.hpp"
#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"

#ifdef EFFNET_WITH_CUDA
#include <chrono>
#include <cuda_runtime.h>
#endif

namespace {

struct Args {
    std::string variant = "b0";
    int batch = 1;
    int resolution = 0; // 0: the preset's native resolution
    std::string precision = "fp16";
    int iters = 30;
    int warmup = 5;
    uint64_t seed = 1;
    bool fused = effnet::SessionOptions{}.fused_mbconv; // the library default (unfused today)
    bool graph = true;
    bool tf32 = false;
    bool json = false;
    std::string gemm = "auto";
    bool autotune = true;
    std::string profile; // CSV of per-step times, written after the timed runs
};

const char* kUsage =
    "usage: effnet-bench --variant b0 --batch 256 [--resolution R] [--precision fp32|fp16|bf16]\n"
    "                    [--iters N] [--warmup N] [--seed S] [--fused|--unfused] [--no-graph]\n"
    "                    [--tf32] [--json] [--gemm auto|handwritten|cublaslt] [--no-autotune]\n"
    "                    [--profile FILE]\n"
    "Times InferenceSession::run on random device input: median images/s, latency p50/p90/p99,\n"
    "device memory. --json prints one JSON object per line. --gemm picks the 1x1 convolutions'\n"
    "GEMM (auto: the fastest per layer, timed when the session is built). --no-autotune: no\n"
    "timing at build, fixed defaults (hand-written GEMMs, register-strip depthwise). --profile\n"
    "FILE writes each step's mean time (eager, an event between steps) as CSV: step,kernel,ms.\n";

// Returns false when --help was asked for.
bool parse_args(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        std::string opt = argv[i];
        auto value = [&]() -> std::string {
            EFFNET_CHECK(i + 1 < argc, opt + " needs a value");
            return argv[++i];
        };
        if (opt == "-h" || opt == "--help")
            return false;
        else if (opt == "--variant")
            a.variant = value();
        else if (opt == "--batch")
            a.batch = int(effnet::examples::parse_int_option(opt.substr(2), value(), 1, 65536));
        else if (opt == "--resolution")
            a.resolution = int(effnet::examples::parse_int_option(opt.substr(2), value(), 32, 4096));
        else if (opt == "--precision")
            a.precision = value();
        else if (opt == "--iters")
            a.iters = int(effnet::examples::parse_int_option(opt.substr(2), value(), 1, 1000000));
        else if (opt == "--warmup")
            a.warmup = int(effnet::examples::parse_int_option(opt.substr(2), value(), 0, 1000000));
        else if (opt == "--seed")
            a.seed = uint64_t(effnet::examples::parse_int_option(opt.substr(2), value(), 0, INT64_MAX));
        else if (opt == "--unfused")
            a.fused = false;
        else if (opt == "--fused")
            a.fused = true;
        else if (opt == "--no-graph")
            a.graph = false;
        else if (opt == "--tf32")
            a.tf32 = true;
        else if (opt == "--json")
            a.json = true;
        else if (opt == "--no-autotune")
            a.autotune = false;
        else if (opt == "--gemm")
            a.gemm = value();
        else if (opt == "--profile")
            a.profile = value();
        else
            throw effnet::Error("unknown option '" + opt + "' (see --help)");
    }
    return true;
}

#ifdef EFFNET_WITH_CUDA

void cuda_check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw effnet::Error(std::string(what) + ": " + cudaGetErrorString(status));
}
#define CUDA_CHECK(call) cuda_check((call), #call)

// Owns one device allocation.
struct DeviceBuffer {
    void* ptr = nullptr;
    explicit DeviceBuffer(size_t bytes) { CUDA_CHECK(cudaMalloc(&ptr, bytes)); }
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    float* f() const { return static_cast<float*>(ptr); }
};

struct Event {
    cudaEvent_t e = nullptr;
    Event() { CUDA_CHECK(cudaEventCreate(&e)); }
    ~Event() {
        if (e) cudaEventDestroy(e);
    }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
};

// Nearest-rank percentile of sorted values, p in [0, 100].
double percentile(const std::vector<double>& sorted, double p) {
    size_t rank = size_t(std::ceil(p / 100.0 * double(sorted.size())));
    rank = std::min(std::max<size_t>(rank, 1), sorted.size());
    return sorted[rank - 1];
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20)
            out += ' ';
        else
            out += c;
    }
    return out;
}

// Per-step times (eager, so each launch's gap is in the next step's figure) as CSV.
void write_profile(effnet::InferenceSession& session, const std::string& path) {
    const std::vector<effnet::StepProfile> steps = session.profile_steps(20);
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (!f) throw effnet::Error("--profile: cannot write '" + path + "': " + std::strerror(errno));
    std::fprintf(f, "step,kernel,ms\n");
    double total = 0.0;
    for (const effnet::StepProfile& s : steps) {
        std::fprintf(f, "%s,%s,%.6f\n", s.name.c_str(), s.kernel.c_str(), s.ms);
        total += s.ms;
    }
    const bool ok = std::fclose(f) == 0;
    if (!ok) throw effnet::Error("--profile: error writing '" + path + "'");
    std::printf("profile: %zu steps, %.3f ms eager in total, written to %s\n", steps.size(), total,
                path.c_str());
}

int run_benchmark(const Args& a) {
    if (!effnet::cuda_available()) throw effnet::Error("no usable GPU: " + effnet::cuda_device_description());
    effnet::ModelConfig config = effnet::preset(a.variant);
    const int res = a.resolution > 0 ? a.resolution : config.resolution;
    const effnet::Precision precision = effnet::parse_precision(a.precision);

    effnet::SessionOptions options;
    options.fused_mbconv = a.fused;
    options.use_cuda_graph = a.graph;
    options.allow_tf32 = a.tf32;
    options.gemm = effnet::parse_gemm_backend(a.gemm);
    options.autotune = a.autotune;

    auto t_setup = std::chrono::steady_clock::now();
    effnet::Model model = effnet::random_model(config, a.seed);
    CUDA_CHECK(cudaSetDevice(options.device));
    size_t free_before = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
    effnet::InferenceSession session(model, a.batch, res, res, precision, options);
    size_t free_after = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
    const double setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_setup).count();

    // Input: N(0,1) like a normalised image batch, [batch, 3, res, res] float32 NCHW.
    const size_t in_count = size_t(a.batch) * 3 * size_t(res) * size_t(res);
    const size_t out_count = size_t(a.batch) * size_t(session.num_classes());
    std::vector<float> host_in(in_count);
    std::mt19937_64 rng(a.seed + 1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : host_in) v = normal(rng);
    DeviceBuffer d_in(in_count * sizeof(float));
    DeviceBuffer d_out(out_count * sizeof(float));
    CUDA_CHECK(cudaMemcpy(d_in.ptr, host_in.data(), in_count * sizeof(float), cudaMemcpyHostToDevice));
    // Poison the logits (all-ones bytes are NaN) so an unwritten element shows up below.
    CUDA_CHECK(cudaMemset(d_out.ptr, 0xFF, out_count * sizeof(float)));

    cudaStream_t stream = static_cast<cudaStream_t>(session.stream());
    for (int i = 0; i < a.warmup; ++i) session.run(d_in.f(), d_out.f(), true);
    session.synchronize();
    CUDA_CHECK(cudaGetLastError());

    // Each iteration alone: the host waits, so launch latency counts as it does for one request.
    Event start, stop;
    std::vector<double> ms(size_t(a.iters));
    for (int i = 0; i < a.iters; ++i) {
        CUDA_CHECK(cudaEventRecord(start.e, stream));
        session.run(d_in.f(), d_out.f(), true);
        CUDA_CHECK(cudaEventRecord(stop.e, stream));
        CUDA_CHECK(cudaEventSynchronize(stop.e));
        float t = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&t, start.e, stop.e));
        ms[size_t(i)] = double(t);
    }
    // Back to back: the throughput a pipeline of requests sees.
    CUDA_CHECK(cudaEventRecord(start.e, stream));
    for (int i = 0; i < a.iters; ++i) session.run(d_in.f(), d_out.f(), true);
    CUDA_CHECK(cudaEventRecord(stop.e, stream));
    CUDA_CHECK(cudaEventSynchronize(stop.e));
    float pipelined_total_ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&pipelined_total_ms, start.e, stop.e));
    CUDA_CHECK(cudaGetLastError());

    if (!a.profile.empty()) write_profile(session, a.profile);

    std::vector<float> logits(out_count);
    CUDA_CHECK(cudaMemcpy(logits.data(), d_out.ptr, out_count * sizeof(float), cudaMemcpyDeviceToHost));
    size_t non_finite = 0;
    double sum_abs = 0.0;
    for (float v : logits) {
        if (!std::isfinite(v))
            ++non_finite;
        else
            sum_abs += std::fabs(double(v));
    }
    const bool output_ok = non_finite == 0 && sum_abs > 0.0;

    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    double mean = 0.0;
    for (double t : ms) mean += t;
    mean /= double(ms.size());
    const double p50 = percentile(sorted, 50), p90 = percentile(sorted, 90), p99 = percentile(sorted, 99);
    const double ips = double(a.batch) / (p50 * 1e-3);
    const double ips_pipelined = double(a.batch) * a.iters / (double(pipelined_total_ms) * 1e-3);
    const double mib = 1024.0 * 1024.0;
    const size_t peak = session.peak_device_memory();
    const size_t arena = session.activation_arena_bytes();
    const long long mem_delta = (long long)free_before - (long long)free_after;

    if (a.json) {
        std::printf("{\"tool\":\"effnet-bench\",\"variant\":\"%s\",\"resolution\":%d,\"batch\":%d,"
                    "\"precision\":\"%s\",\"gemm\":\"%s\",\"autotune\":%s,\"fused\":%s,\"graph\":%s,\"tf32\":"
                    "%s,\"iters\":%d,"
                    "\"warmup\":%d,"
                    "\"ms_p50\":%.6f,\"ms_p90\":%.6f,\"ms_p99\":%.6f,\"ms_mean\":%.6f,\"ms_min\":%.6f,"
                    "\"images_per_s\":%.3f,\"images_per_s_pipelined\":%.3f,"
                    "\"peak_device_memory_bytes\":%zu,\"activation_arena_bytes\":%zu,"
                    "\"device_memory_delta_bytes\":%lld,\"output_ok\":%s,\"non_finite_logits\":%zu,"
                    "\"setup_s\":%.3f,\"device\":\"%s\"}\n",
                    config.name.c_str(), res, a.batch, effnet::precision_name(precision), a.gemm.c_str(),
                    a.autotune ? "true" : "false", a.fused ? "true" : "false", a.graph ? "true" : "false",
                    a.tf32 ? "true" : "false", a.iters, a.warmup, p50, p90, p99, mean, sorted.front(), ips,
                    ips_pipelined, peak, arena, mem_delta, output_ok ? "true" : "false", non_finite, setup_s,
                    json_escape(effnet::cuda_device_description()).c_str());
    }
    std::printf("effnet-bench %s %dx%d batch %d %s%s%s%s: %.1f img/s (pipelined %.1f), "
                "p50 %.3f ms p90 %.3f ms p99 %.3f ms, peak %.1f MiB (activations %.1f MiB, "
                "cudaMemGetInfo delta %.1f MiB), setup %.1f s%s\n",
                config.name.c_str(), res, res, a.batch, effnet::precision_name(precision),
                a.fused ? "" : " unfused", a.graph ? "" : " no-graph", a.tf32 ? " tf32" : "", ips,
                ips_pipelined, p50, p90, p99, double(peak) / mib, double(arena) / mib,
                double(mem_delta) / mib, setup_s,
                output_ok ? "" : " [WARNING: non-finite or all-zero logits]");
    std::fflush(stdout);
    if (!output_ok) {
        std::fprintf(stderr, "error: %zu of %zu logits are not finite (or all are zero)\n", non_finite,
                     out_count);
        return 2;
    }
    return 0;
}

#endif // EFFNET_WITH_CUDA

} // namespace

int main(int argc, char** argv) {
    try {
        Args args;
        if (!parse_args(argc, argv, args)) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        // Validate names before anything touches the GPU: both throw effnet::Error.
        effnet::preset(args.variant);
        const effnet::Precision precision = effnet::parse_precision(args.precision);
        EFFNET_CHECK(!args.tf32 || precision == effnet::Precision::FP32,
                     "--tf32 applies to --precision fp32 only");
        effnet::parse_gemm_backend(args.gemm);
#ifdef EFFNET_WITH_CUDA
        return run_benchmark(args);
#else
        std::fprintf(stderr, "error: built without CUDA\n");
        return 1;
#endif
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
