// InferenceSession's per-layer kernel choices: each 1x1 convolution's GEMM and each depthwise
// convolution's schedule, by timing the candidates on this GPU.
#include <algorithm>
#include <limits>
#include <memory>
#include <string>

#include "kernels/channel_gate.cuh"
#include "kernels/activation.cuh"
#include "kernels/batchnorm.cuh"
#include "kernels/cast.cuh"
#include "kernels/squeeze_excite_train.cuh"
#include "kernels/pointwise_conv_small_k.cuh"
#include "kernels/pool_classifier.cuh"
#include "libeffnet/cuda/session_impl.hpp"
#include "libeffnet/cuda/time_launches.hpp"

namespace effnet {

using kernels::Act;

void InferenceSession::Impl::launch_pointwise(PointwiseLayer& l, GemmChoice choice, cudaStream_t s) {
    kernels::PointwiseArgs& a = l.args;
    a.input = tensor(l.in_id) + l.in_offset;
    a.weight = weight(l.w_off);
    a.bias = weight_f32(l.b_off);
    a.gate = l.gate_id >= 0 ? reinterpret_cast<const float*>(tensor(l.gate_id)) : nullptr;
    a.residual = l.residual_id >= 0 ? tensor(l.residual_id) : nullptr;
    a.output = tensor(l.out_id);
    if (choice == GemmChoice::Handwritten) {
        kernels::launch_pointwise_conv(a, precision, kernels::GemmKernel::Auto, s);
        return;
    }
    if (choice == GemmChoice::SmallK) {
        kernels::launch_pointwise_small_k(a, precision, s);
        return;
    }
    // The gate scales the depthwise output in place: its only reader is this GEMM (the squeeze
    // was taken in the depthwise epilogue, before the gate).
    if (a.gate)
        kernels::launch_channel_gate(const_cast<void*>(a.input), a.gate, a.rows, a.in_channels,
                                     a.rows_per_image, precision, s);
    l.lt->run(lt_buffers(a, weight(l.lt_b_off)), s);
    if (a.act != Act::None && choice == GemmChoice::CublasLt)
        kernels::launch_activation_forward(a.output, a.output, a.rows * a.out_channels, a.act, precision, s);
}

// Per 1x1 layer: the hand-written GEMM (gate, bias, activation, residual fused) or cuBLASLt plus
// the passes it needs, whichever is faster on this GPU for this shape. An expand conv is timed
// together with the depthwise conv that reads its output, because one choice moves its
// activation into that depthwise conv's loads (no activation pass, more work per load).
// Timed on the arena's own buffers, in place: values do not change the time, and the arena is
// reset afterwards.
void InferenceSession::Impl::tune_gemms() {
    if (options.gemm == GemmBackend::Handwritten || (options.gemm == GemmBackend::Auto && !options.autotune))
        return;
    const bool tf32 = options.allow_tf32 && precision == Precision::FP32;
    void* workspace = ctx->workspace(kLtWorkspaceBytes);
    cudaStream_t s = ctx->stream();
    for (auto& lp : pointwise) {
        PointwiseLayer& l = *lp;
        launch_pointwise(l, GemmChoice::Handwritten, s); // sets the argument pointers
        cuda::LtMatmulShape shape;
        shape.rows = l.args.rows;
        shape.out = l.args.out_channels;
        shape.in = l.args.in_channels;
        shape.residual = l.args.residual != nullptr;
        shape.tf32 = tf32;
        try {
            l.lt = std::make_unique<cuda::LtMatmul>(ctx->cublaslt(), precision, shape,
                                                    lt_buffers(l.args, weight(l.lt_b_off)), workspace,
                                                    kLtWorkspaceBytes, s);
        } catch (const Error&) {
            if (options.gemm == GemmBackend::CublasLt) throw;
            (void)cudaGetLastError(); // Auto: the hand-written kernels only
        }
        const bool has_consumer = l.consumer_step >= 0 && l.args.act != Act::None;
        if (options.gemm == GemmBackend::CublasLt) {
            l.choice = has_consumer ? GemmChoice::CublasLtActInNext : GemmChoice::CublasLt;
        } else {
            const bool small_k = kernels::pointwise_small_k_eligible(l.args, precision);
            float best = std::numeric_limits<float>::infinity();
            GemmChoice chosen = GemmChoice::Handwritten;
            for (GemmChoice c : {GemmChoice::Handwritten, GemmChoice::SmallK, GemmChoice::CublasLt,
                                 GemmChoice::CublasLtActInNext}) {
                if (c == GemmChoice::SmallK && !small_k) continue;
                if (c != GemmChoice::Handwritten && c != GemmChoice::SmallK && !l.lt) continue;
                if (c == GemmChoice::CublasLtActInNext && !has_consumer) continue;
                l.choice = c; // the consumer reads it
                const float ms = cuda::time_launches(s, [&] {
                    launch_pointwise(l, c, s);
                    if (l.consumer_step >= 0) steps[size_t(l.consumer_step)].launch(s);
                });
                if (ms < best) {
                    best = ms;
                    chosen = c;
                }
            }
            l.choice = chosen;
        }
        if (l.choice == GemmChoice::Handwritten || l.choice == GemmChoice::SmallK) {
            l.lt.reset();
            if (l.choice == GemmChoice::SmallK) steps[l.step].kernel = "small_k";
            continue;
        }
        steps[l.step].kernel = std::string(tf32 ? "cublaslt-tf32" : "cublaslt") +
                               (l.choice == GemmChoice::CublasLtActInNext ? "+act-in-dw" : "");
    }
    if (classifier.in_id < 0) return; // features_only: no classifier
    // The classifier: true fp32 whatever the session's precision (logits), no TF32.
    cuda::LtMatmulShape shape;
    shape.rows = batch;
    shape.out = classifier.out;
    shape.in = classifier.in;
    std::unique_ptr<cuda::LtMatmul> lt;
    try {
        lt = std::make_unique<cuda::LtMatmul>(ctx->cublaslt(), Precision::FP32, shape, classifier_buffers(),
                                              workspace, kLtWorkspaceBytes, s);
    } catch (const Error&) {
        if (options.gemm == GemmBackend::CublasLt) throw;
        (void)cudaGetLastError();
        return;
    }
    const bool forced = options.gemm == GemmBackend::CublasLt;
    const float linear_ms = forced ? 0.0f : cuda::time_launches(s, [&] { launch_classifier(false, s); });
    if (forced || lt->measured_ms() < linear_ms) {
        classifier.lt = std::move(lt);
        steps[classifier.step].kernel = "cublaslt";
    }
}

void InferenceSession::Impl::launch_classifier(bool use_lt, cudaStream_t s) {
    if (use_lt) {
        classifier.lt->run(classifier_buffers(), s);
        return;
    }
    kernels::launch_linear(reinterpret_cast<const float*>(tensor(classifier.in_id)),
                           weight_f32(classifier.w_off), weight_f32(classifier.b_off),
                           reinterpret_cast<float*>(tensor(classifier.out_id)), batch, classifier.in,
                           classifier.out, s);
}

// Per depthwise layer: register strips or a shared-memory tile (256- or 128-thread blocks),
// whichever is fastest here.
void InferenceSession::Impl::tune_depthwise() {
    using kernels::DepthwiseSchedule;
    cudaStream_t s = ctx->stream();
    for (auto& dp : depthwise) {
        DepthwiseLayer& d = *dp;
        const Step& step = steps[d.step];
        d.schedule = DepthwiseSchedule::RegisterStrips;
        step.launch(s); // records the arguments
        float best = std::numeric_limits<float>::infinity();
        DepthwiseSchedule chosen = DepthwiseSchedule::RegisterStrips;
        for (DepthwiseSchedule c : {DepthwiseSchedule::RegisterStrips, DepthwiseSchedule::SharedTile,
                                    DepthwiseSchedule::SharedTileSmall}) {
            if (!kernels::depthwise_schedule_supported(d.args, precision, c)) continue;
            d.schedule = c;
            const float ms = cuda::time_launches(s, [&] { step.launch(s); });
            if (ms < best) {
                best = ms;
                chosen = c;
            }
        }
        d.schedule = chosen;
        steps[d.step].kernel = chosen == DepthwiseSchedule::SharedTile        ? "depthwise-tile"
                               : chosen == DepthwiseSchedule::SharedTileSmall ? "depthwise-tile128"
                                                                              : "depthwise-strips";
    }
}

// Per expand + depthwise pair with a candidate (add_depthwise): the fused tensor-core kernel or
// the unfused steps with the GEMM and depthwise choices already made, whichever is faster here.
// The fused kernel takes the first step's place and the others launch nothing (the expand
// output keeps its arena space: the arena was planned before this choice).
void InferenceSession::Impl::tune_fused_mbconv() {
    cudaStream_t s = ctx->stream();
    for (FusedCandidate& fc : fused_candidates) {
        const float unfused_ms = cuda::time_launches(s, [&] {
            for (size_t i = fc.first_step; i < fc.end_step; ++i) steps[i].launch(s);
        });
        const float fused_ms = cuda::time_launches(s, [&] { fc.launch(s); });
        if (!(fused_ms < unfused_ms)) continue;
        steps[fc.first_step] = {fc.name, "fused-mbconv-tc", std::move(fc.launch)};
        for (size_t i = fc.first_step + 1; i < fc.end_step; ++i) {
            steps[i].kernel = "in " + fc.name;
            steps[i].launch = [](cudaStream_t) {};
        }
    }
    fused_candidates.clear();
}

// ---- cuDNN candidates (stem and depthwise) ----

namespace {

// y [rows, C] = act(x + bias[c]): batch norm's apply pass with identity statistics (mean 0,
// invstd 1, gamma 1), the bias and activation cuDNN's grouped convolution cannot fuse.
void launch_bias_activation(const void* x, const float* bias, const float* zeros, const float* ones, void* y,
                            int64_t rows, int channels, Act act, Precision precision, cudaStream_t s) {
    kernels::BatchNormApplyArgs b;
    b.x = x;
    b.mean = zeros;
    b.invstd = ones;
    b.gamma = ones;
    b.beta = bias;
    b.y = y;
    b.rows = rows;
    b.channels = channels;
    b.act = act;
    kernels::launch_batchnorm_apply(b, precision, s);
}

size_t align256(size_t bytes) {
    return (bytes + 255) / 256 * 256;
}

} // namespace

size_t InferenceSession::Impl::depthwise_cudnn_scratch_bytes(const kernels::DepthwiseArgs& a) const {
    return size_t(a.batch) * a.out_height * a.out_width * a.channels * kernels::storage_size(precision);
}

// The convolution's output, then (fp16 / bf16) the input cast from the user's fp32.
size_t InferenceSession::Impl::stem_cudnn_scratch_bytes() const {
    const kernels::StemConvArgs& a = stem.args;
    const size_t es = kernels::storage_size(precision);
    const size_t out = align256(size_t(a.batch) * a.out_height * a.out_width * a.out_channels * es);
    const size_t cast =
        precision == Precision::FP32 ? 0 : size_t(a.batch) * a.in_channels * a.height * a.width * es;
    return out + cast;
}

void InferenceSession::Impl::ensure_cudnn_scratch(size_t bytes) {
    if (cudnn_scratch.size() >= bytes) return;
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(ctx->stream())); // the old scratch may be in use
    cudnn_scratch = cuda::DeviceBuffer(bytes, "cuDNN scratch");
}

// [N, H, W, C] -> cuDNN grouped conv -> scratch -> bias + activation -> output [N, Ho, Wo, C],
// then the squeeze sums (overwritten: the excite leaves them zero, so this equals the
// hand-written kernel's +=). A vendor GEMM's expand activation (CublasLtActInNext) is applied
// in place first: the expand output has no other reader.
void InferenceSession::Impl::run_depthwise_cudnn(const DepthwiseLayer& d, const kernels::DepthwiseArgs& a,
                                                 cudaStream_t s) {
    EFFNET_CHECK(!a.residual && !a.input_scale,
                 "InferenceSession: cuDNN depthwise has no residual / input affine");
    if (a.input_act != Act::None)
        kernels::launch_activation_forward(a.input, const_cast<void*>(a.input),
                                           int64_t(a.batch) * a.height * a.width * a.channels, a.input_act,
                                           precision, s);
    d.cudnn->run({a.input, weight(d.cudnn_w_off), cudnn_scratch.data()}, s);
    const int64_t pixels = int64_t(a.out_height) * a.out_width;
    launch_bias_activation(cudnn_scratch.data(), a.bias, weight_f32(cudnn_zero_off),
                           weight_f32(cudnn_unit_off), a.output, a.batch * pixels, a.channels, a.act,
                           precision, s);
    if (a.pooled_sum)
        kernels::launch_spatial_sum(a.output, nullptr, a.pooled_sum, a.batch, pixels, a.channels, 1.0f,
                                    precision, s);
}

// NCHW fp32 input -> [cast to the storage precision] -> cuDNN conv -> scratch -> bias +
// activation -> output [N, Ho, Wo, Cout].
void InferenceSession::Impl::run_stem_cudnn(const kernels::StemConvArgs& a, cudaStream_t s) {
    char* scratch = static_cast<char*>(cudnn_scratch.data());
    const void* x = a.input;
    if (precision != Precision::FP32) {
        void* cast = scratch + align256(size_t(a.batch) * a.out_height * a.out_width * a.out_channels *
                                        kernels::storage_size(precision));
        kernels::launch_cast_from_f32(a.input, cast, int64_t(a.batch) * a.in_channels * a.height * a.width,
                                      precision, s);
        x = cast;
    }
    stem.cudnn->run({x, weight(stem.cudnn_w_off), scratch}, s);
    launch_bias_activation(scratch, a.bias, weight_f32(cudnn_zero_off), weight_f32(cudnn_unit_off), a.output,
                           int64_t(a.batch) * a.out_height * a.out_width, a.out_channels, a.act, precision,
                           s);
}

namespace {

// Puts `conv` in `slot` (the step then runs cuDNN) and keeps it when forced (after one checked
// run) or when `launch` runs faster with it than without; otherwise leaves `slot` empty.
template <typename Launch>
bool keep_cudnn(std::unique_ptr<cuda::CudnnConv>& slot, std::unique_ptr<cuda::CudnnConv> conv,
                const Launch& launch, bool forced, cudaStream_t s) {
    const float hand_ms = forced ? 0.0f : cuda::time_launches(s, [&] { launch(s); });
    slot = std::move(conv);
    if (forced) {
        launch(s);
        EFFNET_CUDA_CHECK(cudaStreamSynchronize(s));
        return true;
    }
    if (cuda::time_launches(s, [&] { launch(s); }) < hand_ms) return true;
    slot.reset();
    return false;
}

} // namespace

// cuDNN for one depthwise layer: kept where it is faster than the schedule tune_depthwise chose
// (every pass it needs timed), or wherever it runs when forced. Any cuDNN failure (an
// unsupported shape, CUDNN_STATUS_NOT_SUPPORTED, no algorithm) leaves the hand-written kernel.
bool InferenceSession::Impl::try_cudnn_depthwise(DepthwiseLayer& d, void* workspace) {
    cudaStream_t s = ctx->stream();
    const Step& step = steps[d.step];
    d.cudnn.reset();
    step.launch(s); // records the arguments
    const kernels::DepthwiseArgs a = d.args;
    if (a.residual || a.input_scale) return false;
    cuda::CudnnConvShape shape;
    shape.batch = a.batch;
    shape.in_channels = shape.out_channels = shape.groups = a.channels;
    shape.height = a.height;
    shape.width = a.width;
    shape.out_height = a.out_height;
    shape.out_width = a.out_width;
    shape.kernel = a.kernel;
    shape.stride = a.stride;
    shape.pad_top = a.pad_top;
    shape.pad_left = a.pad_left;
    shape.precision = precision;
    shape.allow_tf32 = options.allow_tf32;
    const bool forced = options.cudnn == CudnnCandidate::Force;
    try {
        ensure_cudnn_scratch(depthwise_cudnn_scratch_bytes(a));
        auto conv = std::make_unique<cuda::CudnnConv>(
            ctx->cudnn(), shape, cuda::CudnnConvBuffers{a.input, weight(d.cudnn_w_off), cudnn_scratch.data()},
            workspace, kLtWorkspaceBytes, s);
        if (!keep_cudnn(d.cudnn, std::move(conv), step.launch, forced, s)) return false;
    } catch (const Error&) {
        d.cudnn.reset();
        (void)cudaGetLastError();
        return false;
    }
    steps[d.step].kernel = "cudnn:" + d.cudnn->algo_name() + "+bias-act" + (a.pooled_sum ? "+squeeze" : "");
    return true;
}

// The same for the stem (cuDNN reads the NCHW input; fp16 / bf16 cast it first).
bool InferenceSession::Impl::try_cudnn_stem(void* workspace) {
    cudaStream_t s = ctx->stream();
    const Step& step = steps[stem.step];
    stem.cudnn.reset();
    step.launch(s); // records the arguments
    const kernels::StemConvArgs& a = stem.args;
    cuda::CudnnConvShape shape;
    shape.batch = a.batch;
    shape.in_channels = a.in_channels;
    shape.height = a.height;
    shape.width = a.width;
    shape.out_channels = a.out_channels;
    shape.out_height = a.out_height;
    shape.out_width = a.out_width;
    shape.kernel = a.kernel;
    shape.stride = a.stride;
    shape.pad_top = a.pad_top;
    shape.pad_left = a.pad_left;
    shape.input_nchw = true;
    shape.precision = precision;
    shape.allow_tf32 = options.allow_tf32;
    const bool forced = options.cudnn == CudnnCandidate::Force;
    try {
        ensure_cudnn_scratch(stem_cudnn_scratch_bytes());
        char* scratch = static_cast<char*>(cudnn_scratch.data());
        const void* probe_x = precision == Precision::FP32
                                  ? static_cast<const void*>(a.input)
                                  : scratch + align256(size_t(a.batch) * a.out_height * a.out_width *
                                                       a.out_channels * kernels::storage_size(precision));
        auto conv = std::make_unique<cuda::CudnnConv>(
            ctx->cudnn(), shape, cuda::CudnnConvBuffers{probe_x, weight(stem.cudnn_w_off), scratch},
            workspace, kLtWorkspaceBytes, s);
        if (!keep_cudnn(stem.cudnn, std::move(conv), step.launch, forced, s)) return false;
    } catch (const Error&) {
        stem.cudnn.reset();
        (void)cudaGetLastError();
        return false;
    }
    steps[stem.step].kernel = "cudnn:" + stem.cudnn->algo_name() + "+bias-act";
    return true;
}

// cuDNN against the hand-written stem and depthwise kernels (SessionOptions::cudnn), then the
// shared scratch cut to what the layers that kept cuDNN need (none: freed).
void InferenceSession::Impl::tune_cudnn() {
    if (!cudnn_candidates || steps.empty()) return;
    void* workspace = ctx->workspace(kLtWorkspaceBytes); // the size cuBLASLt asks for: no reallocation
    try_cudnn_stem(workspace);
    for (auto& dp : depthwise) try_cudnn_depthwise(*dp, workspace);
    size_t need = stem.cudnn ? stem_cudnn_scratch_bytes() : 0;
    for (auto& dp : depthwise)
        if (dp->cudnn) need = std::max(need, depthwise_cudnn_scratch_bytes(dp->args));
    if (need < cudnn_scratch.size()) {
        EFFNET_CUDA_CHECK(cudaStreamSynchronize(ctx->stream()));
        cudnn_scratch = need > 0 ? cuda::DeviceBuffer(need, "cuDNN scratch") : cuda::DeviceBuffer();
    }
}

} // namespace effnet
