// effnet-bench: end-to-end inference throughput and latency of one InferenceSession (CUDA) or
// one CpuSession (--device cpu).
//
//   effnet-bench --variant b0 --batch 256 [--resolution R] [--precision fp16] [--iters N]
//                [--warmup N] [--seed S] [--fused|--unfused] [--no-graph] [--tf32] [--json]
//                [--gemm auto|handwritten|cublaslt] [--no-autotune] [--cudnn off|auto|force]
//                [--fused-tc] [--profile FILE]
//   effnet-bench --device cpu [--weights FILE | --variant b0] [--batch N] [--resolution R]
//                [--threads T] [--isa auto|portable|avx2|avx512] [--cpu-path fast|reference]
//                [--iters N] [--warmup N] [--rounds R] [--seed S] [--json] [--profile FILE]
//
// CUDA protocol (the same as bench/pytorch_bench.py, so that the two can be compared):
//   random NCHW float32 input already on the device (never zeros), `warmup` untimed runs, then
//   `iters` runs each timed alone with CUDA events on the session's stream (the host waits for
//   each one); images/s = batch / median time. A second figure times `iters` runs issued back to
//   back between one pair of events (pipelined throughput, launch gaps hidden).
// Memory: the session's own accounting (weights + arena + workspaces, and the activation arena)
// and the drop in free device memory seen by cudaMemGetInfo while the session was built.
//
// CPU protocol (bench/cpu_compare.py runs the other engines the same way): random N(0,1) NCHW
//   float32 input (or --input FILE), `warmup` untimed runs, then `rounds` rounds of `iters`
//   back-to-back runs, each round timed with steady_clock; ms per batch = the median round's
//   time / iters, images/s = batch / that. --cpu-path reference times effnet::cpu::Network (the
//   OpenMP reference engine) instead of CpuSession.
#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/openmp_policy.hpp"
#include "common/args.hpp"
#include "effnet/config.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/cpu_session.hpp"
#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"

#ifdef EFFNET_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace {

struct Args {
    std::string device = "cuda";
    std::string variant = "b0";
    std::string weights; // --device cpu: a safetensors file instead of a random --variant
    int batch = 1;
    int resolution = 0; // 0: the model's native resolution
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
    std::string cudnn = "off"; // cuDNN as a per-layer candidate: off | auto | force
    bool fused_tc = false;     // the tensor-core fused expand + depthwise as a candidate
    std::string profile;       // CSV of per-step (CUDA) or per-layer (CPU) times, after the timed runs
    // --device cpu only
    int threads = 0; // 0: the session's default (the CPUs this process may run on)
    std::string isa = "auto";
    std::string cpu_path = "fast";
    int rounds = 5;
    double min_round_s = 0;     // > 0: iters chosen after the warmup so that one round takes this long
    std::string input_file;     // hidden: raw float32 NCHW [batch, 3, R, R] instead of random input
    std::string dump_logits;    // hidden: raw float32 [batch, classes] of the last run
    std::set<std::string> seen; // options given on the command line
};

const char* kUsage =
    "usage: effnet-bench --variant b0 --batch 256 [--resolution R] [--precision fp32|fp16|bf16]\n"
    "                    [--iters N] [--warmup N] [--seed S] [--fused|--unfused] [--no-graph]\n"
    "                    [--tf32] [--json] [--gemm auto|handwritten|cublaslt] [--no-autotune]\n"
    "                    [--cudnn off|auto|force] [--fused-tc] [--profile FILE]\n"
    "       effnet-bench --device cpu [--weights FILE | --variant b0] [--batch N] [--resolution R]\n"
    "                    [--threads T] [--isa auto|portable|avx2|avx512] [--cpu-path fast|reference]\n"
    "                    [--iters N | --min-round-s S] [--warmup N] [--rounds R] [--seed S] [--json]\n"
    "                    [--profile FILE] [--input FILE] [--dump-logits FILE]\n"
    "CUDA (the default --device): times InferenceSession::run on random device input: median\n"
    "images/s, latency p50/p90/p99, device memory. --json prints one JSON object per line. --gemm\n"
    "picks the 1x1 convolutions' GEMM (auto: the fastest per layer, timed when the session is\n"
    "built). --no-autotune: no timing at build, fixed defaults (hand-written GEMMs, register-strip\n"
    "depthwise). --cudnn auto: cuDNN competes for the stem and depthwise convolutions (force: used\n"
    "wherever it can run); --fused-tc: the tensor-core fused expand + depthwise competes per block\n"
    "(both off by default: not yet verified on a GPU). --profile FILE writes each step's mean time (eager, "
    "an event between steps) as\n"
    "CSV: step,kernel,ms.\n"
    "CPU: times CpuSession::run (--cpu-path fast, the default) or the reference engine\n"
    "(--cpu-path reference) on random N(0,1) input: `warmup` untimed runs, then `rounds` rounds\n"
    "(default 5) of `iters` (default 10) back-to-back runs; prints the median and minimum ms per\n"
    "batch and per image and images/s. --threads 0 (the default): every CPU this process may\n"
    "run on. --weights loads a safetensors file (torchvision/timm/lukemelas/effnet names) instead\n"
    "of a random --variant. --profile FILE (fast path) writes each layer's mean time as CSV:\n"
    "layer,kind,ms,flops,gflops_per_s. --min-round-s S: iters chosen from the warmup so that a\n"
    "round lasts S seconds. --input FILE: raw float32 NCHW [batch,3,R,R] instead of random input;\n"
    "--dump-logits FILE: the last run's logits as raw float32 [batch, classes]. Exit status 2 when\n"
    "a logit is not finite.\n";

// Options that belong to one device only (the other refuses them).
const std::vector<std::string> kCudaOnly = {"precision", "fused",       "unfused", "no-graph", "tf32",
                                            "gemm",      "no-autotune", "cudnn",   "fused-tc"};
const std::vector<std::string> kCpuOnly = {"weights", "threads",     "isa",   "cpu-path",
                                           "rounds",  "min-round-s", "input", "dump-logits"};

// Returns false when --help was asked for.
bool parse_args(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        std::string opt = argv[i];
        auto value = [&]() -> std::string {
            EFFNET_CHECK(i + 1 < argc, opt + " needs a value");
            return argv[++i];
        };
        if (opt == "-h" || opt == "--help") return false;
        if (opt.rfind("--", 0) == 0) {
            EFFNET_CHECK(a.seen.insert(opt.substr(2)).second, "option '" + opt + "' given twice");
        }
        if (opt == "--device")
            a.device = value();
        else if (opt == "--variant")
            a.variant = value();
        else if (opt == "--weights")
            a.weights = value();
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
        else if (opt == "--cudnn")
            a.cudnn = effnet::cudnn_candidate_name(effnet::parse_cudnn_candidate(value())); // refused here
        else if (opt == "--fused-tc")
            a.fused_tc = true;
        else if (opt == "--profile")
            a.profile = value();
        else if (opt == "--threads")
            a.threads = int(effnet::examples::parse_int_option(opt.substr(2), value(), 0, 1024));
        else if (opt == "--isa")
            a.isa = value();
        else if (opt == "--cpu-path")
            a.cpu_path = value();
        else if (opt == "--rounds")
            a.rounds = int(effnet::examples::parse_int_option(opt.substr(2), value(), 1, 1000000));
        else if (opt == "--min-round-s") {
            a.min_round_s = effnet::examples::parse_double_option(opt.substr(2), value());
            EFFNET_CHECK(a.min_round_s > 0 && a.min_round_s <= 600, "--min-round-s must be in (0, 600]");
        } else if (opt == "--input")
            a.input_file = value();
        else if (opt == "--dump-logits")
            a.dump_logits = value();
        else
            throw effnet::Error("unknown option '" + opt + "' (see --help)");
    }
    EFFNET_CHECK(a.device == "cuda" || a.device == "cpu",
                 "--device must be cuda or cpu, got '" + a.device + "'");
    const bool cpu = a.device == "cpu";
    for (const std::string& name : cpu ? kCudaOnly : kCpuOnly)
        EFFNET_CHECK(!a.seen.count(name),
                     "--" + name + " applies to --device " + (cpu ? "cuda" : "cpu") + " only");
    if (cpu) {
        EFFNET_CHECK(!(a.seen.count("weights") && a.seen.count("variant")),
                     "give --weights or --variant, not both");
        EFFNET_CHECK(!a.seen.count("weights") || !a.weights.empty(), "--weights needs a file name");
        EFFNET_CHECK(a.cpu_path == "fast" || a.cpu_path == "reference",
                     "--cpu-path must be fast or reference, got '" + a.cpu_path + "'");
        effnet::parse_cpu_isa(a.isa); // throws on unknown names
        if (a.cpu_path == "reference") {
            EFFNET_CHECK(a.isa == "auto", "--isa applies to --cpu-path fast only");
            EFFNET_CHECK(a.profile.empty(), "--profile applies to --cpu-path fast only");
        }
        if (!a.seen.count("iters")) a.iters = 10;
        if (!a.seen.count("warmup")) a.warmup = 3;
        EFFNET_CHECK(!(a.seen.count("min-round-s") && a.seen.count("iters")),
                     "give --iters or --min-round-s, not both");
        EFFNET_CHECK(a.min_round_s == 0 || a.warmup >= 1, "--min-round-s needs --warmup >= 1");
    }
    return true;
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

// ---- --device cpu ----------------------------------------------------------------------------

const char* layer_kind_name(effnet::LayerKind kind) {
    switch (kind) {
    case effnet::LayerKind::Stem:
        return "stem";
    case effnet::LayerKind::Expand:
        return "expand";
    case effnet::LayerKind::Depthwise:
        return "depthwise";
    case effnet::LayerKind::SqueezeExcite:
        return "squeeze_excite";
    case effnet::LayerKind::Project:
        return "project";
    case effnet::LayerKind::Head:
        return "head";
    case effnet::LayerKind::Pool:
        return "pool";
    case effnet::LayerKind::Dropout:
        return "dropout";
    case effnet::LayerKind::Classifier:
        return "classifier";
    }
    return "unknown";
}

// Multiply-adds x 2 of one image's forward (inference), from the plan's layer shapes: the
// convolutions, squeeze-excite's two small matmuls and the classifier. Pools, activations and
// elementwise work are not counted (as is usual for "0.39 GMAC" figures).
double flops_per_image(const effnet::NetworkPlan& plan) {
    double macs = 0.0;
    for (const effnet::Layer& l : plan.layers) {
        switch (l.kind) {
        case effnet::LayerKind::Stem:
        case effnet::LayerKind::Expand:
        case effnet::LayerKind::Depthwise:
        case effnet::LayerKind::Project:
        case effnet::LayerKind::Head:
            macs += double(l.out.pixels()) * l.out.channels * (double(l.in.channels) / l.conv.groups) *
                    l.conv.kernel * l.conv.kernel;
            break;
        case effnet::LayerKind::SqueezeExcite:
            macs += 2.0 * double(l.in.channels) * l.reduced_channels;
            break;
        case effnet::LayerKind::Classifier:
            macs += double(l.in.channels) * l.out.channels;
            break;
        default:
            break;
        }
    }
    return 2.0 * macs;
}

std::vector<float> read_input_file(const std::string& path, size_t count) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw effnet::Error("--input: cannot open '" + path + "': " + std::strerror(errno));
    std::vector<float> data(count);
    const size_t got = std::fread(data.data(), sizeof(float), count, f);
    const bool extra = std::fgetc(f) != EOF;
    std::fclose(f);
    EFFNET_CHECK(got == count && !extra, "--input: '" + path + "' must hold exactly " +
                                             std::to_string(count) +
                                             " float32 values (batch x 3 x resolution x resolution)");
    return data;
}

void write_raw(const std::string& path, const std::vector<float>& data) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw effnet::Error("--dump-logits: cannot write '" + path + "': " + std::strerror(errno));
    const size_t put = std::fwrite(data.data(), sizeof(float), data.size(), f);
    const bool ok = std::fclose(f) == 0 && put == data.size();
    if (!ok) throw effnet::Error("--dump-logits: error writing '" + path + "'");
}

void write_cpu_profile(effnet::CpuSession& session, const std::string& path) {
    const std::vector<effnet::CpuLayerProfile> layers = session.profile(20);
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (!f) throw effnet::Error("--profile: cannot write '" + path + "': " + std::strerror(errno));
    std::fprintf(f, "layer,kind,ms,flops,gflops_per_s\n");
    double total_ms = 0.0, total_flops = 0.0;
    for (const effnet::CpuLayerProfile& l : layers) {
        const double gflops = l.ms > 0 ? l.flops / (l.ms * 1e-3) / 1e9 : 0.0;
        std::fprintf(f, "%s,%s,%.6f,%.0f,%.3f\n", l.name.c_str(), layer_kind_name(l.kind), l.ms, l.flops,
                     gflops);
        total_ms += l.ms;
        total_flops += l.flops;
    }
    const bool ok = std::fclose(f) == 0;
    if (!ok) throw effnet::Error("--profile: error writing '" + path + "'");
    std::fprintf(stderr, "profile: %zu layers, %.3f ms per forward in total (%.2f GFLOP/s), written to %s\n",
                 layers.size(), total_ms, total_ms > 0 ? total_flops / (total_ms * 1e-3) / 1e9 : 0.0,
                 path.c_str());
}

double median_of(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int run_cpu_benchmark(const Args& a) {
    const bool fast = a.cpu_path == "fast";
    const auto t_setup = std::chrono::steady_clock::now();
    effnet::Model model = a.weights.empty() ? effnet::random_model(effnet::preset(a.variant), a.seed)
                                            : effnet::load_weights(a.weights);
    const int res = a.resolution > 0 ? a.resolution : model.config.resolution;
    const effnet::NetworkPlan plan = effnet::make_network_plan(model.config, a.batch, res, res);
    const int classes = model.config.num_classes;

    std::unique_ptr<effnet::CpuSession> session;
    std::unique_ptr<effnet::cpu::Network> network;
    std::string isa = "n/a", description;
    int threads = a.threads;
    if (fast) {
        effnet::CpuSessionOptions options;
        options.threads = a.threads;
        options.isa = effnet::parse_cpu_isa(a.isa);
        session = std::make_unique<effnet::CpuSession>(model, a.batch, res, res, options);
        isa = effnet::cpu_isa_name(session->isa());
        threads = session->threads();
        description = session->description();
    } else {
        if (a.threads > 0) omp_set_num_threads(a.threads);
        threads = omp_get_max_threads();
        network = std::make_unique<effnet::cpu::Network>(model);
        description = "cpu reference engine (OpenMP, " + std::to_string(threads) + " threads)";
    }
    const double setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_setup).count();

    // Input: N(0,1) like a normalised image batch, [batch, 3, res, res] float32 NCHW.
    const size_t in_count = size_t(a.batch) * size_t(model.config.in_channels) * size_t(res) * size_t(res);
    const size_t out_count = size_t(a.batch) * size_t(classes);
    effnet::Tensor input({int64_t(a.batch), int64_t(model.config.in_channels), int64_t(res), int64_t(res)});
    if (!a.input_file.empty()) {
        input.data = read_input_file(a.input_file, in_count);
    } else {
        std::mt19937_64 rng(a.seed + 1);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (float& v : input.data) v = normal(rng);
    }
    // Poisoned (NaN) so that an unwritten logit shows up below.
    std::vector<float> logits(out_count, std::nanf(""));
    auto forward = [&]() {
        if (fast) {
            session->run(input.ptr(), logits.data(), a.batch);
        } else {
            effnet::cpu::ForwardResult r = network->forward(input);
            std::copy(r.logits.data.begin(), r.logits.data.end(), logits.begin());
        }
    };

    double warm_min_ms = 1e300;
    for (int i = 0; i < a.warmup; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        forward();
        warm_min_ms = std::min(
            warm_min_ms,
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    int iters = a.iters;
    if (a.min_round_s > 0)
        iters = std::max(1, int(std::ceil(a.min_round_s * 1e3 / std::max(warm_min_ms, 1e-3))));
    std::vector<double> round_ms(size_t(a.rounds));
    for (int r = 0; r < a.rounds; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) forward();
        const auto t1 = std::chrono::steady_clock::now();
        round_ms[size_t(r)] = std::chrono::duration<double, std::milli>(t1 - t0).count() / iters;
    }
    // The logits checked and dumped are those of a fresh run on the input.
    std::fill(logits.begin(), logits.end(), std::nanf(""));
    forward();
    size_t non_finite = 0;
    for (float v : logits) non_finite += std::isfinite(v) ? 0 : 1;
    const bool finite = non_finite == 0;
    if (!a.dump_logits.empty()) write_raw(a.dump_logits, logits);
    if (fast && !a.profile.empty()) write_cpu_profile(*session, a.profile);

    const double med = median_of(round_ms);
    const double mn = *std::min_element(round_ms.begin(), round_ms.end());
    const double ips = double(a.batch) / (med * 1e-3);
    const double flops = flops_per_image(plan);
    if (a.json) {
        std::printf("{\"tool\":\"effnet-bench\",\"device\":\"cpu\",\"path\":\"%s\",\"isa\":\"%s\","
                    "\"isa_requested\":\"%s\",\"threads\":%d,\"variant\":\"%s\",\"weights\":\"%s\","
                    "\"batch\":%d,\"resolution\":%d,\"iters\":%d,\"warmup\":%d,\"rounds\":%d,"
                    "\"ms_per_batch_median\":%.6f,\"ms_per_image_median\":%.6f,\"ms_per_batch_min\":%.6f,"
                    "\"ms_per_image_min\":%.6f,\"images_per_s\":%.3f,\"flops_per_image\":%.0f,"
                    "\"gflops_per_s\":%.3f,\"setup_s\":%.3f,\"arena_bytes\":%zu,\"weight_bytes\":%zu,"
                    "\"logits_finite\":%s,\"non_finite_logits\":%zu,\"description\":\"%s\"}\n",
                    a.cpu_path.c_str(), isa.c_str(), a.isa.c_str(), threads,
                    json_escape(model.config.name).c_str(), json_escape(a.weights).c_str(), a.batch, res,
                    iters, a.warmup, a.rounds, med, med / a.batch, mn, mn / a.batch, ips, flops,
                    flops * a.batch / (med * 1e-3) / 1e9, setup_s, fast ? session->arena_bytes() : size_t(0),
                    fast ? session->weight_bytes() : size_t(0), finite ? "true" : "false", non_finite,
                    json_escape(description).c_str());
    } else {
        std::printf("effnet-bench cpu %s %s %dx%d batch %d, %s: %.3f ms/batch median (min %.3f), "
                    "%.3f ms/image, %.1f img/s, %.2f GFLOP/s (%.3f GFLOP/image), %d rounds x %d iters, "
                    "setup %.2f s%s\n",
                    a.cpu_path.c_str(), model.config.name.c_str(), res, res, a.batch, description.c_str(),
                    med, mn, med / a.batch, ips, flops * a.batch / (med * 1e-3) / 1e9, flops / 1e9, a.rounds,
                    iters, setup_s, finite ? "" : " [ERROR: non-finite logits]");
    }
    std::fflush(stdout);
    if (!finite) {
        std::fprintf(stderr, "error: %zu of %zu logits are not finite\n", non_finite, out_count);
        return 2;
    }
    return 0;
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
    options.cudnn = effnet::parse_cudnn_candidate(a.cudnn);
    options.fused_mbconv_tc = a.fused_tc;

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
                    "\"precision\":\"%s\",\"gemm\":\"%s\",\"cudnn\":\"%s\",\"fused_tc\":%s,\"autotune\":%s,"
                    "\"fused\":%s,\"graph\":%s,\"tf32\":"
                    "%s,\"iters\":%d,"
                    "\"warmup\":%d,"
                    "\"ms_p50\":%.6f,\"ms_p90\":%.6f,\"ms_p99\":%.6f,\"ms_mean\":%.6f,\"ms_min\":%.6f,"
                    "\"images_per_s\":%.3f,\"images_per_s_pipelined\":%.3f,"
                    "\"peak_device_memory_bytes\":%zu,\"activation_arena_bytes\":%zu,"
                    "\"device_memory_delta_bytes\":%lld,\"output_ok\":%s,\"non_finite_logits\":%zu,"
                    "\"setup_s\":%.3f,\"device\":\"%s\"}\n",
                    config.name.c_str(), res, a.batch, effnet::precision_name(precision), a.gemm.c_str(),
                    a.cudnn.c_str(), a.fused_tc ? "true" : "false", a.autotune ? "true" : "false",
                    a.fused ? "true" : "false", a.graph ? "true" : "false", a.tf32 ? "true" : "false",
                    a.iters, a.warmup, p50, p90, p99, mean, sorted.front(), ips, ips_pipelined, peak, arena,
                    mem_delta, output_ok ? "true" : "false", non_finite, setup_s,
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
    effnet::examples::use_passive_openmp(argv);
    try {
        Args args;
        if (!parse_args(argc, argv, args)) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (args.device == "cpu") {
            if (args.weights.empty()) effnet::preset(args.variant); // throws on unknown names
            return run_cpu_benchmark(args);
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
        std::fprintf(stderr, "error: built without CUDA (for the CPU benchmark: --device cpu)\n");
        return 1;
#endif
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
