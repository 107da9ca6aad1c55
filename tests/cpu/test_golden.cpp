// Parity with real PyTorch (torchvision / timm) on the tiny golden fixtures of tests/data/golden:
// NAME.pth goes through weights/convert.py, then load_weights, then the CPU network; eval
// logits and every stage, train-mode logits / loss / gradients and the updated running
// statistics are compared with what PyTorch computed in float64.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>

#include "cpu/ops.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/model.hpp"
#include "effnet/safetensors.hpp"
#include "golden_fixture.hpp"

namespace {

using namespace effnet;
using golden::convert;
using golden::kGoldenDir;
using golden::rel_error;
using golden::to_tensor;

const std::string kOutDir = std::string(EFFNET_BINARY_DIR) + "/golden";

// Eval forward is a chain of float32 ops against a float64 reference: 1e-5 relative norm error
// leaves ~50x headroom over the accumulated rounding (measured ~1e-7).
constexpr double kEvalTolerance = 1e-5;
// Train mode divides by batch standard deviations and backward sums long chains: 1e-4.
constexpr double kTrainTolerance = 1e-4;

double norm(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x * x;
    return std::sqrt(s);
}

// Our stage names for the golden's recorded activations; "" for ones we do not record
// (timm's conv_stem and conv_head are the convolutions' outputs before their BN).
std::string our_stage(const std::string& module, const std::string& family) {
    if (family == "torchvision") {
        if (module == "avgpool") return "pool";
        const int n = std::stoi(module.substr(std::string("features.").size()));
        if (n == 0) return "stem";
        if (n == 8) return "head";
        return "stage." + std::to_string(n - 1);
    }
    if (module == "bn1") return "stem";
    if (module == "bn2") return "head";
    if (module == "global_pool") return "pool";
    if (module.rfind("blocks.", 0) == 0) return "stage." + module.substr(7);
    return "";
}

struct Worst {
    double error = 0;
    std::string name;
    void add(double e, const std::string& n) {
        if (e >= error) {
            error = e;
            name = n;
        }
    }
};

void check_fixture(const std::string& name) {
    const SafetensorsFile golden = SafetensorsFile::open(kGoldenDir + "/" + name + "_golden.safetensors");
    const std::string weights = convert(name, golden, kOutDir);
    const Tensor input = to_tensor(golden, "input");

    // Eval: logits and every recorded stage.
    {
        Model model = load_weights(weights);
        INFO(name << ": " << model.family << ", padding " << padding_name(model.config.padding) << ", eps "
                  << model.config.bn_eps << ", " << activation_name(model.config.activation));
        REQUIRE(model.config.num_classes == 10);
        cpu::Network net(model);
        cpu::ForwardOptions opt;
        opt.record_stages = true;
        const cpu::ForwardResult r = net.forward(input, opt);
        Worst stages;
        int compared = 0;
        for (const std::string& key : golden.names()) {
            if (key.rfind("eval.act.", 0) != 0) continue;
            const std::string stage = our_stage(key.substr(9), model.family);
            if (stage.empty()) continue;
            INFO(key << " vs " << stage);
            REQUIRE(r.stages.count(stage) == 1);
            const double e = rel_error(r.stages.at(stage), golden.read_f64(key));
            CHECK(e <= kEvalTolerance);
            stages.add(e, key);
            ++compared;
        }
        CHECK(compared == 10); // stem, 7 stages, head, pool
        const double logits = rel_error(r.logits, golden.read_f64("eval.logits"));
        CHECK(logits <= kEvalTolerance);
        std::printf("[golden] %-15s eval : logits %.2e, worst stage %.2e (%s), %d stages\n", name.c_str(),
                    logits, stages.error, stages.name.c_str(), compared);
    }

    // Train: one train-mode forward (batch statistics, no dropout) and backward of cross-entropy.
    {
        Model model = load_weights(weights);
        cpu::Network net(model);
        cpu::ForwardOptions opt;
        opt.train = true;
        opt.dropout = false;
        const cpu::ForwardResult r = net.forward(input, opt);
        const std::vector<int64_t> target = golden.read_i64("train.target");
        Tensor dlogits;
        const double loss = cpu::softmax_cross_entropy(r.logits, target, 0.0f, &dlogits);
        const cpu::Gradients g = net.backward(dlogits);

        const double logits = rel_error(r.logits, golden.read_f64("train.logits"));
        const double loss_ref = golden.read_f64("train.loss").at(0);
        const double loss_err = std::abs(loss - loss_ref) / std::abs(loss_ref);
        const double input_err = rel_error(g.input, golden.read_f64("grad.input"));
        CHECK(logits <= kTrainTolerance);
        CHECK(loss_err <= kTrainTolerance);
        CHECK(input_err <= kTrainTolerance);

        Worst grads, stats;
        int n_grads = 0, n_stats = 0;
        for (const ParamSpec& spec : parameter_specs(model.config)) {
            const std::string& src = model.source_names.at(spec.name);
            if (spec.trainable) {
                INFO("grad." << src << " (" << spec.name << ")");
                REQUIRE(g.params.count(spec.name) == 1);
                const std::vector<double> ref = golden.read_f64("grad." + src);
                double e = rel_error(g.params.at(spec.name), ref);
                // The project BN's bias feeds (through 1x1 convs and residual adds) only into
                // train-mode BNs, which subtract any per-channel constant: its gradient is exactly
                // zero and PyTorch's ~1e-15 is rounding. Measure those against the scale of the
                // same BN's weight gradient instead.
                const std::string suffix = ".bn.bias";
                if (spec.name.size() > suffix.size() &&
                    spec.name.compare(spec.name.size() - suffix.size(), suffix.size(), suffix) == 0) {
                    const std::string weight = spec.name.substr(0, spec.name.size() - 4) + "weight";
                    const double scale = norm(golden.read_f64("grad." + model.source_names.at(weight)));
                    const double ref_norm = norm(ref);
                    if (ref_norm < 1e-9 * scale) e = e * ref_norm / scale; // ||ours - ref|| / scale
                }
                CHECK(e <= kTrainTolerance);
                grads.add(e, src);
                ++n_grads;
            } else {
                INFO("after_train." << src);
                const double e = rel_error(model.param(spec.name), golden.read_f64("after_train." + src));
                CHECK(e <= kTrainTolerance);
                stats.add(e, src);
                ++n_stats;
            }
        }
        // Every parameter gradient PyTorch recorded was compared.
        int golden_grads = 0;
        for (const std::string& key : golden.names())
            golden_grads += key.rfind("grad.", 0) == 0 && key != "grad.input" ? 1 : 0;
        CHECK(n_grads == golden_grads);
        std::printf(
            "[golden] %-15s train: logits %.2e, loss %.2e, grad.input %.2e, worst of %d grads %.2e (%s), "
            "worst of %d running stats %.2e (%s)\n",
            name.c_str(), logits, loss_err, input_err, n_grads, grads.error, grads.name.c_str(), n_stats,
            stats.error, stats.name.c_str());
    }
}

} // namespace

TEST_CASE("golden: torchvision tiny matches PyTorch", "[golden]") {
    check_fixture("tv_tiny");
}
TEST_CASE("golden: timm tiny matches PyTorch", "[golden]") {
    check_fixture("timm_tiny");
}
TEST_CASE("golden: timm tf_ (TF SAME, eps 1e-3) tiny matches PyTorch", "[golden]") {
    check_fixture("timm_tf_tiny");
}
TEST_CASE("golden: timm Lite (ReLU6, no SE) tiny matches PyTorch", "[golden]") {
    check_fixture("timm_lite_tiny");
}
