// effnet-train's CPU and GPU engines (see engine.hpp).
#include "engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu/ops.hpp"
#include "dist/buckets.hpp"
#include "distributed.hpp"
#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "effnet/train/loss_scaler.hpp"
#include "effnet/train/rng.hpp"
#include "effnet/train/schedule.hpp"

namespace effnet::examples {
namespace {

// The dropout / stochastic-depth seed of a step: train::Trainer's derivation, so that both
// engines drop the same units at the same step.
uint64_t step_seed(uint64_t seed, int64_t step) {
    return train::mix_seed(seed, uint64_t(step), 0x6d61736bull /* "mask" */);
}

// --sync-bn: the BN sums over the ranks; a rank with nothing to train on adds zeros.
class CommBatchNormReducer : public cpu::BatchNormReducer {
public:
    explicit CommBatchNormReducer(Communicator* comm) : comm_(comm) {}
    void allreduce_sum(double* data, size_t n) override {
        if (!contributes) std::fill(data, data + n, 0.0);
        comm_->allreduce_sum(data, n);
    }
    bool contributes = true;

private:
    Communicator* comm_;
};

class CpuEngine : public TrainEngine {
public:
    CpuEngine(Model& model, const train::TrainOptions& options, const CpuParallel& parallel)
        : model_(model), trainer_(model, options), parallel_(parallel), bn_reducer_(parallel.comm) {
        EFFNET_CHECK(parallel.micro_batches >= 1, "--micro-batches must be >= 1");
        if (distributed()) {
            // Gradients in backward order (the network order reversed), cut into buckets.
            const std::vector<ParamSpec> specs = parameter_specs(model.config);
            for (auto it = specs.rbegin(); it != specs.rend(); ++it)
                if (it->trainable) grad_order_.push_back(it->name);
            std::vector<int64_t> sizes;
            for (const std::string& name : grad_order_) sizes.push_back(model.param(name).numel());
            buckets_ = dist::plan_buckets(sizes, parallel.bucket_bytes);
            for (const auto& [name, t] : model.params)
                if (train::is_running_stat(name)) stat_floats_ += size_t(t.numel());
        }
    }

    train::StepResult train_step(const train::Batch& batch) override {
        if (distributed()) return data_parallel_step(batch);
        if (parallel_.micro_batches > 1) {
            const int parts = int(std::min<int64_t>(parallel_.micro_batches, int64_t(batch.labels.size())));
            return trainer_.train_step(batch.images, batch.labels, parts);
        }
        return trainer_.train_step(batch.images, batch.labels);
    }
    int64_t step() const override { return trainer_.step(); }
    train::EvalResult evaluate(const train::Batch& batch) override {
        return trainer_.evaluate(batch.images, batch.labels);
    }
    void sync_model() override {} // the CPU trainer updates the model in place
    const train::Optimizer& optimizer() override { return trainer_.optimizer(); }
    void save_scaler(train::TrainingState&) const override {}
    void resume(train::ParamMap optimizer_state, int64_t optimizer_steps,
                const train::TrainingState& state) override {
        trainer_.optimizer().set_state(std::move(optimizer_state), optimizer_steps);
        trainer_.set_step(state.step);
    }

private:
    bool distributed() const { return parallel_.comm && parallel_.comm->world() > 1; }

    // One global step: this rank's part, then the sums over the ranks, then the same update
    // everywhere. Every rank makes the same collective calls in the same order.
    train::StepResult data_parallel_step(const train::Batch& batch) {
        Communicator& comm = *parallel_.comm;
        const int64_t n = int64_t(batch.labels.size());
        double total_d = double(n);
        comm.allreduce_sum(&total_d, 1);
        const int64_t total = int64_t(total_d);
        train::StepResult r;
        if (total == 0) return r; // every image of the global batch unreadable: no step anywhere
        const float w = train::part_weight(n, total);
        train::ParamMap grads;
        train::StepResult local;
        cpu::BatchNormReducer* sync = parallel_.sync_bn ? &bn_reducer_ : nullptr;
        bn_reducer_.contributes = n > 0;
        if (n > 0) {
            local = trainer_.accumulate_gradients(batch.images, batch.labels, w, grads, sync);
        } else {
            // Nothing to train on here: the same forward and backward on two blank images with
            // weight 0, so that this rank's contributions are zeros of the right shapes.
            const int64_t res = batch.images.rank() == 4 ? batch.images.dim(2) : 0;
            EFFNET_CHECK(res > 0, "data-parallel step: an empty batch without its image size");
            const Tensor blank({2, int64_t(model_.config.in_channels), res, res});
            trainer_.accumulate_gradients(blank, {0, 0}, 0.0f, grads, sync);
        }
        // Loss and hits.
        double sums[2] = {double(w) * (n > 0 ? local.loss : 0.0), double(local.correct)};
        comm.allreduce_sum(sums, 2);
        // Running statistics: the ranks' updates, weighted as the gradients (synchronized BN: the
        // same on every rank already).
        if (!parallel_.sync_bn) average_running_stats(w);
        // Gradients, bucket by bucket in backward order.
        reduce_gradients(grads);
        const train::StepResult u = trainer_.apply_gradients(grads);
        r.loss = sums[0];
        r.correct = int64_t(sums[1]);
        r.count = total;
        r.lr = u.lr;
        r.grad_norm = u.grad_norm;
        return r;
    }

    void average_running_stats(float w) {
        Communicator& comm = *parallel_.comm;
        stats_.resize(stat_floats_);
        size_t at = 0;
        for (const auto& [name, t] : model_.params)
            if (train::is_running_stat(name))
                for (float v : t.data) stats_[at++] = w * v;
        comm.allreduce_sum(stats_.data(), stats_.size());
        at = 0;
        for (auto& [name, t] : model_.params)
            if (train::is_running_stat(name))
                for (float& v : t.data) v = stats_[at++];
    }

    void reduce_gradients(train::ParamMap& grads) {
        Communicator& comm = *parallel_.comm;
        for (const dist::Bucket& b : buckets_) {
            flat_.resize(size_t(b.count));
            float* p = flat_.data();
            for (size_t i = b.first; i < b.last; ++i) {
                const Tensor& g = grads.at(grad_order_[i]);
                p = std::copy(g.data.begin(), g.data.end(), p);
            }
            comm.allreduce_sum(flat_.data(), flat_.size());
            p = flat_.data();
            for (size_t i = b.first; i < b.last; ++i) {
                Tensor& g = grads.at(grad_order_[i]);
                std::copy(p, p + g.numel(), g.data.begin());
                p += g.numel();
            }
        }
    }

    Model& model_;
    train::Trainer trainer_;
    CpuParallel parallel_;
    std::vector<std::string> grad_order_;
    std::vector<dist::Bucket> buckets_;
    size_t stat_floats_ = 0;
    std::vector<float> stats_, flat_;
    CommBatchNormReducer bn_reducer_;
};

// dst images [first, full) = src's n images, repeated in order (i -> i % n), image_floats each;
// the copy split over a few threads (one thread moves ~10 GB/s: a B0 batch of 128 is 77 MB).
// first = n with dst == src fills up a short batch in place.
void copy_images_repeated(float* dst, const float* src, int64_t n, int64_t full, size_t image_floats,
                          int64_t first = 0) {
    const auto copy_range = [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
            std::memcpy(dst + size_t(i) * image_floats, src + size_t(i % n) * image_floats,
                        image_floats * sizeof(float));
    };
    const int64_t count = full - first;
    if (count <= 0) return;
    const int64_t bytes = count * int64_t(image_floats * sizeof(float));
    const int64_t threads = std::min<int64_t>({8, count, std::max(1u, std::thread::hardware_concurrency()),
                                               std::max<int64_t>(1, bytes >> 22)}); // >= 4 MiB each
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < threads; ++t)
        pool.emplace_back(copy_range, first + count * t / threads, first + count * (t + 1) / threads);
    copy_range(first, first + count / threads);
    for (std::thread& th : pool) th.join();
}

GpuTrainOptions gpu_options(const train::TrainOptions& o, TrainPrecision precision,
                            const train::LossScalerConfig& scaler, int device) {
    GpuTrainOptions g;
    g.device = device;
    g.optimizer = o.optimizer;
    g.clip_grad_norm = o.clip_grad_norm;
    g.label_smoothing = o.label_smoothing;
    g.dropout = o.dropout;
    g.deterministic = true; // a resumed run repeats the uninterrupted one
    g.loss_scale = precision == TrainPrecision::AmpFP16 ? float(scaler.init_scale) : 1.0f;
    return g;
}

class GpuEngine : public TrainEngine {
public:
    GpuEngine(Model& model, const train::TrainOptions& options, TrainPrecision precision, int batch,
              int eval_batch, int resolution, const GpuParallel& parallel)
        : model_(model), options_(options), precision_(precision), eval_batch_(eval_batch),
          resolution_(resolution), parallel_(parallel), optimizer_(options.optimizer),
          scaler_(train::LossScalerConfig{}),
          trainer_(model, batch, resolution, resolution, precision,
                   gpu_options(options, precision, train::LossScalerConfig{}, parallel.device)) {
        train::learning_rate(options.schedule, 0); // validates the schedule, as train::Trainer does
        EFFNET_CHECK(eval_batch >= 1, "GPU engine: validation batch must be >= 1");
        EFFNET_CHECK(parallel.reducer || !distributed(),
                     "GPU engine: several ranks but no NCCL gradient all-reduce");
#ifdef EFFNET_WITH_CUDA
        if (parallel.reducer) trainer_.set_gradient_allreduce(parallel.reducer, parallel.bucket_bytes);
#endif
    }

    train::StepResult train_step(const train::Batch& batch) override {
        const int full = trainer_.batch();
        const int64_t n = int64_t(batch.labels.size());
        EFFNET_CHECK(
            n > 0 || !distributed(),
            "every image of this rank's part of the batch is unreadable (the GPU engine trains fixed "
            "batches; remove the unreadable images)");
        check_images(batch, full);
        // In the trainer's page-locked staging buffer, whose upload is one DMA (from pageable
        // memory the driver stages it: B0 b128 measured 31.8 instead of 20.3 ms per step): where
        // the loader decoded it (batch_destination), else copied there. The GPU trainer's batch
        // is fixed: a short batch repeats its own images.
        const size_t image_floats =
            size_t(model_.config.in_channels) * size_t(resolution_) * size_t(resolution_);
        float* images = trainer_.input_staging(0);
        if (batch.staged &&
            (batch.staged == trainer_.input_staging(0) || batch.staged == trainer_.input_staging(1))) {
            images = batch.staged;
            copy_images_repeated(images, images, n, full, image_floats, n);
        } else {
            copy_images_repeated(images, batch.image_data(), n, full, image_floats);
        }
        const int64_t* labels = batch.labels.data();
        if (n < full) {
            padded_labels_.resize(size_t(full));
            for (int64_t i = 0; i < full; ++i) padded_labels_[size_t(i)] = batch.labels[size_t(i % n)];
            labels = padded_labels_.data();
        }

        train::StepResult r;
        r.lr = train::learning_rate(options_.schedule, step_);
        const bool scaled = precision_ == TrainPrecision::AmpFP16;
        if (scaled) trainer_.set_loss_scale(float(scaler_.scale())); // a power of two: exact in float
        r.loss = trainer_.compute_gradients(images, labels, step_seed(options_.seed, step_));
        EFFNET_CHECK(std::isfinite(r.loss), "trainer: loss is not finite at step " + std::to_string(step_) +
                                                " (learning rate too high?)");
        const bool finite = trainer_.last_step_finite();
        if (scaled) {
            if (scaler_.update(!finite)) trainer_.apply_update(r.lr); // else skipped, scale backed off
        } else {
            EFFNET_CHECK(finite, "trainer: gradients are not finite at step " + std::to_string(step_) +
                                     " (learning rate too high?)");
            trainer_.apply_update(r.lr);
        }
        r.grad_norm = trainer_.last_grad_norm();

        // Accuracy over the batch's own images (train-mode logits, as the CPU engine counts).
        const Tensor logits = trainer_.logits(); // [full, classes]
        const int64_t classes = logits.dim(1);
        Tensor own({n, classes});
        std::memcpy(own.ptr(), logits.ptr(), size_t(n * classes) * sizeof(float));
        train::count_hits(own, batch.labels, 1, &r.correct, nullptr);
        r.count = n;
        if (distributed()) { // every rank's mean loss (equal batches: the global mean), hits, images
            double sums[3] = {r.loss, double(r.correct), double(r.count)};
            parallel_.comm->allreduce_sum(sums, 3);
            r.loss = sums[0] / double(parallel_.comm->world());
            r.correct = int64_t(sums[1]);
            r.count = int64_t(sums[2]);
        }
        ++step_;
        return r;
    }

    int64_t step() const override {
        return step_;
    }

    float* batch_destination(int which) override {
        return trainer_.input_staging(which);
    }
    int64_t destination_images() const override {
        return trainer_.batch();
    }

    void begin_evaluation() override {
        sync_model();
        SessionOptions so;
        so.device = parallel_.device;
        so.gemm = GemmBackend::Handwritten; // no timing-based choice: the same kernels every run
        session_ = std::make_unique<InferenceSession>(model_, eval_batch_, resolution_, resolution_,
                                                      Precision::FP32, so);
        eval_logits_.resize(size_t(eval_batch_) * size_t(session_->num_classes()));
    }

    train::EvalResult evaluate(const train::Batch& batch) override {
        EFFNET_CHECK(session_, "GPU engine: evaluate() outside begin_evaluation() / end_evaluation()");
        const int64_t n = int64_t(batch.labels.size());
        check_images(batch, eval_batch_);
        const float* images = batch.image_data();
        if (n < eval_batch_) { // a partial last batch: the rows after n are computed and ignored
            const size_t image_floats =
                size_t(model_.config.in_channels) * size_t(resolution_) * size_t(resolution_);
            padded_images_.assign(size_t(eval_batch_) * image_floats, 0.0f);
            std::copy(images, images + size_t(n) * image_floats, padded_images_.begin());
            images = padded_images_.data();
        }
        session_->run(images, eval_logits_.data());
        const int64_t classes = session_->num_classes();
        Tensor logits({n, classes});
        std::memcpy(logits.ptr(), eval_logits_.data(), size_t(n * classes) * sizeof(float));
        train::EvalResult r;
        r.loss = cpu::softmax_cross_entropy(logits, batch.labels, 0.0f, nullptr);
        r.count = n;
        train::count_hits(logits, batch.labels, 5, &r.top1, &r.top5);
        return r;
    }

    void end_evaluation() override {
        session_.reset();
    }

    void sync_model() override {
        trainer_.download(model_);
    }

    const train::Optimizer& optimizer() override {
        optimizer_.set_state(trainer_.optimizer_state(), trainer_.optimizer_steps());
        return optimizer_;
    }

    void save_scaler(train::TrainingState& state) const override {
        state.scaler_scale = precision_ == TrainPrecision::AmpFP16 ? scaler_.scale() : 1.0;
        state.scaler_good_steps = scaler_.good_steps();
        state.scaler_skipped = scaler_.skipped_steps();
    }

    void resume(train::ParamMap optimizer_state, int64_t optimizer_steps,
                const train::TrainingState& state) override {
        trainer_.set_optimizer_state(optimizer_state, optimizer_steps);
        step_ = state.step;
        // The scaler continues only from an amp-fp16 run; otherwise it starts fresh.
        const auto it = state.metadata.find("precision");
        if (precision_ == TrainPrecision::AmpFP16 && it != state.metadata.end() && it->second == "amp-fp16")
            scaler_.set_state(state.scaler_scale, state.scaler_good_steps, state.scaler_skipped);
    }

    std::string epoch_note() const override {
        if (precision_ != TrainPrecision::AmpFP16) return "";
        char buf[96];
        std::snprintf(buf, sizeof buf, ", loss scale %g (%lld steps skipped in all)", scaler_.scale(),
                      (long long)scaler_.skipped_steps());
        return buf;
    }

private:
    void check_images(const train::Batch& batch, int max_batch) const {
        const int64_t n = int64_t(batch.labels.size());
        EFFNET_CHECK(n >= 1 && n <= max_batch, "GPU engine: a batch of " + std::to_string(n) +
                                                   " images (expected 1.." + std::to_string(max_batch) + ")");
        const Shape want = {n, int64_t(model_.config.in_channels), resolution_, resolution_};
        if (batch.staged) return; // decoded by the loader at this resolution, n images
        EFFNET_CHECK(batch.images.shape == want,
                     "GPU engine: images " + shape_str(batch.images.shape) + ", expected " + shape_str(want));
    }

    bool distributed() const {
        return parallel_.comm && parallel_.comm->world() > 1;
    }

    Model& model_;
    train::TrainOptions options_;
    TrainPrecision precision_;
    int eval_batch_;
    int resolution_;
    GpuParallel parallel_;
    train::Optimizer optimizer_; // the checkpoint's view of the GPU state (train::Optimizer form)
    train::LossScaler scaler_;   // amp-fp16 only
    GpuTrainer trainer_;
    int64_t step_ = 0;
    std::unique_ptr<InferenceSession> session_; // during a validation pass
    std::vector<float> padded_images_, eval_logits_;
    std::vector<int64_t> padded_labels_;
};

} // namespace

std::unique_ptr<TrainEngine> make_cpu_engine(Model& model, const train::TrainOptions& options,
                                             const CpuParallel& parallel) {
    return std::make_unique<CpuEngine>(model, options, parallel);
}

std::unique_ptr<TrainEngine> make_gpu_engine(Model& model, const train::TrainOptions& options,
                                             TrainPrecision precision, int batch, int eval_batch,
                                             int resolution, const GpuParallel& parallel) {
    EFFNET_CHECK(cuda_available(), "--device cuda: no usable GPU (" + cuda_device_description() + ")");
    return std::make_unique<GpuEngine>(model, options, precision, batch, eval_batch, resolution, parallel);
}

} // namespace effnet::examples
