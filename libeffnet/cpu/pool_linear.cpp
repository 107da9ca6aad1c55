// Global average pooling [N, C, H, W] -> [N, C] and the fully connected layer [N, K] -> [N, M].
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "cpu/ops_util.hpp"
#include "effnet/error.hpp"

namespace effnet::cpu {

Tensor global_avg_pool_forward(const Tensor& x) {
    detail::check_rank("global_avg_pool_forward", "x", x, 4);
    const int64_t nc = x.shape[0] * x.shape[1], hw = x.shape[2] * x.shape[3];
    EFFNET_CHECK(hw > 0, "global_avg_pool_forward: empty spatial size, x " + shape_str(x.shape));
    Tensor y({x.shape[0], x.shape[1]});
#pragma omp parallel for schedule(static) if (x.numel() > detail::kParallelMinWork)
    for (int64_t i = 0; i < nc; ++i) {
        const float* xp = x.ptr() + i * hw;
        double sum = 0;
        for (int64_t j = 0; j < hw; ++j) sum += xp[j];
        y.data[i] = float(sum / double(hw));
    }
    return y;
}

Tensor global_avg_pool_backward(const Shape& x_shape, const Tensor& dy) {
    EFFNET_CHECK(x_shape.size() == 4,
                 "global_avg_pool_backward: x must have rank 4, got shape " + shape_str(x_shape));
    detail::check_shape("global_avg_pool_backward", "dy", dy, {x_shape[0], x_shape[1]});
    Tensor dx(x_shape);
    const int64_t nc = x_shape[0] * x_shape[1], hw = x_shape[2] * x_shape[3];
#pragma omp parallel for schedule(static) if (dx.numel() > detail::kParallelMinWork)
    for (int64_t i = 0; i < nc; ++i) {
        const float g = float(double(dy.data[i]) / double(hw));
        float* gp = dx.ptr() + i * hw;
        for (int64_t j = 0; j < hw; ++j) gp[j] = g;
    }
    return dx;
}

Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor* b) {
    const char* op = "linear_forward";
    detail::check_rank(op, "x", x, 2);
    detail::check_rank(op, "w", w, 2);
    const int64_t N = x.shape[0], K = x.shape[1], M = w.shape[0];
    EFFNET_CHECK(w.shape[1] == K, std::string(op) + ": x " + shape_str(x.shape) + " and w " +
                                      shape_str(w.shape) + " do not match");
    if (b) detail::check_shape(op, "b", *b, {M});
    Tensor y({N, M});
#pragma omp parallel for schedule(static) if (N * M * K > (1 << 16))
    for (int64_t nm = 0; nm < N * M; ++nm) {
        const int64_t n = nm / M, m = nm % M;
        const float* xr = x.ptr() + n * K;
        const float* wr = w.ptr() + m * K;
        double sum = b ? double(b->data[m]) : 0.0;
        for (int64_t k = 0; k < K; ++k) sum += double(xr[k]) * wr[k];
        y.data[nm] = float(sum);
    }
    return y;
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw, Tensor* db) {
    const char* op = "linear_backward";
    detail::check_rank(op, "x", x, 2);
    detail::check_rank(op, "w", w, 2);
    const int64_t N = x.shape[0], K = x.shape[1], M = w.shape[0];
    EFFNET_CHECK(w.shape[1] == K, std::string(op) + ": x " + shape_str(x.shape) + " and w " +
                                      shape_str(w.shape) + " do not match");
    detail::check_shape(op, "dy", dy, {N, M});
    if (dx) {
        // dx[n, k] = sum_m dy[n, m] w[m, k]; one thread per (n, k), all rows of w walked in order.
        *dx = Tensor(x.shape);
#pragma omp parallel for schedule(static) if (N * M * K > (1 << 16))
        for (int64_t nk = 0; nk < N * K; ++nk) {
            const int64_t n = nk / K, k = nk % K;
            const float* dr = dy.ptr() + n * M;
            double sum = 0;
            for (int64_t m = 0; m < M; ++m) sum += double(dr[m]) * w.data[m * K + k];
            dx->data[nk] = float(sum);
        }
    }
    if (dw) {
        *dw = Tensor(w.shape);
#pragma omp parallel for schedule(static) if (N * M * K > (1 << 16))
        for (int64_t mk = 0; mk < M * K; ++mk) {
            const int64_t m = mk / K, k = mk % K;
            double sum = 0;
            for (int64_t n = 0; n < N; ++n) sum += double(dy.data[n * M + m]) * x.data[n * K + k];
            dw->data[mk] = float(sum);
        }
    }
    if (db) {
        *db = Tensor({M});
        for (int64_t m = 0; m < M; ++m) {
            double sum = 0;
            for (int64_t n = 0; n < N; ++n) sum += dy.data[n * M + m];
            db->data[m] = float(sum);
        }
    }
}

} // namespace effnet::cpu
