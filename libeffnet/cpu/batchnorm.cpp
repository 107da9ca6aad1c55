// Batch norm over [N, C, H, W], per channel C, PyTorch semantics:
//   train: normalise with the biased batch variance; running stats take the unbiased one;
//   eval:  y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
// Statistics and parameter-gradient sums accumulate in double, one thread per channel. Train
// mode optionally synchronises the statistics over data-parallel ranks (a BatchNormReducer).
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ops.hpp"
#include "cpu/ops_util.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"

namespace effnet::cpu {
namespace {

struct BnDims {
    int64_t N, C, HW;
};

BnDims bn_dims(const char* op, const Tensor& x, const Tensor& gamma) {
    detail::check_rank(op, "x", x, 4);
    const BnDims d{x.shape[0], x.shape[1], x.shape[2] * x.shape[3]};
    detail::check_shape(op, "gamma", gamma, {d.C});
    return d;
}

} // namespace

Tensor batchnorm_eval_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const Tensor& running_mean, const Tensor& running_var, float eps) {
    const char* op = "batchnorm_eval_forward";
    const BnDims d = bn_dims(op, x, gamma);
    detail::check_shape(op, "beta", beta, {d.C});
    detail::check_shape(op, "running_mean", running_mean, {d.C});
    detail::check_shape(op, "running_var", running_var, {d.C});
    Tensor y(x.shape);
#pragma omp parallel for schedule(static) if (x.numel() > detail::kParallelMinWork)
    for (int64_t nc = 0; nc < d.N * d.C; ++nc) {
        const int64_t c = nc % d.C;
        const double scale = double(gamma.data[c]) / std::sqrt(double(running_var.data[c]) + eps);
        const double shift = double(beta.data[c]) - double(running_mean.data[c]) * scale;
        const float* xp = x.ptr() + nc * d.HW;
        float* yp = y.ptr() + nc * d.HW;
        for (int64_t i = 0; i < d.HW; ++i) yp[i] = float(xp[i] * scale + shift);
    }
    return y;
}

// Each channel's statistics come from per-channel sums taken in passes; with a reducer
// (synchronized batch norm) every pass's sums are summed over all ranks before the next pass, so
// each rank normalises with the global batch's statistics. Without one, the same arithmetic on
// this process's batch alone.
Tensor batchnorm_train_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                               BatchNormSaved* saved, Tensor* running_mean, Tensor* running_var,
                               float momentum, BatchNormReducer* reducer) {
    const char* op = "batchnorm_train_forward";
    const BnDims d = bn_dims(op, x, gamma);
    detail::check_shape(op, "beta", beta, {d.C});
    if (running_mean) detail::check_shape(op, "running_mean", *running_mean, {d.C});
    if (running_var) detail::check_shape(op, "running_var", *running_var, {d.C});
    const bool parallel = x.numel() > detail::kParallelMinWork;

    // Pass 1: [sum x (C), count].
    std::vector<double> sums(size_t(d.C) + 1);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t c = 0; c < d.C; ++c) {
        double sum = 0;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) sum += xp[i];
        }
        sums[c] = sum;
    }
    sums[d.C] = double(d.N * d.HW);
    if (reducer) reducer->allreduce_sum(sums.data(), sums.size());
    const double count = sums[d.C];
    // Same rule as PyTorch: the batch variance of a single value is undefined.
    EFFNET_CHECK(count > 1, std::string(op) + ": need more than 1 value per channel in training, x " +
                                shape_str(x.shape) + (reducer ? " (over all ranks)" : ""));

    // Pass 2: sum of squared deviations from the mean (two passes: no cancellation).
    std::vector<double> mean(d.C), sq(d.C), invstd(d.C);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = sums[c] / count;
        double s = 0;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) s += (xp[i] - m) * (xp[i] - m);
        }
        mean[c] = m;
        sq[c] = s;
    }
    if (reducer) reducer->allreduce_sum(sq.data(), sq.size());

    // Pass 3: normalise; running statistics.
    Tensor y(x.shape);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = mean[c];
        const double is = 1.0 / std::sqrt(sq[c] / count + eps);
        invstd[c] = is;
        const double scale = is * gamma.data[c], shift = beta.data[c] - m * scale;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            float* yp = y.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) yp[i] = float(xp[i] * scale + shift);
        }
        if (running_mean)
            running_mean->data[c] = float((1.0 - momentum) * running_mean->data[c] + momentum * m);
        if (running_var) {
            const double var_unbiased = sq[c] / (count - 1);
            running_var->data[c] = float((1.0 - momentum) * running_var->data[c] + momentum * var_unbiased);
        }
    }
    if (saved) {
        saved->mean = std::move(mean);
        saved->invstd = std::move(invstd);
    }
    return y;
}

void batchnorm_train_backward(const Tensor& x, const Tensor& gamma, const BatchNormSaved& saved,
                              const Tensor& dy, Tensor* dx, Tensor* dgamma, Tensor* dbeta,
                              BatchNormReducer* reducer) {
    const char* op = "batchnorm_train_backward";
    const BnDims d = bn_dims(op, x, gamma);
    detail::check_same_shape(op, "dy", dy, "x", x);
    EFFNET_CHECK(int64_t(saved.mean.size()) == d.C && int64_t(saved.invstd.size()) == d.C,
                 std::string(op) + ": saved statistics have " + std::to_string(saved.mean.size()) +
                     " channels, x " + shape_str(x.shape));
    const bool parallel = x.numel() > detail::kParallelMinWork;
    if (dgamma) *dgamma = Tensor({d.C});
    if (dbeta) *dbeta = Tensor({d.C});
    // Pass 1: [sum dy (C), sum dy * xhat (C), count]. dgamma and dbeta are this process's sums
    // (with a reducer, the gradient all-reduce adds the ranks' up).
    std::vector<double> sums(2 * size_t(d.C) + 1);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = saved.mean[c], is = saved.invstd[c];
        double sum_dy = 0, sum_dy_xhat = 0;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            const float* dp = dy.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) {
                sum_dy += dp[i];
                sum_dy_xhat += dp[i] * ((xp[i] - m) * is);
            }
        }
        if (dgamma) dgamma->data[c] = float(sum_dy_xhat);
        if (dbeta) dbeta->data[c] = float(sum_dy);
        sums[c] = sum_dy;
        sums[d.C + c] = sum_dy_xhat;
    }
    sums[2 * d.C] = double(d.N * d.HW);
    if (reducer) reducer->allreduce_sum(sums.data(), sums.size());
    if (!dx) return;

    // Pass 2: dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)).
    *dx = Tensor(x.shape);
    const double count = sums[2 * d.C];
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = saved.mean[c], is = saved.invstd[c];
        const double k = gamma.data[c] * is;
        const double mean_dy = sums[c] / count, mean_dy_xhat = sums[d.C + c] / count;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            const float* dp = dy.ptr() + (n * d.C + c) * d.HW;
            float* gp = dx->ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) {
                const double xhat = (xp[i] - m) * is;
                gp[i] = float(k * (dp[i] - mean_dy - xhat * mean_dy_xhat));
            }
        }
    }
}

void batchnorm_eval_backward(const Tensor& x, const Tensor& gamma, const Tensor& running_mean,
                             const Tensor& running_var, float eps, const Tensor& dy, Tensor* dx,
                             Tensor* dgamma, Tensor* dbeta) {
    const char* op = "batchnorm_eval_backward";
    const BnDims d = bn_dims(op, x, gamma);
    detail::check_shape(op, "running_mean", running_mean, {d.C});
    detail::check_shape(op, "running_var", running_var, {d.C});
    detail::check_same_shape(op, "dy", dy, "x", x);
    if (dx) *dx = Tensor(x.shape);
    if (dgamma) *dgamma = Tensor({d.C});
    if (dbeta) *dbeta = Tensor({d.C});
#pragma omp parallel for schedule(static) if (x.numel() > detail::kParallelMinWork)
    for (int64_t c = 0; c < d.C; ++c) {
        const double is = 1.0 / std::sqrt(double(running_var.data[c]) + eps);
        const double m = running_mean.data[c], k = gamma.data[c] * is;
        double sum_dy = 0, sum_dy_xhat = 0;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            const float* dp = dy.ptr() + (n * d.C + c) * d.HW;
            float* gp = dx ? dx->ptr() + (n * d.C + c) * d.HW : nullptr;
            for (int64_t i = 0; i < d.HW; ++i) {
                sum_dy += dp[i];
                sum_dy_xhat += dp[i] * ((xp[i] - m) * is);
                if (gp) gp[i] = float(dp[i] * k);
            }
        }
        if (dgamma) dgamma->data[c] = float(sum_dy_xhat);
        if (dbeta) dbeta->data[c] = float(sum_dy);
    }
}

} // namespace effnet::cpu
