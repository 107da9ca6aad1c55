// effnet-cpu-peak: this machine's peak fp32 multiply-add rate, the ceiling CPU inference
// figures are measured against (bench/cpu_compare.py quotes it).
//
//   effnet-cpu-peak [--threads N] [--seconds S] [--isa all|avx512|avx2|sse] [--text]
//
// Each kernel keeps K independent accumulators (K vector registers, enough to cover the FMA
// latency times the number of FMA ports: 16 for AVX-512, 12 for AVX2 -- the 16 ymm registers
// also hold the two operands) and updates each once per loop trip, so nothing but the FMA units
// limits it. Kernels are compiled for their ISA with __attribute__((target(...))) and chosen at
// run time with __builtin_cpu_supports, so one binary measures every ISA the CPU has.
//   avx512  _mm512_fmadd_ps   16 lanes x 2 flops per instruction
//   avx2    _mm256_fmadd_ps   8 lanes x 2 flops (AVX2 + FMA)
//   sse     _mm_mul_ps and _mm_add_ps on separate accumulators, 4 lanes x 1 flop each (SSE2 has
//           no FMA: this is the ceiling of plain 4-wide code such as CpuIsa::Portable)
// For 1 thread and for N threads (default: the CPUs this process may run on), each thread runs
// the same number of trips (calibrated so that one thread takes --seconds); the rate is the
// total flops over the wall time from a common start to the last thread's end, best of 5.
// Output: one JSON object per line {"tool":"effnet-cpu-peak","isa":..,"threads":..,"gflops":..}
// and a last line with the machine's summary; --text prints a table instead.
#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/args.hpp"
#include "effnet/error.hpp"

namespace {

volatile float g_sink = 0.0f; // keeps the accumulators' results alive

// Each kernel: `trips` loop trips, returns a value depending on every accumulator. Flops per trip
// are given by the table below.
__attribute__((target("avx512f"))) float fma_avx512(int64_t trips, float seed) {
    __m512 acc[16];
    for (int k = 0; k < 16; ++k) acc[k] = _mm512_set1_ps(seed + float(k) * 1e-3f);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int64_t t = 0; t < trips; ++t) {
        // Written out so that every accumulator stays in its register.
        acc[0] = _mm512_fmadd_ps(acc[0], a, b);
        acc[1] = _mm512_fmadd_ps(acc[1], a, b);
        acc[2] = _mm512_fmadd_ps(acc[2], a, b);
        acc[3] = _mm512_fmadd_ps(acc[3], a, b);
        acc[4] = _mm512_fmadd_ps(acc[4], a, b);
        acc[5] = _mm512_fmadd_ps(acc[5], a, b);
        acc[6] = _mm512_fmadd_ps(acc[6], a, b);
        acc[7] = _mm512_fmadd_ps(acc[7], a, b);
        acc[8] = _mm512_fmadd_ps(acc[8], a, b);
        acc[9] = _mm512_fmadd_ps(acc[9], a, b);
        acc[10] = _mm512_fmadd_ps(acc[10], a, b);
        acc[11] = _mm512_fmadd_ps(acc[11], a, b);
        acc[12] = _mm512_fmadd_ps(acc[12], a, b);
        acc[13] = _mm512_fmadd_ps(acc[13], a, b);
        acc[14] = _mm512_fmadd_ps(acc[14], a, b);
        acc[15] = _mm512_fmadd_ps(acc[15], a, b);
    }
    __m512 s = acc[0];
    for (int k = 1; k < 16; ++k) s = _mm512_add_ps(s, acc[k]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) float fma_avx2(int64_t trips, float seed) {
    __m256 acc[12];
    for (int k = 0; k < 12; ++k) acc[k] = _mm256_set1_ps(seed + float(k) * 1e-3f);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int64_t t = 0; t < trips; ++t) {
        acc[0] = _mm256_fmadd_ps(acc[0], a, b);
        acc[1] = _mm256_fmadd_ps(acc[1], a, b);
        acc[2] = _mm256_fmadd_ps(acc[2], a, b);
        acc[3] = _mm256_fmadd_ps(acc[3], a, b);
        acc[4] = _mm256_fmadd_ps(acc[4], a, b);
        acc[5] = _mm256_fmadd_ps(acc[5], a, b);
        acc[6] = _mm256_fmadd_ps(acc[6], a, b);
        acc[7] = _mm256_fmadd_ps(acc[7], a, b);
        acc[8] = _mm256_fmadd_ps(acc[8], a, b);
        acc[9] = _mm256_fmadd_ps(acc[9], a, b);
        acc[10] = _mm256_fmadd_ps(acc[10], a, b);
        acc[11] = _mm256_fmadd_ps(acc[11], a, b);
    }
    __m256 s = acc[0];
    for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, acc[k]);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s);
    float r = 0.0f;
    for (float v : lanes) r += v;
    return r;
}

// SSE: 6 multiply chains and 6 add chains (x86 cores issue adds and multiplies on separate ports
// or both on their FMA units; 12 independent chains cover either).
float mul_add_sse(int64_t trips, float seed) {
    __m128 m[6], s[6];
    for (int k = 0; k < 6; ++k) {
        m[k] = _mm_set1_ps(seed + float(k) * 1e-3f);
        s[k] = _mm_set1_ps(seed - float(k) * 1e-3f);
    }
    const __m128 a = _mm_set1_ps(0.999999f), b = _mm_set1_ps(1e-7f);
    for (int64_t t = 0; t < trips; ++t) {
        m[0] = _mm_mul_ps(m[0], a);
        s[0] = _mm_add_ps(s[0], b);
        m[1] = _mm_mul_ps(m[1], a);
        s[1] = _mm_add_ps(s[1], b);
        m[2] = _mm_mul_ps(m[2], a);
        s[2] = _mm_add_ps(s[2], b);
        m[3] = _mm_mul_ps(m[3], a);
        s[3] = _mm_add_ps(s[3], b);
        m[4] = _mm_mul_ps(m[4], a);
        s[4] = _mm_add_ps(s[4], b);
        m[5] = _mm_mul_ps(m[5], a);
        s[5] = _mm_add_ps(s[5], b);
    }
    __m128 r = _mm_add_ps(m[0], s[0]);
    for (int k = 1; k < 6; ++k) r = _mm_add_ps(r, _mm_add_ps(m[k], s[k]));
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, r);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

struct Kernel {
    const char* isa;
    const char* instruction;
    int vector_bits;
    int accumulators;
    double flops_per_trip;
    float (*fn)(int64_t, float);
    bool (*supported)();
};

bool has_avx512() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}
bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool has_sse() {
    return true;
} // x86-64 always has SSE2

const Kernel kKernels[] = {
    {"avx512", "vfmadd (zmm)", 512, 16, 16 * 16 * 2.0, fma_avx512, has_avx512},
    {"avx2", "vfmadd (ymm)", 256, 12, 12 * 8 * 2.0, fma_avx2, has_avx2},
    {"sse", "mulps + addps (xmm)", 128, 12, 12 * 4 * 1.0, mul_add_sse, has_sse},
};

int allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

std::string cpu_model_name() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            const size_t colon = line.find(':');
            if (colon != std::string::npos) {
                std::string s = line.substr(colon + 1);
                s.erase(0, s.find_first_not_of(" \t"));
                std::string out;
                for (char c : s) out += (c == '"' || c == '\\') ? ' ' : c;
                return out;
            }
        }
    }
    return "unknown";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Wall seconds for `threads` threads each running `trips` trips, from a common start.
double timed_run(const Kernel& k, int threads, int64_t trips) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    std::vector<float> results(size_t(threads), 0.0f);
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t]() {
            // Flush denormals to zero: the multiply chains of the SSE kernel decay towards them.
            _mm_setcsr(_mm_getcsr() | 0x8040);
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) {
            }
            results[size_t(t)] = k.fn(trips, 1.0f + float(t));
        });
    }
    while (ready.load() < threads) {
    }
    const auto t0 = std::chrono::steady_clock::now();
    go.store(true, std::memory_order_release);
    for (std::thread& th : pool) th.join();
    const double s = seconds_since(t0);
    float sum = 0.0f;
    for (float r : results) sum += r;
    g_sink = g_sink + sum;
    return s;
}

struct Result {
    const Kernel* kernel;
    int threads;
    double gflops;
    double seconds;
};

} // namespace

int main(int argc, char** argv) {
    try {
        for (int i = 1; i < argc; ++i) {
            if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
                std::fputs(
                    "usage: effnet-cpu-peak [--threads N] [--seconds S] [--isa all|avx512|avx2|sse] "
                    "[--text]\n"
                    "Measures peak fp32 multiply-add GFLOP/s for 1 and N threads per ISA; prints one JSON\n"
                    "object per line (--text: a table).\n",
                    stdout);
                return 0;
            }
        }
        effnet::examples::Args args(
            argc, argv,
            {{"threads", true,
              "N: the multi-thread measurement's thread count (default: the CPUs this process may use)"},
             {"seconds", true, "S: target seconds per measurement (default 0.3)"},
             {"isa", true, "ISA: all (default), avx512, avx2 or sse"},
             {"text", false, "print a table instead of JSON lines"}});
        const int max_threads = allowed_cpus();
        const int threads =
            args.has("threads")
                ? int(effnet::examples::parse_int_option("threads", args.get("threads"), 1, 4096))
                : max_threads;
        const double target_s =
            args.has("seconds") ? effnet::examples::parse_double_option("seconds", args.get("seconds")) : 0.3;
        EFFNET_CHECK(target_s > 0.0 && target_s <= 60.0, "option '--seconds' expects a number in (0, 60]");
        const std::string isa = args.has("isa") ? args.get("isa") : "all";
        EFFNET_CHECK(isa == "all" || isa == "avx512" || isa == "avx2" || isa == "sse",
                     "option '--isa' expects all, avx512, avx2 or sse, got '" + isa + "'");
        const bool text = args.has("text");

        std::vector<int> thread_counts = {1};
        if (threads != 1) thread_counts.push_back(threads);

        std::vector<Result> results;
        for (const Kernel& k : kKernels) {
            if (isa != "all" && isa != k.isa) continue;
            if (!k.supported()) {
                EFFNET_CHECK(isa == "all", std::string("this CPU does not support ") + k.isa);
                if (!text)
                    std::printf("{\"tool\":\"effnet-cpu-peak\",\"isa\":\"%s\",\"supported\":false}\n", k.isa);
                continue;
            }
            // Calibrate on one thread: trips for ~target_s.
            int64_t trips = 1 << 16;
            for (;;) {
                const double s = timed_run(k, 1, trips);
                if (s >= 0.05) {
                    trips = std::max<int64_t>(1, int64_t(double(trips) * target_s / s));
                    break;
                }
                trips *= 4;
            }
            for (int n : thread_counts) {
                double best = 1e300;
                for (int rep = 0; rep < 5; ++rep) best = std::min(best, timed_run(k, n, trips));
                const double gflops = k.flops_per_trip * double(trips) * n / best / 1e9;
                results.push_back({&k, n, gflops, best});
                if (!text) {
                    std::printf("{\"tool\":\"effnet-cpu-peak\",\"isa\":\"%s\",\"supported\":true,"
                                "\"instruction\":\"%s\","
                                "\"vector_bits\":%d,\"accumulators\":%d,\"threads\":%d,\"gflops\":%.2f,"
                                "\"gflops_per_thread\":%.2f,\"seconds\":%.3f}\n",
                                k.isa, k.instruction, k.vector_bits, k.accumulators, n, gflops, gflops / n,
                                best);
                    std::fflush(stdout);
                }
            }
        }
        double best1 = 0, bestn = 0;
        std::string best_isa;
        for (const Result& r : results) {
            if (r.threads == 1 && r.gflops > best1) {
                best1 = r.gflops;
                best_isa = r.kernel->isa;
            }
            if (r.threads == thread_counts.back()) bestn = std::max(bestn, r.gflops);
        }
        if (text) {
            std::printf("%s, %d CPUs usable\n%-8s %-22s %8s %12s %14s\n", cpu_model_name().c_str(),
                        max_threads, "isa", "instruction", "threads", "GFLOP/s", "GFLOP/s/thread");
            for (const Result& r : results)
                std::printf("%-8s %-22s %8d %12.1f %14.1f\n", r.kernel->isa, r.kernel->instruction, r.threads,
                            r.gflops, r.gflops / r.threads);
        } else {
            std::printf(
                "{\"tool\":\"effnet-cpu-peak\",\"summary\":true,\"cpu\":\"%s\",\"cpus\":%d,\"threads\":%d,"
                "\"best_isa\":\"%s\",\"peak_gflops_1thread\":%.2f,\"peak_gflops_nthreads\":%.2f}\n",
                cpu_model_name().c_str(), max_threads, thread_counts.back(), best_isa.c_str(), best1, bestn);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
