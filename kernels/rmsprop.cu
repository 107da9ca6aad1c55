#include "kernels/rmsprop.cuh"

#include <cmath>

#include "kernels/dispatch.cuh"
#include "kernels/optimizer_common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

// The arithmetic of train::Optimizer (libeffnet/train/optimizer.cpp), operation by operation:
// __dmul_rn / __dadd_rn / __dsub_rn keep nvcc from fusing a multiply and an add into an FMA.
__global__ void rmsprop_kernel(RmsPropArgs a, double one_minus_decay) {
    for_each_updated(a, [&](int64_t i, double wd) {
        const double p = a.param[i];
        const double g = __dadd_rn(clipped_grad(a.grad[i], a.grad_scale), __dmul_rn(wd, p)); // grad + wd * p
        // ms = rho * ms + ((1 - rho) * g) * g
        const float ms = float(__dadd_rn(__dmul_rn(a.decay, double(a.mean_square[i])),
                                         __dmul_rn(__dmul_rn(one_minus_decay, g), g)));
        a.mean_square[i] = ms;
        // mom = mu * mom + (lr * g) / sqrt(ms + eps)
        const double step = __ddiv_rn(__dmul_rn(a.lr, g), __dsqrt_rn(__dadd_rn(double(ms), a.eps)));
        const float mom = float(__dadd_rn(__dmul_rn(a.momentum, double(a.momentum_buffer[i])), step));
        a.momentum_buffer[i] = mom;
        a.param[i] = float(__dsub_rn(p, double(mom)));
    });
}

} // namespace

void launch_rmsprop_update(const RmsPropArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.param && a.grad && a.mean_square && a.momentum_buffer && a.count >= 0,
                 "rmsprop_update: null pointer argument");
    EFFNET_CHECK(std::isfinite(a.lr) && a.lr >= 0.0, "rmsprop_update: learning rate must be finite and >= 0");
    EFFNET_CHECK(a.decay > 0.0 && a.decay < 1.0, "rmsprop_update: decay must be in (0, 1)");
    EFFNET_CHECK(a.momentum >= 0.0 && a.momentum < 1.0, "rmsprop_update: momentum must be in [0, 1)");
    EFFNET_CHECK(a.eps > 0.0 && std::isfinite(a.eps), "rmsprop_update: eps must be > 0");
    EFFNET_CHECK(a.weight_decay >= 0.0 && std::isfinite(a.weight_decay),
                 "rmsprop_update: weight decay must be >= 0");
    EFFNET_CHECK(std::isfinite(a.grad_scale), "rmsprop_update: gradient scale is not finite");
    if (a.count == 0) return;
    // 1 - rho as the CPU evaluates it (a double subtraction, the same on host and device).
    rmsprop_kernel<<<grid_for(a.count, kThreads, 4096), kThreads, 0, stream>>>(a, 1.0 - a.decay);
    EFFNET_LAUNCH_CHECK("rmsprop_kernel");
}

} // namespace effnet::kernels
