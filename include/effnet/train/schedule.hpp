#pragma once
// Learning-rate schedules (per optimizer step): linear warmup, then cosine or step decay.
#include <cstdint>
#include <string>

namespace effnet::train {

enum class ScheduleKind { Cosine, Step };
const char* schedule_name(ScheduleKind k);         // "cosine" | "step"
ScheduleKind parse_schedule(const std::string& s); // throws effnet::Error on unknown names

struct ScheduleConfig {
    ScheduleKind kind = ScheduleKind::Cosine;
    double base_lr = 0.1;
    int64_t warmup_steps = 0; // linear: lr = base * (step + 1) / warmup_steps for step < warmup
    int64_t total_steps = 1;  // cosine: reaches min_lr at total_steps
    double min_lr = 0.0;
    // step: lr = base * gamma^floor((step - warmup) / step_size) after the warmup
    int64_t step_size = 1;
    double gamma = 0.1;
};
// Learning rate for the 0-based optimizer step `step`. Throws on an invalid config.
double learning_rate(const ScheduleConfig& config, int64_t step);

} // namespace effnet::train
