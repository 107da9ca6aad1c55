#include "backend.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "effnet/cpu_engine.hpp"
#include "effnet/cpu_session.hpp"
#include "effnet/error.hpp"

namespace classify {

namespace {

class CpuBackend : public Backend {
public:
    CpuBackend(effnet::Model& model, int size)
        : network_(model), size_(size), classes_(model.config.num_classes) {}

    void run(const float* input, int n, float* logits) override {
        effnet::Tensor x({n, 3, size_, size_});
        std::memcpy(x.ptr(), input, sizeof(float) * size_t(x.numel()));
        const effnet::Tensor out = network_.forward(x).logits; // [n, classes]
        EFFNET_CHECK(out.numel() == int64_t(n) * classes_,
                     "CPU forward returned logits of shape " + effnet::shape_str(out.shape));
        std::memcpy(logits, out.ptr(), sizeof(float) * size_t(out.numel()));
    }
    std::string description() const override { return "cpu (fp32, reference engine)"; }

private:
    effnet::cpu::Network network_;
    int size_;
    int classes_;
};

class FastCpuBackend : public Backend {
public:
    FastCpuBackend(const effnet::Model& model, int batch, int size, int threads)
        : session_(model, batch, size, size, options(threads)) {}

    void run(const float* input, int n, float* logits) override { session_.run(input, logits, n); }
    std::string description() const override { return session_.description(); }

private:
    static effnet::CpuSessionOptions options(int threads) {
        effnet::CpuSessionOptions o;
        o.threads = threads;
        return o;
    }
    effnet::CpuSession session_;
};

class CudaBackend : public Backend {
public:
    CudaBackend(const effnet::Model& model, int batch, int size, effnet::Precision precision)
        : session_(model, batch, size, size, precision), batch_(batch), size_(size),
          classes_(model.config.num_classes), padded_input_(size_t(batch) * 3 * size * size, 0.0f),
          padded_logits_(size_t(batch) * classes_) {}

    void run(const float* input, int n, float* logits) override {
        EFFNET_CHECK(n >= 1 && n <= batch_, "CUDA backend: batch of " + std::to_string(n) +
                                                " images exceeds the session's " + std::to_string(batch_));
        if (n == batch_) {
            session_.run(input, logits);
            return;
        }
        // A partial batch: the session's shape is fixed, so pad with zeros and keep n rows.
        const size_t image_floats = size_t(3) * size_ * size_;
        std::copy(input, input + n * image_floats, padded_input_.begin());
        std::fill(padded_input_.begin() + n * image_floats, padded_input_.end(), 0.0f);
        session_.run(padded_input_.data(), padded_logits_.data());
        std::copy(padded_logits_.begin(), padded_logits_.begin() + size_t(n) * classes_, logits);
    }
    std::string description() const override {
        return std::string("cuda (") + effnet::precision_name(session_.precision()) + ", " +
               effnet::cuda_device_description() + ")";
    }

private:
    effnet::InferenceSession session_;
    int batch_, size_, classes_;
    std::vector<float> padded_input_;
    std::vector<float> padded_logits_;
};

} // namespace

std::unique_ptr<Backend> make_cpu_backend(effnet::Model& model, int batch, int size,
                                          const std::string& engine, int threads) {
    if (engine == "reference") return std::make_unique<CpuBackend>(model, size);
    EFFNET_CHECK(engine == "fast", "unknown CPU engine '" + engine + "' (expected fast or reference)");
    return std::make_unique<FastCpuBackend>(model, batch, size, threads);
}

std::unique_ptr<Backend> make_cuda_backend(const effnet::Model& model, int batch, int size,
                                           effnet::Precision precision) {
    EFFNET_CHECK(effnet::cuda_available(), "no usable CUDA device: " + effnet::cuda_device_description());
    return std::make_unique<CudaBackend>(model, batch, size, precision);
}

} // namespace classify
