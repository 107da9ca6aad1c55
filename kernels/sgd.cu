#include "kernels/sgd.cuh"

#include <cmath>
#include <string>

#include "kernels/dispatch.cuh"
#include "kernels/optimizer_common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

// Same arithmetic as train::Optimizer (libeffnet/train/optimizer.cpp): double, one rounding per
// operation (__dmul_rn / __dadd_rn keep nvcc from fusing a multiply and an add into an FMA).
__global__ void sgd_kernel(SgdArgs a) {
    for_each_updated(a, [&](int64_t i, double wd) {
        const double p = a.param[i];
        const double g = __dadd_rn(clipped_grad(a.grad[i], a.grad_scale), __dmul_rn(wd, p)); // grad + wd * p
        if (a.momentum == 0.0) {
            a.param[i] = float(__dsub_rn(p, __dmul_rn(a.lr, g))); // p - lr * g
            return;
        }
        const float buf = float(__dadd_rn(__dmul_rn(a.momentum, double(a.momentum_buffer[i])), g));
        a.momentum_buffer[i] = buf;
        const double update = a.nesterov ? __dadd_rn(g, __dmul_rn(a.momentum, double(buf))) : double(buf);
        a.param[i] = float(__dsub_rn(p, __dmul_rn(a.lr, update))); // p - lr * update
    });
}

} // namespace

void launch_sgd_update(const SgdArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.param && a.grad && (a.momentum == 0.0 || a.momentum_buffer) && a.count >= 0,
                 "sgd_update: null pointer argument");
    EFFNET_CHECK(std::isfinite(a.lr) && std::isfinite(a.momentum) && std::isfinite(a.weight_decay) &&
                     std::isfinite(a.grad_scale),
                 "sgd_update: non-finite hyperparameter");
    if (a.count == 0) return;
    sgd_kernel<<<grid_for(a.count, kThreads, 4096), kThreads, 0, stream>>>(a);
    EFFNET_LAUNCH_CHECK("sgd_kernel");
}

} // namespace effnet::kernels
