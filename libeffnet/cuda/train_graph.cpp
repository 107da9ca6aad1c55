// The GPU trainer's graph: the network plan's layers forward and backward (train_graph.hpp).
#include "libeffnet/cuda/train_graph.hpp"

#include <algorithm>
#include <string>

#include "cpu/ops.hpp"
#include "effnet/error.hpp"
#include "kernels/batchnorm.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/im2col.cuh"
#include "kernels/small_matmul.cuh"
#include "kernels/squeeze_excite_train.cuh"
#include "kernels/dropout.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::cuda {

using kernels::Act;

namespace {

Act layer_act(const Layer& l) {
    return l.activation ? kernels::to_act(*l.activation) : Act::None;
}

} // namespace

TrainGraph::TrainGraph(const NetworkPlan& plan, Precision storage, const GpuTrainOptions& options,
                       ParamStore& params, cudaStream_t stream)
    : plan_(plan), storage_(storage), options_(options), params_(params), stream_(stream),
      elem_(kernels::storage_size(storage)) {
    const ModelConfig& c = plan_.config;
    EFFNET_CHECK(c.in_channels >= 1 && c.in_channels * 9 <= 64,
                 "GpuTrainer: the stem supports 1..7 input channels, got " + std::to_string(c.in_channels));
    layers_.resize(plan_.layers.size());
    for (size_t i = 0; i < plan_.layers.size(); ++i) plan_layer(plan_.layers[i], layers_[i]);
    const int64_t N = plan_.batch;
    const int classes = plan_.classifier().out.channels, features = plan_.classifier().in.channels;
    dpooled_ = alloc(size_t(N) * features * 4, "dpooled");
    logits_ = alloc(size_t(N) * classes * 4, "logits");
    dlogits_ = alloc(size_t(N) * classes * 4, "dlogits");
    sample_loss_ = alloc(size_t(N) * 4, "sample loss");
    targets_ = alloc(size_t(N) * 4, "targets");
    for (DeviceBuffer& s : scratch_) s = alloc(size_t(max_activation_) * elem_, "scratch");
    if (max_gated_ > 0) gated_ = alloc(size_t(max_gated_) * elem_, "squeeze-excite output scratch");
    workspace_ = alloc(std::max<size_t>(workspace_floats_, 1) * 4, "reduction workspace");
    blas_ = std::make_unique<TrainBlas>(stream_, storage_, options_.deterministic, options_.allow_tf32);
    bytes_ += blas_->workspace_bytes();
}

DeviceBuffer TrainGraph::alloc(size_t bytes, const std::string& what) {
    DeviceBuffer b(bytes, what);
    bytes_ += bytes;
    return b;
}

void TrainGraph::note_activation(const FeatureShape& shape) {
    max_activation_ = std::max(max_activation_, shape.numel());
}

DeviceBuffer TrainGraph::alloc_activation(const FeatureShape& shape, const std::string& what) {
    note_activation(shape);
    return alloc(size_t(shape.numel()) * elem_, what);
}

// keep_output: the BN (+act) output is stored (else it lives in scratch); load_transform: its
// consumer applies the BN as it loads, from the per-channel scale and shift.
void TrainGraph::plan_bn(const Layer& l, BnUnit& u, bool keep_output, bool load_transform) {
    u.rows = l.out.rows();
    u.channels = l.out.channels;
    EFFNET_CHECK(u.rows > 1, "GpuTrainer: train-mode batch norm '" + l.param("bn") +
                                 "' needs more than one value per channel, got " + std::to_string(u.rows) +
                                 " (use a larger batch or input)");
    u.z = alloc_activation(l.out, l.name + ".z");
    if (keep_output)
        u.y = alloc_activation(l.out, l.name + ".y");
    else
        note_activation(l.out);
    const size_t c4 = size_t(u.channels) * 4;
    u.mean = alloc(c4, l.name + ".mean");
    u.invstd = alloc(c4, l.name + ".invstd");
    if (load_transform) {
        u.scale = alloc(c4, l.name + ".scale");
        u.shift = alloc(c4, l.name + ".shift");
    }
    workspace_floats_ = std::max(workspace_floats_, kernels::batchnorm_workspace_floats(u.rows, u.channels));
}

void TrainGraph::plan_layer(const Layer& l, TrainLayer& t) {
    const int64_t N = plan_.batch;
    switch (l.kind) {
    case LayerKind::Stem: { // conv 3x3 stride 2 as im2col + GEMM
        stem_taps_ = l.in.channels * l.conv.kernel * l.conv.kernel;
        stem_ld_ = (stem_taps_ + 7) / 8 * 8;
        columns_ = alloc(size_t(l.out.rows()) * size_t(stem_ld_) * elem_, "stem im2col");
        plan_bn(l, t.bn, true, false);
        return;
    }
    case LayerKind::Expand: // its BN + act are applied by the depthwise conv as it loads
        plan_bn(l, t.bn, false, true);
        return;
    case LayerKind::Depthwise: {
        note_activation(l.in); // the depthwise input's gradient
        kernels::DepthwiseShape& ds = t.dw_shape;
        ds.batch = plan_.batch;
        ds.height = l.in.height;
        ds.width = l.in.width;
        ds.channels = l.in.channels;
        ds.kernel = l.conv.kernel;
        ds.stride = l.conv.stride;
        ds.pad_top = l.conv.pad_top;
        ds.pad_left = l.conv.pad_left;
        ds.out_height = l.out.height;
        ds.out_width = l.out.width;
        EFFNET_CHECK(ds.kernel == 3 || ds.kernel == 5, "GpuTrainer: " + l.name + " has kernel " +
                                                           std::to_string(ds.kernel) + " (supported: 3, 5)");
        workspace_floats_ = std::max(workspace_floats_, kernels::depthwise_weight_grad_workspace_floats(ds));
        const size_t tap_bytes = size_t(ds.kernel) * ds.kernel * size_t(ds.channels) * 4;
        t.taps = alloc(tap_bytes, l.name + " taps");
        t.flipped_taps = alloc(tap_bytes, l.name + " flipped taps");
        plan_bn(l, t.bn, false, false);
        return;
    }
    case LayerKind::SqueezeExcite: {
        const size_t nc = size_t(N) * l.in.channels * 4, ns = size_t(N) * l.reduced_channels * 4;
        t.squeezed = alloc(nc, l.name + ".squeezed");
        t.gate = alloc(nc, l.name + ".gate");
        t.reduced_pre = alloc(ns, l.name + ".reduced_pre");
        t.reduced_out = alloc(ns, l.name + ".reduced_out");
        max_gated_ = std::max(max_gated_, l.out.numel());
        workspace_floats_ = std::max(workspace_floats_, kernels::squeeze_excite_workspace_floats(
                                                            plan_.batch, l.in.channels, l.reduced_channels));
        return;
    }
    case LayerKind::Project:
        plan_bn(l, t.bn, true, false);
        t.masked = options_.dropout && l.residual >= 0 && l.drop_rate > 0.0f;
        if (t.masked) t.mask = alloc(size_t(N) * 4, l.name + " drop mask");
        return;
    case LayerKind::Head:
        plan_bn(l, t.bn, false, false);
        return;
    case LayerKind::Pool:
        t.output = alloc(size_t(N) * l.out.channels * 4, "pooled");
        return;
    case LayerKind::Dropout:
        t.masked = options_.dropout && l.drop_rate > 0.0f;
        if (t.masked) {
            t.mask = alloc(size_t(N) * l.out.channels * 4, "dropout mask");
            t.output = alloc(size_t(N) * l.out.channels * 4, "pooled after dropout");
        }
        return;
    case LayerKind::Classifier:
        return;
    }
}

void TrainGraph::upload_masks(uint64_t seed) {
    for (size_t i = 0; i < layers_.size(); ++i) {
        TrainLayer& t = layers_[i];
        const Layer& l = plan_.layers[i];
        if (!t.masked) continue;
        // The CPU reference's generator: the same masks on both engines.
        const int64_t per_sample = l.kind == LayerKind::Dropout ? l.out.channels : 1;
        const Tensor ones({int64_t(plan_.batch), per_sample}, 1.0f);
        if (l.kind == LayerKind::Dropout)
            cpu::dropout_forward(ones, l.drop_rate, mask_seed(seed, l), &t.host_mask);
        else
            cpu::stochastic_depth_forward(ones, l.drop_rate, mask_seed(seed, l), &t.host_mask);
        EFFNET_CHECK(t.host_mask.size() == size_t(ones.numel()),
                     "GpuTrainer: " + l.name + " mask has the wrong size");
        EFFNET_CUDA_CHECK(cudaMemcpyAsync(t.mask.data(), t.host_mask.data(), t.host_mask.size() * 4,
                                          cudaMemcpyHostToDevice, stream_));
    }
}

// ---------------------------------------------------------------------------------------------
// Forward

const void* TrainGraph::stored_output(int layer) const {
    const BnUnit& u = layers_.at(size_t(layer)).bn;
    EFFNET_CHECK(u.y.data(),
                 "GpuTrainer: the output of " + plan_.layers.at(size_t(layer)).name + " is not kept");
    return u.y.data();
}

const float* TrainGraph::classifier_input() const {
    int i = plan_.classifier().input;
    if (plan_.layers[size_t(i)].kind == LayerKind::Dropout && !layers_[size_t(i)].masked)
        i = plan_.layers[size_t(i)].input;
    return layers_[size_t(i)].output.as<float>();
}

void* TrainGraph::forward_scratch(const Value& in) {
    return in.data == scratch_[0].data() ? scratch_[1].data() : scratch_[0].data();
}

void TrainGraph::bn_stats(const Layer& l, BnUnit& u) {
    kernels::BatchNormStatsArgs s;
    s.x = u.z.data();
    s.rows = u.rows;
    s.channels = u.channels;
    s.eps = plan_.config.bn_eps;
    s.momentum = plan_.config.bn_momentum;
    if (options_.update_running_stats) {
        s.running_mean = params_.param(l.param("bn.running_mean"));
        s.running_var = params_.param(l.param("bn.running_var"));
    }
    s.save_mean = u.mean.as<float>();
    s.save_invstd = u.invstd.as<float>();
    if (u.scale.data()) {
        s.gamma = params_.param(l.param("bn.weight"));
        s.beta = params_.param(l.param("bn.bias"));
        s.save_scale = u.scale.as<float>();
        s.save_shift = u.shift.as<float>();
    }
    s.workspace = workspace_.as<float>();
    kernels::launch_batchnorm_stats(s, storage_, stream_);
}

void TrainGraph::bn_apply(const Layer& l, BnUnit& u, Act act, const void* residual, void* out,
                          const float* sample_scale, int64_t rows_per_image) {
    kernels::BatchNormApplyArgs a;
    a.x = u.z.data();
    a.mean = u.mean.as<float>();
    a.invstd = u.invstd.as<float>();
    a.gamma = params_.param(l.param("bn.weight"));
    a.beta = params_.param(l.param("bn.bias"));
    a.residual = residual;
    a.sample_scale = sample_scale;
    a.rows_per_image = rows_per_image;
    a.y = out;
    a.rows = u.rows;
    a.channels = u.channels;
    a.act = act;
    kernels::launch_batchnorm_apply(a, storage_, stream_);
}

kernels::SqueezeExciteTrainArgs TrainGraph::se_args(const Layer& l, TrainLayer& t, const void* x) {
    kernels::SqueezeExciteTrainArgs se;
    se.batch = plan_.batch;
    se.hw = l.in.pixels();
    se.channels = l.in.channels;
    se.reduced = l.reduced_channels;
    se.act = layer_act(l);
    se.x = x;
    se.w1 = params_.param(l.param("reduce.weight"));
    se.b1 = params_.param(l.param("reduce.bias"));
    se.w2 = params_.param(l.param("expand.weight"));
    se.b2 = params_.param(l.param("expand.bias"));
    se.squeezed = t.squeezed.as<float>();
    se.reduced_pre = t.reduced_pre.as<float>();
    se.reduced_out = t.reduced_out.as<float>();
    se.gate = t.gate.as<float>();
    return se;
}

void TrainGraph::forward(const float* input, float loss_scale) {
    params_.cast_for_gemms(stream_);
    Value x;
    for (size_t i = 0; i < plan_.layers.size(); ++i) x = forward_layer(plan_.layers[i], layers_[i], x, input);

    const Layer& cl = plan_.classifier();
    kernels::CrossEntropyArgs ce;
    ce.logits = logits_.as<float>();
    ce.targets = targets_.as<int32_t>();
    ce.sample_loss = sample_loss_.as<float>();
    ce.dlogits = dlogits_.as<float>();
    ce.batch = plan_.batch;
    ce.classes = cl.out.channels;
    ce.label_smoothing = options_.label_smoothing;
    ce.grad_scale = loss_scale;
    kernels::launch_cross_entropy(ce, stream_);
}

TrainGraph::Value TrainGraph::forward_layer(const Layer& l, TrainLayer& t, const Value& in,
                                            const float* input) {
    const Act act = layer_act(l);
    const int64_t rows = l.out.rows();
    const int cin = l.in.channels, cout = l.out.channels;
    BnUnit& u = t.bn;
    EFFNET_CHECK(in.transform.scale == nullptr || l.kind == LayerKind::Depthwise,
                 "GpuTrainer: " + l.name + " cannot apply its input's batch norm as it loads");
    switch (l.kind) {
    case LayerKind::Stem: {
        kernels::Im2colArgs ic;
        ic.input = input;
        ic.columns = columns_.data();
        ic.batch = plan_.batch;
        ic.channels = cin;
        ic.height = l.in.height;
        ic.width = l.in.width;
        ic.kernel = l.conv.kernel;
        ic.stride = l.conv.stride;
        ic.pad_top = l.conv.pad_top;
        ic.pad_left = l.conv.pad_left;
        ic.out_height = l.out.height;
        ic.out_width = l.out.width;
        ic.ld = stem_ld_;
        kernels::launch_im2col(ic, storage_, stream_);
        blas_->forward(columns_.data(), stem_ld_, params_.gemm_weight(l.param("conv.weight")), stem_taps_,
                       u.z.data(), rows, stem_taps_, cout);
        bn_stats(l, u);
        bn_apply(l, u, act, nullptr, u.y.data());
        return {u.y.data()};
    }
    case LayerKind::Expand:
        blas_->forward(in.data, cin, params_.gemm_weight(l.param("conv.weight")), cin, u.z.data(), rows, cin,
                       cout);
        bn_stats(l, u);
        return {u.z.data(), {u.scale.as<float>(), u.shift.as<float>(), act}};
    case LayerKind::Depthwise: {
        kernels::launch_depthwise_weight_taps(params_.param(l.param("conv.weight")), t.taps.as<float>(),
                                              t.flipped_taps.as<float>(), cout, l.conv.kernel, stream_);
        kernels::launch_depthwise_train_forward(in.data, in.transform, t.taps.as<float>(), u.z.data(),
                                                t.dw_shape, storage_, stream_);
        // BN + act into scratch: the backward recomputes it from z.
        void* out = forward_scratch(in);
        bn_stats(l, u);
        bn_apply(l, u, act, nullptr, out);
        return {out};
    }
    case LayerKind::SqueezeExcite: {
        void* out = forward_scratch(in); // recomputed in the backward too
        kernels::launch_squeeze_excite_train_forward(se_args(l, t, in.data), out, storage_, stream_);
        return {out};
    }
    case LayerKind::Project:
    case LayerKind::Head: {
        blas_->forward(in.data, cin, params_.gemm_weight(l.param("conv.weight")), cin, u.z.data(), rows, cin,
                       cout);
        void* out = u.y.data() ? u.y.data() : forward_scratch(in);
        bn_stats(l, u);
        bn_apply(l, u, act, l.residual >= 0 ? stored_output(l.residual) : nullptr, out,
                 t.masked ? t.mask.as<float>() : nullptr, l.kind == LayerKind::Project ? l.out.pixels() : 1);
        return {out};
    }
    case LayerKind::Pool:
        kernels::launch_spatial_sum(in.data, nullptr, t.output.as<float>(), plan_.batch, l.in.pixels(), cin,
                                    float(1.0 / double(l.in.pixels())), storage_, stream_);
        return {t.output.data()};
    case LayerKind::Dropout:
        if (!t.masked) return in;
        kernels::launch_mask_multiply_f32(static_cast<const float*>(in.data), t.mask.as<float>(),
                                          t.output.as<float>(), l.out.numel(), stream_);
        return {t.output.data()};
    case LayerKind::Classifier: {
        kernels::SmallMatmulArgs cl; // logits [N, K] = features [N, Ch] W^T + b
        cl.a = static_cast<const float*>(in.data);
        cl.a_row = cin;
        cl.a_col = 1;
        cl.b = params_.param(l.param("weight"));
        cl.b_row = 1;
        cl.b_col = cin;
        cl.bias = params_.param(l.param("bias"));
        cl.out = logits_.as<float>();
        cl.rows = plan_.batch;
        cl.cols = cout;
        cl.inner = cin;
        kernels::launch_small_matmul(cl, stream_);
        return {logits_.data()};
    }
    }
    throw Error("GpuTrainer: unknown layer kind of " + l.name);
}

// ---------------------------------------------------------------------------------------------
// Backward

void* TrainGraph::acquire_scratch() {
    for (int k = 0; k < 3; ++k)
        if (!scratch_busy_[k]) {
            scratch_busy_[k] = true;
            return scratch_[k].data();
        }
    throw Error("GpuTrainer: the backward needs more than three scratch buffers");
}

void TrainGraph::release_scratch(const void* buffer) {
    for (int k = 0; k < 3; ++k)
        if (buffer && scratch_[k].data() == buffer) scratch_busy_[k] = false;
}

void* TrainGraph::input_grad_target(size_t i, bool& accumulate) {
    accumulate = plan_.layers[i].input >= 0 && plan_.layers[i].input == residual_layer_;
    if (!accumulate) return acquire_scratch();
    void* target = residual_grad_; // holds the output's gradient through the residual: add to it
    residual_layer_ = -1;
    residual_grad_ = nullptr;
    return target;
}

void TrainGraph::bn_backward(const Layer& l, BnUnit& u, Act act, const Grad& dy, int64_t rows_per_image,
                             void* dz, const float* dy_sample_scale) {
    kernels::BatchNormBackwardArgs a;
    a.x = u.z.data();
    a.dy = dy.data;
    a.dy_pooled = dy.pooled;
    a.rows_per_image = rows_per_image;
    a.pooled_scale = float(1.0 / double(rows_per_image));
    a.dy_sample_scale = dy_sample_scale;
    a.mean = u.mean.as<float>();
    a.invstd = u.invstd.as<float>();
    a.gamma = params_.param(l.param("bn.weight"));
    a.beta = params_.param(l.param("bn.bias"));
    a.act = act;
    a.dgamma = params_.grad(l.param("bn.weight"));
    a.dbeta = params_.grad(l.param("bn.bias"));
    a.dx = dz;
    a.rows = u.rows;
    a.channels = u.channels;
    a.workspace = workspace_.as<float>();
    kernels::launch_batchnorm_backward(a, storage_, stream_);
}

void TrainGraph::backward() {
    backward(std::function<void(size_t)>());
}

void TrainGraph::backward(const std::function<void(size_t)>& after_layer) {
    for (bool& busy : scratch_busy_) busy = false;
    residual_layer_ = -1;
    residual_grad_ = recomputed_ = nullptr;
    Grad d{dlogits_.data()};
    for (size_t i = plan_.layers.size(); i-- > 0;) {
        d = backward_layer(i, d);
        if (after_layer) after_layer(i);
    }
}

TrainGraph::Grad TrainGraph::backward_layer(size_t i, const Grad& dout) {
    const Layer& l = plan_.layers[i];
    TrainLayer& t = layers_[i];
    const int64_t N = plan_.batch;
    switch (l.kind) {
    case LayerKind::Classifier: {
        const int K = l.out.channels, Ch = l.in.channels;
        const float* dlogits = static_cast<const float*>(dout.data);
        // dW [K, Ch] = dlogits^T features and db [K] = sum_n dlogits, in one launch.
        kernels::SmallMatmulArgs m;
        m.a = dlogits;
        m.a_row = 1;
        m.a_col = K;
        m.b = classifier_input();
        m.b_row = Ch;
        m.b_col = 1;
        m.rows = K;
        m.cols = Ch;
        m.inner = plan_.batch;
        m.out = params_.grad(l.param("weight"));
        m.row_sum = params_.grad(l.param("bias"));
        kernels::launch_small_matmul(m, stream_);
        // dfeatures [N, Ch] = dlogits W.
        m = kernels::SmallMatmulArgs{};
        m.a = dlogits;
        m.a_row = K;
        m.a_col = 1;
        m.b = params_.param(l.param("weight"));
        m.b_row = Ch;
        m.b_col = 1;
        m.rows = plan_.batch;
        m.cols = Ch;
        m.inner = K;
        m.out = dpooled_.as<float>();
        kernels::launch_small_matmul(m, stream_);
        return {dpooled_.data()};
    }
    case LayerKind::Dropout:
        if (t.masked)
            kernels::launch_mask_multiply_f32(dpooled_.as<float>(), t.mask.as<float>(), dpooled_.as<float>(),
                                              N * l.out.channels, stream_);
        return dout;
    case LayerKind::Pool: // its broadcast is fused into the head's BN backward
        return {nullptr, static_cast<const float*>(dout.data)};
    case LayerKind::Head:
    case LayerKind::Project:
        return backward_conv1x1(i, dout);
    case LayerKind::SqueezeExcite:
        return backward_squeeze_excite(i, dout);
    case LayerKind::Depthwise:
        return backward_depthwise(i, dout);
    case LayerKind::Expand:
    case LayerKind::Stem: {
        // BN (+act) backward in place, then the weight and the input's gradients.
        BnUnit& u = t.bn;
        const int cin = l.in.channels, cout = l.out.channels;
        bn_backward(l, u, layer_act(l), dout, 1, dout.data);
        const std::string w = l.param("conv.weight");
        if (l.kind == LayerKind::Stem) {
            blas_->backward_weight(columns_.data(), stem_ld_, dout.data, params_.grad(w), u.rows, stem_taps_,
                                   cout);
            release_scratch(dout.data);
            return {};
        }
        blas_->backward_weight(stored_output(l.input), cin, dout.data, params_.grad(w), u.rows, cin, cout);
        bool accumulate = false;
        void* dx = input_grad_target(i, accumulate);
        blas_->backward_data(dout.data, params_.gemm_weight(w), dx, u.rows, cin, cout, accumulate);
        release_scratch(dout.data);
        return {dx};
    }
    }
    throw Error("GpuTrainer: unknown layer kind of " + l.name);
}

// The project GEMM's input, recomputed from the depthwise conv's z: act(bn(dw.z)), times the
// squeeze-excite gate when there is one (the depthwise output then stays in `recomputed_` for
// the squeeze-excite's backward).
void* TrainGraph::recompute_input(size_t i) {
    const Layer& l = plan_.layers[i];
    const size_t in = size_t(l.input);
    const bool gated = plan_.layers[in].kind == LayerKind::SqueezeExcite;
    const size_t dw = gated ? size_t(plan_.layers[in].input) : in;
    EFFNET_CHECK(plan_.layers[dw].kind == LayerKind::Depthwise,
                 "GpuTrainer: " + l.name + " reads neither a depthwise conv nor its squeeze-excite");
    void* x = acquire_scratch();
    bn_apply(plan_.layers[dw], layers_[dw].bn, layer_act(plan_.layers[dw]), nullptr, x);
    if (!gated) return x;
    const Layer& se = plan_.layers[in];
    kernels::launch_squeeze_excite_gate(x, layers_[in].gate.as<float>(), gated_.data(), plan_.batch,
                                        se.in.pixels(), se.in.channels, storage_, stream_);
    recomputed_ = x;
    return gated_.data();
}

TrainGraph::Grad TrainGraph::backward_conv1x1(size_t i, const Grad& dout) {
    const Layer& l = plan_.layers[i];
    TrainLayer& t = layers_[i];
    BnUnit& u = t.bn;
    const int cin = l.in.channels, cout = l.out.channels;
    const bool project = l.kind == LayerKind::Project;
    // BN (+act) backward -> dz; the pool's gradient (head) or the drop-path mask (project) fused in.
    void* dz = acquire_scratch();
    bn_backward(l, u, layer_act(l), dout, dout.pooled || project ? l.out.pixels() : 1, dz,
                t.masked ? t.mask.as<float>() : nullptr);
    if (l.residual >= 0) { // dout is also the residual's gradient: kept for the block input
        residual_layer_ = l.residual;
        residual_grad_ = dout.data;
    } else {
        release_scratch(dout.data);
    }
    const std::string w = l.param("conv.weight");
    // The input: kept (head) or recomputed (project), whose buffer then takes its gradient.
    bool accumulate = false;
    const void* x = project ? recompute_input(i) : stored_output(l.input);
    void* dx = project ? const_cast<void*>(x) : input_grad_target(i, accumulate);
    blas_->backward_weight(x, cin, dz, params_.grad(w), u.rows, cin, cout);
    blas_->backward_data(dz, params_.gemm_weight(w), dx, u.rows, cin, cout, accumulate);
    release_scratch(dz);
    return {dx};
}

TrainGraph::Grad TrainGraph::backward_squeeze_excite(size_t i, const Grad& dout) {
    const Layer& l = plan_.layers[i];
    EFFNET_CHECK(recomputed_, "GpuTrainer: " + l.name + " has no recomputed input");
    const kernels::SqueezeExciteTrainArgs se = se_args(l, layers_[i], recomputed_);
    void* dx = acquire_scratch();
    kernels::launch_squeeze_excite_backward(
        se, dout.data, dx, params_.grad(l.param("reduce.weight")), params_.grad(l.param("reduce.bias")),
        params_.grad(l.param("expand.weight")), params_.grad(l.param("expand.bias")), workspace_.as<float>(),
        storage_, stream_);
    release_scratch(dout.data);
    release_scratch(recomputed_);
    recomputed_ = nullptr;
    return {dx};
}

TrainGraph::Grad TrainGraph::backward_depthwise(size_t i, const Grad& dout) {
    const Layer& l = plan_.layers[i];
    TrainLayer& t = layers_[i];
    // BN (+act) backward in place, then the weight and data gradients.
    bn_backward(l, t.bn, layer_act(l), dout, 1, dout.data);
    // The input as the forward read it: the expand conv's z with its BN + act applied on load,
    // or the kept block input.
    const Layer& in = plan_.layers[size_t(l.input)];
    const void* x = nullptr;
    kernels::DepthwiseInputTransform transform;
    if (in.kind == LayerKind::Expand) {
        const BnUnit& e = layers_[size_t(l.input)].bn;
        x = e.z.data();
        transform = {e.scale.as<float>(), e.shift.as<float>(), layer_act(in)};
    } else {
        x = stored_output(l.input);
    }
    kernels::launch_depthwise_backward_weight(x, transform, dout.data, params_.grad(l.param("conv.weight")),
                                              workspace_.as<float>(), t.dw_shape, storage_, stream_);
    bool accumulate = false;
    void* dx = input_grad_target(i, accumulate);
    kernels::launch_depthwise_backward_data(dout.data, t.flipped_taps.as<float>(), accumulate ? dx : nullptr,
                                            dx, t.dw_shape, storage_, stream_);
    release_scratch(dout.data);
    return {dx};
}

} // namespace effnet::cuda
