#pragma once
// GPU training step: train-mode forward (batch statistics, running-stat update, no BN folding),
// softmax cross-entropy with label smoothing, backward of every op, and SGD with momentum on
// fp32 master weights, all on the GPU. Precisions: fp32 (true fp32, no TF32), and AMP fp16 /
// bf16 (fp32 master weights, BN parameters and statistics; half activations and GEMM operands
// with fp32 accumulation; fp32 parameter gradients).
//
// The dynamic loss-scale policy lives with the caller (train::LossScaler): the trainer takes a
// scale (set_loss_scale), multiplies the loss gradient by it, unscales the parameter gradients,
// and reports whether they were all finite; a step with non-finite gradients is not applied.
//
// Dropout and stochastic depth (GpuTrainOptions::dropout) use masks made on the host by the CPU
// reference's generator from the step's seed, so both engines drop the same units for the same
// seed. Not computed on the GPU: the input gradient. Builds without CUDA compile this header;
// constructing a GpuTrainer there throws effnet::Error.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "effnet/cpu_engine.hpp"
#include "effnet/model.hpp"

namespace effnet {

enum class TrainPrecision { FP32, AmpFP16, AmpBF16 };
const char* train_precision_name(TrainPrecision p);         // "fp32" | "amp-fp16" | "amp-bf16"
TrainPrecision parse_train_precision(const std::string& s); // throws effnet::Error on unknown names

struct GpuTrainOptions {
    float momentum = 0.9f;
    bool nesterov = false;
    float weight_decay = 0.0f; // conv / linear weights only: not *.bn.* nor any *.bias
    float label_smoothing = 0.0f;
    float loss_scale = 1.0f;   // initial AMP loss scale (set_loss_scale changes it)
    bool deterministic = true; // bit-identical steps: the training kernels never use atomics;
                               // this also forbids atomics inside cuBLAS
    bool dropout = false;      // apply the config's dropout and stochastic depth
    bool update_running_stats = true;
    int device = 0;
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

    // One training step: forward, loss, backward, and (when the gradients are finite) the SGD
    // update with learning rate lr. input: host NCHW float32 [batch, 3, height, width];
    // targets: host [batch], each in [0, num_classes). Returns the mean loss (synchronises).
    // seed: the dropout / stochastic-depth masks' seed, as cpu::ForwardOptions::seed.
    float step(const float* input_nchw_host, const int64_t* targets_host, float lr, uint64_t seed = 0);
    // Forward, loss and backward only (no update); returns the mean loss.
    float compute_gradients(const float* input_nchw_host, const int64_t* targets_host, uint64_t seed = 0);
    // Applies SGD with the gradients of the last compute_gradients; returns false (and changes
    // nothing) when they were not all finite.
    bool apply_update(float lr);

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
