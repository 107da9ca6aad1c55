#pragma once
// Trainer: one CPU-engine step of forward, label-smoothed cross-entropy, backward, clipping and update.
#include <cstdint>
#include <memory>
#include <vector>

#include "effnet/cpu_engine.hpp"
#include "effnet/model.hpp"
#include "effnet/tensor.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/schedule.hpp"

namespace effnet::train {

struct TrainOptions {
    OptimizerConfig optimizer;
    ScheduleConfig schedule;
    float label_smoothing = 0.0f;
    double clip_grad_norm = 0.0; // <= 0: off
    uint64_t seed = 0;           // dropout / stochastic-depth masks: mix_seed(seed, step)
    bool dropout = true;         // apply the model's dropout and stochastic depth
};

struct StepResult {
    double loss = 0;
    double lr = 0;
    int64_t correct = 0; // top-1 hits in the batch (train-mode logits)
    int64_t count = 0;
    double grad_norm = 0; // before clipping
};

struct EvalResult {
    double loss = 0;
    int64_t top1 = 0, top5 = 0, count = 0;
};

// A part's weight in a step's gradient: its share of the step's images, as float (the same
// number on every rank and in train_step's micro-batches).
float part_weight(int64_t part_count, int64_t total_count);
// Whether a model tensor is a BN running statistic ("...running_mean" / "...running_var").
bool is_running_stat(const std::string& name);

// Counts of top-1 and top-k hits of logits [N, K] against targets.
void count_hits(const Tensor& logits, const std::vector<int64_t>& targets, int k, int64_t* top1,
                int64_t* topk);

class Trainer {
public:
    // Keeps a reference to the model; its parameters are updated in place.
    Trainer(Model& model, const TrainOptions& options);
    ~Trainer();
    Trainer(const Trainer&) = delete;
    Trainer& operator=(const Trainer&) = delete;

    // One optimizer step on images [N, 3, H, W] with labels in [0, classes).
    StepResult train_step(const Tensor& images, const std::vector<int64_t>& labels);
    // Gradient accumulation: one optimizer step on the batch split into `micro_batches` parts
    // (shard_range: contiguous, sizes differing by at most one; at most N parts), each its own
    // forward and backward with its own batch statistics and the step's dropout seed. The
    // gradients are the parts' mean-loss gradients weighted by their sizes (part_weight), summed
    // in part order; the running statistics are the parts' updates (each from the step's starting
    // values) averaged with the same weights. This is what N data-parallel ranks without
    // synchronized batch norm compute. micro_batches 1: train_step exactly.
    StepResult train_step(const Tensor& images, const std::vector<int64_t>& labels, int micro_batches);

    // The pieces of a step, for data-parallel training (a rank's part of a global batch):
    // forward and backward of one part in train mode (running statistics updated from the
    // part's batch statistics, the step's dropout seed), adding weight * its mean-loss gradient
    // into grads (inserted on first use: weight * g, then += weight * g). No update, no step.
    // loss, correct and count are the part's own. With bn_reducer (synchronized batch norm over
    // the ranks, cpu::ForwardOptions::bn_reducer) the weight scales dlogits before the backward
    // instead (the ranks' BN backward sums must add gradients of one loss) and the gradients are
    // added as they come.
    StepResult accumulate_gradients(const Tensor& images, const std::vector<int64_t>& labels, float weight,
                                    ParamMap& grads, cpu::BatchNormReducer* bn_reducer = nullptr);
    // Clips grads (options().clip_grad_norm), applies the optimizer at the step's learning rate
    // and advances the step. Returns lr and grad_norm.
    StepResult apply_gradients(ParamMap& grads);
    // Eval-mode forward (running statistics); loss without label smoothing.
    EvalResult evaluate(const Tensor& images, const std::vector<int64_t>& labels);

    Model& model() { return model_; }
    Optimizer& optimizer() { return optimizer_; }
    const TrainOptions& options() const { return options_; }
    int64_t step() const { return step_; }
    void set_step(int64_t step) { step_ = step; }

private:
    Model& model_;
    TrainOptions options_;
    Optimizer optimizer_;
    int64_t step_ = 0;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace effnet::train
