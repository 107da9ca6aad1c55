#pragma once
// What effnet-train does with its output files before it trains, so that a run never destroys
// an input, never interleaves with another run, and cleans up after killed runs:
//   - the checkpoint directory (and the export's file) are locked for the whole run: a second run
//     on them is refused, naming the other run's pid;
//   - once locked, temporaries that killed writes left (<file>.tmp.XXXXXX) are removed;
//   - no output (checkpoint, export, its labels file, log, plot) may be one of the inputs
//     (--weights, the checkpoint being resumed, an image of --data or --val).
#include <memory>
#include <string>
#include <vector>

#include "effnet/train/checkpoint.hpp"
#include "effnet/train/dataset.hpp"
#include "options.hpp"

namespace effnet::examples {

// The locks a run holds until it ends.
struct RunLocks {
    std::vector<train::RunLock> held;
};

// Creates the checkpoint directory, takes the locks, removes stale temporaries (one line on
// stderr when it removed any). Throws effnet::Error when another run holds a lock.
RunLocks lock_outputs(const TrainArgs& args);

// Throws effnet::Error when an output names an input.
void check_outputs_are_not_inputs(const TrainArgs& args, const train::ImageFolder& train_set,
                                  const train::ImageFolder* val_set);

std::string checkpoint_path(const TrainArgs& args);      // "" without --checkpoint-dir
std::string labels_path(const std::string& export_path); // OUT.labels.txt beside OUT.safetensors

} // namespace effnet::examples
