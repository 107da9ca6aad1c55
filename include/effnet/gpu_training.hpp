#pragma once
// GPU training step: train-mode forward (batch statistics, running-stat update, no BN folding),
// softmax cross-entropy with label smoothing, backward of every op, optional gradient clipping,
// and the optimizer update (SGD with momentum, TF-style RMSProp or AdamW, with
// train::Optimizer's definitions and arithmetic) on fp32 master weights, all on the GPU. Precisions: fp32
// (true fp32, no TF32), and AMP fp16 / bf16 (fp32 master weights, BN parameters and statistics; half
// activations and GEMM operands with fp32 accumulation; fp32 parameter gradients).
//
// The dynamic loss-scale policy lives with the caller (train::LossScaler): the trainer takes a
// scale (set_loss_scale), multiplies the loss gradient by it, unscales the parameter gradients,
// and reports whether they were all finite; a step with non-finite gradients is not applied.
//
// Dropout and stochastic depth (GpuTrainOptions::dropout) use masks made on the host by the CPU
// reference's generator from the step's seed, so both engines drop the same units for the same
// seed. Not computed on the GPU: the input gradient. Builds without CUDA compile this header;
// constructing a GpuTrainer there throws effnet::Error.
//
// The optimizer state moves in and out in train::Optimizer's representation
// (optimizer_state / set_optimizer_state), so train::save_checkpoint writes it and a run resumes
// from it on the GPU or on the CPU.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "effnet/cpu_engine.hpp"
#include "effnet/model.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/param_map.hpp"

namespace effnet {

enum class TrainPrecision { FP32, AmpFP16, AmpBF16 };
const char* train_precision_name(TrainPrecision p);         // "fp32" | "amp-fp16" | "amp-bf16"
TrainPrecision parse_train_precision(const std::string& s); // throws effnet::Error on unknown names

struct GpuTrainOptions {
    // The optimizer, with train::Optimizer's definitions, defaults and validation.
    train::OptimizerConfig optimizer;
    // > 0: before the update, scale every gradient by max / norm when the global L2 norm exceeds
    // it (train::clip_grad_norm). 0: off.
    double clip_grad_norm = 0.0;

    float label_smoothing = 0.0f;
    float loss_scale = 1.0f;   // initial AMP loss scale (set_loss_scale changes it)
    bool deterministic = true; // bit-identical steps: the training kernels never use atomics;
                               // this also forbids atomics inside cuBLAS
    bool dropout = false;      // apply the config's dropout and stochastic depth
    bool update_running_stats = true;
    // fp32 only: the 1x1 and stem convolutions on TF32 tensor cores (operands rounded to 10
    // mantissa bits, fp32 accumulation), as PyTorch runs cuDNN convolutions by default. Off:
    // true fp32 everywhere. No effect under AMP.
    bool allow_tf32 = false;
    int device = 0;
};

// Data-parallel training (set with GpuTrainer::set_gradient_allreduce): sums a device buffer of
// gradients over the ranks (NCCL in effnet-train), and agrees on a flag.
class GradientAllReduce {
public:
    virtual ~GradientAllReduce() = default;
    // In place over every rank, enqueued on `cuda_stream` (a cudaStream_t) after what is there.
    virtual void allreduce_sum(float* device_data, int64_t count, void* cuda_stream) = 0;
    virtual int world() const = 0;
    // True when `flag` is true on every rank (AMP: skip a step on every rank or on none).
    virtual bool all_true(bool flag) = 0;
};

class GpuTrainer {
public:
    // Uploads the model (parameters, running statistics) and plans every buffer for
    // (batch, height, width). Throws effnet::Error when CUDA is unavailable, or the model,
    // shape or options are invalid.
    GpuTrainer(Model& model, int batch, int height, int width, TrainPrecision precision,
               const GpuTrainOptions& options = {});
    ~GpuTrainer();
    GpuTrainer(const GpuTrainer&) = delete;
    GpuTrainer& operator=(const GpuTrainer&) = delete;

    // One training step: forward, loss, backward, and (when the gradients are finite) the
    // optimizer update with learning rate lr. input: host NCHW float32 [batch, 3, height, width];
    // targets: host [batch], each in [0, num_classes). Returns the mean loss (synchronises).
    // seed: the dropout / stochastic-depth masks' seed, as cpu::ForwardOptions::seed.
    float step(const float* input_nchw_host, const int64_t* targets_host, double lr, uint64_t seed = 0);
    // Two page-locked host buffers (which: 0 or 1) of [batch, channels, height, width] floats
    // owned by the trainer: a batch written there uploads by DMA, several times faster than from
    // pageable memory (a data loader can decode straight into them).
    float* input_staging(int which = 0);
    // Starts uploading a batch (best from input_staging) on a copy stream, so that it overlaps
    // the steps before the one that uses it: a later step()/compute_gradients() given the same
    // pointer takes it from the device. The usual loop alternates the two staging buffers:
    //   prefetch(next); step(current);   // next's copy runs during current's step
    // Keep the host batch unchanged until the step that uses it returns. At most two batches
    // are pending; a third prefetch drops the older (a step given it uploads it again).
    void prefetch(const float* input_nchw_host);
    // Forward, loss and backward only (no update); returns the mean loss.
    float compute_gradients(const float* input_nchw_host, const int64_t* targets_host, uint64_t seed = 0);
    // Clips (when GpuTrainOptions::clip_grad_norm > 0) and applies the optimizer with the
    // gradients of the last compute_gradients, and counts an optimizer step; returns false (and
    // changes nothing) when they were not all finite. lr: finite, >= 0.
    bool apply_update(double lr);

    // Data parallelism: from the next compute_gradients, the gradients are averaged over the
    // ranks in buckets of about bucket_bytes (libeffnet/dist/buckets.hpp, backward order), each
    // all-reduced on the trainer's communication stream as soon as the backward has written it,
    // and last_step_finite() is every rank's verdict. null: a single process (the default).
    void set_gradient_allreduce(GradientAllReduce* reducer, size_t bucket_bytes = size_t(4) << 20);

    void set_loss_scale(float scale); // > 0
    float loss_scale() const;
    // Whether every gradient of the last backward was finite (after unscaling).
    bool last_step_finite() const;

    // The last backward's parameter gradients (unscaled), canonical names, downloaded.
    // Gradients::input is left empty (no input gradient on the GPU).
    cpu::Gradients gradients() const;
    // The last forward's logits [batch, num_classes], downloaded.
    Tensor logits() const;
    // Writes the current parameters and running statistics into model (same config).
    void download(Model& model) const;
    // The inverse: replaces the trainer's parameters and running statistics with model's, which
    // must have the trainer's architecture (throws effnet::Error naming the difference).
    void upload(const Model& model);

    // The optimizer state as train::Optimizer holds it: keys "<slot>/<parameter name>", slots
    // "momentum" (SGD with momentum > 0), "ms" and "mom" (RMSProp), "exp_avg" and "exp_avg_sq"
    // (AdamW), one float32 tensor of the parameter's shape per trainable parameter; empty before
    // the first update (as a fresh train::Optimizer). Downloads (synchronises).
    train::ParamMap optimizer_state() const;
    // Updates applied so far (train::Optimizer::step_count; AdamW's t). Steps skipped for
    // non-finite gradients do not count.
    int64_t optimizer_steps() const;
    // Replaces the optimizer state (train::Optimizer::state() and step_count() of a CPU run or a
    // checkpoint, or optimizer_state() of a GPU run). A slot missing for a parameter starts where
    // train::Optimizer starts it (ms at 1, everything else at 0). Throws effnet::Error, changing
    // nothing, on a key that is not a slot of this optimizer or a trainable parameter, or on a
    // shape mismatch.
    void set_optimizer_state(const train::ParamMap& state, int64_t optimizer_steps);
    // The global gradient L2 norm of the last apply_update, before clipping (0 when clipping is
    // off: it is only computed for clipping).
    double last_grad_norm() const;

    int batch() const;
    int height() const;
    int width() const;
    TrainPrecision precision() const;
    size_t peak_device_memory() const; // bytes the trainer allocated (weights, activations, workspaces)

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace effnet
