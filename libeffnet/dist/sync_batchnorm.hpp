#pragma once
// Synchronized batch norm for data-parallel training on the CPU engine: the train-mode batch
// norm of cpu/batchnorm.cpp with its per-channel sums taken over every rank through a
// cpu::BatchNormReducer (forward: sum, then sum of squared deviations from the global mean;
// backward: sum dy and sum dy * xhat), so each rank normalises with the global batch's
// statistics. dgamma / dbeta stay this rank's own sums (the gradient all-reduce adds them up).
#include "cpu/ops.hpp"
#include "effnet/cpu_engine.hpp"

namespace effnet::cpu {

Tensor sync_batchnorm_train_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                    BatchNormSaved* saved, Tensor* running_mean, Tensor* running_var,
                                    float momentum, BatchNormReducer& reducer);
void sync_batchnorm_train_backward(const Tensor& x, const Tensor& gamma, const BatchNormSaved& saved,
                                   const Tensor& dy, Tensor* dx, Tensor* dgamma, Tensor* dbeta,
                                   BatchNormReducer& reducer);

} // namespace effnet::cpu
