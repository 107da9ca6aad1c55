// effnet-train's CPU and GPU engines (see engine.hpp).
#include "engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu/ops.hpp"
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

class CpuEngine : public TrainEngine {
public:
    CpuEngine(Model& model, const train::TrainOptions& options) : trainer_(model, options) {}

    train::StepResult train_step(const train::Batch& batch) override {
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
    train::Trainer trainer_;
};

// dst [full images] = src's n images, repeated in order (i -> i % n), image_floats each; the
// copy split over a few threads (one thread moves ~10 GB/s: a B0 batch of 128 is 77 MB).
void copy_images_repeated(float* dst, const float* src, int64_t n, int64_t full, size_t image_floats) {
    const auto copy_range = [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
            std::memcpy(dst + size_t(i) * image_floats, src + size_t(i % n) * image_floats,
                        image_floats * sizeof(float));
    };
    const int64_t bytes = full * int64_t(image_floats * sizeof(float));
    const int64_t threads = std::min<int64_t>({8, full, std::max(1u, std::thread::hardware_concurrency()),
                                               std::max<int64_t>(1, bytes >> 22)}); // >= 4 MiB each
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < threads; ++t)
        pool.emplace_back(copy_range, full * t / threads, full * (t + 1) / threads);
    copy_range(0, full / threads);
    for (std::thread& th : pool) th.join();
}

GpuTrainOptions gpu_options(const train::TrainOptions& o, TrainPrecision precision,
                            const train::LossScalerConfig& scaler) {
    GpuTrainOptions g;
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
              int eval_batch, int resolution)
        : model_(model), options_(options), precision_(precision), eval_batch_(eval_batch),
          resolution_(resolution), optimizer_(options.optimizer), scaler_(train::LossScalerConfig{}),
          trainer_(model, batch, resolution, resolution, precision,
                   gpu_options(options, precision, train::LossScalerConfig{})) {
        train::learning_rate(options.schedule, 0); // validates the schedule, as train::Trainer does
        EFFNET_CHECK(eval_batch >= 1, "GPU engine: validation batch must be >= 1");
    }

    train::StepResult train_step(const train::Batch& batch) override {
        const int full = trainer_.batch();
        const int64_t n = int64_t(batch.labels.size());
        check_images(batch, full);
        // Into the trainer's page-locked staging buffer, whose upload is one DMA (from pageable
        // memory the driver stages it: B0 b128 measured 31.8 instead of 20.3 ms per step). The
        // GPU trainer's batch is fixed: a short batch repeats its own images.
        float* images = trainer_.input_staging(0);
        copy_images_repeated(images, batch.images.ptr(), n, full, size_t(batch.images.numel() / n));
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
        ++step_;
        return r;
    }

    int64_t step() const override { return step_; }

    void begin_evaluation() override {
        sync_model();
        SessionOptions so;
        so.gemm = GemmBackend::Handwritten; // no timing-based choice: the same kernels every run
        session_ = std::make_unique<InferenceSession>(model_, eval_batch_, resolution_, resolution_,
                                                      Precision::FP32, so);
        eval_logits_.resize(size_t(eval_batch_) * size_t(session_->num_classes()));
    }

    train::EvalResult evaluate(const train::Batch& batch) override {
        EFFNET_CHECK(session_, "GPU engine: evaluate() outside begin_evaluation() / end_evaluation()");
        const int64_t n = int64_t(batch.labels.size());
        check_images(batch, eval_batch_);
        const float* images = batch.images.ptr();
        if (n < eval_batch_) { // a partial last batch: the rows after n are computed and ignored
            padded_images_.assign(size_t(eval_batch_) * size_t(batch.images.numel() / n), 0.0f);
            std::copy(batch.images.data.begin(), batch.images.data.end(), padded_images_.begin());
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

    void end_evaluation() override { session_.reset(); }

    void sync_model() override { trainer_.download(model_); }

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
        EFFNET_CHECK(batch.images.shape == want,
                     "GPU engine: images " + shape_str(batch.images.shape) + ", expected " + shape_str(want));
    }

    Model& model_;
    train::TrainOptions options_;
    TrainPrecision precision_;
    int eval_batch_;
    int resolution_;
    train::Optimizer optimizer_; // the checkpoint's view of the GPU state (train::Optimizer form)
    train::LossScaler scaler_;   // amp-fp16 only
    GpuTrainer trainer_;
    int64_t step_ = 0;
    std::unique_ptr<InferenceSession> session_; // during a validation pass
    std::vector<float> padded_images_, eval_logits_;
    std::vector<int64_t> padded_labels_;
};

} // namespace

std::unique_ptr<TrainEngine> make_cpu_engine(Model& model, const train::TrainOptions& options) {
    return std::make_unique<CpuEngine>(model, options);
}

std::unique_ptr<TrainEngine> make_gpu_engine(Model& model, const train::TrainOptions& options,
                                             TrainPrecision precision, int batch, int eval_batch,
                                             int resolution) {
    EFFNET_CHECK(cuda_available(), "--device cuda: no usable GPU (" + cuda_device_description() + ")");
    return std::make_unique<GpuEngine>(model, options, precision, batch, eval_batch, resolution);
}

} // namespace effnet::examples
