// InferenceSession's build: walks the network plan once, folding batch norm into each conv,
// packing the weights, planning every activation into the arena by liveness, and appending one
// launch step per layer, or per group of layers the session runs as one kernel (expand +
// depthwise; the squeeze-excite gate applied by the project GEMM as it loads).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "effnet/error.hpp"
#include "kernels/fused_mbconv.cuh"
#include "kernels/fused_mbconv_tc.cuh"
#include "kernels/layout.cuh"
#include "kernels/pool_classifier.cuh"
#include "kernels/squeeze_excite.cuh"
#include "kernels/stem_conv.cuh"
#include "libeffnet/cuda/session_impl.hpp"

namespace effnet {
namespace {

using kernels::Act;

// Every parameter the layer reads must have the shape the plan gives it.
void check_params(const Model& model, const Layer& l) {
    for (const ParamSpec& spec : l.params) {
        const Tensor& t = model.param(spec.name);
        EFFNET_CHECK(t.shape == spec.shape, "InferenceSession: parameter " + spec.name + " has shape " +
                                                shape_str(t.shape) + ", expected " + shape_str(spec.shape));
    }
}

Act layer_act(const Layer& l) {
    return l.activation ? kernels::to_act(*l.activation) : Act::None;
}

// True when layer i's output feeds a squeeze-excite (its producer also takes the squeeze's sums).
bool feeds_squeeze(const NetworkPlan& net, size_t i) {
    return i + 1 < net.layers.size() && net.layers[i + 1].kind == LayerKind::SqueezeExcite &&
           net.layers[i + 1].input == int(i);
}

// The depthwise conv's geometry, the same fields in the plain and the fused kernels' arguments.
template <typename Args>
void set_depthwise_geometry(Args& a, const Layer& dw) {
    a.batch = int(dw.in.batch);
    a.height = dw.in.height;
    a.width = dw.in.width;
    a.kernel = dw.conv.kernel;
    a.stride = dw.conv.stride;
    a.pad_top = dw.conv.pad_top;
    a.pad_left = dw.conv.pad_left;
    a.out_height = dw.out.height;
    a.out_width = dw.out.width;
    a.act = layer_act(dw);
}

} // namespace

void InferenceSession::Impl::build(const Model& model) {
    const NetworkPlan net = make_network_plan(model.config, batch, height, width);
    EFFNET_CHECK(!options.features_only || !options.features.empty(),
                 "InferenceSession: features_only needs at least one index in SessionOptions::features");
    if (!options.features.empty()) {
        check_feature_indices(options.features);
        const std::vector<FeatureInfo> all = feature_info(net);
        for (int index : options.features) features.push_back(all[size_t(index)]);
    }
    // features_only: the graph ends at the last requested feature's layer.
    const size_t end = options.features_only ? size_t(features.back().layer) + 1 : net.layers.size();
    WeightPack pack;
    cudnn_candidates =
        options.cudnn == CudnnCandidate::Force || (options.cudnn == CudnnCandidate::Auto && options.autotune);
    input_bytes = size_t(batch) * model.config.in_channels * height * width * sizeof(float);
    input_id = plan.add("input", input_bytes, 0, 0);

    std::vector<SessionValue> values(net.layers.size()); // each layer's output
    auto input_of = [&](const Layer& l) {
        return l.input < 0 ? SessionValue{input_id} : values[size_t(l.input)];
    };
    for (size_t i = 0; i < end; ++i) {
        const Layer& l = net.layers[i];
        check_params(model, l);
        switch (l.kind) {
        case LayerKind::Stem:
            values[i] = add_stem(model, l, pack);
            break;
        case LayerKind::Expand: { // runs with the depthwise conv that reads it
            const Layer& dw = net.layers.at(i + 1);
            EFFNET_CHECK(dw.kind == LayerKind::Depthwise && dw.input == int(i),
                         "InferenceSession: " + l.name + " is not followed by its depthwise conv");
            check_params(model, dw);
            values[i + 1] = add_depthwise(model, &l, dw, feeds_squeeze(net, i + 1), input_of(l), pack);
            ++i;
            break;
        }
        case LayerKind::Depthwise:
            values[i] = add_depthwise(model, nullptr, l, feeds_squeeze(net, i), input_of(l), pack);
            break;
        case LayerKind::SqueezeExcite:
            values[i] = add_squeeze_excite(model, l, input_of(l), pack);
            break;
        case LayerKind::Project:
        case LayerKind::Head:
            values[i] = add_conv1x1(model, l, input_of(l),
                                    l.residual >= 0 ? &values[size_t(l.residual)] : nullptr, pack);
            break;
        case LayerKind::Pool:
            values[i] = add_pool(l, input_of(l));
            break;
        case LayerKind::Dropout: // training only
            values[i] = input_of(l);
            break;
        case LayerKind::Classifier:
            values[i] = add_classifier(model, l, input_of(l), pack);
            break;
        }
        for (const FeatureInfo& f : features)
            if (f.layer == int(i)) feature_ids.push_back(add_feature_copy(f, values[i]));
    }
    // run_features() reads the copies after the last step: keep them live to the end.
    for (int id : feature_ids) plan.touch(id, next_step() - 1);
    if (cudnn_candidates && cudnn_max_channels > 0) { // the bias pass's identity statistics
        cudnn_unit_off = pack.add_f32(std::vector<float>(size_t(cudnn_max_channels), 1.0f));
        cudnn_zero_off = pack.add_f32(std::vector<float>(size_t(cudnn_max_channels), 0.0f));
    }
    allocate(pack);
}

SessionValue InferenceSession::Impl::add_stem(const Model& model, const Layer& l, WeightPack& pack) {
    const int step = next_step();
    const cuda::FoldedConv stem_conv_folded = cuda::fold_batchnorm(model, l.name);
    const int out_id = plan.add(l.name, size_t(l.out.numel()) * kernels::storage_size(precision), step, step);
    kernels::StemConvArgs a;
    a.batch = batch;
    a.in_channels = l.in.channels;
    a.height = l.in.height;
    a.width = l.in.width;
    a.out_channels = l.out.channels;
    a.out_height = l.out.height;
    a.out_width = l.out.width;
    a.kernel = l.conv.kernel;
    a.stride = l.conv.stride;
    a.pad_top = l.conv.pad_top;
    a.pad_left = l.conv.pad_left;
    a.act = layer_act(l);
    const size_t w_off = pack.add_f32(cuda::stem_layout(stem_conv_folded)),
                 b_off = pack.add_f32(stem_conv_folded.bias);
    const int in_id = input_id;
    stem.step = steps.size();
    if (cudnn_candidates) {
        stem.cudnn_w_off = pack.add(cuda::to_storage(stem_conv_folded.weight, precision));
        cudnn_max_channels = std::max(cudnn_max_channels, a.out_channels);
    }
    steps.push_back({l.name, "stem_conv", [this, a, w_off, b_off, in_id, out_id](cudaStream_t s) mutable {
                         a.input = reinterpret_cast<const float*>(tensor(in_id));
                         a.weight = weight_f32(w_off);
                         a.bias = weight_f32(b_off);
                         a.output = tensor(out_id);
                         stem.args = a;
                         if (stem.cudnn)
                             run_stem_cudnn(a, s);
                         else
                             kernels::launch_stem_conv(a, precision, s);
                     }});
    return {out_id};
}

// The depthwise conv, with the expand conv before it when there is one: fused into one kernel
// when the options allow it, else the expand GEMM and the depthwise kernel, over chunks of the
// batch when the expand output would be the network's largest tensor. With `squeezed`, the
// depthwise kernel also adds up each channel for the squeeze-excite that reads its output.
SessionValue InferenceSession::Impl::add_depthwise(const Model& model, const Layer* expand, const Layer& dw,
                                                   bool squeezed, const SessionValue& in, WeightPack& pack) {
    const size_t es = kernels::storage_size(precision);
    const int64_t N = batch;
    const int h = dw.in.height, w = dw.in.width, ho = dw.out.height, wo = dw.out.width;
    const int ce = dw.out.channels;
    const int block_in = in.id;
    const int step = next_step();

    cuda::FoldedConv expand_folded;
    if (expand) expand_folded = cuda::fold_batchnorm(model, expand->name);
    const cuda::FoldedConv dw_folded = cuda::fold_batchnorm(model, dw.name);
    const size_t dw_w = pack.add_f32(cuda::depthwise_layout(dw_folded)), dw_b = pack.add_f32(dw_folded.bias);

    kernels::DepthwiseArgs dwa;
    set_depthwise_geometry(dwa, dw);
    dwa.channels = ce;

    kernels::FusedExpandDepthwiseArgs fa;
    set_depthwise_geometry(fa, dw);
    fa.in_channels = expand ? expand->in.channels : dw.in.channels;
    fa.expand_channels = ce;
    const bool fuse = expand && options.fused_mbconv && kernels::fused_expand_depthwise_supported(fa);

    // The squeeze's sums live outside the arena, zero between forwards: the depthwise conv
    // adds into them, the excite reads and re-zeroes them (no memset launches).
    const int64_t pooled_off = squeezed ? add_squeeze(size_t(N) * ce * sizeof(float)) : -1;
    const int dw_out = plan.add(dw.name, size_t(N) * ho * wo * ce * es, step, step);
    if (fuse) {
        const size_t e_w = pack.add(cuda::to_storage(expand_folded.weight, precision)),
                     e_b = pack.add_f32(expand_folded.bias);
        plan.touch(block_in, step);
        plan.touch(dw_out, step);
        steps.push_back(
            {"blocks." + std::to_string(dw.block) + ".fused_expand_dw", "fused_expand_depthwise",
             [this, fa, e_w, e_b, dw_w, dw_b, block_in, dw_out, pooled_off](cudaStream_t s) mutable {
                 fa.input = tensor(block_in);
                 fa.expand_weight = weight(e_w);
                 fa.expand_bias = weight_f32(e_b);
                 fa.dw_weight = weight_f32(dw_w);
                 fa.dw_bias = weight_f32(dw_b);
                 fa.output = tensor(dw_out);
                 fa.pooled_sum = squeeze_sum(pooled_off);
                 kernels::launch_fused_expand_depthwise(fa, precision, s);
             }});
        return {dw_out, -1, pooled_off};
    }
    // Memory: a stride-2 block's expand output is 4x its depthwise output. Such blocks run
    // expand + depthwise in chunks of the batch through a chunk-sized expand buffer (as many
    // chunks as the ratio, each of at least min_chunk_images images), so the largest tensor of
    // the network is never whole.
    int chunks = 1;
    if (expand) {
        const int ratio = int((int64_t(h) * w + int64_t(ho) * wo - 1) / (int64_t(ho) * wo));
        for (int c = ratio; c >= 2; --c)
            if (options.min_chunk_images > 0 && N % c == 0 && N / c >= options.min_chunk_images) {
                chunks = c;
                break;
            }
    }
    const int64_t chunk_n = N / chunks;
    // cuDNN's weight: the folded [C, 1, k, k] in the storage precision (a candidate, tune_cudnn).
    size_t cudnn_w = 0;
    if (cudnn_candidates) {
        cudnn_w = pack.add(cuda::to_storage(dw_folded.weight, precision));
        cudnn_max_channels = std::max(cudnn_max_channels, ce);
    }
    int dw_in = block_in;
    PackedConv expand_conv;
    if (expand) {
        expand_conv = pack_conv(expand_folded, pack);
        dw_in = plan.add(expand->name, size_t(chunk_n) * h * w * ce * es, step, step);
    }
    for (int k = 0; k < chunks; ++k) {
        const std::string suffix = chunks > 1 ? "[" + std::to_string(k) + "]" : "";
        PointwiseLayer* producer = nullptr; // the expand conv, whose activation may move here
        if (expand) {
            add_pointwise(expand->name + suffix, expand_conv, block_in, chunk_n * h * w, h * w, -1, -1,
                          layer_act(*expand), dw_in, size_t(k) * chunk_n * h * w * expand->in.channels * es);
            producer = pointwise.back().get();
            producer->consumer_step = next_step();
        }
        plan.touch(dw_in, next_step());
        plan.touch(dw_out, next_step());
        auto dl = std::make_unique<DepthwiseLayer>();
        dl->step = steps.size();
        dl->cudnn_w_off = cudnn_w;
        DepthwiseLayer* dlp = dl.get();
        depthwise.push_back(std::move(dl));
        kernels::DepthwiseArgs dwk = dwa;
        dwk.batch = int(chunk_n);
        const size_t out_offset = size_t(k) * chunk_n * ho * wo * ce * es;
        const int64_t pool_off = pooled_off < 0 ? -1 : pooled_off + k * chunk_n * ce * int64_t(sizeof(float));
        const Act expand_act = expand ? layer_act(*expand) : Act::None;
        steps.push_back({dw.name + suffix, "depthwise",
                         [this, dwk, dw_w, dw_b, dw_in, dw_out, out_offset, pool_off, producer, expand_act,
                          dlp](cudaStream_t s) mutable {
                             dwk.input = tensor(dw_in);
                             dwk.input_act = producer && producer->choice == GemmChoice::CublasLtActInNext
                                                 ? expand_act
                                                 : Act::None;
                             dwk.weight = weight_f32(dw_w);
                             dwk.bias = weight_f32(dw_b);
                             dwk.output = tensor(dw_out) + out_offset;
                             dwk.pooled_sum = squeeze_sum(pool_off);
                             dwk.schedule = dlp->schedule;
                             dlp->args = dwk;
                             if (dlp->cudnn)
                                 run_depthwise_cudnn(*dlp, dwk, s);
                             else
                                 kernels::launch_depthwise_conv(dwk, precision, s);
                         }});
    }
    // The tensor-core fused kernel as a candidate for the steps just added (tune_fused_mbconv
    // times both): not when the fused path or cuBLASLt was asked for, nor without autotuning.
    // It applies one activation (fa.act, the depthwise conv's) to both convs.
    if (expand && options.fused_mbconv_tc && options.autotune && !options.fused_mbconv &&
        options.gemm != GemmBackend::CublasLt && layer_act(*expand) == fa.act &&
        kernels::fused_mbconv_tc_eligible(fa, precision)) {
        FusedCandidate fc;
        fc.first_step = size_t(step);
        fc.end_step = steps.size();
        fc.name = "blocks." + std::to_string(dw.block) + ".fused_expand_dw";
        fc.launch = [this, fa, e_w = expand_conv.w_off, e_b = expand_conv.b_off, dw_w, dw_b, block_in, dw_out,
                     pooled_off](cudaStream_t s) mutable {
            fa.input = tensor(block_in);
            fa.expand_weight = weight(e_w);
            fa.expand_bias = weight_f32(e_b);
            fa.dw_weight = weight_f32(dw_w);
            fa.dw_bias = weight_f32(dw_b);
            fa.output = tensor(dw_out);
            fa.pooled_sum = squeeze_sum(pooled_off);
            kernels::launch_fused_mbconv_tc(fa, precision, s);
        };
        fused_candidates.push_back(std::move(fc));
    }
    return {dw_out, -1, pooled_off};
}

// The excite (squeeze sums -> gate); the gate is applied by the next 1x1 conv as it loads.
SessionValue InferenceSession::Impl::add_squeeze_excite(const Model& model, const Layer& l,
                                                        const SessionValue& in, WeightPack& pack) {
    EFFNET_CHECK(in.squeeze_offset >= 0, "InferenceSession: " + l.name + " reads no squeezed input");
    const int step = next_step();
    const int ce = l.in.channels, S = l.reduced_channels;
    const Tensor& w2 = model.param(l.param("expand.weight"));
    const size_t w1_off = pack.add_f32(model.param(l.param("reduce.weight")).data),
                 b1_off = pack.add_f32(model.param(l.param("reduce.bias")).data);
    const size_t w2_off = pack.add_f32(cuda::transpose(w2.data, ce, S)),
                 b2_off = pack.add_f32(model.param(l.param("expand.bias")).data);
    const int gate_id = plan.add(l.name + ".gate", size_t(batch) * ce * sizeof(float), step, step);
    kernels::ExciteArgs ea;
    ea.inv_count = 1.0f / float(l.in.pixels());
    ea.batch = batch;
    ea.channels = ce;
    ea.reduced = S;
    ea.act = layer_act(l);
    const int64_t pooled_off = in.squeeze_offset;
    steps.push_back({l.name + ".excite", "excite",
                     [this, ea, w1_off, b1_off, w2_off, b2_off, pooled_off, gate_id](cudaStream_t s) mutable {
                         ea.pooled_sum = squeeze_sum(pooled_off);
                         ea.w_reduce = weight_f32(w1_off);
                         ea.b_reduce = weight_f32(b1_off);
                         ea.w_expand_t = weight_f32(w2_off);
                         ea.b_expand = weight_f32(b2_off);
                         ea.gate = reinterpret_cast<float*>(tensor(gate_id));
                         kernels::launch_excite(ea, s);
                     }});
    return {in.id, gate_id};
}

// A 1x1 conv with BN folded (project, head): the gate of its input, the residual and the
// activation are fused into the GEMM (or cuBLASLt's epilogue and passes; see tune_gemms).
SessionValue InferenceSession::Impl::add_conv1x1(const Model& model, const Layer& l, const SessionValue& in,
                                                 const SessionValue* residual, WeightPack& pack) {
    const int step = next_step();
    const std::string out_name =
        l.kind == LayerKind::Project ? "blocks." + std::to_string(l.block) + ".out" : l.name;
    const int out_id =
        plan.add(out_name, size_t(l.out.numel()) * kernels::storage_size(precision), step, step);
    add_pointwise(l.name, pack_conv(cuda::fold_batchnorm(model, l.name), pack), in.id, l.out.rows(),
                  int(l.out.pixels()), in.gate_id, residual ? residual->id : -1, layer_act(l), out_id);
    return {out_id};
}

void InferenceSession::Impl::add_pointwise(const std::string& name, const PackedConv& conv, int in_id,
                                           int64_t rows, int rows_per_image, int gate_id, int residual_id,
                                           Act epilogue_act, int out_id, size_t in_offset) {
    const int step = next_step();
    auto l = std::make_unique<PointwiseLayer>();
    l->step = steps.size();
    l->args.rows = rows;
    l->args.out_channels = conv.out;
    l->args.in_channels = conv.in;
    l->args.rows_per_image = rows_per_image;
    l->args.act = epilogue_act;
    l->w_off = conv.w_off;
    l->b_off = conv.b_off;
    l->lt_b_off = conv.lt_b_off;
    l->in_id = in_id;
    l->in_offset = in_offset;
    l->gate_id = gate_id;
    l->residual_id = residual_id;
    l->out_id = out_id;
    plan.touch(in_id, step);
    if (gate_id >= 0) plan.touch(gate_id, step);
    if (residual_id >= 0) plan.touch(residual_id, step);
    PointwiseLayer* lp = l.get();
    steps.push_back(
        {name, "handwritten", [this, lp](cudaStream_t s) { launch_pointwise(*lp, lp->choice, s); }});
    pointwise.push_back(std::move(l));
}

PackedConv InferenceSession::Impl::pack_conv(const cuda::FoldedConv& conv, WeightPack& pack) const {
    PackedConv pc;
    pc.out = int(conv.shape[0]);
    pc.in = int(conv.shape[1]);
    pc.w_off = pack.add(cuda::to_storage(conv.weight, precision));
    pc.b_off = pack.add_f32(conv.bias);
    pc.lt_b_off = pack.add(cuda::to_storage(conv.bias, precision));
    return pc;
}

SessionValue InferenceSession::Impl::add_pool(const Layer& l, const SessionValue& in) {
    const int step = next_step();
    const int pooled_id = plan.add(l.name, size_t(batch) * l.out.channels * sizeof(float), step, step);
    plan.touch(in.id, step);
    const int pixels = int(l.in.pixels()), channels = l.in.channels, in_id = in.id;
    steps.push_back({l.name, "global_avg_pool", [this, in_id, pooled_id, pixels, channels](cudaStream_t s) {
                         kernels::launch_global_avg_pool(tensor(in_id),
                                                         reinterpret_cast<float*>(tensor(pooled_id)), batch,
                                                         pixels, channels, precision, s);
                     }});
    return {pooled_id};
}

// A feature map leaves as NCHW float32: one conversion from the NHWC storage tensor, into an
// arena tensor of its own (the source is reused by later layers).
int InferenceSession::Impl::add_feature_copy(const FeatureInfo& f, const SessionValue& value) {
    // Features are stage ends and the stem: real tensors, never a gate still to be applied.
    EFFNET_CHECK(value.id >= 0 && value.gate_id < 0,
                 "InferenceSession: feature " + f.name + " is not a plain tensor in the session");
    const int step = next_step();
    const int out_id =
        plan.add("feature." + std::to_string(f.index), size_t(f.shape.numel()) * sizeof(float), step, step);
    plan.touch(value.id, step);
    const int src_id = value.id;
    const int64_t pixels = f.shape.pixels();
    const int channels = f.shape.channels;
    steps.push_back({"feature." + std::to_string(f.index), "nhwc_to_nchw",
                     [this, src_id, out_id, pixels, channels](cudaStream_t s) {
                         kernels::launch_nhwc_to_nchw_f32(tensor(src_id),
                                                          reinterpret_cast<float*>(tensor(out_id)), batch,
                                                          pixels, channels, precision, s);
                     }});
    return out_id;
}

// The classifier, fp32 in every precision: effnet's linear kernel or cuBLASLt (tune_gemms).
SessionValue InferenceSession::Impl::add_classifier(const Model& model, const Layer& l,
                                                    const SessionValue& in, WeightPack& pack) {
    const int step = next_step();
    const size_t cw_off = pack.add_f32(model.param(l.param("weight")).data),
                 cb_off = pack.add_f32(model.param(l.param("bias")).data);
    logits_bytes = size_t(batch) * l.out.channels * sizeof(float);
    logits_id = plan.add("logits", logits_bytes, step, step);
    plan.touch(in.id, step);
    classifier.step = steps.size();
    classifier.in = l.in.channels;
    classifier.out = l.out.channels;
    classifier.w_off = cw_off;
    classifier.b_off = cb_off;
    classifier.in_id = in.id;
    classifier.out_id = logits_id;
    steps.push_back(
        {l.name, "linear", [this](cudaStream_t s) { launch_classifier(classifier.lt != nullptr, s); }});
    return {logits_id};
}

// Uploads the weights, allocates the arena and the squeeze sums, and tunes the kernel choices.
void InferenceSession::Impl::allocate(const WeightPack& pack) {
    // All at once, before any of it: a batch that cannot fit is one error with the figures.
    const size_t arena_bytes = plan.plan();
    const size_t needed = pack.bytes().size() + arena_bytes + squeeze_bytes;
    size_t free_bytes = 0, total_bytes = 0;
    EFFNET_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    EFFNET_CHECK(needed <= free_bytes,
                 "InferenceSession: batch " + std::to_string(batch) + " at " + std::to_string(height) + "x" +
                     std::to_string(width) + " needs " + format_bytes(needed) + " of GPU memory (weights " +
                     format_bytes(pack.bytes().size()) + ", activations " + format_bytes(arena_bytes) +
                     ") and the GPU has " + format_bytes(free_bytes) + " free of " +
                     format_bytes(total_bytes) + ": use a smaller batch or image size");
    weights = cuda::DeviceBuffer(pack.bytes().size(), "weights");
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(weights.data(), pack.bytes().data(), pack.bytes().size(),
                                      cudaMemcpyHostToDevice, ctx->stream()));
    arena = cuda::DeviceBuffer(arena_bytes, "activation arena");
    squeeze = cuda::DeviceBuffer(squeeze_bytes, "squeeze sums");
    zero_squeeze(ctx->stream());
    // Defined contents for the warm-up run (the input buffer is not yet written).
    EFFNET_CUDA_CHECK(cudaMemsetAsync(arena.data(), 0, arena.size(), ctx->stream()));
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(ctx->stream()));
    if (options.autotune) tune_depthwise(); // first: expand GEMMs are timed with their depthwise conv
    tune_cudnn();                           // against the schedule just chosen; before the GEMMs
    tune_gemms();
    tune_fused_mbconv(); // last: against the unfused steps as tuned
    // Tuning ran layers on whatever the arena held, and depthwise convs without their excite:
    // start the warm-up from zeros again.
    EFFNET_CUDA_CHECK(cudaMemsetAsync(arena.data(), 0, arena.size(), ctx->stream()));
    zero_squeeze(ctx->stream());
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(ctx->stream()));
}

} // namespace effnet
