// The GPU optimizers (kernels/sgd.cu, rmsprop.cu, adamw.cu and GpuTrainer::apply_update) against
// the CPU optimizer itself (train::Optimizer, libeffnet/train/optimizer.cpp) on the same
// gradients; the optimizer state's export and import (GpuTrainer::optimizer_state /
// set_optimizer_state) and its trip through a checkpoint; and a GPU run stopped, checkpointed,
// "killed" (the trainer destroyed) and resumed from the checkpoint against an uninterrupted run.
//
// Tolerances:
//   update without clipping: at most 1 ulp per element, 0 expected. Both sides compute in double
//     with one rounding per operation (the kernels use __dmul_rn / __dadd_rn so that nvcc does
//     not fuse into FMAs; the CPU build targets baseline x86-64, which has none), IEEE-exact
//     division and square root, the same std::pow on the host, and round to float32 at the same
//     points. The 1 ulp only allows for a compiler that contracts the CPU side after all.
//   update with gradient clipping: relative norm error 1e-7 per tensor (kClipUpdateBound). The
//     global norm is a double sum in a different order on each side (sequential on the CPU, a
//     tree on the GPU), so the clip factor can differ in its last bits and move an element that
//     sits on a float32 rounding boundary by 1 ulp (6e-8 relative); measured 0 on the H200 runs
//     (gpu_test_util.hpp, Bounds), so the bound admits only that ulp; any formula error is >= 1e-4.
//   the gradient norm itself: 1e-12 relative (measured 5.4e-14).
//   state round trip, resume: bit for bit (GpuTrainOptions::deterministic; plain copies).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/gpu_training.hpp"
#include "effnet/inference.hpp"
#include "effnet/train/checkpoint.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/param_map.hpp"
#include "effnet/train/rng.hpp"
#include "effnet/train/schedule.hpp"
#include "gpu/gpu_test_util.hpp"
#include "kernels/adamw.cuh"
#include "kernels/rmsprop.cuh"
#include "kernels/sgd.cuh"

using namespace effnet;
using namespace effnet::gpu_test;
namespace fs = std::filesystem;

namespace {

constexpr double kClipUpdateBound = 1e-7;

// Distance in representable float32 values (0: identical bits; NaN or a sign change: huge).
int64_t ulp_distance(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return INT64_MAX;
    int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    if ((ia < 0) != (ib < 0)) return a == b ? 0 : INT64_MAX; // +0 / -0
    return std::llabs(int64_t(ia) - int64_t(ib));
}

// Largest ulp distance between two equally shaped tensors, and how many elements differ.
struct UlpReport {
    int64_t worst = 0, differing = 0;
};
UlpReport compare_ulps(const std::vector<float>& got, const std::vector<float>& want) {
    UlpReport r;
    if (got.size() != want.size()) return {INT64_MAX, INT64_MAX};
    for (size_t i = 0; i < got.size(); ++i) {
        const int64_t d = ulp_distance(got[i], want[i]);
        r.worst = std::max(r.worst, d);
        r.differing += d != 0;
    }
    return r;
}

bool check_ulps(const std::string& what, const std::vector<float>& got, const std::vector<float>& want) {
    const UlpReport r = compare_ulps(got, want);
    const bool ok = r.worst <= 1;
    std::printf("[gpu] %-72s max %lld ulp, %lld of %zu differ (tol 1 ulp) %s\n", what.c_str(),
                (long long)r.worst, (long long)r.differing, want.size(), ok ? "ok" : "FAIL");
    std::fflush(stdout);
    return ok;
}

bool identical(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

ModelConfig tiny_config() {
    CustomOptions o;
    o.width = 0.25;
    o.depth = 0.34;
    o.num_classes = 10;
    return custom_config(o);
}

// The three optimizers with non-default settings where they have any, so that a hyperparameter
// the GPU ignores shows up.
train::OptimizerConfig optimizer_case(train::OptimizerKind kind) {
    train::OptimizerConfig c;
    c.kind = kind;
    switch (kind) {
    case train::OptimizerKind::SGD:
        c.momentum = 0.8;
        c.nesterov = true;
        c.weight_decay = 1e-2;
        break;
    case train::OptimizerKind::RMSProp:
        c.momentum = 0.9;
        c.rms_decay = 0.85;
        c.rms_eps = 1e-3;
        c.weight_decay = 1e-3;
        break;
    case train::OptimizerKind::AdamW:
        c.beta1 = 0.85;
        c.beta2 = 0.99;
        c.adam_eps = 1e-7;
        c.weight_decay = 0.05;
        break;
    }
    return c;
}

const train::OptimizerKind kAllOptimizers[] = {train::OptimizerKind::SGD, train::OptimizerKind::RMSProp,
                                               train::OptimizerKind::AdamW};

struct TrainBatch {
    Tensor input;
    std::vector<int64_t> targets;
};
TrainBatch make_batch(int n, int h, int w, int classes, uint64_t seed) {
    TrainBatch b;
    b.input = random_tensor({n, 3, h, w}, seed, -2.0f, 2.0f);
    for (int i = 0; i < n; ++i) b.targets.push_back(int64_t((i * 7 + seed) % uint64_t(classes)));
    return b;
}

std::string temp_path(const std::string& name) {
    return (fs::temp_directory_path() / ("effnet_gpu_opt_" + std::to_string(::getpid()) + "_" + name))
        .string();
}

} // namespace

// ---------------------------------------------------------------------------------------------
// The update kernels alone: random parameters, gradients and state (odd size), one update each.

TEST_CASE("GPU optimizer kernels match train::Optimizer bit for bit", "[gpu][train][optimizer]") {
    EFFNET_SKIP_WITHOUT_GPU();
    const int64_t n = 10007;
    const Shape shape = {n};
    for (train::OptimizerKind kind : kAllOptimizers)
        for (double clip_scale : {1.0, 0.37}) {
            const train::OptimizerConfig config = optimizer_case(kind);
            const std::string name = std::string(train::optimizer_name(kind)) +
                                     (clip_scale != 1.0 ? " grad_scale=0.37" : "") + " kernel";
            const Tensor p0 = random_tensor(shape, 11), g0 = random_tensor(shape, 12, -3.0f, 3.0f);
            const Tensor s1 = random_tensor(shape, 13, -0.5f, 0.5f); // momentum / mom / exp_avg
            const Tensor s2 = random_tensor(shape, 14, 0.01f, 2.0f); // ms / exp_avg_sq: positive
            const double lr = 0.037;
            const int64_t steps_before = 4; // AdamW: t = 5

            // CPU: the optimizer itself, on "w" (a name that takes weight decay), with the
            // gradient scaled and stored as train::clip_grad_norm leaves it.
            train::Optimizer cpu(config);
            train::ParamMap state;
            switch (kind) {
            case train::OptimizerKind::SGD:
                state["momentum/w"] = s1;
                break;
            case train::OptimizerKind::RMSProp:
                state["ms/w"] = s2;
                state["mom/w"] = s1;
                break;
            case train::OptimizerKind::AdamW:
                state["exp_avg/w"] = s1;
                state["exp_avg_sq/w"] = s2;
                break;
            }
            cpu.set_state(state, steps_before);
            train::ParamMap params = {{"w", p0}}, grads = {{"w", g0}};
            for (float& x : grads.at("w").data) x = float(double(x) * clip_scale);
            cpu.step(params, grads, lr);

            auto d_p = upload_f32(p0.data);
            auto d_g = upload_f32(g0.data);
            auto d_s1 = upload_f32(s1.data);
            auto d_s2 = upload_f32(s2.data);
            std::vector<float> want1, want2;
            switch (kind) {
            case train::OptimizerKind::SGD: {
                kernels::SgdArgs a;
                a.param = d_p.as<float>();
                a.grad = d_g.as<float>();
                a.momentum_buffer = d_s1.as<float>();
                a.count = n;
                a.lr = lr;
                a.momentum = config.momentum;
                a.nesterov = config.nesterov;
                a.weight_decay = config.weight_decay;
                a.grad_scale = clip_scale;
                kernels::launch_sgd_update(a, nullptr);
                want1 = cpu.state().at("momentum/w").data;
                break;
            }
            case train::OptimizerKind::RMSProp: {
                kernels::RmsPropArgs a;
                a.param = d_p.as<float>();
                a.grad = d_g.as<float>();
                a.momentum_buffer = d_s1.as<float>();
                a.mean_square = d_s2.as<float>();
                a.count = n;
                a.lr = lr;
                a.decay = config.rms_decay;
                a.momentum = config.momentum;
                a.eps = config.rms_eps;
                a.weight_decay = config.weight_decay;
                a.grad_scale = clip_scale;
                kernels::launch_rmsprop_update(a, nullptr);
                want1 = cpu.state().at("mom/w").data;
                want2 = cpu.state().at("ms/w").data;
                break;
            }
            case train::OptimizerKind::AdamW: {
                kernels::AdamWArgs a;
                a.param = d_p.as<float>();
                a.grad = d_g.as<float>();
                a.exp_avg = d_s1.as<float>();
                a.exp_avg_sq = d_s2.as<float>();
                a.count = n;
                a.lr = lr;
                a.beta1 = config.beta1;
                a.beta2 = config.beta2;
                a.eps = config.adam_eps;
                a.weight_decay = config.weight_decay;
                a.grad_scale = clip_scale;
                a.step = steps_before + 1;
                kernels::launch_adamw_update(a, nullptr);
                want1 = cpu.state().at("exp_avg/w").data;
                want2 = cpu.state().at("exp_avg_sq/w").data;
                break;
            }
            }
            CHECK(
                check_ulps(name + " params", download(d_p, size_t(n), Precision::FP32), params.at("w").data));
            CHECK(check_ulps(name + " state 1", download(d_s1, size_t(n), Precision::FP32), want1));
            if (!want2.empty())
                CHECK(check_ulps(name + " state 2", download(d_s2, size_t(n), Precision::FP32), want2));
        }
    // SGD without momentum touches no buffer.
    const Tensor p0 = random_tensor({n}, 21), g0 = random_tensor({n}, 22);
    train::OptimizerConfig config;
    config.momentum = 0.0;
    config.weight_decay = 1e-3;
    train::Optimizer cpu(config);
    train::ParamMap params = {{"w", p0}}, grads = {{"w", g0}};
    cpu.step(params, grads, 0.1);
    CHECK(cpu.state().empty());
    auto d_p = upload_f32(p0.data);
    auto d_g = upload_f32(g0.data);
    kernels::SgdArgs a;
    a.param = d_p.as<float>();
    a.grad = d_g.as<float>();
    a.count = n;
    a.lr = 0.1;
    a.momentum = 0.0;
    a.weight_decay = 1e-3;
    kernels::launch_sgd_update(a, nullptr);
    CHECK(check_ulps("sgd momentum=0 kernel params", download(d_p, size_t(n), Precision::FP32),
                     params.at("w").data));
}

TEST_CASE("GPU optimizer kernels refuse bad arguments", "[gpu][train][optimizer]") {
    EFFNET_SKIP_WITHOUT_GPU();
    cuda::DeviceBuffer buf(4 * 16, "args");
    kernels::RmsPropArgs r;
    r.param = buf.as<float>();
    r.grad = buf.as<float>();
    r.mean_square = buf.as<float>();
    r.momentum_buffer = nullptr;
    r.count = 16;
    CHECK_THROWS_AS(kernels::launch_rmsprop_update(r, nullptr), Error);
    r.momentum_buffer = buf.as<float>();
    r.decay = 1.0;
    CHECK_THROWS_AS(kernels::launch_rmsprop_update(r, nullptr), Error);
    kernels::AdamWArgs a;
    a.param = a.exp_avg = a.exp_avg_sq = buf.as<float>();
    a.grad = buf.as<float>();
    a.count = 16;
    a.step = 0;
    CHECK_THROWS_AS(kernels::launch_adamw_update(a, nullptr), Error);
    a.step = 1;
    a.lr = -1.0;
    CHECK_THROWS_AS(kernels::launch_adamw_update(a, nullptr), Error);
}

// ---------------------------------------------------------------------------------------------
// GpuTrainer::apply_update against train::Optimizer on the gradients the GPU computed.

TEST_CASE("GPU trainer's optimizer steps match train::Optimizer on the same gradients",
          "[gpu][train][optimizer]") {
    EFFNET_SKIP_WITHOUT_GPU();
    const ModelConfig config = tiny_config();
    const int N = 4, H = 64, W = 72;
    for (train::OptimizerKind kind : kAllOptimizers)
        for (double clip : {0.0, 0.5}) {
            train::OptimizerConfig oc = optimizer_case(kind);
            oc.decay_all = kind == train::OptimizerKind::AdamW; // the non-default rule once
            const std::string label = std::string(train::optimizer_name(kind)) +
                                      (oc.decay_all ? " decay_all" : "") + (clip > 0 ? " clip=0.5" : "");
            Model start = random_model(config, 31);
            GpuTrainOptions opt;
            opt.optimizer = oc;
            opt.clip_grad_norm = clip;
            opt.label_smoothing = 0.1f;
            GpuTrainer trainer(start, N, H, W, TrainPrecision::FP32, opt);
            CHECK(trainer.optimizer_state().empty()); // a fresh optimizer, as train::Optimizer
            CHECK(trainer.optimizer_steps() == 0);

            train::Optimizer cpu(oc);
            train::ParamMap cpu_params;
            {
                Model m = start;
                trainer.download(m);
                for (const ParamSpec& spec : parameter_specs(config))
                    if (spec.trainable) cpu_params[spec.name] = m.param(spec.name);
            }
            for (int step = 0; step < 2; ++step) {
                const std::string where = label + " step " + std::to_string(step + 1) + ": ";
                const TrainBatch b = make_batch(N, H, W, config.num_classes, 40 + uint64_t(step));
                trainer.compute_gradients(b.input.ptr(), b.targets.data(), uint64_t(step));
                REQUIRE(trainer.last_step_finite());
                train::ParamMap grads = trainer.gradients().params;
                const double norm = train::clip_grad_norm(grads, clip);
                const double lr = step == 0 ? 0.05 : 0.0371;
                cpu.step(cpu_params, grads, lr);
                REQUIRE(trainer.apply_update(lr));
                if (clip > 0) {
                    const double e = std::abs(trainer.last_grad_norm() - norm) / norm;
                    CHECK(report(where + "gradient norm", e, 1e-12) <= 1e-12);
                }
                CHECK(trainer.optimizer_steps() == cpu.step_count());

                Model after = start;
                trainer.download(after);
                const train::ParamMap gpu_state = trainer.optimizer_state();
                REQUIRE(gpu_state.size() == cpu.state().size());
                bool all_ok = true;
                double worst = 0;
                for (const auto& [name, want] : cpu_params) {
                    const std::vector<float>& got = after.param(name).data;
                    if (clip > 0) {
                        const double e = rel_error(got, want.data);
                        worst = std::max(worst, e);
                        all_ok &= e <= kClipUpdateBound;
                    } else {
                        all_ok &= compare_ulps(got, want.data).worst <= 1;
                    }
                }
                for (const auto& [key, want] : cpu.state()) {
                    const auto it = gpu_state.find(key);
                    REQUIRE(it != gpu_state.end());
                    if (clip > 0) {
                        const double e = rel_error(it->second.data, want.data);
                        worst = std::max(worst, e);
                        all_ok &= e <= kClipUpdateBound;
                    } else {
                        all_ok &= compare_ulps(it->second.data, want.data).worst <= 1;
                    }
                }
                if (clip > 0)
                    report(where + "worst parameter / state", worst, kClipUpdateBound);
                else {
                    // One line per step with the numbers of the largest tensor.
                    const std::string big = "head.conv.weight";
                    check_ulps(where + big, after.param(big).data, cpu_params.at(big).data);
                }
                INFO(where);
                CHECK(all_ok);
                // Both sides continue from the CPU's values, so the second step compares the
                // update alone again.
                trainer.upload([&] {
                    Model m = after;
                    for (const auto& [name, t] : cpu_params) m.params[name] = t;
                    return m;
                }());
                trainer.set_optimizer_state(cpu.state(), cpu.step_count());
            }
        }
}

// ---------------------------------------------------------------------------------------------
// Optimizer state out and in.

TEST_CASE("GPU optimizer state: export, import, checkpoint round trip, validation",
          "[gpu][train][optimizer]") {
    EFFNET_SKIP_WITHOUT_GPU();
    const ModelConfig config = tiny_config();
    const int N = 4, H = 64, W = 72;
    const TrainBatch b1 = make_batch(N, H, W, config.num_classes, 51),
                     b2 = make_batch(N, H, W, config.num_classes, 52);
    for (train::OptimizerKind kind : kAllOptimizers) {
        const std::string label = train::optimizer_name(kind);
        GpuTrainOptions opt;
        opt.optimizer = optimizer_case(kind);
        Model model = random_model(config, 61);
        GpuTrainer a(model, N, H, W, TrainPrecision::FP32, opt);
        a.step(b1.input.ptr(), b1.targets.data(), 0.05);
        a.step(b2.input.ptr(), b2.targets.data(), 0.04);
        const train::ParamMap state = a.optimizer_state();
        REQUIRE(a.optimizer_steps() == 2);
        // One slot (two for RMSProp and AdamW) per trainable parameter, named as the CPU names it.
        size_t trainable = 0;
        for (const ParamSpec& spec : parameter_specs(config)) trainable += spec.trainable;
        const size_t slots = kind == train::OptimizerKind::SGD ? 1 : 2;
        CHECK(state.size() == slots * trainable);
        for (const auto& [key, t] : state) {
            const std::string slot = key.substr(0, key.find('/'));
            if (kind == train::OptimizerKind::SGD) CHECK(slot == "momentum");
            if (kind == train::OptimizerKind::RMSProp) CHECK((slot == "ms" || slot == "mom"));
            if (kind == train::OptimizerKind::AdamW) CHECK((slot == "exp_avg" || slot == "exp_avg_sq"));
        }

        // Through a checkpoint file, as effnet-train writes it.
        Model saved = model;
        a.download(saved);
        train::Optimizer holder(opt.optimizer);
        holder.set_state(state, a.optimizer_steps());
        train::TrainingState ts;
        ts.step = 2;
        const std::string path = temp_path(label + ".safetensors");
        train::save_checkpoint(path, saved, holder, ts);
        const train::Checkpoint ck = train::load_checkpoint(path);
        fs::remove(path);
        CHECK(ck.optimizer_steps == 2);
        CHECK(ck.optimizer_name == label);
        REQUIRE(ck.optimizer_state.size() == state.size());

        // Import into a new trainer: the export is bit-identical, and the next step is too.
        Model resumed_model = ck.model;
        GpuTrainer c(resumed_model, N, H, W, TrainPrecision::FP32, opt);
        c.set_optimizer_state(ck.optimizer_state, ck.optimizer_steps);
        const train::ParamMap back = c.optimizer_state();
        bool same = back.size() == state.size();
        for (const auto& [key, t] : state) same &= back.count(key) && identical(back.at(key).data, t.data);
        INFO(label);
        CHECK(same);
        const float loss_a = a.step(b1.input.ptr(), b1.targets.data(), 0.03);
        const float loss_c = c.step(b1.input.ptr(), b1.targets.data(), 0.03);
        CHECK(loss_a == loss_c);
        Model ma = model, mc = model;
        a.download(ma);
        c.download(mc);
        bool params_same = true;
        for (const auto& [name, t] : ma.params) params_same &= identical(t.data, mc.param(name).data);
        std::printf("[gpu] %s state export -> checkpoint -> import -> step: %s\n", label.c_str(),
                    same && params_same && loss_a == loss_c ? "bit-identical" : "DIFFERS");
        CHECK(params_same);

        // Validation: nothing changes on a rejected import.
        const train::ParamMap before = c.optimizer_state();
        train::ParamMap bad = before;
        bad["nope/head.conv.weight"] = before.begin()->second;
        CHECK_THROWS_AS(c.set_optimizer_state(bad, 3), Error);
        bad = before;
        const std::string first_slot = before.begin()->first.substr(0, before.begin()->first.find('/'));
        bad[first_slot + "/blocks.0.dw.bn.running_mean"] = Tensor({1}); // not trainable
        CHECK_THROWS_AS(c.set_optimizer_state(bad, 3), Error);
        bad = before;
        bad.begin()->second = Tensor({3, 5});
        CHECK_THROWS_AS(c.set_optimizer_state(bad, 3), Error);
        bad = before;
        bad["momentum"] = Tensor({1}); // no '/'
        CHECK_THROWS_AS(c.set_optimizer_state(bad, 3), Error);
        CHECK_THROWS_AS(c.set_optimizer_state(before, -1), Error);
        const train::ParamMap after = c.optimizer_state();
        bool unchanged = after.size() == before.size() && c.optimizer_steps() == 3;
        for (const auto& [key, t] : before) unchanged &= identical(after.at(key).data, t.data);
        CHECK(unchanged);
        if (kind != train::OptimizerKind::RMSProp) {
            bad = before;
            bad["ms/head.conv.weight"] = before.begin()->second; // RMSProp's slot
            CHECK_THROWS_AS(c.set_optimizer_state(bad, 3), Error);
        }

        // Missing slots start where train::Optimizer starts them.
        c.set_optimizer_state({}, 5);
        CHECK(c.optimizer_steps() == 5);
        const train::ParamMap initial = c.optimizer_state();
        CHECK(initial.size() == state.size());
        bool initial_ok = true;
        for (const auto& [key, t] : initial) {
            const float want = key.rfind("ms/", 0) == 0 ? 1.0f : 0.0f;
            for (float v : t.data) initial_ok &= v == want;
        }
        CHECK(initial_ok);
    }

    // SGD without momentum keeps no state and refuses one.
    GpuTrainOptions plain;
    plain.optimizer.momentum = 0.0;
    Model model = random_model(config, 62);
    GpuTrainer t(model, N, H, W, TrainPrecision::FP32, plain);
    t.step(b1.input.ptr(), b1.targets.data(), 0.05);
    CHECK(t.optimizer_state().empty());
    CHECK(t.optimizer_steps() == 1);
    train::ParamMap some;
    some["momentum/head.conv.weight"] = Tensor(model.param("head.conv.weight").shape);
    CHECK_THROWS_AS(t.set_optimizer_state(some, 1), Error);

    // upload(): the inverse of download(), and only for the same architecture.
    Model other = random_model(config, 63);
    t.upload(other);
    Model back = model;
    t.download(back);
    bool same = true;
    for (const auto& [name, p] : other.params) same &= identical(back.param(name).data, p.data);
    CHECK(same);
    CustomOptions wider;
    wider.width = 0.5;
    wider.depth = 0.34;
    wider.num_classes = 10;
    CHECK_THROWS_AS(t.upload(random_model(custom_config(wider), 1)), Error);

    // Options are validated with train::Optimizer's rules.
    GpuTrainOptions bad_opt;
    bad_opt.optimizer.kind = train::OptimizerKind::RMSProp;
    bad_opt.optimizer.rms_decay = 1.0;
    CHECK_THROWS_AS(GpuTrainer(model, N, H, W, TrainPrecision::FP32, bad_opt), Error);
    bad_opt = GpuTrainOptions{};
    bad_opt.clip_grad_norm = -1.0;
    CHECK_THROWS_AS(GpuTrainer(model, N, H, W, TrainPrecision::FP32, bad_opt), Error);
    GpuTrainer u(model, N, H, W, TrainPrecision::FP32);
    u.compute_gradients(b1.input.ptr(), b1.targets.data());
    CHECK_THROWS_AS(u.apply_update(-0.1), Error);
}

// ---------------------------------------------------------------------------------------------
// Stop, checkpoint, destroy, resume: the same per-step losses as an uninterrupted run.

TEST_CASE("GPU fp32 training resumed from a checkpoint repeats the uninterrupted run bit for bit",
          "[gpu][train][optimizer][resume]") {
    EFFNET_SKIP_WITHOUT_GPU();
    ModelConfig config = tiny_config();
    config.dropout = 0.3f; // masks seeded per step: a resume must reproduce them
    for (BlockConfig& blk : config.blocks) blk.drop_path = blk.has_residual() ? 0.2f : 0.0f;
    const int N = 4, H = 64, W = 72, kSteps = 6, kStopAt = 3;
    std::vector<TrainBatch> batches;
    for (int i = 0; i < kSteps; ++i)
        batches.push_back(make_batch(N, H, W, config.num_classes, 70 + uint64_t(i)));
    train::ScheduleConfig schedule;
    schedule.base_lr = 0.05;
    schedule.warmup_steps = 2;
    schedule.total_steps = kSteps;
    const Model start = random_model(config, 81);

    for (train::OptimizerKind kind : kAllOptimizers) {
        GpuTrainOptions opt;
        opt.optimizer = optimizer_case(kind);
        opt.dropout = true;
        opt.deterministic = true;
        opt.clip_grad_norm = kind == train::OptimizerKind::SGD ? 2.0 : 0.0;
        const std::string label = train::optimizer_name(kind);
        auto run_steps = [&](GpuTrainer& t, int from, int to, std::vector<float>& losses) {
            for (int s = from; s < to; ++s)
                losses.push_back(t.step(batches[size_t(s)].input.ptr(), batches[size_t(s)].targets.data(),
                                        train::learning_rate(schedule, s), train::mix_seed(7, uint64_t(s))));
        };

        std::vector<float> full_losses, resumed_losses;
        Model full_model = start;
        {
            GpuTrainer t(full_model, N, H, W, TrainPrecision::FP32, opt);
            run_steps(t, 0, kSteps, full_losses);
            t.download(full_model);
        }

        const std::string path = temp_path("resume_" + label + ".safetensors");
        {
            Model m = start;
            GpuTrainer t(m, N, H, W, TrainPrecision::FP32, opt);
            run_steps(t, 0, kStopAt, resumed_losses);
            t.download(m);
            train::Optimizer holder(opt.optimizer);
            holder.set_state(t.optimizer_state(), t.optimizer_steps());
            train::TrainingState ts;
            ts.step = kStopAt;
            train::save_checkpoint(path, m, holder, ts);
        } // the trainer is gone: only the checkpoint carries the run on
        Model resumed_model;
        {
            const train::Checkpoint ck = train::load_checkpoint(path);
            fs::remove(path);
            REQUIRE(ck.state.step == kStopAt);
            resumed_model = ck.model;
            GpuTrainer t(resumed_model, N, H, W, TrainPrecision::FP32, opt);
            t.set_optimizer_state(ck.optimizer_state, ck.optimizer_steps);
            run_steps(t, int(ck.state.step), kSteps, resumed_losses);
            t.download(resumed_model);
        }
        bool params_same = true;
        for (const auto& [name, p] : full_model.params)
            params_same &= identical(resumed_model.param(name).data, p.data);
        const bool losses_same = resumed_losses == full_losses;
        std::printf(
            "[gpu] %s resume after %d of %d steps: losses %s, parameters %s (first loss %.6f, last %.6f)\n",
            label.c_str(), kStopAt, kSteps, losses_same ? "identical" : "DIFFER",
            params_same ? "identical" : "DIFFER", double(full_losses.front()), double(full_losses.back()));
        INFO(label);
        CHECK(losses_same);
        CHECK(params_same);
    }
}
