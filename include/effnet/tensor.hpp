#pragma once
// A host tensor: float32, contiguous, row-major, with its shape. The CPU reference engine and
// the public API exchange these. Layout conventions are written next to each use
// (activations are NCHW on the host; conv weights [O, I/groups, kh, kw] as PyTorch stores them).
#include <cstdint>
#include <string>
#include <vector>

namespace effnet {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape); // "[2, 3, 64, 72]"
int64_t shape_numel(const Shape& shape);

struct Tensor {
    Shape shape;
    std::vector<float> data;

    Tensor() = default;
    explicit Tensor(Shape s, float fill = 0.0f);

    int64_t numel() const { return static_cast<int64_t>(data.size()); }
    int64_t dim(int i) const; // negative i counts from the end; throws if out of range
    int rank() const { return static_cast<int>(shape.size()); }
    float* ptr() { return data.data(); }
    const float* ptr() const { return data.data(); }
    bool empty() const { return data.empty(); }
};

// ||a - b|| / ||b|| over all elements; throws effnet::Error if the shapes differ.
double relative_error(const Tensor& a, const Tensor& b);

} // namespace effnet
