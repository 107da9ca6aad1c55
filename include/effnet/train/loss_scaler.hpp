#pragma once
// AMP dynamic loss scaling (fp16). The loss is multiplied by scale() before backward; the
// gradients are checked: any inf/NaN skips the step and multiplies the scale by backoff;
// otherwise they are unscaled and applied, and after growth_interval consecutive good steps the
// scale is multiplied by growth.
#include <cstdint>

#include "effnet/train/param_map.hpp"

namespace effnet::train {

struct LossScalerConfig {
    double init_scale = 65536.0;
    double growth = 2.0;
    double backoff = 0.5;
    int64_t growth_interval = 2000;
    double min_scale = 1.0;        // never backs off below this
    double max_scale = 16777216.0; // 2^24: never grows above this
};

class LossScaler {
public:
    explicit LossScaler(const LossScalerConfig& config = {});
    double scale() const { return scale_; }
    // True when any gradient element is inf or NaN.
    static bool has_non_finite(const ParamMap& grads);
    // Multiplies every gradient by 1/scale().
    void unscale(ParamMap& grads) const;
    // Records the outcome of one step; returns true when the step must be applied (no inf/NaN).
    bool update(bool found_non_finite);

    int64_t good_steps() const { return good_steps_; }
    int64_t skipped_steps() const { return skipped_; }
    const LossScalerConfig& config() const { return config_; }
    void set_state(double scale, int64_t good_steps, int64_t skipped);

private:
    LossScalerConfig config_;
    double scale_;
    int64_t good_steps_ = 0;
    int64_t skipped_ = 0;
};

} // namespace effnet::train
