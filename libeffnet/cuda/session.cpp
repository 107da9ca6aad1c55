// InferenceSession: built once (session_build.cpp: BN folding, weight upload, arena by
// liveness; session_tuning.cpp: kernel choice per layer), captured in a CUDA graph; run() copies
// the input in, replays, and copies the logits out.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "libeffnet/cuda/session_impl.hpp"
#include "libeffnet/cuda/time_launches.hpp"

namespace effnet {
namespace {

constexpr int kMaxSide = 2048;   // keeps every grid dimension inside its limit
constexpr int kMaxBatch = 65535; // grid.z of the depthwise kernel

} // namespace

void InferenceSession::Impl::capture_graph() {
    cudaStream_t stream = ctx->stream();
    EFFNET_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
        for (const Step& s : steps) s.launch(stream);
    } catch (...) {
        cudaGraph_t partial = nullptr;
        cudaStreamEndCapture(stream, &partial); // leave the stream usable
        if (partial) cudaGraphDestroy(partial);
        (void)cudaGetLastError();
        throw;
    }
    EFFNET_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    EFFNET_CUDA_CHECK(cudaGraphInstantiate(&graph_exec, graph, 0));
}

InferenceSession::InferenceSession(const Model& model, int batch, int height, int width, Precision precision,
                                   const SessionOptions& options)
    : impl_(std::make_unique<Impl>()) {
    EFFNET_CHECK(cuda_available(),
                 "InferenceSession: CUDA is not available (" + cuda_device_description() + ")");
    EFFNET_CHECK(batch >= 1 && batch <= kMaxBatch, "InferenceSession: batch " + std::to_string(batch) +
                                                       " out of range [1, " + std::to_string(kMaxBatch) +
                                                       "]");
    EFFNET_CHECK(height >= 1 && width >= 1 && height <= kMaxSide && width <= kMaxSide,
                 "InferenceSession: input size " + std::to_string(height) + "x" + std::to_string(width) +
                     " out of range [1, " + std::to_string(kMaxSide) + "]");
    EFFNET_CHECK(precision == Precision::FP32 || precision == Precision::FP16 || precision == Precision::BF16,
                 "InferenceSession: unsupported precision");
    model.config.validate();
    EFFNET_CHECK(model.config.num_classes >= 1, "InferenceSession: model has no classes");

    Impl& m = *impl_;
    m.batch = batch;
    m.height = height;
    m.width = width;
    m.num_classes = model.config.num_classes;
    m.precision = precision;
    m.options = options;
    const char* debug = std::getenv("EFFNET_CUDA_SYNC_DEBUG");
    m.sync_debug = debug && std::strcmp(debug, "0") != 0;
    m.ctx = std::make_unique<cuda::Context>(options.device);
    size_t free_before = 0, total = 0;
    EFFNET_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));

    m.build(model);

    // Warm-up: run every step once eagerly (loads the kernels, surfaces execution errors here
    // rather than at the first run), then capture.
    m.run_steps(m.ctx->stream());
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(m.ctx->stream()));
    if (options.use_cuda_graph) {
        m.capture_graph();
        EFFNET_CUDA_CHECK(cudaGraphLaunch(m.graph_exec, m.ctx->stream()));
        EFFNET_CUDA_CHECK(cudaStreamSynchronize(m.ctx->stream()));
    }
    size_t free_after = 0;
    EFFNET_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
    m.measured_bytes = free_before > free_after ? free_before - free_after : 0;
}

InferenceSession::~InferenceSession() = default;
InferenceSession::InferenceSession(InferenceSession&&) noexcept = default;
InferenceSession& InferenceSession::operator=(InferenceSession&&) noexcept = default;

namespace {

// Refuses a second caller while one is inside the session (two threads, one session): their
// inputs and activations would share the one arena. Calls one after another, from any thread,
// are fine: the work of each is ordered on the session's stream.
class ExclusiveUse {
public:
    ExclusiveUse(std::atomic<bool>& in_use, const char* call) : in_use_(in_use) {
        EFFNET_CHECK(!in_use_.exchange(true), std::string("InferenceSession::") + call +
                                                  ": the session is in use by another thread; a session "
                                                  "has one stream and one activation arena, so use one "
                                                  "session per thread");
    }
    ~ExclusiveUse() { in_use_.store(false); }
    ExclusiveUse(const ExclusiveUse&) = delete;
    ExclusiveUse& operator=(const ExclusiveUse&) = delete;

private:
    std::atomic<bool>& in_use_;
};

} // namespace

void InferenceSession::run(const float* input, float* logits, bool device_pointers) {
    EFFNET_CHECK(impl_, "InferenceSession::run on a moved-from session");
    EFFNET_CHECK(input && logits, "InferenceSession::run: null input or logits pointer");
    EFFNET_CHECK(impl_->logits_id >= 0, "InferenceSession::run: the session was built with features_only "
                                        "(no classifier, no logits); use run_features()");
    Impl& m = *impl_;
    const ExclusiveUse exclusive(m.in_use, "run");
    m.ctx->activate();
    cudaStream_t s = m.ctx->stream();
    // cudaMemcpyDefault: with unified addressing the runtime tells host from device pointers.
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(m.tensor(m.input_id), input, m.input_bytes,
                                      device_pointers ? cudaMemcpyDefault : cudaMemcpyHostToDevice, s));
    if (m.graph_exec)
        EFFNET_CUDA_CHECK(cudaGraphLaunch(m.graph_exec, s));
    else
        m.run_steps(s);
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(logits, m.tensor(m.logits_id), m.logits_bytes,
                                      device_pointers ? cudaMemcpyDefault : cudaMemcpyDeviceToHost, s));
    if (!device_pointers) EFFNET_CUDA_CHECK(cudaStreamSynchronize(s));
}

void InferenceSession::run_features(const float* input, float* const* features, float* logits,
                                    bool device_pointers) {
    EFFNET_CHECK(impl_, "InferenceSession::run_features on a moved-from session");
    Impl& m = *impl_;
    EFFNET_CHECK(!m.features.empty(), "InferenceSession::run_features: the session was built without "
                                      "features (SessionOptions::features is empty); use run()");
    EFFNET_CHECK(input && features, "InferenceSession::run_features: null input or features pointer");
    for (size_t k = 0; k < m.features.size(); ++k)
        EFFNET_CHECK(features[k], "InferenceSession::run_features: null pointer for feature " +
                                      std::to_string(m.features[k].index) + " (features[" +
                                      std::to_string(k) + "])");
    EFFNET_CHECK(!logits || m.logits_id >= 0, "InferenceSession::run_features: the session was built with "
                                              "features_only (no logits); pass logits = nullptr");
    const ExclusiveUse exclusive(m.in_use, "run_features");
    m.ctx->activate();
    cudaStream_t s = m.ctx->stream();
    const cudaMemcpyKind in_kind = device_pointers ? cudaMemcpyDefault : cudaMemcpyHostToDevice;
    const cudaMemcpyKind out_kind = device_pointers ? cudaMemcpyDefault : cudaMemcpyDeviceToHost;
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(m.tensor(m.input_id), input, m.input_bytes, in_kind, s));
    if (m.graph_exec)
        EFFNET_CUDA_CHECK(cudaGraphLaunch(m.graph_exec, s));
    else
        m.run_steps(s);
    for (size_t k = 0; k < m.features.size(); ++k)
        EFFNET_CUDA_CHECK(cudaMemcpyAsync(features[k], m.tensor(m.feature_ids[k]),
                                          size_t(m.features[k].shape.numel()) * sizeof(float), out_kind, s));
    if (logits)
        EFFNET_CUDA_CHECK(cudaMemcpyAsync(logits, m.tensor(m.logits_id), m.logits_bytes, out_kind, s));
    if (!device_pointers) EFFNET_CUDA_CHECK(cudaStreamSynchronize(s));
}

const std::vector<FeatureInfo>& InferenceSession::features() const {
    return impl_->features;
}

void InferenceSession::synchronize() {
    EFFNET_CHECK(impl_, "InferenceSession::synchronize on a moved-from session");
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(impl_->ctx->stream()));
}

int InferenceSession::batch() const {
    return impl_->batch;
}
int InferenceSession::height() const {
    return impl_->height;
}
int InferenceSession::width() const {
    return impl_->width;
}
int InferenceSession::num_classes() const {
    return impl_->num_classes;
}
Precision InferenceSession::precision() const {
    return impl_->precision;
}
size_t InferenceSession::peak_device_memory() const {
    return impl_->weights.size() + impl_->arena.size() + impl_->squeeze.size() +
           impl_->ctx->workspace_bytes();
}
size_t InferenceSession::activation_arena_bytes() const {
    return impl_->arena.size();
}
void* InferenceSession::stream() const {
    return impl_->ctx->stream();
}

std::vector<StepProfile> InferenceSession::profile_steps(int reps) {
    EFFNET_CHECK(impl_, "InferenceSession::profile_steps on a moved-from session");
    EFFNET_CHECK(reps >= 1, "InferenceSession::profile_steps: reps must be >= 1");
    const ExclusiveUse exclusive(impl_->in_use, "profile_steps");
    Impl& m = *impl_;
    m.ctx->activate();
    cudaStream_t s = m.ctx->stream();
    const size_t n = m.steps.size();
    std::vector<std::unique_ptr<cuda::Event>> events;
    for (size_t i = 0; i <= n; ++i) events.push_back(std::make_unique<cuda::Event>());
    std::vector<double> total(n, 0.0);
    m.run_steps(s); // warm
    for (int r = 0; r < reps; ++r) {
        EFFNET_CUDA_CHECK(cudaEventRecord(events[0]->get(), s));
        for (size_t i = 0; i < n; ++i) {
            m.steps[i].launch(s);
            EFFNET_CUDA_CHECK(cudaEventRecord(events[i + 1]->get(), s));
        }
        EFFNET_CUDA_CHECK(cudaEventSynchronize(events[n]->get()));
        for (size_t i = 0; i < n; ++i) {
            float ms = 0.0f;
            EFFNET_CUDA_CHECK(cudaEventElapsedTime(&ms, events[i]->get(), events[i + 1]->get()));
            total[i] += ms;
        }
    }
    std::vector<StepProfile> out;
    for (size_t i = 0; i < n; ++i) out.push_back({m.steps[i].name, m.steps[i].kernel, total[i] / reps});
    return out;
}

} // namespace effnet
