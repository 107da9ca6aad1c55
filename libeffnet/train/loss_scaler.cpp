// Dynamic loss scaling for fp16 training (the logic only; the GPU trainer applies it).
#include <cmath>

#include "effnet/error.hpp"
#include "effnet/train/loss_scaler.hpp"

namespace effnet::train {

LossScaler::LossScaler(const LossScalerConfig& config) : config_(config), scale_(config.init_scale) {
    EFFNET_CHECK(config.init_scale > 0 && std::isfinite(config.init_scale),
                 "loss scaler: init scale must be > 0");
    EFFNET_CHECK(config.growth > 1, "loss scaler: growth factor must be > 1");
    EFFNET_CHECK(config.backoff > 0 && config.backoff < 1, "loss scaler: backoff factor must be in (0, 1)");
    EFFNET_CHECK(config.growth_interval >= 1, "loss scaler: growth interval must be >= 1");
    EFFNET_CHECK(config.min_scale > 0 && config.min_scale <= config.max_scale,
                 "loss scaler: need 0 < min scale <= max scale");
}

bool LossScaler::has_non_finite(const ParamMap& grads) {
    for (const auto& [name, g] : grads)
        for (float x : g.data)
            if (!std::isfinite(x)) return true;
    return false;
}

void LossScaler::unscale(ParamMap& grads) const {
    const double inv = 1.0 / scale_;
    for (auto& [name, g] : grads)
        for (float& x : g.data) x = float(double(x) * inv);
}

bool LossScaler::update(bool found_non_finite) {
    if (found_non_finite) {
        scale_ = std::max(config_.min_scale, scale_ * config_.backoff);
        good_steps_ = 0;
        ++skipped_;
        return false;
    }
    if (++good_steps_ >= config_.growth_interval) {
        scale_ = std::min(config_.max_scale, scale_ * config_.growth);
        good_steps_ = 0;
    }
    return true;
}

void LossScaler::set_state(double scale, int64_t good_steps, int64_t skipped) {
    EFFNET_CHECK(scale > 0 && std::isfinite(scale), "loss scaler: invalid scale in state");
    EFFNET_CHECK(good_steps >= 0 && skipped >= 0, "loss scaler: negative counters in state");
    scale_ = scale;
    good_steps_ = good_steps;
    skipped_ = skipped;
}

} // namespace effnet::train
