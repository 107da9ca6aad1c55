#pragma once
// effnet-train's options: parsing, validation, and the subset that defines a training run
// (stored in every checkpoint so that --resume continues the same run).
#include <cstdint>
#include <map>
#include <string>

namespace effnet::examples {

struct TrainArgs {
    // Data and output: may change between a run and its resume.
    std::string data, val;
    std::string checkpoint_dir, export_path, log_path, plot_path;
    int workers = 2;
    int threads = 0;          // OpenMP threads; 0: the runtime's default
    int checkpoint_every = 0; // steps; 0: at the end of each epoch only
    int64_t max_steps = 0;    // stop (with a checkpoint) once this many steps are done; 0: off
    bool resume = false;
    std::string device = "cpu";
    std::string precision = "fp32";
    // Data parallelism (may change on --resume). --batch is the global batch: every rank trains
    // its shard_range of each batch.
    bool sync_bn = false;       // batch-norm statistics over the global batch
    int micro_batches = 1;      // single process: accumulate gradients over this many parts
    double bucket_mb = 4;       // gradient all-reduce bucket size
    std::string dist_init_file; // torchrun-style launches on GPUs: NCCL's id through this file
    double dist_timeout = 300;  // seconds a rank waits for that file
    bool force_nccl = false;    // --device cuda, one process: the NCCL path anyway (to measure it)

    // The run: must match on --resume (taken from the checkpoint when not given).
    std::string weights, preset;
    double width = 0, depth = 0; // custom model when > 0
    int classes = 0;             // 0: number of class folders
    int epochs = 10;
    int batch = 32;
    double lr = 0; // 0: the optimizer's default
    std::string optimizer = "sgd";
    double momentum = 0.9;
    double weight_decay = -1; // < 0: the optimizer's default
    std::string schedule = "cosine";
    double warmup_epochs = 0;
    double step_epochs = 2.4; // step schedule: decay every this many epochs (EfficientNet: 2.4)
    double step_gamma = 0.97; // ... by this factor
    double label_smoothing = 0.1;
    double clip_grad_norm = 0;
    int resolution = 0; // 0: the model's native resolution
    uint64_t seed = 0;
    bool no_dropout = false;
};

// Parses argv; prints help and returns false for --help. Throws effnet::Error for bad input.
bool parse_train_args(int argc, char** argv, TrainArgs& args, std::map<std::string, std::string>& given);

// The run-defining options as normalised strings ("lr" -> "0.1"), for the checkpoint.
std::map<std::string, std::string> run_options(const TrainArgs& args);
// On --resume: options the user gave must equal the checkpoint's; the others are taken from it.
void merge_resumed_options(TrainArgs& args, const std::map<std::string, std::string>& given,
                           const std::map<std::string, std::string>& stored);

} // namespace effnet::examples
