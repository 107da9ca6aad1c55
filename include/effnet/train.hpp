#pragma once
// Training on the CPU engine: optimizers, learning-rate schedules, the AMP dynamic loss scaler,
// the image-folder dataset with its augmentations and prefetching loader, atomic checkpoints with
// exact resume, and a Trainer that ties one training step together.
//
// Determinism: every random choice is a pure function of (seed, epoch, index) or (seed, step),
// so a run resumed from a checkpoint repeats the uninterrupted run bit for bit (given the same
// machine and thread count).
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/image.hpp"
#include "effnet/model.hpp"
#include "effnet/tensor.hpp"

namespace effnet::train {

using ParamMap = std::map<std::string, Tensor>; // canonical name -> tensor

// ---------------------------------------------------------------------------------------------
// Random numbers: a counter-based generator so that any sample's stream can be recreated.

// splitmix64 finaliser of (a, b, c): the seed of one independent stream.
uint64_t mix_seed(uint64_t a, uint64_t b = 0, uint64_t c = 0);

class Rng { // xoshiro256** seeded through splitmix64
public:
    explicit Rng(uint64_t seed);
    uint64_t next_u64();
    double uniform();                     // [0, 1), 53 random bits
    double uniform(double lo, double hi); // [lo, hi)
    int64_t below(int64_t n);             // [0, n), n >= 1, unbiased
private:
    uint64_t s_[4];
};

// ---------------------------------------------------------------------------------------------
// Optimizers

// Weight decay applies to conv / linear weights only: not to batch-norm parameters (*.bn.*) nor
// to any bias (*.bias), decided by canonical name.
bool default_weight_decay(const std::string& name);

enum class OptimizerKind { SGD, RMSProp, AdamW };
const char* optimizer_name(OptimizerKind k);         // "sgd" | "rmsprop" | "adamw"
OptimizerKind parse_optimizer(const std::string& s); // throws effnet::Error on unknown names

struct OptimizerConfig {
    OptimizerKind kind = OptimizerKind::SGD;
    double weight_decay = 0.0;
    bool decay_all = false; // true: weight decay on BN parameters and biases too
    // SGD (PyTorch's definition, dampening 0): g = grad + wd*p; buf = mu*buf + g (buf = g on the
    // first step); update = nesterov ? g + mu*buf : buf; p -= lr * update.
    double momentum = 0.9;
    bool nesterov = false;
    // RMSProp as TensorFlow (and the EfficientNet paper: decay 0.9, momentum 0.9, eps 1e-3):
    //   g = grad + wd*p
    //   ms  = rho*ms + (1-rho)*g^2            (ms starts at 1, as TF's "rms" slot)
    //   mom = mu*mom + lr * g / sqrt(ms + eps) (eps inside the square root; lr inside the buffer)
    //   p  -= mom
    double rms_decay = 0.9;
    double rms_eps = 1e-3;
    // AdamW (Loshchilov & Hutter, PyTorch's definition): p *= 1 - lr*wd (decoupled);
    //   m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; t = step count (from 1)
    //   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
};

// One optimizer over a canonical-name parameter map. Arithmetic is done in double per element
// and rounded to float32 once; state is float32 (so it checkpoints bit-exactly).
class Optimizer {
public:
    explicit Optimizer(const OptimizerConfig& config);
    // Updates every parameter that has a gradient. Gradients for unknown names, or with a shape
    // different from their parameter's, throw effnet::Error naming them.
    void step(ParamMap& params, const ParamMap& grads, double lr);

    const OptimizerConfig& config() const { return config_; }
    int64_t step_count() const { return steps_; }
    // State tensors keyed "<slot>/<param name>": slots "momentum" (SGD), "ms" and "mom"
    // (RMSProp), "exp_avg" and "exp_avg_sq" (AdamW).
    const ParamMap& state() const { return state_; }
    void set_state(ParamMap state, int64_t step_count);

private:
    Tensor& slot(const std::string& slot_name, const std::string& param, const Shape& shape, float init,
                 bool* created);
    OptimizerConfig config_;
    ParamMap state_;
    int64_t steps_ = 0;
};

// Scales every gradient by max_norm / norm when the global L2 norm (over all tensors, in
// double) exceeds max_norm. Returns the norm before clipping. max_norm <= 0 disables clipping.
double clip_grad_norm(ParamMap& grads, double max_norm);

// ---------------------------------------------------------------------------------------------
// Learning-rate schedules (per optimizer step)

enum class ScheduleKind { Cosine, Step };
const char* schedule_name(ScheduleKind k);         // "cosine" | "step"
ScheduleKind parse_schedule(const std::string& s); // throws effnet::Error on unknown names

struct ScheduleConfig {
    ScheduleKind kind = ScheduleKind::Cosine;
    double base_lr = 0.1;
    int64_t warmup_steps = 0; // linear: lr = base * (step + 1) / warmup_steps for step < warmup
    int64_t total_steps = 1;  // cosine: reaches min_lr at total_steps
    double min_lr = 0.0;
    // step: lr = base * gamma^floor((step - warmup) / step_size) after the warmup
    int64_t step_size = 1;
    double gamma = 0.1;
};
// Learning rate for the 0-based optimizer step `step`. Throws on an invalid config.
double learning_rate(const ScheduleConfig& config, int64_t step);

// ---------------------------------------------------------------------------------------------
// AMP dynamic loss scaling (fp16). The loss is multiplied by scale() before backward; the
// gradients are checked: any inf/NaN skips the step and multiplies the scale by backoff;
// otherwise they are unscaled and applied, and after growth_interval consecutive good steps the
// scale is multiplied by growth.

struct LossScalerConfig {
    double init_scale = 65536.0;
    double growth = 2.0;
    double backoff = 0.5;
    int64_t growth_interval = 2000;
    double min_scale = 1.0;        // never backs off below this
    double max_scale = 16777216.0; // 2^24: never grows above this
};

class LossScaler {
public:
    explicit LossScaler(const LossScalerConfig& config = {});
    double scale() const { return scale_; }
    // True when any gradient element is inf or NaN.
    static bool has_non_finite(const ParamMap& grads);
    // Multiplies every gradient by 1/scale().
    void unscale(ParamMap& grads) const;
    // Records the outcome of one step; returns true when the step must be applied (no inf/NaN).
    bool update(bool found_non_finite);

    int64_t good_steps() const { return good_steps_; }
    int64_t skipped_steps() const { return skipped_; }
    const LossScalerConfig& config() const { return config_; }
    void set_state(double scale, int64_t good_steps, int64_t skipped);

private:
    LossScalerConfig config_;
    double scale_;
    int64_t good_steps_ = 0;
    int64_t skipped_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Images and augmentation

struct Normalize {
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
};

struct CropBox {
    int x = 0, y = 0, width = 0, height = 0;
};
// torchvision's RandomResizedCrop.get_params: up to 10 attempts of area in scale * image area,
// log-uniform aspect ratio; fallback: the central crop with the ratio clamped to the range.
CropBox random_resized_crop_box(int width, int height, Rng& rng, double scale_lo = 0.08,
                                double scale_hi = 1.0, double ratio_lo = 3.0 / 4.0,
                                double ratio_hi = 4.0 / 3.0);

// Crops `box` out of `image`, resizes it to out x out (PIL's antialiased bilinear, as
// torchvision's RandomResizedCrop on PIL images), optionally mirrors it, scales to [0, 1],
// normalises and writes CHW float into dst [3, out, out].
void crop_resize_normalize(const Image& image, const CropBox& box, int out, bool flip, const Normalize& norm,
                           float* dst);

// Training transform: RandomResizedCrop + horizontal flip (p = 0.5) with the given RNG.
void train_transform(const Image& image, int out, Rng& rng, const Normalize& norm, float* dst);

// Validation transform: resize the shorter side to `resize` with `interpolation` ("bilinear" |
// "bicubic"), center crop `crop` x `crop`, normalise (effnet::preprocess_image).
void eval_transform(const Image& image, int resize, int crop, const Normalize& norm, float* dst,
                    const std::string& interpolation = "bilinear");

// ---------------------------------------------------------------------------------------------
// Image-folder dataset: root/<class>/<file> with an image extension (effnet::has_image_extension:
// jpg, jpeg, png, bmp, tga); classes are the sorted sub-folder names; samples sorted by class,
// then file name.

struct Sample {
    std::string path;
    int64_t label = 0;
};

struct ImageFolder {
    std::string root;
    std::vector<std::string> classes;
    std::vector<Sample> samples;
    // Throws effnet::Error when root is not a directory, has no class folders, or no images.
    static ImageFolder scan(const std::string& root);
    // The same scan for a second split, using `classes` (every class folder must exist in it).
    static ImageFolder scan(const std::string& root, const std::vector<std::string>& classes);
};

struct Batch {
    Tensor images;                   // [n, 3, R, R], n <= batch size (unreadable images removed)
    std::vector<int64_t> labels;     // n
    std::vector<int64_t> indices;    // dataset index of each kept sample
    int64_t skipped = 0;             // unreadable images in this batch
    std::vector<std::string> errors; // their messages
};

struct LoaderOptions {
    int batch_size = 32;
    int resolution = 224;
    int workers = 2;       // decoding threads
    bool train = true;     // augment + shuffle (train) or resize/center-crop in order (val)
    bool drop_last = true; // train only: full batches (when the dataset holds at least one)
    int val_resize = 0;    // 0: round(resolution / 0.875)
    std::string val_interpolation = "bilinear"; // the weights' preprocessing
    uint64_t seed = 0;
    Normalize normalize;
};

// Sample order of one epoch: a permutation from (seed, epoch) for training, identity otherwise.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

// Decodes batches on a pool of worker threads, one batch ahead of the consumer. Keeps a
// reference to the dataset, which must outlive it.
class DataLoader {
public:
    DataLoader(const ImageFolder& dataset, const LoaderOptions& options);
    ~DataLoader();
    DataLoader(const DataLoader&) = delete;
    DataLoader& operator=(const DataLoader&) = delete;

    int64_t batches_per_epoch() const;
    // Starts (or restarts) an epoch at batch `first_batch`; the next batches are prefetched.
    void start_epoch(int64_t epoch, int64_t first_batch = 0);
    // True while the epoch has batches left.
    bool has_next() const;
    // The next batch (waits for its decoding). Throws when the epoch is over.
    Batch next();
    const LoaderOptions& options() const { return options_; }

private:
    struct Job;
    void worker_loop();
    void submit(int64_t batch_index);
    void load_sample(Job& job, int64_t slot);

    const ImageFolder& dataset_;
    LoaderOptions options_;
    int64_t epoch_ = 0;
    int64_t next_batch_ = 0;
    std::vector<int64_t> order_;
    std::mutex mutex_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<std::pair<std::shared_ptr<Job>, int64_t>> tasks_; // (job, slot)
    std::map<int64_t, std::shared_ptr<Job>> jobs_;               // batch index -> job
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

// ---------------------------------------------------------------------------------------------
// Trainer: one step of forward, label-smoothed cross-entropy, backward, clipping and update.

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

// ---------------------------------------------------------------------------------------------
// Checkpoints: one safetensors file holding
//   model/<name>        every parameter and running statistic (F32)
//   optim/<slot>/<name> optimizer state (F32)
//   state/counters      I64 [global step, epoch, batch in epoch, optimizer steps, seed]
//   state/scaler        F64 [scale, good steps, skipped steps]
// and metadata "model_config" (the full architecture as JSON, so a checkpoint is
// self-contained), "optimizer", "checkpoint_format" = "effnet-checkpoint-1", plus caller entries.
// Written atomically (SafetensorsWriter: a temporary file in the same directory, fsync, rename,
// fsync of the directory): a kill at any moment leaves either the previous or the new checkpoint.

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

void save_checkpoint(const std::string& path, const Model& model, const Optimizer& optimizer,
                     const TrainingState& state);

struct Checkpoint {
    Model model;
    ParamMap optimizer_state;
    int64_t optimizer_steps = 0;
    std::string optimizer_name;
    TrainingState state;
};
// Throws effnet::Error naming the file and the tensor at fault.
Checkpoint load_checkpoint(const std::string& path);

// The architecture as JSON and back (every block field), for checkpoint metadata.
std::string config_to_json(const ModelConfig& config);
ModelConfig config_from_json(const std::string& json); // throws effnet::Error on bad input

// ---------------------------------------------------------------------------------------------
// Plot: a PNG of loss (top) and accuracy (bottom, y in [0, 1]) curves against a shared x axis
// (steps); series may be empty; non-finite points break the line.

struct PlotSeries {
    std::vector<double> x, y;
    uint8_t rgb[3] = {0, 0, 0};
    std::string label; // legend entry; empty: none
};
void write_plot_png(const std::string& path, const std::vector<PlotSeries>& loss_series,
                    const std::vector<PlotSeries>& accuracy_series, int width = 800, int height = 600);

} // namespace effnet::train
