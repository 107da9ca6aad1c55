// The GPU training step: GpuTrainer (its GEMMs: train_blas.hpp).
//
// Layout: activations NHWC in the storage precision (fp32, or fp16/bf16 under AMP), viewed as
// [rows = N*H*W, C]. Every parameter and running statistic lives in one flat fp32 "master"
// buffer (offsets aligned to 32 elements); gradients and the optimizer state (one or two slots
// per parameter) use the same offsets in their own flat buffers; under AMP a flat cast of the
// master buffer feeds the GEMMs.
//
// What the forward keeps for the backward: every conv's output z (the BN input) and the
// batch statistics; of the BN outputs only the stem's and each block's (the next block's input
// and residual). The rest is recomputed from z, which costs less than storing it:
//   - the expand BN + activation is applied by the depthwise kernels as they load their input
//     (the per-channel scale and shift the BN statistics pass writes), in the forward and in the
//     weight gradient, so the largest tensor of each block is never written at all;
//   - the depthwise BN output and the squeeze-excite output (the project GEMM's input) live in
//     scratch buffers in the forward and are recomputed from z in the backward.
// Squeeze-excite keeps its small fp32 tensors. The backward runs through three rotating scratch
// buffers of the largest activation size and one of the largest gated (SE) output.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cpu/ops.hpp"
#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"
#include "kernels/adamw.cuh"
#include "kernels/batchnorm.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/depthwise_conv_backward.cuh"
#include "kernels/im2col.cuh"
#include "kernels/rmsprop.cuh"
#include "kernels/sgd.cuh"
#include "kernels/small_matmul.cuh"
#include "kernels/squeeze_excite_backward.cuh"
#include "kernels/stochastic_depth.cuh"
#include "libeffnet/cuda/context.hpp"
#include "libeffnet/cuda/batch_upload.hpp"
#include "libeffnet/cuda/train_blas.hpp"

// ---------------------------------------------------------------------------------------------
// GpuTrainer

namespace effnet {

using cuda::DeviceBuffer;
using kernels::Act;

namespace {

constexpr int64_t kParamAlign = kernels::kParamChunk; // elements: 128 B in fp32, 64 B in half

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

struct ParamSlot {
    std::string name;
    Shape shape;
    int64_t offset = 0, count = 0;
    bool trainable = false;
};

// One slot of optimizer state per trainable parameter, as train::Optimizer names it.
struct StateSlot {
    const char* name;   // "momentum", "ms", "mom", "exp_avg", "exp_avg_sq"
    bool second_moment; // held in Impl::second_moment (else in Impl::momentum)
    float initial;      // the value train::Optimizer starts the slot at
};

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

// The per-use seed cpu::Network derives from ForwardOptions::seed (libeffnet/cpu/network.cpp):
// the same masks on both engines for the same step seed.
uint64_t derive_seed(uint64_t seed, uint64_t use) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (use + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A conv -> BN [-> act] unit.
struct BnUnit {
    std::string prefix;
    int64_t rows = 0; // N * Ho * Wo
    int channels = 0;
    DeviceBuffer z;            // [rows, C] conv output = BN input
    DeviceBuffer y;            // [rows, C] BN (+act) output, when kept
    DeviceBuffer mean, invstd; // [C] fp32
    DeviceBuffer scale, shift; // [C] fp32 gamma * invstd, beta - mean * scale (when a consumer
                               // applies the BN as it loads)
};

struct SeState {
    int reduced = 0;
    DeviceBuffer squeezed, reduced_pre, reduced_out, gate; // fp32
};

struct BlockState {
    BlockConfig cfg;
    bool drop_path = false; // stochastic depth applied in training
    DeviceBuffer drop_mask; // [N] 0 or 1/(1-p)
    std::vector<float> host_mask;
    int in_h = 0, in_w = 0, out_h = 0, out_w = 0;
    kernels::DepthwiseShape dw_shape;
    DeviceBuffer taps, flipped_taps; // [k*k, E] the depthwise weights, tap-major, as the kernels read them
    BnUnit expand, dw, project;      // project.y is the block output
    SeState se;
};

} // namespace

struct GpuTrainer::Impl {
    cuda::Context ctx;
    Model& model_ref;
    ModelConfig config;
    int batch, height, width;
    TrainPrecision precision;
    Precision storage;
    GpuTrainOptions options;
    float scale;
    size_t elem; // bytes per stored activation element
    size_t allocated = 0;

    std::vector<ParamSlot> slots;
    std::map<std::string, size_t> slot_index;
    int64_t param_total = 0;
    DeviceBuffer master, grads, half_params;
    // Optimizer state, offsets as master: momentum holds SGD's "momentum", RMSProp's "mom" and
    // AdamW's "exp_avg"; second_moment (RMSProp and AdamW only) RMSProp's "ms" and AdamW's
    // "exp_avg_sq".
    DeviceBuffer momentum, second_moment;
    DeviceBuffer chunk_class; // [param_total / kParamAlign] kernels::ParamClass: one update launch
    int64_t optimizer_steps = 0;
    bool has_optimizer_state = false;     // false: a fresh optimizer (exports as an empty map)
    DeviceBuffer norm_partials, norm_sum; // gradient clipping: the global sum of squares (double)
    double last_grad_norm = 0.0;

    // Stem / head / classifier and per-block state.
    int stem_h = 0, stem_w = 0, stem_ld = 0, stem_taps = 0;
    int stem_pad_top = 0, stem_pad_left = 0;
    std::unique_ptr<cuda::BatchUpload> upload; // the input batch [N, 3, H, W] fp32, double-buffered
    const float* input = nullptr;              // the device copy the current step reads
    DeviceBuffer columns;                      // [N*Ho*Wo, stem_ld]
    BnUnit stem, head;
    std::vector<BlockState> blocks;
    int head_h = 0, head_w = 0;
    DeviceBuffer pooled, logits, dlogits, dpooled, sample_loss, targets, finite_flag;
    bool dropout_active = false;
    DeviceBuffer dropout_mask, pooled_dropped; // [N, Ch]: the classifier's input after dropout
    std::vector<float> host_dropout_mask;
    DeviceBuffer scratch[3];
    DeviceBuffer gated;     // [rows, E] the largest squeeze-excite output (the backward's recompute)
    DeviceBuffer workspace; // fp32
    int64_t max_activation = 0, max_gated = 0;
    size_t workspace_floats = 0;

    std::unique_ptr<cuda::TrainBlas> blas;
    bool have_gradients = false;
    bool finite = true;

    Impl(Model& m, int n, int h, int w, TrainPrecision p, const GpuTrainOptions& o)
        : ctx(o.device), model_ref(m), config(m.config), batch(n), height(h), width(w), precision(p),
          storage(storage_of(p)), options(o), scale(o.loss_scale),
          elem(kernels::storage_size(storage_of(p))) {}

    cudaStream_t stream() const { return ctx.stream(); }

    DeviceBuffer alloc(size_t bytes, const std::string& what) {
        DeviceBuffer b(bytes, what);
        allocated += bytes;
        return b;
    }
    DeviceBuffer alloc_act(int64_t rows, int channels, const std::string& what) {
        note_activation(rows, channels);
        return alloc(size_t(rows) * size_t(channels) * elem, what);
    }
    // An activation that lives only in the scratch buffers.
    void note_activation(int64_t rows, int channels) {
        max_activation = std::max(max_activation, rows * channels);
    }

    std::vector<StateSlot> state_slots() const {
        switch (options.optimizer) {
        case train::OptimizerKind::SGD:
            if (options.momentum == 0.0) return {}; // train::Optimizer keeps no state then
            return {{"momentum", false, 0.0f}};
        case train::OptimizerKind::RMSProp:
            return {{"ms", true, 1.0f}, {"mom", false, 0.0f}};
        case train::OptimizerKind::AdamW:
            return {{"exp_avg", false, 0.0f}, {"exp_avg_sq", true, 0.0f}};
        }
        return {};
    }
    DeviceBuffer& state_buffer(const StateSlot& s) { return s.second_moment ? second_moment : momentum; }
    const DeviceBuffer& state_buffer(const StateSlot& s) const {
        return s.second_moment ? second_moment : momentum;
    }

    float* param(const std::string& name) { return master.as<float>() + slot(name).offset; }
    float* grad(const std::string& name) { return grads.as<float>() + slot(name).offset; }
    // The GEMM operand for a weight: the master weights in fp32, their cast under AMP.
    const void* gemm_weight(const std::string& name) {
        const int64_t off = slot(name).offset;
        if (storage == Precision::FP32) return master.as<float>() + off;
        return static_cast<const char*>(half_params.data()) + size_t(off) * elem;
    }
    const ParamSlot& slot(const std::string& name) const {
        const auto it = slot_index.find(name);
        EFFNET_CHECK(it != slot_index.end(), "GpuTrainer: no parameter '" + name + "'");
        return slots[it->second];
    }

    void plan_bn(BnUnit& u, const std::string& prefix, int64_t rows, int channels, bool keep_output,
                 bool load_transform = false) {
        EFFNET_CHECK(rows > 1, "GpuTrainer: train-mode batch norm '" + prefix +
                                   ".bn' needs more than one value per "
                                   "channel, got " +
                                   std::to_string(rows) + " (use a larger batch or input)");
        u.prefix = prefix;
        u.rows = rows;
        u.channels = channels;
        u.z = alloc_act(rows, channels, prefix + ".z");
        if (keep_output)
            u.y = alloc_act(rows, channels, prefix + ".y");
        else
            note_activation(rows, channels);
        u.mean = alloc(size_t(channels) * 4, prefix + ".mean");
        u.invstd = alloc(size_t(channels) * 4, prefix + ".invstd");
        if (load_transform) {
            u.scale = alloc(size_t(channels) * 4, prefix + ".scale");
            u.shift = alloc(size_t(channels) * 4, prefix + ".shift");
        }
        workspace_floats = std::max(workspace_floats, kernels::batchnorm_workspace_floats(rows, channels));
    }

    void upload_params(const Model& m) {
        std::vector<float> host(size_t(param_total), 0.0f);
        for (const ParamSlot& s : slots) {
            const Tensor& t = m.param(s.name);
            EFFNET_CHECK(t.shape == s.shape && t.numel() == s.count,
                         "GpuTrainer: model parameter '" + s.name + "' has shape " + shape_str(t.shape) +
                             ", the config needs " + shape_str(s.shape));
            std::memcpy(host.data() + s.offset, t.ptr(), size_t(s.count) * 4);
        }
        upload_flat(master, host);
    }
    // host [param_total] -> buf, ordered after the work queued on the (non-blocking) stream.
    void upload_flat(DeviceBuffer& buf, const std::vector<float>& host) {
        EFFNET_CHECK(host.size() == size_t(param_total) && buf.size() >= host.size() * 4,
                     "GpuTrainer: flat buffer size mismatch");
        ctx.activate();
        EFFNET_CUDA_CHECK(
            cudaMemcpyAsync(buf.data(), host.data(), host.size() * 4, cudaMemcpyHostToDevice, stream()));
        EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream()));
    }
    std::vector<float> download_flat(const DeviceBuffer& buf) const {
        std::vector<float> host(static_cast<size_t>(param_total));
        ctx.activate();
        EFFNET_CUDA_CHECK(
            cudaMemcpyAsync(host.data(), buf.data(), host.size() * 4, cudaMemcpyDeviceToHost, stream()));
        EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream()));
        return host;
    }
    void set_optimizer_state(const train::ParamMap& state, int64_t steps);
    void launch_update(double lr, double grad_scale);

    void plan();
    void forward();
    void backward();
    void bn_stats(BnUnit& u);
    void bn_apply(BnUnit& u, Act act, const void* residual, void* out, const float* sample_scale = nullptr,
                  int64_t rows_per_image = 1);
    void bn_forward(BnUnit& u, Act act, const void* residual, void* out, const float* sample_scale = nullptr,
                    int64_t rows_per_image = 1) {
        bn_stats(u);
        bn_apply(u, act, residual, out, sample_scale, rows_per_image);
    }
    void se_args(const BlockState& b, size_t i, const void* x, kernels::SqueezeExciteTrainArgs& se);
    // Writes dz (may alias dy). dy_pooled / dy_sample_scale: see BatchNormBackwardArgs.
    void bn_backward(BnUnit& u, Act act, const void* dy, const float* dy_pooled, int64_t rows_per_image,
                     void* dz, const float* dy_sample_scale = nullptr);
    void upload_masks(uint64_t seed);
    float run_forward_backward(const float* input_host, const int64_t* targets_host, uint64_t seed);
};

void GpuTrainer::Impl::plan() {
    config.validate();
    EFFNET_CHECK(batch >= 1 && height >= 1 && width >= 1,
                 "GpuTrainer: batch, height and width must be >= 1, got " + std::to_string(batch) + ", " +
                     std::to_string(height) + ", " + std::to_string(width));
    EFFNET_CHECK(batch <= 65535, "GpuTrainer: batch " + std::to_string(batch) + " exceeds 65535");
    EFFNET_CHECK(std::isfinite(scale) && scale > 0.0f,
                 "GpuTrainer: loss scale must be > 0, got " + std::to_string(scale));
    EFFNET_CHECK(options.label_smoothing >= 0.0f && options.label_smoothing <= 1.0f,
                 "GpuTrainer: label smoothing must be in [0, 1], got " +
                     std::to_string(options.label_smoothing));
    // The optimizer: train::Optimizer's ranges and messages (its constructor throws).
    (void)train::Optimizer(options.optimizer_config());
    EFFNET_CHECK(std::isfinite(options.clip_grad_norm) && options.clip_grad_norm >= 0.0,
                 "GpuTrainer: gradient clipping norm must be finite and >= 0");
    const ModelConfig& c = config;
    EFFNET_CHECK(c.in_channels >= 1 && c.in_channels * 9 <= 64,
                 "GpuTrainer: the stem supports 1..7 input channels, got " + std::to_string(c.in_channels));

    // Parameters: one flat buffer, every tensor aligned.
    for (const ParamSpec& spec : parameter_specs(c)) {
        ParamSlot s;
        s.name = spec.name;
        s.shape = spec.shape;
        s.count = shape_numel(spec.shape);
        s.offset = param_total;
        s.trainable = spec.trainable;
        param_total += (s.count + kParamAlign - 1) / kParamAlign * kParamAlign;
        slot_index[s.name] = slots.size();
        slots.push_back(std::move(s));
    }
    master = alloc(size_t(param_total) * 4, "master weights");
    {
        // train::Optimizer's rule for which tensors decay, per chunk (tensors start at chunk boundaries).
        std::vector<unsigned char> classes(size_t(param_total / kParamAlign), kernels::kParamFrozen);
        for (const ParamSlot& s : slots) {
            if (!s.trainable) continue;
            const bool decay = options.decay_all || train::default_weight_decay(s.name);
            const size_t first = size_t(s.offset / kParamAlign),
                         n = size_t((s.count + kParamAlign - 1) / kParamAlign);
            std::fill_n(classes.begin() + first, n, decay ? kernels::kParamDecay : kernels::kParamNoDecay);
        }
        chunk_class = alloc(classes.size(), "parameter classes");
        EFFNET_CUDA_CHECK(
            cudaMemcpy(chunk_class.data(), classes.data(), classes.size(), cudaMemcpyHostToDevice));
    }
    grads = alloc(size_t(param_total) * 4, "gradients");
    momentum = alloc(size_t(param_total) * 4, "momentum buffers");
    if (options.optimizer != train::OptimizerKind::SGD)
        second_moment = alloc(size_t(param_total) * 4, "second-moment buffers");
    EFFNET_CUDA_CHECK(cudaMemset(grads.data(), 0, grads.size()));
    EFFNET_CUDA_CHECK(cudaMemset(momentum.data(), 0, momentum.size()));
    set_optimizer_state({}, 0); // every slot at its initial value
    if (options.clip_grad_norm > 0.0) {
        norm_partials =
            alloc(size_t(kernels::sum_squares_partials(param_total)) * 8, "gradient norm partials");
        norm_sum = alloc(8, "gradient norm");
    }
    if (storage != Precision::FP32) half_params = alloc(size_t(param_total) * elem, "half weights");
    upload_params(model_ref);

    const int64_t N = batch;
    upload = std::make_unique<cuda::BatchUpload>(size_t(N) * c.in_channels * height * width * 4, stream());
    allocated += upload->device_bytes();
    // Stem: conv 3x3 stride 2 as im2col + GEMM.
    const cpu::Conv2dParams sp = cpu::conv_params(height, width, 3, 2, 1, c.padding);
    stem_h = conv_output_size(height, 3, 2, c.padding);
    stem_w = conv_output_size(width, 3, 2, c.padding);
    stem_pad_top = sp.pad_top;
    stem_pad_left = sp.pad_left;
    stem_taps = c.in_channels * 9;
    stem_ld = (stem_taps + 7) / 8 * 8;
    const int64_t stem_rows = N * stem_h * stem_w;
    columns = alloc(size_t(stem_rows) * size_t(stem_ld) * elem, "stem im2col");
    plan_bn(stem, "stem", stem_rows, c.stem_channels, true);

    int h = stem_h, w = stem_w;
    blocks.resize(c.blocks.size());
    for (size_t i = 0; i < c.blocks.size(); ++i) {
        BlockState& b = blocks[i];
        b.cfg = c.blocks[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        b.in_h = h;
        b.in_w = w;
        const int64_t in_rows = N * h * w;
        if (b.cfg.has_expand())
            plan_bn(b.expand, p + "expand", in_rows, b.cfg.expand_channels, false, /*load_transform=*/true);
        note_activation(in_rows, b.cfg.expand_channels); // the depthwise input's gradient
        const cpu::Conv2dParams dp =
            cpu::conv_params(h, w, b.cfg.kernel, b.cfg.stride, b.cfg.expand_channels, c.padding);
        b.out_h = conv_output_size(h, b.cfg.kernel, b.cfg.stride, c.padding);
        b.out_w = conv_output_size(w, b.cfg.kernel, b.cfg.stride, c.padding);
        kernels::DepthwiseShape& ds = b.dw_shape;
        ds.batch = batch;
        ds.height = h;
        ds.width = w;
        ds.channels = b.cfg.expand_channels;
        ds.kernel = b.cfg.kernel;
        ds.stride = b.cfg.stride;
        ds.pad_top = dp.pad_top;
        ds.pad_left = dp.pad_left;
        ds.out_height = b.out_h;
        ds.out_width = b.out_w;
        EFFNET_CHECK(ds.kernel == 3 || ds.kernel == 5, "GpuTrainer: block " + std::to_string(i) +
                                                           " has depthwise kernel " +
                                                           std::to_string(ds.kernel) + " (supported: 3, 5)");
        workspace_floats = std::max(workspace_floats, kernels::depthwise_weight_grad_workspace_floats(ds));
        const size_t tap_bytes = size_t(ds.kernel) * ds.kernel * size_t(ds.channels) * 4;
        b.taps = alloc(tap_bytes, p + "dw taps");
        b.flipped_taps = alloc(tap_bytes, p + "dw flipped taps");
        const int64_t out_rows = N * b.out_h * b.out_w;
        plan_bn(b.dw, p + "dw", out_rows, b.cfg.expand_channels, false);
        if (b.cfg.has_se()) {
            SeState& se = b.se;
            se.reduced = b.cfg.se_channels;
            const size_t nc = size_t(N) * b.cfg.expand_channels * 4, ns = size_t(N) * se.reduced * 4;
            se.squeezed = alloc(nc, p + "se.squeezed");
            se.gate = alloc(nc, p + "se.gate");
            se.reduced_pre = alloc(ns, p + "se.reduced_pre");
            se.reduced_out = alloc(ns, p + "se.reduced_out");
            max_gated = std::max(max_gated, out_rows * b.cfg.expand_channels);
            workspace_floats =
                std::max(workspace_floats,
                         kernels::squeeze_excite_workspace_floats(batch, b.cfg.expand_channels, se.reduced));
        }
        plan_bn(b.project, p + "project", out_rows, b.cfg.out_channels, true);
        b.drop_path = options.dropout && b.cfg.has_residual() && b.cfg.drop_path > 0.0f;
        if (b.drop_path) b.drop_mask = alloc(size_t(N) * 4, p + "drop mask");
        h = b.out_h;
        w = b.out_w;
    }
    head_h = h;
    head_w = w;
    plan_bn(head, "head", N * h * w, c.head_channels, false);
    pooled = alloc(size_t(N) * c.head_channels * 4, "pooled");
    dpooled = alloc(size_t(N) * c.head_channels * 4, "dpooled");
    dropout_active = options.dropout && c.dropout > 0.0f;
    if (dropout_active) {
        dropout_mask = alloc(size_t(N) * c.head_channels * 4, "dropout mask");
        pooled_dropped = alloc(size_t(N) * c.head_channels * 4, "pooled after dropout");
    }
    logits = alloc(size_t(N) * c.num_classes * 4, "logits");
    dlogits = alloc(size_t(N) * c.num_classes * 4, "dlogits");
    sample_loss = alloc(size_t(N) * 4, "sample loss");
    targets = alloc(size_t(N) * 4, "targets");
    finite_flag = alloc(sizeof(int), "finite flag");
    for (int i = 0; i < 3; ++i) scratch[i] = alloc(size_t(max_activation) * elem, "scratch");
    if (max_gated > 0) gated = alloc(size_t(max_gated) * elem, "squeeze-excite output scratch");
    workspace = alloc(std::max<size_t>(workspace_floats, 1) * 4, "reduction workspace");
    blas = std::make_unique<cuda::TrainBlas>(stream(), storage, options.deterministic, options.allow_tf32);
    allocated += blas->workspace_bytes();
    // The memsets and copies above ran on the legacy default stream, which the trainer's
    // non-blocking stream does not wait for.
    EFFNET_CUDA_CHECK(cudaDeviceSynchronize());
}

void GpuTrainer::Impl::bn_stats(BnUnit& u) {
    kernels::BatchNormStatsArgs s;
    s.x = u.z.data();
    s.rows = u.rows;
    s.channels = u.channels;
    s.eps = config.bn_eps;
    s.momentum = config.bn_momentum;
    if (options.update_running_stats) {
        s.running_mean = param(u.prefix + ".bn.running_mean");
        s.running_var = param(u.prefix + ".bn.running_var");
    }
    s.save_mean = u.mean.as<float>();
    s.save_invstd = u.invstd.as<float>();
    if (u.scale.data()) {
        s.gamma = param(u.prefix + ".bn.weight");
        s.beta = param(u.prefix + ".bn.bias");
        s.save_scale = u.scale.as<float>();
        s.save_shift = u.shift.as<float>();
    }
    s.workspace = workspace.as<float>();
    kernels::launch_batchnorm_stats(s, storage, stream());
}

void GpuTrainer::Impl::bn_apply(BnUnit& u, Act act, const void* residual, void* out,
                                const float* sample_scale, int64_t rows_per_image) {
    kernels::BatchNormApplyArgs a;
    a.x = u.z.data();
    a.mean = u.mean.as<float>();
    a.invstd = u.invstd.as<float>();
    a.gamma = param(u.prefix + ".bn.weight");
    a.beta = param(u.prefix + ".bn.bias");
    a.residual = residual;
    a.sample_scale = sample_scale;
    a.rows_per_image = rows_per_image;
    a.y = out;
    a.rows = u.rows;
    a.channels = u.channels;
    a.act = act;
    kernels::launch_batchnorm_apply(a, storage, stream());
}

void GpuTrainer::Impl::se_args(const BlockState& b, size_t i, const void* x,
                               kernels::SqueezeExciteTrainArgs& se) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    se.batch = batch;
    se.hw = int64_t(b.out_h) * b.out_w;
    se.channels = b.cfg.expand_channels;
    se.reduced = b.se.reduced;
    se.act = kernels::to_act(config.activation);
    se.x = x;
    se.w1 = param(p + "se.reduce.weight");
    se.b1 = param(p + "se.reduce.bias");
    se.w2 = param(p + "se.expand.weight");
    se.b2 = param(p + "se.expand.bias");
    se.squeezed = b.se.squeezed.as<float>();
    se.reduced_pre = b.se.reduced_pre.as<float>();
    se.reduced_out = b.se.reduced_out.as<float>();
    se.gate = b.se.gate.as<float>();
}

void GpuTrainer::Impl::bn_backward(BnUnit& u, Act act, const void* dy, const float* dy_pooled,
                                   int64_t rows_per_image, void* dz, const float* dy_sample_scale) {
    kernels::BatchNormBackwardArgs a;
    a.x = u.z.data();
    a.dy = dy;
    a.dy_pooled = dy_pooled;
    a.rows_per_image = rows_per_image;
    a.pooled_scale = float(1.0 / double(rows_per_image));
    a.dy_sample_scale = dy_sample_scale;
    a.mean = u.mean.as<float>();
    a.invstd = u.invstd.as<float>();
    a.gamma = param(u.prefix + ".bn.weight");
    a.beta = param(u.prefix + ".bn.bias");
    a.act = act;
    a.dgamma = grad(u.prefix + ".bn.weight");
    a.dbeta = grad(u.prefix + ".bn.bias");
    a.dx = dz;
    a.rows = u.rows;
    a.channels = u.channels;
    a.workspace = workspace.as<float>();
    kernels::launch_batchnorm_backward(a, storage, stream());
}

void GpuTrainer::Impl::forward() {
    const ModelConfig& c = config;
    const Act act = kernels::to_act(c.activation);
    cudaStream_t st = stream();
    if (storage != Precision::FP32)
        kernels::launch_cast_from_f32(master.as<float>(), half_params.data(), param_total, storage, st);

    // Stem.
    kernels::Im2colArgs ic;
    ic.input = input;
    ic.columns = columns.data();
    ic.batch = batch;
    ic.channels = c.in_channels;
    ic.height = height;
    ic.width = width;
    ic.kernel = 3;
    ic.stride = 2;
    ic.pad_top = stem_pad_top;
    ic.pad_left = stem_pad_left;
    ic.out_height = stem_h;
    ic.out_width = stem_w;
    ic.ld = stem_ld;
    kernels::launch_im2col(ic, storage, st);
    blas->forward(columns.data(), stem_ld, gemm_weight("stem.conv.weight"), stem_taps, stem.z.data(),
                  stem.rows, stem_taps, stem.channels);
    bn_forward(stem, act, nullptr, stem.y.data());

    const void* x = stem.y.data();
    for (size_t i = 0; i < blocks.size(); ++i) {
        BlockState& b = blocks[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        const int E = b.cfg.expand_channels;
        // The depthwise input: the block input, or the expand conv's z with its BN + act applied on load.
        const void* dw_in = x;
        kernels::DepthwiseInputTransform dw_in_transform;
        if (b.cfg.has_expand()) {
            blas->forward(x, b.cfg.in_channels, gemm_weight(p + "expand.conv.weight"), b.cfg.in_channels,
                          b.expand.z.data(), b.expand.rows, b.cfg.in_channels, E);
            bn_stats(b.expand);
            dw_in = b.expand.z.data();
            dw_in_transform = {b.expand.scale.as<float>(), b.expand.shift.as<float>(), act};
        }
        kernels::launch_depthwise_weight_taps(param(p + "dw.conv.weight"), b.taps.as<float>(),
                                              b.flipped_taps.as<float>(), E, b.cfg.kernel, st);
        kernels::launch_depthwise_train_forward(dw_in, dw_in_transform, b.taps.as<float>(), b.dw.z.data(),
                                                b.dw_shape, storage, st);
        // BN + act and squeeze-excite into scratch: the backward recomputes them from dw.z.
        bn_forward(b.dw, act, nullptr, scratch[0].data());
        const void* project_in = scratch[0].data();
        if (b.cfg.has_se()) {
            kernels::SqueezeExciteTrainArgs se;
            se_args(b, i, scratch[0].data(), se);
            kernels::launch_squeeze_excite_train_forward(se, scratch[1].data(), storage, st);
            project_in = scratch[1].data();
        }
        blas->forward(project_in, E, gemm_weight(p + "project.conv.weight"), E, b.project.z.data(),
                      b.project.rows, E, b.cfg.out_channels);
        bn_forward(b.project, Act::None, b.cfg.has_residual() ? x : nullptr, b.project.y.data(),
                   b.drop_path ? b.drop_mask.as<float>() : nullptr, int64_t(b.out_h) * b.out_w);
        x = b.project.y.data();
    }

    // Head: conv 1x1 -> BN -> act (into scratch) -> global average pool -> classifier.
    const int in_ch = c.blocks.empty() ? c.stem_channels : c.blocks.back().out_channels;
    blas->forward(x, in_ch, gemm_weight("head.conv.weight"), in_ch, head.z.data(), head.rows, in_ch,
                  head.channels);
    bn_forward(head, act, nullptr, scratch[0].data());
    const int64_t hw = int64_t(head_h) * head_w;
    kernels::launch_spatial_sum(scratch[0].data(), nullptr, pooled.as<float>(), batch, hw, head.channels,
                                float(1.0 / double(hw)), storage, st);
    const float* features = pooled.as<float>();
    if (dropout_active) {
        kernels::launch_mask_multiply_f32(pooled.as<float>(), dropout_mask.as<float>(),
                                          pooled_dropped.as<float>(), int64_t(batch) * head.channels, st);
        features = pooled_dropped.as<float>();
    }
    kernels::SmallMatmulArgs cl; // logits [N, K] = features [N, Ch] W^T + b
    cl.a = features;
    cl.a_row = head.channels;
    cl.a_col = 1;
    cl.b = param("classifier.weight");
    cl.b_row = 1;
    cl.b_col = head.channels;
    cl.bias = param("classifier.bias");
    cl.out = logits.as<float>();
    cl.rows = batch;
    cl.cols = c.num_classes;
    cl.inner = head.channels;
    kernels::launch_small_matmul(cl, st);

    kernels::CrossEntropyArgs ce;
    ce.logits = logits.as<float>();
    ce.targets = targets.as<int32_t>();
    ce.sample_loss = sample_loss.as<float>();
    ce.dlogits = dlogits.as<float>();
    ce.batch = batch;
    ce.classes = c.num_classes;
    ce.label_smoothing = options.label_smoothing;
    ce.grad_scale = scale;
    kernels::launch_cross_entropy(ce, st);
}

void GpuTrainer::Impl::backward() {
    const ModelConfig& c = config;
    const Act act = kernels::to_act(c.activation);
    cudaStream_t st = stream();
    const int K = c.num_classes, Ch = head.channels;

    // Classifier: dW [K, Ch] = dlogits^T pooled and db [K] = sum_n dlogits; dpooled [N, Ch] = dlogits W.
    kernels::SmallMatmulArgs m;
    m.a = dlogits.as<float>();
    m.a_row = 1;
    m.a_col = K;
    m.b = dropout_active ? pooled_dropped.as<float>() : pooled.as<float>();
    m.b_row = Ch;
    m.b_col = 1;
    m.rows = K;
    m.cols = Ch;
    m.inner = batch;
    m.out = grad("classifier.weight");
    m.row_sum = grad("classifier.bias"); // db [K] = sum_n dlogits, in the same launch
    kernels::launch_small_matmul(m, st);
    m = kernels::SmallMatmulArgs{};
    m.a = dlogits.as<float>();
    m.a_row = K;
    m.a_col = 1;
    m.b = param("classifier.weight");
    m.b_row = Ch;
    m.b_col = 1;
    m.rows = batch;
    m.cols = Ch;
    m.inner = K;
    m.out = dpooled.as<float>();
    kernels::launch_small_matmul(m, st);
    if (dropout_active)
        kernels::launch_mask_multiply_f32(dpooled.as<float>(), dropout_mask.as<float>(), dpooled.as<float>(),
                                          int64_t(batch) * Ch, st);

    // Head BN (+act) backward, the pool's gradient broadcast fused in.
    const int64_t hw = int64_t(head_h) * head_w;
    bn_backward(head, act, nullptr, dpooled.as<float>(), hw, scratch[0].data());
    const void* last = blocks.empty() ? stem.y.data() : blocks.back().project.y.data();
    const int in_ch = c.blocks.empty() ? c.stem_channels : c.blocks.back().out_channels;
    blas->backward_weight(last, in_ch, scratch[0].data(), grad("head.conv.weight"), head.rows, in_ch, Ch);
    blas->backward_data(scratch[0].data(), gemm_weight("head.conv.weight"), scratch[1].data(), head.rows,
                        in_ch, Ch, false);

    // o: the scratch buffer holding the gradient of the current block's output; each block
    // leaves the gradient of its input there (the residual gradient is accumulated in place).
    const int o = 1;
    const int f1 = 2, f2 = 0;
    for (int i = int(blocks.size()) - 1; i >= 0; --i) {
        BlockState& b = blocks[size_t(i)];
        const std::string p = "blocks." + std::to_string(i) + ".";
        void* d_out = scratch[o].data();
        void* s1 = scratch[f1].data();
        void* s2 = scratch[f2].data();
        const void* x = i == 0 ? stem.y.data() : blocks[size_t(i - 1)].project.y.data();
        const int E = b.cfg.expand_channels, Cin = b.cfg.in_channels, Cout = b.cfg.out_channels;
        const bool residual = b.cfg.has_residual();

        // Project: BN backward (no activation) -> s1 = dz_project.
        bn_backward(b.project, Act::None, d_out, nullptr, int64_t(b.out_h) * b.out_w, s1,
                    b.drop_path ? b.drop_mask.as<float>() : nullptr);
        // The project GEMM's input, recomputed: s2 = act(bn(dw.z)) [* gate -> gated].
        bn_apply(b.dw, act, nullptr, s2);
        void* d_dw = s2; // will hold the gradient of the depthwise unit's (activated) output
        if (b.cfg.has_se()) {
            kernels::SqueezeExciteTrainArgs se;
            se_args(b, size_t(i), s2, se);
            kernels::launch_squeeze_excite_gate(s2, b.se.gate.as<float>(), gated.data(), batch, se.hw, E,
                                                storage, st);
            blas->backward_weight(gated.data(), E, s1, grad(p + "project.conv.weight"), b.project.rows, E,
                                  Cout);
            blas->backward_data(s1, gemm_weight(p + "project.conv.weight"), gated.data(), b.project.rows, E,
                                Cout, false);
            // SE backward: x = s2 (the depthwise output), dy = gated -> s1.
            kernels::launch_squeeze_excite_backward(
                se, gated.data(), s1, grad(p + "se.reduce.weight"), grad(p + "se.reduce.bias"),
                grad(p + "se.expand.weight"), grad(p + "se.expand.bias"), workspace.as<float>(), storage, st);
            d_dw = s1;
        } else {
            blas->backward_weight(s2, E, s1, grad(p + "project.conv.weight"), b.project.rows, E, Cout);
            blas->backward_data(s1, gemm_weight(p + "project.conv.weight"), s2, b.project.rows, E, Cout,
                                false);
        }
        void* d_free = d_dw == s1 ? s2 : s1;
        // Depthwise: BN (+act) backward in place, then weight and data gradients.
        bn_backward(b.dw, act, d_dw, nullptr, 1, d_dw);
        const void* dw_in = x;
        kernels::DepthwiseInputTransform dw_in_transform;
        if (b.cfg.has_expand()) {
            dw_in = b.expand.z.data();
            dw_in_transform = {b.expand.scale.as<float>(), b.expand.shift.as<float>(), act};
        }
        kernels::launch_depthwise_backward_weight(dw_in, dw_in_transform, d_dw, grad(p + "dw.conv.weight"),
                                                  workspace.as<float>(), b.dw_shape, storage, st);
        if (!b.cfg.has_expand()) {
            // The block input's gradient straight into o (+ the residual gradient already there).
            kernels::launch_depthwise_backward_data(
                d_dw, b.flipped_taps.as<float>(), residual ? d_out : nullptr, d_out, b.dw_shape, storage, st);
            continue;
        }
        kernels::launch_depthwise_backward_data(d_dw, b.flipped_taps.as<float>(), nullptr, d_free, b.dw_shape,
                                                storage, st);
        bn_backward(b.expand, act, d_free, nullptr, 1, d_free);
        blas->backward_weight(x, Cin, d_free, grad(p + "expand.conv.weight"), b.expand.rows, Cin, E);
        // The block input's gradient into o: added to the residual gradient there, or over it.
        blas->backward_data(d_free, gemm_weight(p + "expand.conv.weight"), d_out, b.expand.rows, Cin, E,
                            residual);
    }

    // Stem: BN (+act) backward in place, weight gradient from the im2col columns.
    bn_backward(stem, act, scratch[o].data(), nullptr, 1, scratch[o].data());
    blas->backward_weight(columns.data(), stem_ld, scratch[o].data(), grad("stem.conv.weight"), stem.rows,
                          stem_taps, stem.channels);
}

// Dropout and stochastic-depth masks for this step, from the CPU reference's generator.
void GpuTrainer::Impl::upload_masks(uint64_t seed) {
    cudaStream_t st = stream();
    for (size_t i = 0; i < blocks.size(); ++i) {
        BlockState& b = blocks[i];
        if (!b.drop_path) continue;
        cpu::stochastic_depth_forward(Tensor({int64_t(batch), 1}, 1.0f), b.cfg.drop_path,
                                      derive_seed(seed, i), &b.host_mask);
        EFFNET_CHECK(b.host_mask.size() == size_t(batch),
                     "GpuTrainer: stochastic-depth mask has the wrong size");
        EFFNET_CUDA_CHECK(cudaMemcpyAsync(b.drop_mask.data(), b.host_mask.data(), b.host_mask.size() * 4,
                                          cudaMemcpyHostToDevice, st));
    }
    if (dropout_active) {
        cpu::dropout_forward(Tensor({int64_t(batch), int64_t(head.channels)}, 1.0f), config.dropout,
                             derive_seed(seed, blocks.size()), &host_dropout_mask);
        EFFNET_CHECK(host_dropout_mask.size() == size_t(batch) * size_t(head.channels),
                     "GpuTrainer: dropout mask has the wrong size");
        EFFNET_CUDA_CHECK(cudaMemcpyAsync(dropout_mask.data(), host_dropout_mask.data(),
                                          host_dropout_mask.size() * 4, cudaMemcpyHostToDevice, st));
    }
}

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
    input = upload->acquire(input_host);
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(targets.data(), t.data(), t.size() * 4, cudaMemcpyHostToDevice, st));
    have_gradients = false;
    upload_masks(seed);
    forward();
    upload->release(); // the stem's im2col was the input's only reader
    backward();
    // Unscale (AMP) and check the gradients.
    if (scale != 1.0f) kernels::launch_scale_f32(grads.as<float>(), param_total, 1.0f / scale, st);
    EFFNET_CUDA_CHECK(cudaMemsetAsync(finite_flag.data(), 0, sizeof(int), st));
    kernels::launch_find_non_finite(grads.as<float>(), param_total, finite_flag.as<int>(), st);
    std::vector<float> losses(static_cast<size_t>(batch));
    int flag = 0;
    EFFNET_CUDA_CHECK(
        cudaMemcpyAsync(losses.data(), sample_loss.data(), losses.size() * 4, cudaMemcpyDeviceToHost, st));
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(&flag, finite_flag.data(), sizeof(int), cudaMemcpyDeviceToHost, st));
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(st)); // also surfaces execution errors of the step
    finite = flag == 0;
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
    impl_->plan();
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
    cudaStream_t st = m.stream();
    // Clipping as train::clip_grad_norm: every gradient times max / norm when norm > max.
    double grad_scale = 1.0;
    if (m.options.clip_grad_norm > 0.0) {
        kernels::launch_sum_squares(m.grads.as<float>(), m.param_total, m.norm_partials.as<double>(),
                                    m.norm_sum.as<double>(), st);
        double sum = 0.0;
        EFFNET_CUDA_CHECK(cudaMemcpyAsync(&sum, m.norm_sum.data(), sizeof sum, cudaMemcpyDeviceToHost, st));
        EFFNET_CUDA_CHECK(cudaStreamSynchronize(st));
        m.last_grad_norm = std::sqrt(sum);
        if (std::isfinite(m.last_grad_norm) && m.last_grad_norm > m.options.clip_grad_norm)
            grad_scale = m.options.clip_grad_norm / m.last_grad_norm;
    }
    ++m.optimizer_steps; // before the update, as train::Optimizer::step (AdamW's t starts at 1)
    m.launch_update(lr, grad_scale);
    // Not waited for: everything that reads the parameters runs after it on the stream, and
    // every download synchronises (execution errors surface there, or at the next step).
    m.have_gradients = false; // one update per backward
    m.has_optimizer_state = true;
    return true;
}

// One launch updates every trainable parameter, with train::Optimizer's per-parameter weight
// decay from chunk_class (frozen chunks, the running statistics, are left alone).
void GpuTrainer::Impl::launch_update(double lr, double grad_scale) {
    const GpuTrainOptions& o = options;
    float* p = master.as<float>();
    const float* g = grads.as<float>();
    const auto* classes = chunk_class.as<unsigned char>();
    switch (o.optimizer) {
    case train::OptimizerKind::SGD: {
        kernels::SgdArgs a;
        a.param = p;
        a.grad = g;
        a.momentum_buffer = momentum.as<float>();
        a.count = param_total;
        a.lr = lr;
        a.momentum = o.momentum;
        a.nesterov = o.nesterov;
        a.weight_decay = o.weight_decay;
        a.grad_scale = grad_scale;
        a.chunk_class = classes;
        kernels::launch_sgd_update(a, stream());
        return;
    }
    case train::OptimizerKind::RMSProp: {
        kernels::RmsPropArgs a;
        a.param = p;
        a.grad = g;
        a.mean_square = second_moment.as<float>();
        a.momentum_buffer = momentum.as<float>();
        a.count = param_total;
        a.lr = lr;
        a.decay = o.rms_decay;
        a.momentum = o.momentum;
        a.eps = o.rms_eps;
        a.weight_decay = o.weight_decay;
        a.grad_scale = grad_scale;
        a.chunk_class = classes;
        kernels::launch_rmsprop_update(a, stream());
        return;
    }
    case train::OptimizerKind::AdamW: {
        kernels::AdamWArgs a;
        a.param = p;
        a.grad = g;
        a.exp_avg = momentum.as<float>();
        a.exp_avg_sq = second_moment.as<float>();
        a.count = param_total;
        a.lr = lr;
        a.beta1 = o.beta1;
        a.beta2 = o.beta2;
        a.eps = o.adam_eps;
        a.weight_decay = o.weight_decay;
        a.grad_scale = grad_scale;
        a.step = optimizer_steps;
        a.chunk_class = classes;
        kernels::launch_adamw_update(a, stream());
        return;
    }
    }
}

// Validates every key and shape before changing anything.
void GpuTrainer::Impl::set_optimizer_state(const train::ParamMap& state, int64_t steps) {
    EFFNET_CHECK(steps >= 0, "GpuTrainer: negative optimizer step count " + std::to_string(steps));
    const std::vector<StateSlot> kinds = state_slots();
    const std::string optimizer = train::optimizer_name(options.optimizer);
    for (const auto& [key, t] : state) {
        const size_t slash = key.find('/');
        EFFNET_CHECK(slash != std::string::npos,
                     "GpuTrainer: optimizer state key '" + key + "' is not '<slot>/<parameter>'");
        const std::string slot_name = key.substr(0, slash), param_name = key.substr(slash + 1);
        const bool known =
            std::any_of(kinds.begin(), kinds.end(), [&](const StateSlot& k) { return slot_name == k.name; });
        EFFNET_CHECK(known, "GpuTrainer: optimizer state '" + key + "' is not a slot of " + optimizer +
                                (kinds.empty() ? " with momentum 0 (it keeps no state)" : ""));
        const auto it = slot_index.find(param_name);
        EFFNET_CHECK(it != slot_index.end() && slots[it->second].trainable,
                     "GpuTrainer: optimizer state '" + key + "' names no trainable parameter");
        const ParamSlot& p = slots[it->second];
        EFFNET_CHECK(t.shape == p.shape && t.numel() == p.count && t.data.size() == size_t(p.count),
                     "GpuTrainer: optimizer state '" + key + "' has shape " + shape_str(t.shape) +
                         ", the parameter has " + shape_str(p.shape));
    }
    for (const StateSlot& k : kinds) {
        std::vector<float> host(size_t(param_total), 0.0f);
        for (const ParamSlot& p : slots) {
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
    optimizer_steps = steps;
    has_optimizer_state = steps > 0 || !state.empty();
}

float GpuTrainer::step(const float* input, const int64_t* targets, double lr, uint64_t seed) {
    const float loss = compute_gradients(input, targets, seed);
    if (impl_->finite) apply_update(lr);
    return loss;
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
    const Impl& m = *impl_;
    m.ctx.activate();
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(m.stream()));
    std::vector<float> host(size_t(m.param_total));
    EFFNET_CUDA_CHECK(cudaMemcpy(host.data(), m.grads.data(), host.size() * 4, cudaMemcpyDeviceToHost));
    cpu::Gradients g;
    for (const ParamSlot& s : m.slots) {
        if (!s.trainable) continue;
        Tensor t(s.shape);
        std::memcpy(t.ptr(), host.data() + s.offset, size_t(s.count) * 4);
        g.params[s.name] = std::move(t);
    }
    return g;
}

Tensor GpuTrainer::logits() const {
    const Impl& m = *impl_;
    m.ctx.activate();
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(m.stream()));
    Tensor t({int64_t(m.batch), int64_t(m.config.num_classes)});
    EFFNET_CUDA_CHECK(cudaMemcpy(t.ptr(), m.logits.data(), size_t(t.numel()) * 4, cudaMemcpyDeviceToHost));
    return t;
}

void GpuTrainer::download(Model& model) const {
    const Impl& m = *impl_;
    const std::vector<float> host = m.download_flat(m.master);
    for (const ParamSlot& s : m.slots) {
        Tensor t(s.shape);
        std::memcpy(t.ptr(), host.data() + s.offset, size_t(s.count) * 4);
        model.params[s.name] = std::move(t);
    }
}

void GpuTrainer::upload(const Model& model) {
    Impl& m = *impl_;
    const std::string difference = architecture_difference(m.config, model.config);
    EFFNET_CHECK(difference.empty(),
                 "GpuTrainer::upload: the model's architecture differs from the trainer's (" + difference +
                     ")");
    m.upload_params(model); // checks every parameter's shape
}

train::ParamMap GpuTrainer::optimizer_state() const {
    const Impl& m = *impl_;
    train::ParamMap state;
    if (!m.has_optimizer_state) return state;
    for (const StateSlot& k : m.state_slots()) {
        const std::vector<float> host = m.download_flat(m.state_buffer(k));
        for (const ParamSlot& p : m.slots) {
            if (!p.trainable) continue;
            Tensor t(p.shape);
            std::memcpy(t.ptr(), host.data() + p.offset, size_t(p.count) * 4);
            state[std::string(k.name) + "/" + p.name] = std::move(t);
        }
    }
    return state;
}

int64_t GpuTrainer::optimizer_steps() const {
    return impl_->optimizer_steps;
}

void GpuTrainer::set_optimizer_state(const train::ParamMap& state, int64_t optimizer_steps) {
    impl_->set_optimizer_state(state, optimizer_steps);
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
    return impl_->allocated;
}

} // namespace effnet
