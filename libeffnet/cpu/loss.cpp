// Softmax and mean softmax cross-entropy with PyTorch's label smoothing:
//   loss_n = (1 - eps) * (-log p[n, t_n]) + eps * mean_k(-log p[n, k]),  loss = mean_n loss_n,
//   dloss/dlogits[n, k] = (p[n, k] - (1 - eps) * [k == t_n] - eps / K) / N.
// log p is computed as logit - log-sum-exp (shifted by the row max), in double.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "cpu/ops_util.hpp"
#include "effnet/error.hpp"

namespace effnet::cpu {
namespace {

// log sum_k exp(row[k]), stable.
double log_sum_exp(const float* row, int64_t K) {
    double mx = row[0];
    for (int64_t k = 1; k < K; ++k) mx = std::max(mx, double(row[k]));
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(double(row[k]) - mx);
    return mx + std::log(sum);
}

} // namespace

Tensor softmax(const Tensor& logits) {
    detail::check_rank("softmax", "logits", logits, 2);
    const int64_t N = logits.shape[0], K = logits.shape[1];
    EFFNET_CHECK(K > 0, "softmax: no classes, logits " + shape_str(logits.shape));
    Tensor p(logits.shape);
    for (int64_t n = 0; n < N; ++n) {
        const float* row = logits.ptr() + n * K;
        const double lse = log_sum_exp(row, K);
        for (int64_t k = 0; k < K; ++k) p.data[n * K + k] = float(std::exp(double(row[k]) - lse));
    }
    return p;
}

double softmax_cross_entropy(const Tensor& logits, const std::vector<int64_t>& targets, float label_smoothing,
                             Tensor* dlogits) {
    const char* op = "softmax_cross_entropy";
    detail::check_rank(op, "logits", logits, 2);
    const int64_t N = logits.shape[0], K = logits.shape[1];
    EFFNET_CHECK(N > 0 && K > 0, std::string(op) + ": empty logits " + shape_str(logits.shape));
    EFFNET_CHECK(int64_t(targets.size()) == N, std::string(op) + ": " + std::to_string(targets.size()) +
                                                   " targets for logits " + shape_str(logits.shape));
    EFFNET_CHECK(label_smoothing >= 0.0f && label_smoothing <= 1.0f,
                 std::string(op) + ": label_smoothing must be in [0, 1], got " +
                     std::to_string(label_smoothing));
    for (int64_t n = 0; n < N; ++n)
        EFFNET_CHECK(targets[n] >= 0 && targets[n] < K,
                     std::string(op) + ": target " + std::to_string(targets[n]) + " of sample " +
                         std::to_string(n) + " is outside [0, " + std::to_string(K) + ")");

    const double eps = label_smoothing;
    if (dlogits) *dlogits = Tensor(logits.shape);
    double total = 0;
    for (int64_t n = 0; n < N; ++n) {
        const float* row = logits.ptr() + n * K;
        const double lse = log_sum_exp(row, K);
        double sum_neg_logp = 0;
        for (int64_t k = 0; k < K; ++k) sum_neg_logp += lse - row[k];
        const double nll = lse - row[targets[n]];
        total += (1.0 - eps) * nll + eps * sum_neg_logp / double(K);
        if (dlogits) {
            float* g = dlogits->ptr() + n * K;
            for (int64_t k = 0; k < K; ++k) {
                const double target = (k == targets[n] ? 1.0 - eps : 0.0) + eps / double(K);
                g[k] = float((std::exp(double(row[k]) - lse) - target) / double(N));
            }
        }
    }
    return total / double(N);
}

} // namespace effnet::cpu
