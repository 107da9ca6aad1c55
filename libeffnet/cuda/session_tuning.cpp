// InferenceSession's per-layer kernel choices: each 1x1 convolution's GEMM and each depthwise
// convolution's schedule, by timing the candidates on this GPU.
#include <limits>
#include <memory>
#include <string>

#include "kernels/channel_gate.cuh"
#include "kernels/activation.cuh"
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

} // namespace effnet
