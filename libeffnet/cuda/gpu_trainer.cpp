// GpuTrainer: the public training step. The network's forward and backward are the training
// graph's (train_graph.hpp), the parameters, gradients and optimizer state the parameter
// store's (param_store.hpp); this file adds the loss scale (AMP), the non-finite check,
// gradient clipping and the batch upload with prefetch.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"
#include "effnet/network_plan.hpp"
#include "dist/buckets.hpp"
#include "kernels/non_finite.cuh"
#include "kernels/scale.cuh"
#include "libeffnet/cuda/batch_upload.hpp"
#include "libeffnet/cuda/context.hpp"
#include "libeffnet/cuda/param_store.hpp"
#include "libeffnet/cuda/train_graph.hpp"

namespace effnet {

namespace {

Precision storage_of(TrainPrecision p) {
    switch (p) {
    case TrainPrecision::FP32:
        return Precision::FP32;
    case TrainPrecision::AmpFP16:
        return Precision::FP16;
    case TrainPrecision::AmpBF16:
        return Precision::BF16;
    }
    throw Error("GpuTrainer: unknown precision");
}

// What in b differs from a in the trainer's plan (shapes, strides, padding, activation, batch
// norm constants); empty when nothing does.
std::string architecture_difference(const ModelConfig& a, const ModelConfig& b) {
    if (a.in_channels != b.in_channels || a.stem_channels != b.stem_channels ||
        a.head_channels != b.head_channels || a.num_classes != b.num_classes)
        return "stem, head or classifier channels";
    if (a.activation != b.activation || a.padding != b.padding) return "activation or padding";
    if (a.bn_eps != b.bn_eps || a.bn_momentum != b.bn_momentum) return "batch-norm eps or momentum";
    if (a.blocks.size() != b.blocks.size())
        return std::to_string(b.blocks.size()) + " blocks instead of " + std::to_string(a.blocks.size());
    for (size_t i = 0; i < a.blocks.size(); ++i) {
        const BlockConfig &x = a.blocks[i], &y = b.blocks[i];
        if (x.in_channels != y.in_channels || x.expand_channels != y.expand_channels ||
            x.out_channels != y.out_channels || x.kernel != y.kernel || x.stride != y.stride ||
            x.se_channels != y.se_channels)
            return "block " + std::to_string(i);
    }
    return "";
}

void check_options(int batch, int height, int width, const GpuTrainOptions& options) {
    EFFNET_CHECK(batch >= 1 && height >= 1 && width >= 1,
                 "GpuTrainer: batch, height and width must be >= 1, got " + std::to_string(batch) + ", " +
                     std::to_string(height) + ", " + std::to_string(width));
    EFFNET_CHECK(batch <= 65535, "GpuTrainer: batch " + std::to_string(batch) + " exceeds 65535");
    EFFNET_CHECK(std::isfinite(options.loss_scale) && options.loss_scale > 0.0f,
                 "GpuTrainer: loss scale must be > 0, got " + std::to_string(options.loss_scale));
    EFFNET_CHECK(options.label_smoothing >= 0.0f && options.label_smoothing <= 1.0f,
                 "GpuTrainer: label smoothing must be in [0, 1], got " +
                     std::to_string(options.label_smoothing));
    EFFNET_CHECK(std::isfinite(options.clip_grad_norm) && options.clip_grad_norm >= 0.0,
                 "GpuTrainer: gradient clipping norm must be finite and >= 0");
}

} // namespace

struct GpuTrainer::Impl {
    cuda::Context ctx;
    ModelConfig config;
    int batch, height, width;
    TrainPrecision precision;
    GpuTrainOptions options;
    float scale;
    std::unique_ptr<cuda::ParamStore> params;
    std::unique_ptr<cuda::BatchUpload> upload; // the input batch [N, C, H, W] fp32, double-buffered
    std::unique_ptr<cuda::TrainGraph> graph;
    cuda::DeviceBuffer finite_flag;
    bool have_gradients = false;
    bool finite = true;
    double last_grad_norm = 0.0;

    // Data parallelism (set_gradient_allreduce): the flat gradient buffer cut into buckets in
    // backward order; bucket k's all-reduce starts on comm_stream once the backward has passed
    // the layer ready_layer[k] (event per bucket), and the update waits for the last.
    GradientAllReduce* reducer = nullptr;
    struct GradBucket {
        int64_t offset = 0, count = 0; // floats of params->grads()
        size_t ready_layer = 0;        // the backward has written the bucket after this layer
        cudaEvent_t ready = nullptr;
    };
    std::vector<GradBucket> buckets;
    cudaStream_t comm_stream = nullptr;
    cudaEvent_t comm_done = nullptr;
    void plan_allreduce(size_t bucket_bytes);
    void release_allreduce();
    ~Impl() { release_allreduce(); }

    Impl(const Model& m, int n, int h, int w, TrainPrecision p, const GpuTrainOptions& o)
        : ctx(o.device), config(m.config), batch(n), height(h), width(w), precision(p), options(o),
          scale(o.loss_scale) {
        check_options(n, h, w, o);
        const NetworkPlan plan = make_network_plan(config, n, h, w);
        params = std::make_unique<cuda::ParamStore>(plan.parameters(), storage_of(p), o.optimizer,
                                                    o.clip_grad_norm > 0.0, stream());
        params->upload(m);
        upload = std::make_unique<cuda::BatchUpload>(size_t(n) * config.in_channels * h * w * 4, stream());
        graph = std::make_unique<cuda::TrainGraph>(plan, storage_of(p), o, *params, stream());
        finite_flag = cuda::DeviceBuffer(sizeof(int), "finite flag");
        // The memsets and copies above ran on the legacy default stream, which the trainer's
        // non-blocking stream does not wait for.
        EFFNET_CUDA_CHECK(cudaDeviceSynchronize());
    }

    cudaStream_t stream() const { return ctx.stream(); }
    float run_forward_backward(const float* input_host, const int64_t* targets_host, uint64_t seed);
};

float GpuTrainer::Impl::run_forward_backward(const float* input_host, const int64_t* targets_host,
                                             uint64_t seed) {
    EFFNET_CHECK(input_host && targets_host, "GpuTrainer: null input or targets");
    std::vector<int32_t> t(static_cast<size_t>(batch));
    for (int n = 0; n < batch; ++n) {
        EFFNET_CHECK(targets_host[n] >= 0 && targets_host[n] < config.num_classes,
                     "GpuTrainer: target " + std::to_string(targets_host[n]) + " of sample " +
                         std::to_string(n) + " is outside [0, " + std::to_string(config.num_classes) + ")");
        t[size_t(n)] = int32_t(targets_host[n]);
    }
    ctx.activate();
    cudaStream_t st = stream();
    // A prefetched batch is on the device already (or on its way); else it is copied now, as one
    // DMA from the page-locked staging buffers, through the driver's staging from pageable memory.
    const float* input = upload->acquire(input_host);
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(graph->targets(), t.data(), t.size() * 4, cudaMemcpyHostToDevice, st));
    have_gradients = false;
    graph->upload_masks(seed);
    graph->forward(input, scale);
    upload->release(); // the stem's im2col was the input's only reader
    if (!reducer) {
        graph->backward();
    } else {
        // Each bucket's all-reduce starts as soon as the backward has written it, on the
        // communication stream, overlapping the rest of the backward.
        size_t next = 0;
        auto launch_ready = [&](size_t layer_done) {
            while (next < buckets.size() && layer_done <= buckets[next].ready_layer) {
                GradBucket& b = buckets[next++];
                EFFNET_CUDA_CHECK(cudaEventRecord(b.ready, st));
                EFFNET_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, b.ready, 0));
                reducer->allreduce_sum(params->grads() + b.offset, b.count, comm_stream);
            }
        };
        graph->backward(launch_ready);
        launch_ready(0);
        EFFNET_CUDA_CHECK(cudaEventRecord(comm_done, comm_stream));
        EFFNET_CUDA_CHECK(cudaStreamWaitEvent(st, comm_done, 0));
    }
    // Unscale (AMP) and check the gradients; data-parallel: the sum over the ranks becomes the mean.
    const float unscale = 1.0f / (scale * float(reducer ? reducer->world() : 1));
    if (unscale != 1.0f) kernels::launch_scale_f32(params->grads(), params->count(), unscale, st);
    EFFNET_CUDA_CHECK(cudaMemsetAsync(finite_flag.data(), 0, sizeof(int), st));
    kernels::launch_find_non_finite(params->grads(), params->count(), finite_flag.as<int>(), st);
    std::vector<float> losses(static_cast<size_t>(batch));
    int flag = 0;
    EFFNET_CUDA_CHECK(
        cudaMemcpyAsync(losses.data(), graph->sample_loss(), losses.size() * 4, cudaMemcpyDeviceToHost, st));
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(&flag, finite_flag.data(), sizeof(int), cudaMemcpyDeviceToHost, st));
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(st)); // also surfaces execution errors of the step
    finite = flag == 0;
    // The sums make every rank's gradients the same, non-finite values included; agreeing on
    // the flag as well keeps the AMP skip decision one decision even so.
    if (reducer) finite = reducer->all_true(finite);
    have_gradients = true;
    double total = 0.0;
    for (float l : losses) total += double(l);
    return float(total / double(batch));
}

// ---------------------------------------------------------------------------------------------

GpuTrainer::GpuTrainer(Model& model, int batch, int height, int width, TrainPrecision precision,
                       const GpuTrainOptions& options) {
    EFFNET_CHECK(cuda_available(), "GpuTrainer: no usable CUDA device (" + cuda_device_description() + ")");
    impl_ = std::make_unique<Impl>(model, batch, height, width, precision, options);
}

GpuTrainer::~GpuTrainer() = default;

float GpuTrainer::compute_gradients(const float* input, const int64_t* targets, uint64_t seed) {
    return impl_->run_forward_backward(input, targets, seed);
}

bool GpuTrainer::apply_update(double lr) {
    Impl& m = *impl_;
    EFFNET_CHECK(m.have_gradients, "GpuTrainer::apply_update: no gradients (call compute_gradients first)");
    EFFNET_CHECK(std::isfinite(lr) && lr >= 0.0,
                 "GpuTrainer::apply_update: learning rate must be finite and >= 0, got " +
                     std::to_string(lr));
    if (!m.finite) return false;
    m.ctx.activate();
    // Clipping as train::clip_grad_norm: every gradient times max / norm when norm > max.
    double grad_scale = 1.0;
    if (m.options.clip_grad_norm > 0.0) {
        m.last_grad_norm = std::sqrt(m.params->gradient_sum_squares(m.stream()));
        if (std::isfinite(m.last_grad_norm) && m.last_grad_norm > m.options.clip_grad_norm)
            grad_scale = m.options.clip_grad_norm / m.last_grad_norm;
    }
    m.params->update(lr, grad_scale, m.stream());
    // Not waited for: everything that reads the parameters runs after it on the stream, and
    // every download synchronises (execution errors surface there, or at the next step).
    m.have_gradients = false; // one update per backward
    return true;
}

float GpuTrainer::step(const float* input, const int64_t* targets, double lr, uint64_t seed) {
    const float loss = compute_gradients(input, targets, seed);
    if (impl_->finite) apply_update(lr);
    return loss;
}

void GpuTrainer::Impl::release_allreduce() {
    for (GradBucket& b : buckets)
        if (b.ready) cudaEventDestroy(b.ready);
    buckets.clear();
    if (comm_done) cudaEventDestroy(comm_done);
    if (comm_stream) cudaStreamDestroy(comm_stream);
    comm_done = nullptr;
    comm_stream = nullptr;
}

void GpuTrainer::Impl::plan_allreduce(size_t bucket_bytes) {
    release_allreduce();
    const NetworkPlan plan = make_network_plan(config, batch, height, width);
    // Each layer's span of the flat gradient buffer: from its first trainable parameter to the
    // next such layer's (the buffer is in network order, so the spans tile it), in backward order.
    struct Span {
        size_t layer;
        int64_t begin;
    };
    std::vector<Span> spans;
    for (size_t i = 0; i < plan.layers.size(); ++i) {
        int64_t lo = -1;
        for (const ParamSpec& p : plan.layers[i].params) {
            if (!p.trainable) continue;
            const int64_t off = int64_t(params->grad(p.name) - params->grads());
            lo = lo < 0 ? off : std::min(lo, off);
        }
        if (lo >= 0) spans.push_back({i, spans.empty() ? 0 : lo});
    }
    std::vector<int64_t> sizes; // backward order
    for (size_t k = spans.size(); k-- > 0;)
        sizes.push_back((k + 1 < spans.size() ? spans[k + 1].begin : params->count()) - spans[k].begin);
    for (const dist::Bucket& b : dist::plan_buckets(sizes, bucket_bytes)) {
        GradBucket g;
        g.count = b.count;
        g.offset = params->count() - (b.offset + b.count);
        g.ready_layer = spans[spans.size() - b.last].layer; // the bucket's first layer in network order
        EFFNET_CUDA_CHECK(cudaEventCreateWithFlags(&g.ready, cudaEventDisableTiming));
        buckets.push_back(g);
    }
    EFFNET_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
    EFFNET_CUDA_CHECK(cudaEventCreateWithFlags(&comm_done, cudaEventDisableTiming));
}

void GpuTrainer::set_gradient_allreduce(GradientAllReduce* reducer, size_t bucket_bytes) {
    Impl& m = *impl_;
    m.ctx.activate();
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(m.stream()));
    m.reducer = reducer;
    if (reducer)
        m.plan_allreduce(bucket_bytes);
    else
        m.release_allreduce();
}

void GpuTrainer::set_loss_scale(float scale) {
    EFFNET_CHECK(std::isfinite(scale) && scale > 0.0f,
                 "GpuTrainer: loss scale must be > 0, got " + std::to_string(scale));
    impl_->scale = scale;
}
float GpuTrainer::loss_scale() const {
    return impl_->scale;
}
bool GpuTrainer::last_step_finite() const {
    return impl_->finite;
}

cpu::Gradients GpuTrainer::gradients() const {
    impl_->ctx.activate();
    return impl_->params->download_gradients();
}

Tensor GpuTrainer::logits() const {
    const Impl& m = *impl_;
    m.ctx.activate();
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(m.stream()));
    Tensor t({int64_t(m.batch), int64_t(m.config.num_classes)});
    EFFNET_CUDA_CHECK(cudaMemcpy(t.ptr(), m.graph->logits(), size_t(t.numel()) * 4, cudaMemcpyDeviceToHost));
    return t;
}

void GpuTrainer::download(Model& model) const {
    impl_->ctx.activate();
    impl_->params->download(model);
}

void GpuTrainer::upload(const Model& model) {
    Impl& m = *impl_;
    const std::string difference = architecture_difference(m.config, model.config);
    EFFNET_CHECK(difference.empty(),
                 "GpuTrainer::upload: the model's architecture differs from the trainer's (" + difference +
                     ")");
    m.ctx.activate();
    m.params->upload(model); // checks every parameter's shape
}

train::ParamMap GpuTrainer::optimizer_state() const {
    impl_->ctx.activate();
    return impl_->params->optimizer_state();
}

int64_t GpuTrainer::optimizer_steps() const {
    return impl_->params->optimizer_steps();
}

void GpuTrainer::set_optimizer_state(const train::ParamMap& state, int64_t optimizer_steps) {
    impl_->ctx.activate();
    impl_->params->set_optimizer_state(state, optimizer_steps);
}

double GpuTrainer::last_grad_norm() const {
    return impl_->last_grad_norm;
}

float* GpuTrainer::input_staging(int which) {
    return impl_->upload->staging(which);
}

void GpuTrainer::prefetch(const float* input) {
    impl_->ctx.activate();
    impl_->upload->prefetch(input);
}

int GpuTrainer::batch() const {
    return impl_->batch;
}
int GpuTrainer::height() const {
    return impl_->height;
}
int GpuTrainer::width() const {
    return impl_->width;
}
TrainPrecision GpuTrainer::precision() const {
    return impl_->precision;
}
size_t GpuTrainer::peak_device_memory() const {
    const Impl& m = *impl_;
    return m.params->bytes() + m.upload->device_bytes() + m.graph->bytes() + m.finite_flag.size();
}

} // namespace effnet
