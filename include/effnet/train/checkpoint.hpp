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
#include <optional>
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

// Throws effnet::Error, writing nothing, when a tensor holds an unwritable value (below).
void save_checkpoint(const std::string& path, const Model& model, const Optimizer& optimizer,
                     const TrainingState& state);

// A value no checkpoint or export may hold: a non-finite number in a parameter, running
// statistic or optimizer state, or a negative BN running variance (no correct update makes one;
// it would make the next forward take the square root of a negative number).
struct UnwritableValue {
    std::string tensor; // as named in a checkpoint: "model/<name>" or "optim/<slot>/<name>"
    int64_t index = 0;  // flat element index
    float value = 0;
    std::string describe() const; // "tensor 'model/x' holds inf (element 3)"
};
// The first unwritable value of the model and (when given) the optimizer state, in name order.
std::optional<UnwritableValue> find_unwritable_value(const Model& model,
                                                     const ParamMap* optimizer_state = nullptr);

// An exclusive advisory lock (flock) on a file, held while the object lives. The kernel drops it
// when the process ends, kill -9 included, so a lock is never left stale. The file holds the
// holder's pid, for the message of whoever is refused.
class RunLock {
public:
    // Creates lock_path if needed. Throws effnet::Error naming `what` and the holder's pid when
    // another open of the file (another process) holds the lock.
    static RunLock acquire(const std::string& lock_path, const std::string& what);
    RunLock(RunLock&& other) noexcept;
    RunLock& operator=(RunLock&& other) noexcept;
    RunLock(const RunLock&) = delete;
    RunLock& operator=(const RunLock&) = delete;
    ~RunLock();
    const std::string& path() const { return path_; }

private:
    RunLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
    int fd_ = -1;
    std::string path_;
};

// The lock effnet-train holds on a checkpoint directory for its whole run.
std::string checkpoint_lock_path(const std::string& checkpoint_dir); // DIR/.effnet-train.lock

// Temporary files that SafetensorsWriter left behind for `final_path` when a write was killed:
// regular files named exactly <final_path>.tmp.XXXXXX (6 letters or digits). Removing them is
// safe only while no other process writes final_path: pass the lock that keeps them away.
struct RemovedTemporaries {
    int64_t files = 0;
    uint64_t bytes = 0;
};
bool is_temporary_of(const std::string& file_name, const std::string& final_name);
RemovedTemporaries remove_stale_temporaries(const std::string& final_path, const RunLock& held);

struct Checkpoint {
    Model model;
    ParamMap optimizer_state;
    int64_t optimizer_steps = 0;
    std::string optimizer_name;
    TrainingState state;
};
// Throws effnet::Error naming the file and the tensor at fault, also for an unwritable value
// (below) that a checkpoint from elsewhere may hold.
Checkpoint load_checkpoint(const std::string& path);

// The architecture as JSON and back (every block field), for checkpoint metadata.
std::string config_to_json(const ModelConfig& config);
ModelConfig config_from_json(const std::string& json); // throws effnet::Error on bad input

} // namespace effnet::train
