#include "kernels/adamw.cuh"

#include <cmath>
#include <string>

#include "kernels/dispatch.cuh"
#include "kernels/optimizer_common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;

// Per-launch constants, computed on the host exactly as the CPU optimizer computes them.
struct AdamWConstants {
    double decay_factor;    // 1 - lr * wd
    double no_decay_factor; // 1 - lr * 0 (chunks without weight decay)
    double one_minus_b1;    // 1 - b1
    double one_minus_b2;    // 1 - b2
    double correction1;     // 1 - b1^t
    double correction2;     // 1 - b2^t
};

// The arithmetic of train::Optimizer (libeffnet/train/optimizer.cpp), operation by operation:
// __dmul_rn / __dadd_rn / __dsub_rn keep nvcc from fusing a multiply and an add into an FMA.
__global__ void adamw_kernel(AdamWArgs a, AdamWConstants k) {
    for_each_updated(a, [&](int64_t i, double wd) {
        const double g = clipped_grad(a.grad[i], a.grad_scale);
        const double decayed =
            __dmul_rn(double(a.param[i]), wd == a.weight_decay ? k.decay_factor : k.no_decay_factor);
        const float m =
            float(__dadd_rn(__dmul_rn(a.beta1, double(a.exp_avg[i])), __dmul_rn(k.one_minus_b1, g)));
        // v = b2 * v + ((1 - b2) * g) * g
        const float v = float(__dadd_rn(__dmul_rn(a.beta2, double(a.exp_avg_sq[i])),
                                        __dmul_rn(__dmul_rn(k.one_minus_b2, g), g)));
        a.exp_avg[i] = m;
        a.exp_avg_sq[i] = v;
        const double m_hat = __ddiv_rn(double(m), k.correction1);
        const double v_hat = __ddiv_rn(double(v), k.correction2);
        // p = decayed - (lr * m_hat) / (sqrt(v_hat) + eps)
        const double step = __ddiv_rn(__dmul_rn(a.lr, m_hat), __dadd_rn(__dsqrt_rn(v_hat), a.eps));
        a.param[i] = float(__dsub_rn(decayed, step));
    });
}

} // namespace

void launch_adamw_update(const AdamWArgs& a, cudaStream_t stream) {
    EFFNET_CHECK(a.param && a.grad && a.exp_avg && a.exp_avg_sq && a.count >= 0,
                 "adamw_update: null pointer argument");
    EFFNET_CHECK(std::isfinite(a.lr) && a.lr >= 0.0, "adamw_update: learning rate must be finite and >= 0");
    EFFNET_CHECK(a.beta1 >= 0.0 && a.beta1 < 1.0 && a.beta2 >= 0.0 && a.beta2 < 1.0,
                 "adamw_update: betas must be in [0, 1)");
    EFFNET_CHECK(a.eps > 0.0 && std::isfinite(a.eps), "adamw_update: eps must be > 0");
    EFFNET_CHECK(a.weight_decay >= 0.0 && std::isfinite(a.weight_decay),
                 "adamw_update: weight decay must be >= 0");
    EFFNET_CHECK(std::isfinite(a.grad_scale), "adamw_update: gradient scale is not finite");
    EFFNET_CHECK(a.step >= 1, "adamw_update: step count must be >= 1, got " + std::to_string(a.step));
    if (a.count == 0) return;
    AdamWConstants k;
    k.decay_factor = 1.0 - a.lr * a.weight_decay;
    k.no_decay_factor = 1.0 - a.lr * 0.0;
    k.one_minus_b1 = 1.0 - a.beta1;
    k.one_minus_b2 = 1.0 - a.beta2;
    k.correction1 = 1.0 - std::pow(a.beta1, double(a.step));
    k.correction2 = 1.0 - std::pow(a.beta2, double(a.step));
    adamw_kernel<<<grid_for(a.count, kThreads, 4096), kThreads, 0, stream>>>(a, k);
    EFFNET_LAUNCH_CHECK("adamw_kernel");
}

} // namespace effnet::kernels
