#pragma once
// Optimizers (SGD, TF-style RMSProp, AdamW) over canonical-name parameter maps, their
// weight-decay rule, and global gradient-norm clipping.
#include <cstdint>
#include <string>

#include "effnet/tensor.hpp"
#include "effnet/train/param_map.hpp"

namespace effnet::train {

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

} // namespace effnet::train
