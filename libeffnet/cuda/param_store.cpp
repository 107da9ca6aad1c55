// The GPU trainer's flat parameter, gradient and optimizer-state buffers (param_store.hpp).
#include "libeffnet/cuda/param_store.hpp"

#include <algorithm>
#include <cstring>

#include "effnet/error.hpp"
#include "kernels/adamw.cuh"
#include "kernels/rmsprop.cuh"
#include "kernels/cast.cuh"
#include "kernels/sgd.cuh"
#include "kernels/sum_squares.cuh"
#include "kernels/types.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::cuda {

namespace {
constexpr int64_t kParamAlign = kernels::kParamChunk; // elements: 128 B in fp32, 64 B in half
} // namespace

ParamStore::ParamStore(const std::vector<ParamSpec>& specs, Precision storage,
                       const train::OptimizerConfig& optimizer, bool clip_grad_norm, cudaStream_t stream)
    : storage_(storage), optimizer_(optimizer), stream_(stream) {
    // The optimizer: train::Optimizer's ranges and messages (its constructor throws).
    (void)train::Optimizer(optimizer_);
    for (const ParamSpec& spec : specs) {
        Slot s;
        s.name = spec.name;
        s.shape = spec.shape;
        s.count = shape_numel(spec.shape);
        s.offset = total_;
        s.trainable = spec.trainable;
        total_ += (s.count + kParamAlign - 1) / kParamAlign * kParamAlign;
        slot_index_[s.name] = slots_.size();
        slots_.push_back(std::move(s));
    }
    master_ = alloc(size_t(total_) * 4, "master weights");
    {
        // train::Optimizer's rule for which tensors decay, per chunk (tensors start at chunk boundaries).
        std::vector<unsigned char> classes(size_t(total_ / kParamAlign), kernels::kParamFrozen);
        for (const Slot& s : slots_) {
            if (!s.trainable) continue;
            const bool decay = optimizer_.decay_all || train::default_weight_decay(s.name);
            const size_t first = size_t(s.offset / kParamAlign),
                         n = size_t((s.count + kParamAlign - 1) / kParamAlign);
            std::fill_n(classes.begin() + first, n, decay ? kernels::kParamDecay : kernels::kParamNoDecay);
        }
        chunk_class_ = alloc(classes.size(), "parameter classes");
        EFFNET_CUDA_CHECK(
            cudaMemcpy(chunk_class_.data(), classes.data(), classes.size(), cudaMemcpyHostToDevice));
    }
    grads_ = alloc(size_t(total_) * 4, "gradients");
    momentum_ = alloc(size_t(total_) * 4, "momentum buffers");
    if (optimizer_.kind != train::OptimizerKind::SGD)
        second_moment_ = alloc(size_t(total_) * 4, "second-moment buffers");
    EFFNET_CUDA_CHECK(cudaMemset(grads_.data(), 0, grads_.size()));
    EFFNET_CUDA_CHECK(cudaMemset(momentum_.data(), 0, momentum_.size()));
    set_optimizer_state({}, 0); // every slot at its initial value
    if (clip_grad_norm) {
        norm_partials_ = alloc(size_t(kernels::sum_squares_partials(total_)) * 8, "gradient norm partials");
        norm_sum_ = alloc(8, "gradient norm");
    }
    if (storage_ != Precision::FP32)
        half_params_ = alloc(size_t(total_) * kernels::storage_size(storage_), "half weights");
}

DeviceBuffer ParamStore::alloc(size_t bytes, const std::string& what) {
    DeviceBuffer b(bytes, what);
    bytes_ += bytes;
    return b;
}

const ParamStore::Slot& ParamStore::slot(const std::string& name) const {
    const auto it = slot_index_.find(name);
    EFFNET_CHECK(it != slot_index_.end(), "GpuTrainer: no parameter '" + name + "'");
    return slots_[it->second];
}

const void* ParamStore::gemm_weight(const std::string& name) const {
    const int64_t off = slot(name).offset;
    if (storage_ == Precision::FP32) return master_.as<float>() + off;
    return static_cast<const char*>(half_params_.data()) + size_t(off) * kernels::storage_size(storage_);
}

void ParamStore::cast_for_gemms(cudaStream_t stream) {
    if (storage_ != Precision::FP32)
        kernels::launch_cast_from_f32(master_.as<float>(), half_params_.data(), total_, storage_, stream);
}

std::vector<ParamStore::StateSlot> ParamStore::state_slots() const {
    switch (optimizer_.kind) {
    case train::OptimizerKind::SGD:
        if (optimizer_.momentum == 0.0) return {}; // train::Optimizer keeps no state then
        return {{"momentum", false, 0.0f}};
    case train::OptimizerKind::RMSProp:
        return {{"ms", true, 1.0f}, {"mom", false, 0.0f}};
    case train::OptimizerKind::AdamW:
        return {{"exp_avg", false, 0.0f}, {"exp_avg_sq", true, 0.0f}};
    }
    return {};
}

// host [count()] -> buf, ordered after the work queued on the (non-blocking) stream.
void ParamStore::upload_flat(DeviceBuffer& buf, const std::vector<float>& host) {
    EFFNET_CHECK(host.size() == size_t(total_) && buf.size() >= host.size() * 4,
                 "GpuTrainer: flat buffer size mismatch");
    EFFNET_CUDA_CHECK(
        cudaMemcpyAsync(buf.data(), host.data(), host.size() * 4, cudaMemcpyHostToDevice, stream_));
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

std::vector<float> ParamStore::download_flat(const DeviceBuffer& buf) const {
    std::vector<float> host(static_cast<size_t>(total_));
    EFFNET_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), buf.data(), host.size() * 4, cudaMemcpyDeviceToHost, stream_));
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return host;
}

std::map<std::string, Tensor> ParamStore::unflatten(const std::vector<float>& host,
                                                    bool trainable_only) const {
    std::map<std::string, Tensor> out;
    for (const Slot& s : slots_) {
        if (trainable_only && !s.trainable) continue;
        Tensor t(s.shape);
        std::memcpy(t.ptr(), host.data() + s.offset, size_t(s.count) * 4);
        out[s.name] = std::move(t);
    }
    return out;
}

void ParamStore::upload(const Model& model) {
    std::vector<float> host(size_t(total_), 0.0f);
    for (const Slot& s : slots_) {
        const Tensor& t = model.param(s.name);
        EFFNET_CHECK(t.shape == s.shape && t.numel() == s.count,
                     "GpuTrainer: model parameter '" + s.name + "' has shape " + shape_str(t.shape) +
                         ", the config needs " + shape_str(s.shape));
        std::memcpy(host.data() + s.offset, t.ptr(), size_t(s.count) * 4);
    }
    upload_flat(master_, host);
}

void ParamStore::download(Model& model) const {
    for (auto& [name, t] : unflatten(download_flat(master_), false)) model.params[name] = std::move(t);
}

cpu::Gradients ParamStore::download_gradients() const {
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<float> host(static_cast<size_t>(total_));
    EFFNET_CUDA_CHECK(cudaMemcpy(host.data(), grads_.data(), host.size() * 4, cudaMemcpyDeviceToHost));
    cpu::Gradients g;
    g.params = unflatten(host, true);
    return g;
}

double ParamStore::gradient_sum_squares(cudaStream_t stream) {
    EFFNET_CHECK(norm_sum_.data(), "GpuTrainer: gradient norm asked for without clipping");
    kernels::launch_sum_squares(grads_.as<float>(), total_, norm_partials_.as<double>(),
                                norm_sum_.as<double>(), stream);
    double sum = 0.0;
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(&sum, norm_sum_.data(), sizeof sum, cudaMemcpyDeviceToHost, stream));
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream));
    return sum;
}

// One launch updates every trainable parameter, with train::Optimizer's per-parameter weight
// decay from chunk_class (frozen chunks, the running statistics, are left alone).
void ParamStore::update(double lr, double grad_scale, cudaStream_t stream) {
    ++optimizer_steps_; // before the update, as train::Optimizer::step (AdamW's t starts at 1)
    has_optimizer_state_ = true;
    const train::OptimizerConfig& o = optimizer_;
    float* p = master_.as<float>();
    const float* g = grads_.as<float>();
    const auto* classes = chunk_class_.as<unsigned char>();
    switch (o.kind) {
    case train::OptimizerKind::SGD: {
        kernels::SgdArgs a;
        a.param = p;
        a.grad = g;
        a.momentum_buffer = momentum_.as<float>();
        a.count = total_;
        a.lr = lr;
        a.momentum = o.momentum;
        a.nesterov = o.nesterov;
        a.weight_decay = o.weight_decay;
        a.grad_scale = grad_scale;
        a.chunk_class = classes;
        kernels::launch_sgd_update(a, stream);
        return;
    }
    case train::OptimizerKind::RMSProp: {
        kernels::RmsPropArgs a;
        a.param = p;
        a.grad = g;
        a.mean_square = second_moment_.as<float>();
        a.momentum_buffer = momentum_.as<float>();
        a.count = total_;
        a.lr = lr;
        a.decay = o.rms_decay;
        a.momentum = o.momentum;
        a.eps = o.rms_eps;
        a.weight_decay = o.weight_decay;
        a.grad_scale = grad_scale;
        a.chunk_class = classes;
        kernels::launch_rmsprop_update(a, stream);
        return;
    }
    case train::OptimizerKind::AdamW: {
        kernels::AdamWArgs a;
        a.param = p;
        a.grad = g;
        a.exp_avg = momentum_.as<float>();
        a.exp_avg_sq = second_moment_.as<float>();
        a.count = total_;
        a.lr = lr;
        a.beta1 = o.beta1;
        a.beta2 = o.beta2;
        a.eps = o.adam_eps;
        a.weight_decay = o.weight_decay;
        a.grad_scale = grad_scale;
        a.step = optimizer_steps_;
        a.chunk_class = classes;
        kernels::launch_adamw_update(a, stream);
        return;
    }
    }
}

train::ParamMap ParamStore::optimizer_state() const {
    train::ParamMap state;
    if (!has_optimizer_state_) return state;
    for (const StateSlot& k : state_slots())
        for (auto& [name, t] : unflatten(download_flat(state_buffer(k)), true))
            state[std::string(k.name) + "/" + name] = std::move(t);
    return state;
}

void ParamStore::set_optimizer_state(const train::ParamMap& state, int64_t steps) {
    EFFNET_CHECK(steps >= 0, "GpuTrainer: negative optimizer step count " + std::to_string(steps));
    const std::vector<StateSlot> kinds = state_slots();
    const std::string optimizer = train::optimizer_name(optimizer_.kind);
    for (const auto& [key, t] : state) {
        const size_t slash = key.find('/');
        EFFNET_CHECK(slash != std::string::npos,
                     "GpuTrainer: optimizer state key '" + key + "' is not '<slot>/<parameter>'");
        const std::string slot_name = key.substr(0, slash), param_name = key.substr(slash + 1);
        const bool known =
            std::any_of(kinds.begin(), kinds.end(), [&](const StateSlot& k) { return slot_name == k.name; });
        EFFNET_CHECK(known, "GpuTrainer: optimizer state '" + key + "' is not a slot of " + optimizer +
                                (kinds.empty() ? " with momentum 0 (it keeps no state)" : ""));
        const auto it = slot_index_.find(param_name);
        EFFNET_CHECK(it != slot_index_.end() && slots_[it->second].trainable,
                     "GpuTrainer: optimizer state '" + key + "' names no trainable parameter");
        const Slot& p = slots_[it->second];
        EFFNET_CHECK(t.shape == p.shape && t.numel() == p.count && t.data.size() == size_t(p.count),
                     "GpuTrainer: optimizer state '" + key + "' has shape " + shape_str(t.shape) +
                         ", the parameter has " + shape_str(p.shape));
    }
    for (const StateSlot& k : kinds) {
        std::vector<float> host(size_t(total_), 0.0f);
        for (const Slot& p : slots_) {
            if (!p.trainable) continue;
            float* dst = host.data() + p.offset;
            const auto it = state.find(std::string(k.name) + "/" + p.name);
            if (it != state.end())
                std::memcpy(dst, it->second.ptr(), size_t(p.count) * 4);
            else
                std::fill(dst, dst + p.count, k.initial);
        }
        upload_flat(state_buffer(k), host);
    }
    optimizer_steps_ = steps;
    has_optimizer_state_ = steps > 0 || !state.empty();
}

} // namespace effnet::cuda
