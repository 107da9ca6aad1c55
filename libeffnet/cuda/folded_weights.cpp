#include "libeffnet/cuda/folded_weights.hpp"

#include <cmath>
#include <cstring>

#include "effnet/error.hpp"
#include "effnet/safetensors.hpp"

namespace effnet::cuda {
namespace {
void check_vector(const Tensor& t, int64_t n, const std::string& what) {
    EFFNET_CHECK(t.rank() == 1 && t.dim(0) == n, "batch norm fold: " + what + " has shape " +
                                                     shape_str(t.shape) + ", expected [" + std::to_string(n) +
                                                     "]");
}
} // namespace

FoldedConv fold_batchnorm(const Tensor& w, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
                          const Tensor& var, float eps) {
    EFFNET_CHECK(w.rank() == 4,
                 "batch norm fold: conv weight has shape " + shape_str(w.shape) + ", expected rank 4");
    const int64_t out = w.dim(0);
    check_vector(gamma, out, "weight");
    check_vector(beta, out, "bias");
    check_vector(mean, out, "running_mean");
    check_vector(var, out, "running_var");
    const int64_t per_out = w.numel() / out;
    FoldedConv f;
    f.shape = w.shape;
    f.weight.resize(size_t(w.numel()));
    f.bias.resize(size_t(out));
    for (int64_t o = 0; o < out; ++o) {
        const double v = double(var.data[size_t(o)]) + double(eps);
        EFFNET_CHECK(v > 0.0, "batch norm fold: running_var + eps <= 0 at channel " + std::to_string(o));
        const double scale = double(gamma.data[size_t(o)]) / std::sqrt(v);
        for (int64_t i = 0; i < per_out; ++i)
            f.weight[size_t(o * per_out + i)] = float(double(w.data[size_t(o * per_out + i)]) * scale);
        f.bias[size_t(o)] = float(double(beta.data[size_t(o)]) - double(mean.data[size_t(o)]) * scale);
    }
    return f;
}

FoldedConv fold_batchnorm(const Model& model, const std::string& prefix) {
    const float eps = model.config.bn_eps;
    return fold_batchnorm(model.param(prefix + ".conv.weight"), model.param(prefix + ".bn.weight"),
                          model.param(prefix + ".bn.bias"), model.param(prefix + ".bn.running_mean"),
                          model.param(prefix + ".bn.running_var"), eps);
}

std::vector<float> stem_layout(const FoldedConv& c) {
    const int64_t O = c.shape[0], I = c.shape[1], kh = c.shape[2], kw = c.shape[3];
    std::vector<float> out(c.weight.size());
    for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < I; ++i)
            for (int64_t y = 0; y < kh; ++y)
                for (int64_t x = 0; x < kw; ++x)
                    out[size_t(((y * kw + x) * I + i) * O + o)] =
                        c.weight[size_t(((o * I + i) * kh + y) * kw + x)];
    return out;
}

std::vector<float> depthwise_layout(const FoldedConv& c) {
    const int64_t C = c.shape[0], taps = c.shape[2] * c.shape[3];
    EFFNET_CHECK(c.shape[1] == 1,
                 "depthwise weight has shape " + shape_str(c.shape) + ", expected [C, 1, k, k]");
    std::vector<float> out(c.weight.size());
    for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t t = 0; t < taps; ++t) out[size_t(t * C + ch)] = c.weight[size_t(ch * taps + t)];
    return out;
}

std::vector<float> transpose(const std::vector<float>& m, int64_t rows, int64_t cols) {
    EFFNET_CHECK(int64_t(m.size()) == rows * cols, "transpose: size mismatch");
    std::vector<float> out(m.size());
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) out[size_t(c * rows + r)] = m[size_t(r * cols + c)];
    return out;
}

std::vector<uint8_t> to_storage(const std::vector<float>& values, Precision precision) {
    std::vector<uint8_t> out;
    if (precision == Precision::FP32) {
        out.resize(values.size() * 4);
        if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
        return out;
    }
    out.resize(values.size() * 2);
    for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = precision == Precision::FP16 ? float_to_half(values[i]) : float_to_bf16(values[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
    }
    return out;
}

std::vector<float> from_storage(const std::vector<uint8_t>& bytes, Precision precision) {
    std::vector<float> out;
    if (precision == Precision::FP32) {
        out.resize(bytes.size() / 4);
        if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * 4);
        return out;
    }
    out.resize(bytes.size() / 2);
    for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, 2);
        out[i] = precision == Precision::FP16 ? half_to_float(h) : bf16_to_float(h);
    }
    return out;
}

std::vector<float> round_to_storage(const std::vector<float>& values, Precision precision) {
    return from_storage(to_storage(values, precision), precision);
}

} // namespace effnet::cuda
