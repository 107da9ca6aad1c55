// One training step on the CPU engine: train-mode forward (batch statistics, dropout and
// stochastic depth seeded by the step), label-smoothed cross-entropy, backward, optional
// clipping, optimizer update at the scheduled learning rate.
#include <cmath>

#include "cpu/ops.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"
#include "effnet/train/rng.hpp"
#include "effnet/train/trainer.hpp"

namespace effnet::train {

struct Trainer::Impl {
    explicit Impl(Model& model) : network(model) {}
    cpu::Network network;
};

namespace {

void check_batch(const Model& model, const Tensor& images, const std::vector<int64_t>& labels) {
    EFFNET_CHECK(images.rank() == 4 && images.shape[1] == model.config.in_channels,
                 "trainer: images must be [N, " + std::to_string(model.config.in_channels) + ", H, W], got " +
                     shape_str(images.shape));
    EFFNET_CHECK(images.shape[0] >= 1, "trainer: empty batch");
    EFFNET_CHECK(int64_t(labels.size()) == images.shape[0], "trainer: " + std::to_string(labels.size()) +
                                                                " labels for a batch of " +
                                                                std::to_string(images.shape[0]));
    for (int64_t label : labels)
        EFFNET_CHECK(label >= 0 && label < model.config.num_classes,
                     "trainer: label " + std::to_string(label) + " outside [0, " +
                         std::to_string(model.config.num_classes) + ")");
}

} // namespace

void count_hits(const Tensor& logits, const std::vector<int64_t>& targets, int k, int64_t* top1,
                int64_t* topk) {
    EFFNET_CHECK(logits.rank() == 2 && logits.shape[0] == int64_t(targets.size()),
                 "count_hits: logits " + shape_str(logits.shape) + " vs " + std::to_string(targets.size()) +
                     " targets");
    const int64_t n = logits.shape[0], classes = logits.shape[1];
    int64_t hits1 = 0, hitsk = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float* row = logits.ptr() + i * classes;
        const int64_t t = targets[i];
        EFFNET_CHECK(t >= 0 && t < classes, "count_hits: target " + std::to_string(t) + " out of range");
        // Rank of the target: classes scoring higher, ties broken by index (as a stable sort).
        int64_t rank = 0;
        for (int64_t j = 0; j < classes; ++j)
            if (row[j] > row[t] || (row[j] == row[t] && j < t)) ++rank;
        hits1 += rank < 1;
        hitsk += rank < k;
    }
    if (top1) *top1 = hits1;
    if (topk) *topk = hitsk;
}

Trainer::Trainer(Model& model, const TrainOptions& options)
    : model_(model), options_(options), optimizer_(options.optimizer), impl_(std::make_unique<Impl>(model)) {
    EFFNET_CHECK(options.label_smoothing >= 0 && options.label_smoothing < 1,
                 "trainer: label smoothing must be in [0, 1)");
    learning_rate(options.schedule, 0); // validates the schedule
}

Trainer::~Trainer() = default;

StepResult Trainer::train_step(const Tensor& images, const std::vector<int64_t>& labels) {
    check_batch(model_, images, labels);
    StepResult r;
    r.lr = learning_rate(options_.schedule, step_);
    cpu::ForwardOptions fo;
    fo.train = true;
    fo.update_running_stats = true;
    fo.dropout = options_.dropout;
    fo.seed = mix_seed(options_.seed, uint64_t(step_), 0x6d61736bull /* "mask" */);
    const cpu::ForwardResult out = impl_->network.forward(images, fo);
    Tensor dlogits;
    r.loss = cpu::softmax_cross_entropy(out.logits, labels, options_.label_smoothing, &dlogits);
    EFFNET_CHECK(std::isfinite(r.loss), "trainer: loss is not finite at step " + std::to_string(step_) +
                                            " (learning rate too high?)");
    count_hits(out.logits, labels, 1, &r.correct, nullptr);
    r.count = int64_t(labels.size());
    cpu::Gradients grads = impl_->network.backward(dlogits);
    r.grad_norm = clip_grad_norm(grads.params, options_.clip_grad_norm);
    optimizer_.step(model_.params, grads.params, r.lr);
    ++step_;
    return r;
}

EvalResult Trainer::evaluate(const Tensor& images, const std::vector<int64_t>& labels) {
    check_batch(model_, images, labels);
    cpu::ForwardOptions fo;
    fo.train = false;
    const cpu::ForwardResult out = impl_->network.forward(images, fo);
    EvalResult r;
    r.loss = cpu::softmax_cross_entropy(out.logits, labels, 0.0f, nullptr);
    r.count = int64_t(labels.size());
    count_hits(out.logits, labels, 5, &r.top1, &r.top5);
    return r;
}

} // namespace effnet::train
