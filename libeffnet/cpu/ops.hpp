#pragma once
// The CPU reference ops: plain C++, NCHW float32 activations, PyTorch weight layouts.
// Written for clarity; they are the oracle for every CUDA kernel. Reductions accumulate in
// double. Each backward takes what its forward saw (inputs, saved statistics) and the
// output gradient `dy`, and returns input/parameter gradients (a null pointer skips one).
#include <cstdint>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/tensor.hpp"

namespace effnet::cpu {

class BatchNormReducer; // effnet/cpu_engine.hpp

struct Conv2dParams {
    int stride = 1;
    int groups = 1; // 1 = dense, C = depthwise
    int pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
};
// Padding for an input of size h x w under the config's rule.
Conv2dParams conv_params(int h, int w, int kernel, int stride, int groups, Padding padding);

// x [N, C, H, W], w [O, C/groups, kh, kw], bias [O] or null -> y [N, O, Ho, Wo]
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p);
void conv2d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& p, Tensor* dx,
                     Tensor* dw, Tensor* dbias);

// Batch norm over [N, C, H, W] per channel C.
Tensor batchnorm_eval_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const Tensor& running_mean, const Tensor& running_var, float eps);
struct BatchNormSaved {
    std::vector<double> mean, invstd; // batch statistics, per channel
};
// Batch statistics (biased variance to normalise); updates the running statistics when given:
// running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance.
// reducer (synchronized batch norm, effnet/cpu_engine.hpp): the statistics of every rank's batch
// together; dgamma / dbeta stay this process's own sums. null: this batch alone.
Tensor batchnorm_train_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                               BatchNormSaved* saved, Tensor* running_mean, Tensor* running_var,
                               float momentum, BatchNormReducer* reducer = nullptr);
void batchnorm_train_backward(const Tensor& x, const Tensor& gamma, const BatchNormSaved& saved,
                              const Tensor& dy, Tensor* dx, Tensor* dgamma, Tensor* dbeta,
                              BatchNormReducer* reducer = nullptr);
// Eval-mode batch norm is affine: dx = dy * gamma / sqrt(var + eps).
void batchnorm_eval_backward(const Tensor& x, const Tensor& gamma, const Tensor& running_mean,
                             const Tensor& running_var, float eps, const Tensor& dy, Tensor* dx,
                             Tensor* dgamma, Tensor* dbeta);

// Pointwise; backward takes the forward's input x.
Tensor activation_forward(const Tensor& x, Activation a);
Tensor activation_backward(const Tensor& x, const Tensor& dy, Activation a);
Tensor sigmoid_forward(const Tensor& x);
Tensor sigmoid_backward(const Tensor& x, const Tensor& dy);

// x [N, C, H, W] -> [N, C]
Tensor global_avg_pool_forward(const Tensor& x);
Tensor global_avg_pool_backward(const Shape& x_shape, const Tensor& dy);

// x [N, K], w [M, K], b [M] -> [N, M]
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor* b);
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw, Tensor* db);

// Squeeze-excite: s = mean_hw(x) [N, C]; z = act(s w1^T + b1) [N, S]; g = sigmoid(z w2^T + b2)
// [N, C]; y = x * g. w1 [S, C, 1, 1], b1 [S], w2 [C, S, 1, 1], b2 [C] (PyTorch 1x1 convs).
struct SqueezeExciteSaved {
    Tensor squeezed, reduced_pre, gate_pre, gate; // [N,C], [N,S], [N,C], [N,C]
};
Tensor squeeze_excite_forward(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                              const Tensor& b2, Activation a, SqueezeExciteSaved* saved);
void squeeze_excite_backward(const Tensor& x, const Tensor& w1, const Tensor& w2, Activation a,
                             const SqueezeExciteSaved& saved, const Tensor& dy, Tensor* dx, Tensor* dw1,
                             Tensor* db1, Tensor* dw2, Tensor* db2);

Tensor add(const Tensor& a, const Tensor& b);

// Dropout (elementwise) and stochastic depth (per sample, first dimension): keep with
// probability 1-p and scale kept values by 1/(1-p). Deterministic in `seed`. The mask holds
// the scale (0 or 1/(1-p)) per element or per sample; backward multiplies dy by it.
Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, std::vector<float>* mask);
Tensor dropout_backward(const Tensor& dy, const std::vector<float>& mask);
Tensor stochastic_depth_forward(const Tensor& x, float p, uint64_t seed, std::vector<float>* mask);
Tensor stochastic_depth_backward(const Tensor& dy, const std::vector<float>& mask);

// Mean softmax cross-entropy over the batch, logits [N, K], targets in [0, K) (throws otherwise),
// with optional label smoothing eps (PyTorch's definition). Writes dloss/dlogits when asked.
double softmax_cross_entropy(const Tensor& logits, const std::vector<int64_t>& targets, float label_smoothing,
                             Tensor* dlogits);
Tensor softmax(const Tensor& logits); // [N, K], row-wise

} // namespace effnet::cpu
