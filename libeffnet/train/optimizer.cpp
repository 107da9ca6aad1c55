// SGD, TF-style RMSProp and AdamW over canonical-name parameter maps. Per element the update is
// computed in double and rounded to float32 once; every element is independent, so the result
// does not depend on the thread count.
#include <cmath>

#include "effnet/error.hpp"
#include "effnet/train/optimizer.hpp"

namespace effnet::train {

bool default_weight_decay(const std::string& name) {
    const bool is_bn = name.find(".bn.") != std::string::npos || name.rfind("bn.", 0) == 0;
    const std::string suffix = ".bias";
    const bool is_bias =
        name == "bias" || (name.size() >= suffix.size() &&
                           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
    return !is_bn && !is_bias;
}

const char* optimizer_name(OptimizerKind k) {
    switch (k) {
    case OptimizerKind::SGD:
        return "sgd";
    case OptimizerKind::RMSProp:
        return "rmsprop";
    case OptimizerKind::AdamW:
        return "adamw";
    }
    return "?";
}

OptimizerKind parse_optimizer(const std::string& s) {
    if (s == "sgd") return OptimizerKind::SGD;
    if (s == "rmsprop") return OptimizerKind::RMSProp;
    if (s == "adamw") return OptimizerKind::AdamW;
    throw Error("unknown optimizer '" + s + "' (expected sgd, rmsprop or adamw)");
}

Optimizer::Optimizer(const OptimizerConfig& config) : config_(config) {
    EFFNET_CHECK(config.weight_decay >= 0, "optimizer: weight decay must be >= 0");
    EFFNET_CHECK(config.momentum >= 0 && config.momentum < 1, "optimizer: momentum must be in [0, 1)");
    EFFNET_CHECK(config.rms_decay > 0 && config.rms_decay < 1, "optimizer: RMSProp decay must be in (0, 1)");
    EFFNET_CHECK(config.rms_eps > 0, "optimizer: RMSProp eps must be > 0");
    EFFNET_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
                 "optimizer: AdamW betas must be in [0, 1)");
    EFFNET_CHECK(config.adam_eps > 0, "optimizer: AdamW eps must be > 0");
    EFFNET_CHECK(!config.nesterov || config.momentum > 0, "optimizer: Nesterov needs momentum > 0");
}

void Optimizer::set_state(ParamMap state, int64_t step_count) {
    EFFNET_CHECK(step_count >= 0, "optimizer: negative step count");
    state_ = std::move(state);
    steps_ = step_count;
}

Tensor& Optimizer::slot(const std::string& slot_name, const std::string& param, const Shape& shape,
                        float init, bool* created) {
    const std::string key = slot_name + "/" + param;
    auto it = state_.find(key);
    *created = it == state_.end();
    if (*created) it = state_.emplace(key, Tensor(shape, init)).first;
    EFFNET_CHECK(it->second.shape == shape, "optimizer state '" + key + "' has shape " +
                                                shape_str(it->second.shape) + ", parameter has " +
                                                shape_str(shape));
    return it->second;
}

void Optimizer::step(ParamMap& params, const ParamMap& grads, double lr) {
    EFFNET_CHECK(std::isfinite(lr) && lr >= 0, "optimizer: learning rate must be finite and >= 0");
    for (const auto& [name, g] : grads) {
        auto it = params.find(name);
        EFFNET_CHECK(it != params.end(), "optimizer: gradient for unknown parameter '" + name + "'");
        EFFNET_CHECK(it->second.shape == g.shape, "optimizer: gradient '" + name + "' has shape " +
                                                      shape_str(g.shape) + ", parameter has " +
                                                      shape_str(it->second.shape));
    }
    ++steps_;
    const OptimizerConfig& c = config_;
    for (const auto& [name, grad] : grads) {
        Tensor& param = params.at(name);
        float* p = param.ptr();
        const float* g = grad.ptr();
        const int64_t n = param.numel();
        const double wd = (c.decay_all || default_weight_decay(name)) ? c.weight_decay : 0.0;
        bool created = false;
        switch (c.kind) {
        case OptimizerKind::SGD: {
            if (c.momentum == 0) {
#pragma omp parallel for schedule(static) if (n > 65536)
                for (int64_t i = 0; i < n; ++i) {
                    const double gi = double(g[i]) + wd * double(p[i]);
                    p[i] = float(double(p[i]) - lr * gi);
                }
                break;
            }
            float* buf = slot("momentum", name, param.shape, 0.0f, &created).ptr();
            const double mu = c.momentum;
            const bool first = created;
            const bool nesterov = c.nesterov;
#pragma omp parallel for schedule(static) if (n > 65536)
            for (int64_t i = 0; i < n; ++i) {
                const double gi = double(g[i]) + wd * double(p[i]);
                const double b = first ? gi : mu * double(buf[i]) + gi;
                buf[i] = float(b);
                const double update = nesterov ? gi + mu * double(buf[i]) : double(buf[i]);
                p[i] = float(double(p[i]) - lr * update);
            }
            break;
        }
        case OptimizerKind::RMSProp: {
            float* ms = slot("ms", name, param.shape, 1.0f, &created).ptr();
            float* mom = slot("mom", name, param.shape, 0.0f, &created).ptr();
            const double rho = c.rms_decay, mu = c.momentum, eps = c.rms_eps;
#pragma omp parallel for schedule(static) if (n > 65536)
            for (int64_t i = 0; i < n; ++i) {
                const double gi = double(g[i]) + wd * double(p[i]);
                ms[i] = float(rho * double(ms[i]) + (1.0 - rho) * gi * gi);
                mom[i] = float(mu * double(mom[i]) + lr * gi / std::sqrt(double(ms[i]) + eps));
                p[i] = float(double(p[i]) - double(mom[i]));
            }
            break;
        }
        case OptimizerKind::AdamW: {
            float* m = slot("exp_avg", name, param.shape, 0.0f, &created).ptr();
            float* v = slot("exp_avg_sq", name, param.shape, 0.0f, &created).ptr();
            const double b1 = c.beta1, b2 = c.beta2, eps = c.adam_eps;
            const double correction1 = 1.0 - std::pow(b1, double(steps_));
            const double correction2 = 1.0 - std::pow(b2, double(steps_));
#pragma omp parallel for schedule(static) if (n > 65536)
            for (int64_t i = 0; i < n; ++i) {
                const double gi = double(g[i]);
                const double decayed = double(p[i]) * (1.0 - lr * wd);
                m[i] = float(b1 * double(m[i]) + (1.0 - b1) * gi);
                v[i] = float(b2 * double(v[i]) + (1.0 - b2) * gi * gi);
                const double mhat = double(m[i]) / correction1;
                const double vhat = double(v[i]) / correction2;
                p[i] = float(decayed - lr * mhat / (std::sqrt(vhat) + eps));
            }
            break;
        }
        }
    }
}

double clip_grad_norm(ParamMap& grads, double max_norm) {
    double sum = 0.0; // sequential in map order: the same value on every thread count
    for (const auto& [name, g] : grads)
        for (float x : g.data) sum += double(x) * double(x);
    const double norm = std::sqrt(sum);
    if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
        const double scale = max_norm / norm;
        for (auto& [name, g] : grads)
            for (float& x : g.data) x = float(double(x) * scale);
    }
    return norm;
}

} // namespace effnet::train
