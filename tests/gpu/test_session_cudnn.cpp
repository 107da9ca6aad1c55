// cuDNN as InferenceSession's per-layer candidate for the stem and the depthwise convolutions
// (SessionOptions::cudnn): forced onto every layer cuDNN can run, the whole network against the
// CPU reference engine in fp32 / fp16 / bf16; the profile names the layers cuDNN runs; Off (and
// Auto without autotuning) never uses it.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "gpu/gpu_test_util.hpp"

using namespace effnet;
using namespace effnet::gpu_test;

namespace {

struct GpuResult {
    std::vector<float> logits;
    int cudnn_steps = 0;     // steps whose kernel is "cudnn:..."
    bool cudnn_stem = false; // the stem among them
    int cudnn_squeezed = 0;  // depthwise steps with the squeeze sums taken after cuDNN
};

GpuResult run_gpu(const Model& model, const Tensor& input, Precision prec, const SessionOptions& opt) {
    InferenceSession session(model, int(input.dim(0)), int(input.dim(2)), int(input.dim(3)), prec, opt);
    GpuResult r;
    r.logits.assign(size_t(input.dim(0)) * size_t(model.config.num_classes), std::nanf(""));
    session.run(input.ptr(), r.logits.data());
    for (const StepProfile& p : session.profile_steps(1)) {
        if (p.kernel.rfind("cudnn:", 0) != 0) continue;
        ++r.cudnn_steps;
        if (p.name == "stem") r.cudnn_stem = true;
        if (p.kernel.find("+squeeze") != std::string::npos) ++r.cudnn_squeezed;
    }
    return r;
}

// The bounds of tests/gpu/test_session.cpp for the same networks (relative norm error of the
// logits vs the CPU engine's double accumulation): fp32 accumulation through ~20 layers; fp16
// 2e-2 and bf16 6e-2 for activations rounded to 11 / 8 significant bits layer after layer.
// The cuDNN path adds one rounding per layer (its conv output is stored in the storage precision
// before the bias pass) and rounds the depthwise / stem weights to the storage precision (the
// hand-written kernels read them in fp32): the same order as the roundings already bounded.
constexpr Bounds kCustomNetworkBound{3e-5, 2e-2, 6e-2};
constexpr Bounds kB0NetworkBound{5e-5, 2e-2, 6e-2};

SessionOptions forced(bool graph) {
    SessionOptions opt;
    opt.cudnn = CudnnCandidate::Force;
    opt.use_cuda_graph = graph;
    return opt;
}

} // namespace

// B0's PyTorch padding is symmetric: cuDNN can run the stem and every depthwise conv.
TEST_CASE("session cudnn: B0 at 64x64 with cuDNN forced matches the CPU engine", "[gpu]") {
    EFFNET_SKIP_WITHOUT_GPU();
    Model model = random_model(preset("b0", 1000), 7);
    randomise_batchnorm(model, 8);
    const Tensor input = random_tensor({2, 3, 64, 64}, 9);
    cpu::Network net(model);
    const Tensor ref = net.forward(input).logits;
    for (Precision prec : kAllPrecisions)
        for (bool graph : {false, true}) {
            const GpuResult got = run_gpu(model, input, prec, forced(graph));
            const std::string name =
                std::string("b0 64x64 cudnn forced ") + precision_name(prec) + (graph ? " graph" : " eager");
            INFO(name);
            // Not vacuous: cuDNN really ran the stem and depthwise convs, squeezed ones included.
            CHECK(got.cudnn_stem);
            CHECK(got.cudnn_steps >= 8);
            CHECK(got.cudnn_squeezed >= 1);
            CHECK(report(name, rel_error(got.logits, ref.data), kB0NetworkBound(prec)) <=
                  kB0NetworkBound(prec));
        }
}

// TF "same" padding at odd sizes: stride-2 layers pad asymmetrically, which cuDNN cannot, so
// they keep the hand-written kernel (silently) while stride-1 layers take cuDNN.
TEST_CASE("session cudnn: odd-shaped tf_same network, cuDNN where it applies, matches the CPU engine",
          "[gpu]") {
    EFFNET_SKIP_WITHOUT_GPU();
    Model model = random_model(small_config(), 42);
    randomise_batchnorm(model, 43);
    const Tensor input = random_tensor({3, 3, 45, 38}, 44);
    cpu::Network net(model);
    const Tensor ref = net.forward(input).logits;
    for (Precision prec : kAllPrecisions) {
        const GpuResult got = run_gpu(model, input, prec, forced(true));
        const std::string name = std::string("custom tf_same 45x38 cudnn forced ") + precision_name(prec);
        INFO(name);
        CHECK(got.cudnn_steps >= 1);
        CHECK(report(name, rel_error(got.logits, ref.data), kCustomNetworkBound(prec)) <=
              kCustomNetworkBound(prec));
    }
}

TEST_CASE("session cudnn: Off, and Auto without autotuning, never run cuDNN", "[gpu]") {
    EFFNET_SKIP_WITHOUT_GPU();
    Model model = random_model(preset("b0", 1000), 7);
    const Tensor input = random_tensor({1, 3, 64, 64}, 9);
    SessionOptions off;
    off.cudnn = CudnnCandidate::Off;
    CHECK(run_gpu(model, input, Precision::FP16, off).cudnn_steps == 0);
    SessionOptions untuned;
    untuned.autotune = false; // cudnn stays Auto
    CHECK(run_gpu(model, input, Precision::FP16, untuned).cudnn_steps == 0);
}
