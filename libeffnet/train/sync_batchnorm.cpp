// Synchronized batch norm (dist/sync_batchnorm.hpp): cpu/batchnorm.cpp's train-mode arithmetic,
// with the per-channel sums all-reduced between the passes. One rank holding the whole batch
// computes what batchnorm_train_forward / _backward compute, up to the order of the double sums.
#include "dist/sync_batchnorm.hpp"

#include <cmath>
#include <vector>

#include "effnet/error.hpp"

namespace effnet::cpu {
namespace {

struct Dims {
    int64_t N, C, HW;
};

Dims dims_of(const char* op, const Tensor& x, const Tensor& gamma) {
    EFFNET_CHECK(x.rank() == 4, std::string(op) + ": x must be NCHW, got " + shape_str(x.shape));
    EFFNET_CHECK(gamma.rank() == 1 && gamma.dim(0) == x.dim(1),
                 std::string(op) + ": gamma " + shape_str(gamma.shape) + " for x " + shape_str(x.shape));
    return {x.dim(0), x.dim(1), x.dim(2) * x.dim(3)};
}

} // namespace

Tensor sync_batchnorm_train_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                    BatchNormSaved* saved, Tensor* running_mean, Tensor* running_var,
                                    float momentum, BatchNormReducer& reducer) {
    const char* op = "sync_batchnorm_train_forward";
    const Dims d = dims_of(op, x, gamma);
    // Pass 1: the sums and the count, over every rank.
    std::vector<double> sums(size_t(d.C) + 1);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.C; ++c) {
        double sum = 0;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) sum += xp[i];
        }
        sums[size_t(c)] = sum;
    }
    sums[size_t(d.C)] = double(d.N * d.HW);
    reducer.allreduce_sum(sums.data(), sums.size());
    const double count = sums[size_t(d.C)];
    EFFNET_CHECK(count > 1, std::string(op) + ": need more than 1 value per channel over all ranks, x " +
                                shape_str(x.shape));
    // Pass 2: squared deviations from the global mean, over every rank.
    std::vector<double> mean(size_t(d.C)), sq(size_t(d.C));
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = sums[size_t(c)] / count;
        double s = 0;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) s += (xp[i] - m) * (xp[i] - m);
        }
        mean[size_t(c)] = m;
        sq[size_t(c)] = s;
    }
    reducer.allreduce_sum(sq.data(), sq.size());
    std::vector<double> invstd(size_t(d.C));
    Tensor y(x.shape);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = mean[size_t(c)];
        const double is = 1.0 / std::sqrt(sq[size_t(c)] / count + eps);
        invstd[size_t(c)] = is;
        const double scale = is * gamma.data[size_t(c)], shift = beta.data[size_t(c)] - m * scale;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            float* yp = y.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) yp[i] = float(xp[i] * scale + shift);
        }
        if (running_mean)
            running_mean->data[size_t(c)] =
                float((1.0 - momentum) * running_mean->data[size_t(c)] + momentum * m);
        if (running_var)
            running_var->data[size_t(c)] = float((1.0 - momentum) * running_var->data[size_t(c)] +
                                                 momentum * (sq[size_t(c)] / (count - 1)));
    }
    if (saved) {
        saved->mean = std::move(mean);
        saved->invstd = std::move(invstd);
    }
    return y;
}

void sync_batchnorm_train_backward(const Tensor& x, const Tensor& gamma, const BatchNormSaved& saved,
                                   const Tensor& dy, Tensor* dx, Tensor* dgamma, Tensor* dbeta,
                                   BatchNormReducer& reducer) {
    const char* op = "sync_batchnorm_train_backward";
    const Dims d = dims_of(op, x, gamma);
    EFFNET_CHECK(dy.shape == x.shape,
                 std::string(op) + ": dy " + shape_str(dy.shape) + " vs x " + shape_str(x.shape));
    EFFNET_CHECK(int64_t(saved.mean.size()) == d.C && int64_t(saved.invstd.size()) == d.C,
                 std::string(op) + ": saved statistics for another shape");
    if (dgamma) *dgamma = Tensor({d.C});
    if (dbeta) *dbeta = Tensor({d.C});
    // [sum dy (C), sum dy * xhat (C), count]: this rank's, then every rank's.
    std::vector<double> sums(2 * size_t(d.C) + 1);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = saved.mean[size_t(c)], is = saved.invstd[size_t(c)];
        double sum_dy = 0, sum_dy_xhat = 0;
        for (int64_t n = 0; n < d.N; ++n) {
            const float* xp = x.ptr() + (n * d.C + c) * d.HW;
            const float* dp = dy.ptr() + (n * d.C + c) * d.HW;
            for (int64_t i = 0; i < d.HW; ++i) {
                sum_dy += dp[i];
                sum_dy_xhat += dp[i] * ((xp[i] - m) * is);
            }
        }
        if (dgamma) dgamma->data[size_t(c)] = float(sum_dy_xhat);
        if (dbeta) dbeta->data[size_t(c)] = float(sum_dy);
        sums[size_t(c)] = sum_dy;
        sums[size_t(d.C + c)] = sum_dy_xhat;
    }
    sums[2 * size_t(d.C)] = double(d.N * d.HW);
    reducer.allreduce_sum(sums.data(), sums.size());
    if (!dx) return;
    *dx = Tensor(x.shape);
    const double count = sums[2 * size_t(d.C)];
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.C; ++c) {
        const double m = saved.mean[size_t(c)], is = saved.invstd[size_t(c)];
        // dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), means over the global batch
        const double k = gamma.data[size_t(c)] * is;
        const double mean_dy = sums[size_t(c)] / count, mean_dy_xhat = sums[size_t(d.C + c)] / count;
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

} // namespace effnet::cpu
