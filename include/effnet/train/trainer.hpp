#pragma once
// Trainer: one CPU-engine step of forward, label-smoothed cross-entropy, backward, clipping and update.
#include <cstdint>
#include <memory>
#include <vector>

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
