// One training step on the CPU engine: train-mode forward (batch statistics, dropout and
// stochastic depth seeded by the step), label-smoothed cross-entropy, backward, optional
// clipping, optimizer update at the scheduled learning rate.
#include <algorithm>
#include <cmath>

#include "cpu/ops.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"
#include "effnet/train/dataset.hpp"
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

float part_weight(int64_t part_count, int64_t total_count) {
    EFFNET_CHECK(total_count >= 1 && part_count >= 0 && part_count <= total_count,
                 "part_weight: " + std::to_string(part_count) + " of " + std::to_string(total_count));
    return float(double(part_count) / double(total_count));
}

bool is_running_stat(const std::string& name) {
    const auto ends = [&](const std::string& s) {
        return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    return ends("running_mean") || ends("running_var");
}

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

// Forward, loss and backward (accumulate_gradients with weight 1: the gradients themselves),
// then clipping and the update at the scheduled learning rate (apply_gradients).
StepResult Trainer::train_step(const Tensor& images, const std::vector<int64_t>& labels) {
    ParamMap grads;
    StepResult r = accumulate_gradients(images, labels, 1.0f, grads);
    const StepResult update = apply_gradients(grads);
    r.lr = update.lr;
    r.grad_norm = update.grad_norm;
    return r;
}

StepResult Trainer::accumulate_gradients(const Tensor& images, const std::vector<int64_t>& labels,
                                         float weight, ParamMap& grads, cpu::BatchNormReducer* bn_reducer) {
    check_batch(model_, images, labels);
    StepResult r;
    cpu::ForwardOptions fo;
    fo.train = true;
    fo.update_running_stats = true;
    fo.dropout = options_.dropout;
    fo.seed = mix_seed(options_.seed, uint64_t(step_), 0x6d61736bull /* "mask" */);
    fo.bn_reducer = bn_reducer;
    const cpu::ForwardResult out = impl_->network.forward(images, fo);
    Tensor dlogits;
    r.loss = cpu::softmax_cross_entropy(out.logits, labels, options_.label_smoothing, &dlogits);
    EFFNET_CHECK(std::isfinite(r.loss), "trainer: loss is not finite at step " + std::to_string(step_) +
                                            " (learning rate too high?)");
    count_hits(out.logits, labels, 1, &r.correct, nullptr);
    r.count = int64_t(labels.size());
    if (bn_reducer) {
        for (float& v : dlogits.data) v *= weight;
        weight = 1.0f;
    }
    cpu::Gradients g = impl_->network.backward(dlogits);
    for (auto& [name, t] : g.params) {
        auto it = grads.find(name);
        if (it == grads.end()) {
            for (float& v : t.data) v *= weight;
            grads.emplace(name, std::move(t));
        } else {
            EFFNET_CHECK(it->second.shape == t.shape, "trainer: gradient '" + name + "' is " +
                                                          shape_str(t.shape) + ", the accumulated one " +
                                                          shape_str(it->second.shape));
            float* acc = it->second.ptr();
            const float* src = t.ptr();
            for (int64_t i = 0; i < t.numel(); ++i) acc[i] += weight * src[i];
        }
    }
    return r;
}

StepResult Trainer::apply_gradients(ParamMap& grads) {
    StepResult r;
    r.lr = learning_rate(options_.schedule, step_);
    r.grad_norm = clip_grad_norm(grads, options_.clip_grad_norm);
    optimizer_.step(model_.params, grads, r.lr);
    ++step_;
    return r;
}

StepResult Trainer::train_step(const Tensor& images, const std::vector<int64_t>& labels, int micro_batches) {
    if (micro_batches == 1) return train_step(images, labels);
    check_batch(model_, images, labels);
    const int64_t n = images.shape[0];
    EFFNET_CHECK(micro_batches >= 1 && micro_batches <= n, "trainer: " + std::to_string(micro_batches) +
                                                               " micro-batches of a batch of " +
                                                               std::to_string(n));
    // The running statistics at the start of the step: every part updates them from there.
    ParamMap start, averaged;
    for (const auto& [name, t] : model_.params)
        if (is_running_stat(name)) start.emplace(name, t);
    ParamMap grads;
    StepResult total;
    const int64_t image_floats = images.numel() / n;
    for (int k = 0; k < micro_batches; ++k) {
        const ShardRange part = shard_range(n, micro_batches, k);
        Tensor x({part.size(), images.shape[1], images.shape[2], images.shape[3]});
        std::copy(images.ptr() + part.begin * image_floats, images.ptr() + part.end * image_floats, x.ptr());
        const std::vector<int64_t> y(labels.begin() + part.begin, labels.begin() + part.end);
        for (const auto& [name, t] : start) // in place: the network may hold the tensors' storage
            std::copy(t.data.begin(), t.data.end(), model_.params[name].data.begin());
        const float w = part_weight(part.size(), n);
        const StepResult r = accumulate_gradients(x, y, w, grads);
        for (const auto& [name, t0] : start) {
            const Tensor& t = model_.params[name];
            auto it = averaged.find(name);
            if (it == averaged.end()) {
                Tensor a = t;
                for (float& v : a.data) v *= w;
                averaged.emplace(name, std::move(a));
            } else {
                for (int64_t i = 0; i < t.numel(); ++i) it->second.data[size_t(i)] += w * t.data[size_t(i)];
            }
        }
        total.loss += double(w) * r.loss;
        total.correct += r.correct;
        total.count += r.count;
    }
    for (const auto& [name, t] : averaged)
        std::copy(t.data.begin(), t.data.end(), model_.params[name].data.begin());
    const StepResult u = apply_gradients(grads);
    total.lr = u.lr;
    total.grad_norm = u.grad_norm;
    return total;
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
