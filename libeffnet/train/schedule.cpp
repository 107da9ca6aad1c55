// Learning-rate schedules per optimizer step: linear warmup, then cosine decay or step decay.
#include <cmath>

#include "effnet/error.hpp"
#include "effnet/train/schedule.hpp"

namespace effnet::train {

const char* schedule_name(ScheduleKind k) {
    return k == ScheduleKind::Cosine ? "cosine" : "step";
}

ScheduleKind parse_schedule(const std::string& s) {
    if (s == "cosine") return ScheduleKind::Cosine;
    if (s == "step") return ScheduleKind::Step;
    throw Error("unknown schedule '" + s + "' (expected cosine or step)");
}

double learning_rate(const ScheduleConfig& c, int64_t step) {
    EFFNET_CHECK(step >= 0, "learning_rate: negative step " + std::to_string(step));
    EFFNET_CHECK(std::isfinite(c.base_lr) && c.base_lr >= 0, "schedule: base lr must be >= 0");
    EFFNET_CHECK(c.warmup_steps >= 0, "schedule: warmup steps must be >= 0");
    if (step < c.warmup_steps) return c.base_lr * double(step + 1) / double(c.warmup_steps);
    const int64_t t = step - c.warmup_steps;
    if (c.kind == ScheduleKind::Step) {
        EFFNET_CHECK(c.step_size >= 1, "schedule: step size must be >= 1");
        EFFNET_CHECK(c.gamma > 0, "schedule: gamma must be > 0");
        return c.base_lr * std::pow(c.gamma, double(t / c.step_size));
    }
    EFFNET_CHECK(c.total_steps >= 1, "schedule: total steps must be >= 1");
    const int64_t span = c.total_steps - c.warmup_steps;
    if (span <= 0 || t >= span) return c.min_lr;
    const double progress = double(t) / double(span);
    return c.min_lr + 0.5 * (c.base_lr - c.min_lr) * (1.0 + std::cos(M_PI * progress));
}

} // namespace effnet::train
