#pragma once
// Where the forward runs: the fast CPU path (a CpuSession of a fixed batch size; a partial
// last batch runs only its images), the CPU reference engine, or (CUDA builds) an
// InferenceSession of a fixed batch size, the last partial batch padded.
#include <memory>
#include <string>

#include "effnet/inference.hpp"
#include "effnet/model.hpp"

namespace classify {

class Backend {
public:
    virtual ~Backend() = default;
    // input [n, 3, size, size] (n <= batch) -> logits [n, num_classes]
    virtual void run(const float* input, int n, float* logits) = 0;
    virtual std::string description() const = 0;
};

// engine: "fast" (effnet::CpuSession) or "reference" (effnet::cpu::Network); threads 0: all CPUs.
std::unique_ptr<Backend> make_cpu_backend(effnet::Model& model, int batch, int size,
                                          const std::string& engine, int threads);
// Throws effnet::Error when CUDA is unavailable or the session cannot be built.
std::unique_ptr<Backend> make_cuda_backend(const effnet::Model& model, int batch, int size,
                                           effnet::Precision precision);

} // namespace classify
