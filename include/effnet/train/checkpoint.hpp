#pragma once
// Checkpoints: one safetensors file holding
//   model/<name>        every parameter and running statistic (F32)
//   optim/<slot>/<name> optimizer state (F32)
//   state/counters      I64 [global step, epoch, batch in epoch, optimizer steps, seed]
//   state/scaler        F64 [scale, good steps, skipped steps]
// and metadata "model_config" (the full architecture as JSON, so a checkpoint is
// self-contained), "optimizer", "checkpoint_format" = "effnet-checkpoint-1", plus caller entries.
// Written atomically (SafetensorsWriter: a temporary file in the same directory, fsync, rename,
// fsync of the directory): a kill at any moment leaves either the previous or the new checkpoint.
#include <cstdint>
#include <map>
#include <string>

#include "effnet/config.hpp"
#include "effnet/model.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/param_map.hpp"

namespace effnet::train {

struct TrainingState {
    int64_t step = 0;           // optimizer steps taken (global)
    int64_t epoch = 0;          // epoch to continue in
    int64_t batch_in_epoch = 0; // first batch of `epoch` not yet trained
    uint64_t seed = 0;
    double scaler_scale = 1.0;
    int64_t scaler_good_steps = 0;
    int64_t scaler_skipped = 0;
    std::map<std::string, std::string> metadata; // caller's (e.g. the training arguments as JSON)
};

void save_checkpoint(const std::string& path, const Model& model, const Optimizer& optimizer,
                     const TrainingState& state);

struct Checkpoint {
    Model model;
    ParamMap optimizer_state;
    int64_t optimizer_steps = 0;
    std::string optimizer_name;
    TrainingState state;
};
// Throws effnet::Error naming the file and the tensor at fault.
Checkpoint load_checkpoint(const std::string& path);

// The architecture as JSON and back (every block field), for checkpoint metadata.
std::string config_to_json(const ModelConfig& config);
ModelConfig config_from_json(const std::string& json); // throws effnet::Error on bad input

} // namespace effnet::train
