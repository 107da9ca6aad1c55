// Optimizers, schedules, gradient clipping and the AMP loss scaler against values computed
// here by independent formulas written out in double precision.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "effnet/error.hpp"
#include "effnet/train/loss_scaler.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/param_map.hpp"
#include "effnet/train/schedule.hpp"

using namespace effnet;
using namespace effnet::train;

namespace {

// A weight (decayed) and a BN parameter (never decayed by default), 3 elements each.
ParamMap make_params() {
    ParamMap p;
    p["blocks.0.dw.conv.weight"] = Tensor({3});
    p["blocks.0.dw.conv.weight"].data = {0.5f, -1.25f, 2.0f};
    p["blocks.0.dw.bn.weight"] = Tensor({3});
    p["blocks.0.dw.bn.weight"].data = {1.0f, 0.75f, -0.3f};
    return p;
}

ParamMap make_grads(double k) {
    ParamMap g;
    g["blocks.0.dw.conv.weight"] = Tensor({3});
    g["blocks.0.dw.conv.weight"].data = {float(0.1 * k), float(-0.4 * k), float(0.25 * k)};
    g["blocks.0.dw.bn.weight"] = Tensor({3});
    g["blocks.0.dw.bn.weight"].data = {float(-0.2 * k), float(0.05 * k), float(0.3 * k)};
    return g;
}

// Every element within a relative 1e-6 (float32 rounding of a handful of operations, each
// computed in double and rounded once) of the reference.
void require_close(const ParamMap& got, const std::map<std::string, std::vector<double>>& want) {
    for (const auto& [name, values] : want) {
        const Tensor& t = got.at(name);
        REQUIRE(t.numel() == int64_t(values.size()));
        for (size_t i = 0; i < values.size(); ++i) {
            INFO(name << "[" << i << "] = " << t.data[i] << ", expected " << values[i]);
            REQUIRE(std::fabs(double(t.data[i]) - values[i]) <= 1e-6 * std::max(1.0, std::fabs(values[i])));
        }
    }
}

std::vector<double> as_double(const Tensor& t) {
    return std::vector<double>(t.data.begin(), t.data.end());
}

} // namespace

TEST_CASE("weight decay is off for batch-norm parameters and biases", "[train][optim]") {
    CHECK(default_weight_decay("stem.conv.weight"));
    CHECK(default_weight_decay("blocks.3.se.reduce.weight"));
    CHECK(default_weight_decay("classifier.weight"));
    CHECK_FALSE(default_weight_decay("classifier.bias"));
    CHECK_FALSE(default_weight_decay("blocks.3.se.expand.bias"));
    CHECK_FALSE(default_weight_decay("stem.bn.weight"));
    CHECK_FALSE(default_weight_decay("blocks.10.project.bn.bias"));
}

TEST_CASE("SGD with momentum, Nesterov and weight decay: two steps by hand", "[train][optim]") {
    for (bool nesterov : {false, true}) {
        OptimizerConfig c;
        c.kind = OptimizerKind::SGD;
        c.momentum = 0.9;
        c.nesterov = nesterov;
        c.weight_decay = 0.01;
        Optimizer opt(c);
        ParamMap params = make_params();
        std::map<std::string, std::vector<double>> p, buf;
        for (auto& [n, t] : params) p[n] = as_double(t), buf[n] = std::vector<double>(3, 0.0);
        const double lrs[2] = {0.1, 0.05};
        for (int s = 0; s < 2; ++s) {
            const ParamMap g = make_grads(1.0 + s);
            opt.step(params, g, lrs[s]);
            for (auto& [n, values] : p) {
                const double wd = n.find(".bn.") != std::string::npos ? 0.0 : 0.01;
                for (size_t i = 0; i < 3; ++i) {
                    const double d = double(g.at(n).data[i]) + wd * values[i];
                    buf[n][i] = s == 0 ? d : 0.9 * buf[n][i] + d;
                    const double step = nesterov ? d + 0.9 * buf[n][i] : buf[n][i];
                    values[i] -= lrs[s] * step;
                }
            }
        }
        INFO("nesterov " << nesterov);
        require_close(params, p);
        CHECK(opt.step_count() == 2);
        CHECK(opt.state().count("momentum/blocks.0.dw.conv.weight") == 1);
    }
}

TEST_CASE("plain SGD without momentum keeps no state", "[train][optim]") {
    OptimizerConfig c;
    c.momentum = 0;
    Optimizer opt(c);
    ParamMap params = make_params();
    opt.step(params, make_grads(1), 0.5);
    require_close(params, {{"blocks.0.dw.conv.weight", {0.5 - 0.05, -1.25 + 0.2, 2.0 - 0.125}}});
    CHECK(opt.state().empty());
}

TEST_CASE("RMSProp as TensorFlow: eps inside the square root, ms starting at 1", "[train][optim]") {
    OptimizerConfig c;
    c.kind = OptimizerKind::RMSProp;
    c.rms_decay = 0.9;
    c.momentum = 0.9;
    c.rms_eps = 1e-3;
    c.weight_decay = 1e-5;
    Optimizer opt(c);
    ParamMap params = make_params();
    std::map<std::string, std::vector<double>> p, ms, mom;
    for (auto& [n, t] : params)
        p[n] = as_double(t), ms[n] = std::vector<double>(3, 1.0), mom[n] = std::vector<double>(3, 0.0);
    const double lrs[3] = {0.016, 0.008, 0.004};
    for (int s = 0; s < 3; ++s) {
        const ParamMap g = make_grads(1.0 + 2 * s);
        opt.step(params, g, lrs[s]);
        for (auto& [n, values] : p) {
            const double wd = n.find(".bn.") != std::string::npos ? 0.0 : 1e-5;
            for (size_t i = 0; i < 3; ++i) {
                const double d = double(g.at(n).data[i]) + wd * values[i];
                ms[n][i] = 0.9 * ms[n][i] + 0.1 * d * d;
                mom[n][i] = 0.9 * mom[n][i] + lrs[s] * d / std::sqrt(ms[n][i] + 1e-3);
                values[i] -= mom[n][i];
            }
        }
    }
    require_close(params, p);
    require_close(opt.state(), {{"ms/blocks.0.dw.bn.weight", ms["blocks.0.dw.bn.weight"]}});
}

TEST_CASE("AdamW: decoupled weight decay and bias correction", "[train][optim]") {
    OptimizerConfig c;
    c.kind = OptimizerKind::AdamW;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.adam_eps = 1e-8;
    c.weight_decay = 0.05;
    Optimizer opt(c);
    ParamMap params = make_params();
    std::map<std::string, std::vector<double>> p, m, v;
    for (auto& [n, t] : params)
        p[n] = as_double(t), m[n] = std::vector<double>(3, 0.0), v[n] = std::vector<double>(3, 0.0);
    const double lrs[2] = {1e-2, 3e-3};
    for (int s = 0; s < 2; ++s) {
        const ParamMap g = make_grads(s == 0 ? 1.0 : -0.5);
        opt.step(params, g, lrs[s]);
        const int t = s + 1;
        for (auto& [n, values] : p) {
            const double wd = n.find(".bn.") != std::string::npos ? 0.0 : 0.05;
            for (size_t i = 0; i < 3; ++i) {
                const double d = g.at(n).data[i];
                values[i] *= 1.0 - lrs[s] * wd;
                m[n][i] = 0.9 * m[n][i] + 0.1 * d;
                v[n][i] = 0.999 * v[n][i] + 0.001 * d * d;
                const double mhat = m[n][i] / (1 - std::pow(0.9, t));
                const double vhat = v[n][i] / (1 - std::pow(0.999, t));
                values[i] -= lrs[s] * mhat / (std::sqrt(vhat) + 1e-8);
            }
        }
    }
    require_close(params, p);
    // The first AdamW step moves every (undecayed) parameter by about lr * sign(g).
    CHECK(opt.step_count() == 2);
}

TEST_CASE("optimizer rejects mismatched gradients with a clear error", "[train][optim]") {
    Optimizer opt(OptimizerConfig{});
    ParamMap params = make_params();
    ParamMap grads;
    grads["nope.weight"] = Tensor({3});
    REQUIRE_THROWS_WITH(opt.step(params, grads, 0.1), Catch::Contains("nope.weight"));
    grads.clear();
    grads["blocks.0.dw.bn.weight"] = Tensor({4});
    REQUIRE_THROWS_WITH(opt.step(params, grads, 0.1), Catch::Contains("[4]"));
    REQUIRE_THROWS(parse_optimizer("adam"));
}

TEST_CASE("gradient clipping by global norm", "[train][optim]") {
    ParamMap g = make_grads(1.0);
    double sum = 0;
    for (auto& [n, t] : g)
        for (float x : t.data) sum += double(x) * x;
    const double norm = std::sqrt(sum);
    ParamMap unclipped = g;
    CHECK(clip_grad_norm(unclipped, 10.0) == Approx(norm).epsilon(1e-12));
    CHECK(unclipped.at("blocks.0.dw.bn.weight").data == g.at("blocks.0.dw.bn.weight").data);
    ParamMap clipped = g;
    clip_grad_norm(clipped, 0.1);
    double after = 0;
    for (auto& [n, t] : clipped)
        for (float x : t.data) after += double(x) * x;
    CHECK(std::sqrt(after) == Approx(0.1).epsilon(1e-6)); // float rounding of each element
    CHECK(clipped.at("blocks.0.dw.conv.weight").data[1] == Approx(-0.4 * 0.1 / norm).epsilon(1e-6));
}

TEST_CASE("warmup + cosine schedule at key steps", "[train][schedule]") {
    ScheduleConfig c;
    c.kind = ScheduleKind::Cosine;
    c.base_lr = 0.4;
    c.warmup_steps = 10;
    c.total_steps = 110;
    c.min_lr = 0.0;
    CHECK(learning_rate(c, 0) == Approx(0.04)); // (0+1)/10 of base
    CHECK(learning_rate(c, 4) == Approx(0.2));
    CHECK(learning_rate(c, 9) == Approx(0.4));  // warmup ends at base
    CHECK(learning_rate(c, 10) == Approx(0.4)); // cosine starts at base
    CHECK(learning_rate(c, 60) == Approx(0.2)); // half way: cos(pi/2) = 0
    CHECK(learning_rate(c, 35) == Approx(0.2 * (1 + std::cos(M_PI * 0.25))));
    CHECK(learning_rate(c, 110) == 0.0);
    CHECK(learning_rate(c, 500) == 0.0);
    c.min_lr = 0.01;
    CHECK(learning_rate(c, 60) == Approx(0.01 + 0.195));
    REQUIRE_THROWS(learning_rate(c, -1));
}

TEST_CASE("step schedule decays by gamma every step_size steps after warmup", "[train][schedule]") {
    ScheduleConfig c;
    c.kind = ScheduleKind::Step;
    c.base_lr = 0.256;
    c.warmup_steps = 2;
    c.step_size = 3;
    c.gamma = 0.97;
    CHECK(learning_rate(c, 0) == Approx(0.128));
    CHECK(learning_rate(c, 2) == Approx(0.256));
    CHECK(learning_rate(c, 4) == Approx(0.256));
    CHECK(learning_rate(c, 5) == Approx(0.256 * 0.97));
    CHECK(learning_rate(c, 11) == Approx(0.256 * 0.97 * 0.97 * 0.97));
    c.step_size = 0;
    REQUIRE_THROWS(learning_rate(c, 5));
}

TEST_CASE("loss scaler: skip on inf/NaN, back off, grow after N good steps", "[train][amp]") {
    LossScalerConfig c;
    c.init_scale = 1024;
    c.growth_interval = 3;
    LossScaler s(c);
    CHECK(s.scale() == 1024);

    ParamMap grads = make_grads(1.0);
    CHECK_FALSE(LossScaler::has_non_finite(grads));
    grads["blocks.0.dw.bn.weight"].data[2] = std::numeric_limits<float>::infinity();
    CHECK(LossScaler::has_non_finite(grads));
    grads["blocks.0.dw.bn.weight"].data[2] = std::numeric_limits<float>::quiet_NaN();
    CHECK(LossScaler::has_non_finite(grads));

    CHECK_FALSE(s.update(true)); // overflow: skip, halve
    CHECK(s.scale() == 512);
    CHECK(s.skipped_steps() == 1);
    CHECK(s.update(false));
    CHECK(s.update(false));
    CHECK(s.scale() == 512);     // two good steps: not yet
    CHECK_FALSE(s.update(true)); // an overflow resets the count of good steps
    CHECK(s.scale() == 256);
    CHECK(s.good_steps() == 0);
    for (int i = 0; i < 3; ++i) CHECK(s.update(false));
    CHECK(s.scale() == 512); // third consecutive good step doubles
    CHECK(s.good_steps() == 0);

    // Unscale divides by the scale.
    ParamMap g = make_grads(512.0);
    s.unscale(g);
    CHECK(g.at("blocks.0.dw.conv.weight").data[1] == Approx(-0.4).epsilon(1e-7));

    // Bounded below by min_scale.
    LossScalerConfig small;
    small.init_scale = 2;
    small.min_scale = 1;
    LossScaler t(small);
    t.update(true);
    t.update(true);
    CHECK(t.scale() == 1);
    REQUIRE_THROWS(LossScaler(LossScalerConfig{0.0}));
}
