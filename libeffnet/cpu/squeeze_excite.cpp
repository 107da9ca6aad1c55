// Squeeze-excite: y = x * sigmoid(W2 act(W1 mean_hw(x) + b1) + b2), the two 1x1 convs as
// linear layers on the pooled [N, C] vector. Built from the pooling, linear and pointwise ops.
#include <string>
#include <utility>

#include "cpu/ops.hpp"
#include "cpu/ops_util.hpp"
#include "effnet/error.hpp"

namespace effnet::cpu {
namespace {

struct SeDims {
    int64_t N, C, HW, S;
};

SeDims se_dims(const char* op, const Tensor& x, const Tensor& w1, const Tensor& w2) {
    detail::check_rank(op, "x", x, 4);
    detail::check_rank(op, "w1", w1, 4);
    const SeDims d{x.shape[0], x.shape[1], x.shape[2] * x.shape[3], w1.shape[0]};
    detail::check_shape(op, "w1", w1, {d.S, d.C, 1, 1});
    detail::check_shape(op, "w2", w2, {d.C, d.S, 1, 1});
    return d;
}

// A [O, I, 1, 1] 1x1-conv weight as a [O, I] linear weight (a copy; these are small).
Tensor as_matrix(const Tensor& w) {
    Tensor m;
    m.shape = {w.shape[0], w.shape[1]};
    m.data = w.data;
    return m;
}

} // namespace

Tensor squeeze_excite_forward(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                              const Tensor& b2, Activation a, SqueezeExciteSaved* saved) {
    const char* op = "squeeze_excite_forward";
    const SeDims d = se_dims(op, x, w1, w2);
    detail::check_shape(op, "b1", b1, {d.S});
    detail::check_shape(op, "b2", b2, {d.C});

    Tensor squeezed = global_avg_pool_forward(x);                      // [N, C]
    Tensor reduced_pre = linear_forward(squeezed, as_matrix(w1), &b1); // [N, S]
    Tensor reduced = activation_forward(reduced_pre, a);
    Tensor gate_pre = linear_forward(reduced, as_matrix(w2), &b2); // [N, C]
    Tensor gate = sigmoid_forward(gate_pre);

    Tensor y(x.shape);
#pragma omp parallel for schedule(static) if (x.numel() > detail::kParallelMinWork)
    for (int64_t nc = 0; nc < d.N * d.C; ++nc) {
        const float g = gate.data[nc];
        const float* xp = x.ptr() + nc * d.HW;
        float* yp = y.ptr() + nc * d.HW;
        for (int64_t i = 0; i < d.HW; ++i) yp[i] = xp[i] * g;
    }
    if (saved) {
        saved->squeezed = std::move(squeezed);
        saved->reduced_pre = std::move(reduced_pre);
        saved->gate_pre = std::move(gate_pre);
        saved->gate = std::move(gate);
    }
    return y;
}

void squeeze_excite_backward(const Tensor& x, const Tensor& w1, const Tensor& w2, Activation a,
                             const SqueezeExciteSaved& saved, const Tensor& dy, Tensor* dx, Tensor* dw1,
                             Tensor* db1, Tensor* dw2, Tensor* db2) {
    const char* op = "squeeze_excite_backward";
    const SeDims d = se_dims(op, x, w1, w2);
    detail::check_same_shape(op, "dy", dy, "x", x);
    detail::check_shape(op, "saved.squeezed", saved.squeezed, {d.N, d.C});
    detail::check_shape(op, "saved.reduced_pre", saved.reduced_pre, {d.N, d.S});
    detail::check_shape(op, "saved.gate_pre", saved.gate_pre, {d.N, d.C});
    detail::check_shape(op, "saved.gate", saved.gate, {d.N, d.C});

    // dgate[n, c] = sum_hw dy * x
    Tensor dgate({d.N, d.C});
#pragma omp parallel for schedule(static) if (x.numel() > detail::kParallelMinWork)
    for (int64_t nc = 0; nc < d.N * d.C; ++nc) {
        const float* xp = x.ptr() + nc * d.HW;
        const float* dp = dy.ptr() + nc * d.HW;
        double sum = 0;
        for (int64_t i = 0; i < d.HW; ++i) sum += double(dp[i]) * xp[i];
        dgate.data[nc] = float(sum);
    }
    const Tensor dgate_pre = sigmoid_backward(saved.gate_pre, dgate);
    const Tensor reduced = activation_forward(saved.reduced_pre, a);
    Tensor dreduced;
    linear_backward(reduced, as_matrix(w2), dgate_pre, &dreduced, dw2, db2);
    if (dw2) dw2->shape = w2.shape;
    const Tensor dreduced_pre = activation_backward(saved.reduced_pre, dreduced, a);
    Tensor dsqueezed;
    linear_backward(saved.squeezed, as_matrix(w1), dreduced_pre, dx ? &dsqueezed : nullptr, dw1, db1);
    if (dw1) dw1->shape = w1.shape;
    if (!dx) return;

    // dx = dy * gate + dsqueezed / HW (the pooled path)
    *dx = Tensor(x.shape);
#pragma omp parallel for schedule(static) if (x.numel() > detail::kParallelMinWork)
    for (int64_t nc = 0; nc < d.N * d.C; ++nc) {
        const float g = saved.gate.data[nc];
        const float pooled = float(double(dsqueezed.data[nc]) / double(d.HW));
        const float* dp = dy.ptr() + nc * d.HW;
        float* gp = dx->ptr() + nc * d.HW;
        for (int64_t i = 0; i < d.HW; ++i) gp[i] = dp[i] * g + pooled;
    }
}

} // namespace effnet::cpu
