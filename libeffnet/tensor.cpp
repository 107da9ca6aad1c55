#include "effnet/tensor.hpp"

#include <cmath>

#include "effnet/error.hpp"

namespace effnet {

std::string shape_str(const Shape& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + "]";
}

int64_t shape_numel(const Shape& shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
        EFFNET_CHECK(d >= 0, "negative dimension in shape " + shape_str(shape));
        n *= d;
    }
    return n;
}

Tensor::Tensor(Shape s, float fill) : shape(std::move(s)), data(shape_numel(shape), fill) {}

int64_t Tensor::dim(int i) const {
    const int r = rank();
    const int j = i < 0 ? i + r : i;
    EFFNET_CHECK(j >= 0 && j < r,
                 "dimension " + std::to_string(i) + " out of range for shape " + shape_str(shape));
    return shape[j];
}

double relative_error(const Tensor& a, const Tensor& b) {
    EFFNET_CHECK(a.shape == b.shape,
                 "relative_error: shapes differ " + shape_str(a.shape) + " vs " + shape_str(b.shape));
    double num = 0, den = 0;
    for (size_t i = 0; i < a.data.size(); ++i) {
        const double d = double(a.data[i]) - double(b.data[i]);
        num += d * d;
        den += double(b.data[i]) * double(b.data[i]);
    }
    if (std::isnan(num)) return INFINITY;
    if (den == 0) return num == 0 ? 0.0 : INFINITY;
    return std::sqrt(num / den);
}

} // namespace effnet
