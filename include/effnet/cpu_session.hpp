#pragma once
// The fast CPU inference path. A session is built once for (model, batch, height, width): it
// folds batch norm into the convolutions, packs the 1x1 weights into the GEMM's panels, plans
// the activations (NHWC float32) into one arena and starts its own worker threads. run()
// allocates nothing. The reference engine (effnet/cpu_engine.hpp) is the oracle it is tested
// against; this one is what users without a GPU run.
//
// Threads: the session's workers spin for a few tens of microseconds between the parallel
// loops of one forward and then sleep, so a busy machine is not slowed by idle workers (no
// OpenMP; OMP_WAIT_POLICY does not matter here).
#include <memory>
#include <string>
#include <vector>

#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"

namespace effnet {

// The instruction set the session's kernels are compiled for; one binary holds them all and
// picks at run time.
enum class CpuIsa {
    Auto,     // the widest this CPU supports
    Portable, // plain C++ (vector width 4, whatever the compiler makes of it): any CPU
    Avx2,     // AVX2 + FMA
    Avx512,   // AVX-512 F/VL/DQ/BW
};
const char* cpu_isa_name(CpuIsa isa);       // "auto" | "portable" | "avx2" | "avx512"
CpuIsa parse_cpu_isa(const std::string& s); // throws effnet::Error on unknown names
bool cpu_supports(CpuIsa isa);              // Auto and Portable: always true
CpuIsa best_cpu_isa();                      // the widest supported (never Auto)

struct CpuSessionOptions {
    int threads = 0;           // 0: the CPUs this process may run on (sched_getaffinity)
    CpuIsa isa = CpuIsa::Auto; // a named ISA the CPU lacks is refused
    // An expand whose output per image is larger than this many bytes runs band by band with
    // the depthwise after it, so that its output never leaves the cache; a smaller one runs with
    // its depthwise by chunks of channels, each chunk on one core (0: every expand in bands;
    // < 0: every layer on its own). The default suits 1-2 MB of L2 per core.
    int64_t fuse_min_bytes = 512 * 1024;
};

// One layer's share of a forward, as CpuSession::profile() measured it.
struct CpuLayerProfile {
    // "blocks.3.expand", ...; an expand run together with the layers after it:
    // "blocks.1.expand+dw" or "blocks.1.expand+dw+project" (time and flops of all), those layers
    // then "blocks.1.dw (in blocks.1.expand+dw)" (0 ms, 0 flops).
    std::string name;
    LayerKind kind = LayerKind::Stem;
    double ms = 0;    // mean time per forward
    double flops = 0; // multiply-adds x 2 per forward (the whole batch)
};

class CpuSession {
public:
    // Throws effnet::Error on a bad shape, an unsupported ISA or a model whose parameters do
    // not match its config.
    CpuSession(const Model& model, int batch, int height, int width, const CpuSessionOptions& options = {});
    ~CpuSession();
    CpuSession(CpuSession&&) noexcept;
    CpuSession& operator=(CpuSession&&) noexcept;

    // input: NCHW float32 [n, 3, height, width]; logits: float32 [n, num_classes]; 1 <= n <=
    // batch() (a smaller last batch runs only its images). One call at a time per session.
    void run(const float* input, float* logits, int n = 0);
    // Runs the forward of a full batch `reps` times on a fixed pseudo-random input and returns
    // the mean time of each layer. For analysis; slower than run().
    std::vector<CpuLayerProfile> profile(int reps = 10);

    int batch() const;
    int height() const;
    int width() const;
    int num_classes() const;
    int threads() const;
    CpuIsa isa() const;
    size_t arena_bytes() const;      // activations
    size_t weight_bytes() const;     // folded and packed weights
    std::string description() const; // "cpu fast path (avx512, 2 threads)"

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace effnet
