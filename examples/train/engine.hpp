#pragma once
// effnet-train's two engines behind one interface, so that the loop in main.cpp (data, progress,
// log, validation, checkpoints, export) is the same for both:
//   cpu: train::Trainer (the CPU reference engine), as before;
//   cuda: effnet::GpuTrainer, with train::LossScaler driving the loss scale under amp-fp16, and
//         validation through an fp32 effnet::InferenceSession built from the current weights.
// Both keep the optimizer state in train::Optimizer's representation, so a checkpoint written
// by either resumes on either.
#include <cstdint>
#include <memory>
#include <string>

#include "effnet/gpu_training.hpp"
#include "effnet/model.hpp"
#include "effnet/train/checkpoint.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/param_map.hpp"
#include "effnet/train/trainer.hpp"

namespace effnet::examples {

class TrainEngine {
public:
    virtual ~TrainEngine() = default;

    // One training step on a batch (images [n, 3, R, R], labels in [0, classes)): an optimizer
    // update, or under amp-fp16 a step the loss scaler skips for non-finite gradients.
    virtual train::StepResult train_step(const train::Batch& batch) = 0;
    // Steps taken (skipped amp-fp16 steps included): the schedule's and the dropout seeds' position.
    virtual int64_t step() const = 0;

    // Validation pass: begin_evaluation(), evaluate() per batch (eval mode, running
    // statistics, loss without label smoothing), end_evaluation().
    virtual void begin_evaluation() {}
    virtual train::EvalResult evaluate(const train::Batch& batch) = 0;
    virtual void end_evaluation() {}

    // Makes the model hold the current parameters and running statistics (for a checkpoint or
    // the export; the GPU engine downloads them).
    virtual void sync_model() = 0;
    // The optimizer holding the current state (the GPU engine downloads it into one).
    virtual const train::Optimizer& optimizer() = 0;
    // Writes the loss scaler's state into a checkpoint's state (the CPU engine has none and
    // leaves what is there).
    virtual void save_scaler(train::TrainingState& state) const = 0;
    // Continues a run: the checkpoint's optimizer state, its step counter and (amp-fp16 from an
    // amp-fp16 checkpoint) its loss scaler.
    virtual void resume(train::ParamMap optimizer_state, int64_t optimizer_steps,
                        const train::TrainingState& state) = 0;
    // Where the data loader may decode training batches straight to (DataLoader::set_destinations):
    // buffer `which` (0 or 1, used in turn) of destination_images() images of [3, R, R] floats,
    // or null when the engine has none (the CPU engine trains from the batch's own tensor, which
    // the loader decodes into directly). train_step takes a batch that lies there without a copy.
    virtual float* batch_destination(int which) {
        (void)which;
        return nullptr;
    }
    virtual int64_t destination_images() const { return 0; }
    // Appended to the epoch summary line; empty: nothing to add.
    virtual std::string epoch_note() const { return ""; }
};

class Communicator;

// Data parallelism and accumulation for the CPU engine.
struct CpuParallel {
    // null or a world of 1: a single process. Else every rank trains its part of each global
    // batch: the parts' mean-loss gradients weighted by their share of the global batch
    // (train::part_weight) are summed over the ranks with allreduce in buckets of bucket_bytes
    // (backward order), the running statistics averaged with the same weights, the loss and hits
    // summed; then every rank applies the same update. A rank whose part is empty (all its
    // images unreadable, or fewer images than ranks) takes part with weight 0.
    Communicator* comm = nullptr;
    size_t bucket_bytes = size_t(4) << 20;
    // Synchronized batch norm: every train-mode BN normalises with the global batch's statistics
    // (sums all-reduced in the forward and the backward); the running statistics are then the
    // same on every rank.
    bool sync_bn = false;
    // Single process: split each batch into this many micro-batches (train::Trainer's
    // accumulation): what `micro_batches` ranks without synchronized batch norm compute.
    int micro_batches = 1;
};

// Keeps a reference to model (updated in place).
std::unique_ptr<TrainEngine> make_cpu_engine(Model& model, const train::TrainOptions& options,
                                             const CpuParallel& parallel = {});

// Data parallelism for the GPU engine: gradients averaged by `reducer` (NCCL) in buckets on the
// trainer's communication stream, the AMP skip decision agreed, losses and hits summed through
// `comm`; the GPU is `device`.
struct GpuParallel {
    Communicator* comm = nullptr;
    GradientAllReduce* reducer = nullptr;
    size_t bucket_bytes = size_t(4) << 20;
    int device = 0;
};

// Keeps a reference to model (written on sync_model()). Every step trains exactly `batch` images:
// a smaller batch (one that lost unreadable images) is filled up by repeating its own images.
// Validation batches of up to `eval_batch` images run through an fp32 InferenceSession.
// Throws effnet::Error when no GPU is usable.
std::unique_ptr<TrainEngine> make_gpu_engine(Model& model, const train::TrainOptions& options,
                                             TrainPrecision precision, int batch, int eval_batch,
                                             int resolution, const GpuParallel& parallel = {});

} // namespace effnet::examples
