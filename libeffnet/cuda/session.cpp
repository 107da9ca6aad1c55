// InferenceSession: builds the plan once (BN folding, weight upload, arena by liveness, CUDA
// graph), then run() copies the input in, replays, and copies the logits out.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "kernels/activation.cuh"
#include "kernels/channel_gate.cuh"
#include "kernels/depthwise_conv.cuh"
#include "kernels/fused_mbconv.cuh"
#include "kernels/pointwise_conv.cuh"
#include "kernels/pointwise_conv_small_k.cuh"
#include "kernels/pool_classifier.cuh"
#include "kernels/squeeze_excite.cuh"
#include "kernels/stem_conv.cuh"
#include "libeffnet/cuda/arena_plan.hpp"
#include "libeffnet/cuda/context.hpp"
#include "libeffnet/cuda/folded_weights.hpp"
#include "libeffnet/cuda/lt_matmul.hpp"
#include "libeffnet/cuda/time_launches.hpp"

namespace effnet {
namespace {

using kernels::Act;

constexpr int kMaxSide = 2048;   // keeps every grid dimension inside its limit
constexpr int kMaxBatch = 65535; // grid.z of the depthwise kernel
// cuBLASLt workspace: enough for its split-K algorithms on these skinny GEMMs, small next to
// the arena.
constexpr size_t kLtWorkspaceBytes = size_t(8) << 20;

// Host staging for all weights: one upload, 256-byte aligned entries.
class WeightPack {
public:
    size_t add(const std::vector<uint8_t>& bytes) {
        const size_t offset = (bytes_.size() + 255) / 256 * 256;
        bytes_.resize(offset + bytes.size());
        if (!bytes.empty()) std::memcpy(bytes_.data() + offset, bytes.data(), bytes.size());
        return offset;
    }
    size_t add_f32(const std::vector<float>& v) { return add(cuda::to_storage(v, Precision::FP32)); }
    const std::vector<uint8_t>& bytes() const { return bytes_; }

private:
    std::vector<uint8_t> bytes_;
};

void check_shape(const Tensor& t, const Shape& expected, const std::string& name) {
    EFFNET_CHECK(t.shape == expected, "InferenceSession: parameter " + name + " has shape " +
                                          shape_str(t.shape) + ", expected " + shape_str(expected));
}

cuda::LtMatmulBuffers lt_buffers(const kernels::PointwiseArgs& a, const void* lt_bias) {
    cuda::LtMatmulBuffers b;
    b.x = a.input;
    b.w = a.weight;
    b.bias = lt_bias;
    b.residual = a.residual;
    b.y = a.output;
    return b;
}

} // namespace

struct InferenceSession::Impl {
    int batch = 0, height = 0, width = 0, num_classes = 0;
    Precision precision = Precision::FP32;
    SessionOptions options;
    std::unique_ptr<cuda::Context> ctx;
    cuda::DeviceBuffer weights;
    cuda::DeviceBuffer arena;
    cuda::ArenaPlan plan;
    struct Step {
        std::string name;
        std::string kernel; // what runs it (reported by profile_steps)
        std::function<void(cudaStream_t)> launch;
    };
    std::vector<Step> steps;
    // How a 1x1 convolution runs (tune_gemms chooses).
    enum class GemmChoice {
        Handwritten,       // effnet's GEMM, everything fused
        SmallK,            // effnet's one-row-per-thread kernel for K <= 64 (expand convs)
        CublasLt,          // [gate pass] + cuBLASLt (bias, residual) + [activation pass]
        CublasLtActInNext, // cuBLASLt, the activation applied by the depthwise conv as it loads
    };
    // A 1x1 convolution and the GEMM chosen for it.
    struct PointwiseLayer {
        size_t step = 0;             // index into steps
        kernels::PointwiseArgs args; // shape and activation; pointers set per launch
        size_t w_off = 0, b_off = 0; // weight (storage), bias (fp32)
        size_t lt_b_off = 0;         // bias in storage precision (cuBLASLt's epilogue)
        int in_id = -1, gate_id = -1, residual_id = -1, out_id = -1;
        size_t in_offset = 0;               // bytes into the input tensor (a chunk of the batch)
        int consumer_step = -1;             // the depthwise step reading the output (expand convs)
        std::unique_ptr<cuda::LtMatmul> lt; // built by tune_gemms unless Handwritten
        GemmChoice choice = GemmChoice::Handwritten;
    };
    std::vector<std::unique_ptr<PointwiseLayer>> pointwise;
    // A depthwise convolution and the schedule chosen for it (tune_depthwise).
    struct DepthwiseLayer {
        size_t step = 0;
        kernels::DepthwiseArgs args; // as last launched
        kernels::DepthwiseSchedule schedule = kernels::DepthwiseSchedule::RegisterStrips;
    };
    std::vector<std::unique_ptr<DepthwiseLayer>> depthwise;
    // The classifier (fp32 in every precision): effnet's linear kernel or a cuBLASLt fp32 GEMM.
    struct Classifier {
        size_t step = 0;
        int in = 0, out = 0;
        size_t w_off = 0, b_off = 0;
        int in_id = -1, out_id = -1;
        std::unique_ptr<cuda::LtMatmul> lt; // set when it is the faster
    } classifier;
    int input_id = -1, logits_id = -1;
    size_t input_bytes = 0, logits_bytes = 0;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t graph_exec = nullptr;
    size_t measured_bytes = 0; // cudaMemGetInfo delta across construction
    bool sync_debug = false;   // EFFNET_CUDA_SYNC_DEBUG=1: synchronise and check after every step

    ~Impl() {
        if (graph_exec) cudaGraphExecDestroy(graph_exec);
        if (graph) cudaGraphDestroy(graph);
    }

    char* tensor(int id) const { return static_cast<char*>(arena.data()) + plan.offset(id); }
    // The squeeze sums: one region per squeeze-excite block in `squeeze` (not in the arena, so
    // they keep their zeros between forwards). add_squeeze returns a region's offset.
    cuda::DeviceBuffer squeeze;
    size_t squeeze_bytes = 0;
    int64_t add_squeeze(size_t bytes) {
        const size_t offset = (squeeze_bytes + 255) / 256 * 256;
        squeeze_bytes = offset + bytes;
        return int64_t(offset);
    }
    float* squeeze_sum(int64_t offset) const {
        return offset < 0 ? nullptr : reinterpret_cast<float*>(static_cast<char*>(squeeze.data()) + offset);
    }
    void zero_squeeze(cudaStream_t s) const {
        if (squeeze.size() > 0) EFFNET_CUDA_CHECK(cudaMemsetAsync(squeeze.data(), 0, squeeze.size(), s));
    }
    const char* weight(size_t offset) const { return static_cast<const char*>(weights.data()) + offset; }
    const float* weight_f32(size_t offset) const { return reinterpret_cast<const float*>(weight(offset)); }

    void build(const Model& model);
    void launch_pointwise(PointwiseLayer& l, GemmChoice choice, cudaStream_t stream);
    void tune_gemms();
    void tune_depthwise();
    void launch_classifier(bool use_lt, cudaStream_t stream);
    cuda::LtMatmulBuffers classifier_buffers() const {
        cuda::LtMatmulBuffers b;
        b.x = tensor(classifier.in_id);
        b.w = weight(classifier.w_off);
        b.bias = weight(classifier.b_off);
        b.y = tensor(classifier.out_id);
        return b;
    }
    void run_steps(cudaStream_t stream) {
        for (const Step& s : steps) {
            s.launch(stream);
            if (sync_debug) {
                const cudaError_t err = cudaStreamSynchronize(stream);
                if (err != cudaSuccess)
                    throw Error("InferenceSession: step '" + s.name + "' failed: " + cudaGetErrorString(err));
            }
        }
    }
    void capture_graph();
};

void InferenceSession::Impl::build(const Model& model) {
    const ModelConfig& cfg = model.config;
    const size_t es = kernels::storage_size(precision);
    const int64_t N = batch;
    WeightPack pack;
    int step = 0; // index of the step being planned

    // --- input and stem ------------------------------------------------------------------
    input_bytes = size_t(N) * cfg.in_channels * height * width * sizeof(float);
    input_id = plan.add("input", input_bytes, 0, 0);

    const cuda::FoldedConv stem = cuda::fold_batchnorm(model, "stem");
    EFFNET_CHECK(stem.shape.size() == 4 && stem.shape[0] == cfg.stem_channels &&
                     stem.shape[1] == cfg.in_channels && stem.shape[2] == stem.shape[3],
                 "InferenceSession: stem.conv.weight has shape " + shape_str(stem.shape));
    const int stem_k = int(stem.shape[2]);
    int pt, pb, pl, pr;
    conv_padding(height, stem_k, 2, cfg.padding, pt, pb);
    conv_padding(width, stem_k, 2, cfg.padding, pl, pr);
    int h = conv_output_size(height, stem_k, 2, cfg.padding);
    int w = conv_output_size(width, stem_k, 2, cfg.padding);
    EFFNET_CHECK(h >= 1 && w >= 1, "InferenceSession: input " + std::to_string(height) + "x" +
                                       std::to_string(width) + " too small for the stem");
    int c = cfg.stem_channels;
    int cur = plan.add("stem", size_t(N) * h * w * c * es, step, step);
    {
        kernels::StemConvArgs a;
        a.batch = batch;
        a.in_channels = cfg.in_channels;
        a.height = height;
        a.width = width;
        a.out_channels = c;
        a.out_height = h;
        a.out_width = w;
        a.kernel = stem_k;
        a.stride = 2;
        a.pad_top = pt;
        a.pad_left = pl;
        a.act = kernels::to_act(cfg.activation);
        const size_t w_off = pack.add_f32(cuda::stem_layout(stem)), b_off = pack.add_f32(stem.bias);
        const int in_id = input_id, out_id = cur;
        steps.push_back({"stem", "stem_conv", [this, a, w_off, b_off, in_id, out_id](cudaStream_t s) mutable {
                             a.input = reinterpret_cast<const float*>(tensor(in_id));
                             a.weight = weight_f32(w_off);
                             a.bias = weight_f32(b_off);
                             a.output = tensor(out_id);
                             kernels::launch_stem_conv(a, precision, s);
                         }});
        ++step;
    }

    const Act act = kernels::to_act(cfg.activation);
    // A 1x1 convolution's weights, packed once (a chunked expand conv runs them several times).
    struct PackedConv {
        int out = 0, in = 0;
        size_t w_off = 0, b_off = 0, lt_b_off = 0;
    };
    auto pack_conv = [&](const cuda::FoldedConv& conv) {
        PackedConv pc;
        pc.out = int(conv.shape[0]);
        pc.in = int(conv.shape[1]);
        pc.w_off = pack.add(cuda::to_storage(conv.weight, precision));
        pc.b_off = pack.add_f32(conv.bias);
        pc.lt_b_off = pack.add(cuda::to_storage(conv.bias, precision));
        return pc;
    };
    auto add_pointwise = [&](const std::string& name, const PackedConv& conv, int in_id, int64_t rows,
                             int rows_per_image, int gate_id, int residual_id, Act epilogue_act, int out_id,
                             size_t in_offset = 0) {
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
        ++step;
    };

    // --- MBConv blocks -------------------------------------------------------------------
    for (size_t bi = 0; bi < cfg.blocks.size(); ++bi) {
        const BlockConfig& b = cfg.blocks[bi];
        const std::string p = "blocks." + std::to_string(bi);
        EFFNET_CHECK(b.in_channels == c,
                     "InferenceSession: " + p + " expects " + std::to_string(b.in_channels) +
                         " input channels, the previous layer gives " + std::to_string(c));
        const int block_in = cur;
        const int ce = b.expand_channels;

        int dwp_t, dwp_b, dwp_l, dwp_r;
        conv_padding(h, b.kernel, b.stride, cfg.padding, dwp_t, dwp_b);
        conv_padding(w, b.kernel, b.stride, cfg.padding, dwp_l, dwp_r);
        const int ho = conv_output_size(h, b.kernel, b.stride, cfg.padding);
        const int wo = conv_output_size(w, b.kernel, b.stride, cfg.padding);
        EFFNET_CHECK(ho >= 1 && wo >= 1, "InferenceSession: " + p + " output is empty for this input size");

        cuda::FoldedConv expand;
        if (b.has_expand()) {
            expand = cuda::fold_batchnorm(model, p + ".expand");
            check_shape(model.param(p + ".expand.conv.weight"), {ce, b.in_channels, 1, 1},
                        p + ".expand.conv.weight");
        }
        const cuda::FoldedConv dw = cuda::fold_batchnorm(model, p + ".dw");
        check_shape(model.param(p + ".dw.conv.weight"), {ce, 1, b.kernel, b.kernel}, p + ".dw.conv.weight");
        const size_t dw_w = pack.add_f32(cuda::depthwise_layout(dw)), dw_b = pack.add_f32(dw.bias);

        kernels::DepthwiseArgs dwa;
        dwa.batch = batch;
        dwa.height = h;
        dwa.width = w;
        dwa.channels = ce;
        dwa.kernel = b.kernel;
        dwa.stride = b.stride;
        dwa.pad_top = dwp_t;
        dwa.pad_left = dwp_l;
        dwa.out_height = ho;
        dwa.out_width = wo;
        dwa.act = act;

        kernels::FusedExpandDepthwiseArgs fa;
        fa.batch = batch;
        fa.height = h;
        fa.width = w;
        fa.in_channels = b.in_channels;
        fa.expand_channels = ce;
        fa.kernel = b.kernel;
        fa.stride = b.stride;
        fa.pad_top = dwp_t;
        fa.pad_left = dwp_l;
        fa.out_height = ho;
        fa.out_width = wo;
        fa.act = act;
        const bool fuse =
            b.has_expand() && options.fused_mbconv && kernels::fused_expand_depthwise_supported(fa);

        // The squeeze's sums live outside the arena, zero between forwards: the depthwise conv
        // adds into them, the excite reads and re-zeroes them (no memset launches).
        const int64_t pooled_off = b.has_se() ? add_squeeze(size_t(N) * ce * sizeof(float)) : -1;
        const int dw_out = plan.add(p + ".dw", size_t(N) * ho * wo * ce * es, step, step);
        if (fuse) {
            const size_t e_w = pack.add(cuda::to_storage(expand.weight, precision)),
                         e_b = pack.add_f32(expand.bias);
            plan.touch(block_in, step);
            plan.touch(dw_out, step);
            steps.push_back(
                {p + ".fused_expand_dw", "fused_expand_depthwise",
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
            ++step;
        } else {
            // Memory: a stride-2 block's expand output is 4x its depthwise output. Such blocks
            // run expand + depthwise in chunks of the batch through a chunk-sized expand buffer
            // (as many chunks as the ratio, each of at least min_chunk_images images), so the
            // largest tensor of the network is never whole.
            int chunks = 1;
            if (b.has_expand()) {
                const int ratio = int((int64_t(h) * w + int64_t(ho) * wo - 1) / (int64_t(ho) * wo));
                for (int c = ratio; c >= 2; --c)
                    if (options.min_chunk_images > 0 && N % c == 0 && N / c >= options.min_chunk_images) {
                        chunks = c;
                        break;
                    }
            }
            const int64_t chunk_n = N / chunks;
            int dw_in = block_in;
            PackedConv expand_conv;
            if (b.has_expand()) {
                expand_conv = pack_conv(expand);
                dw_in = plan.add(p + ".expand", size_t(chunk_n) * h * w * ce * es, step, step);
            }
            for (int k = 0; k < chunks; ++k) {
                const std::string suffix = chunks > 1 ? "[" + std::to_string(k) + "]" : "";
                PointwiseLayer* producer = nullptr; // the expand conv, whose activation may move here
                if (b.has_expand()) {
                    add_pointwise(p + ".expand" + suffix, expand_conv, block_in, chunk_n * h * w, h * w, -1,
                                  -1, act, dw_in, size_t(k) * chunk_n * h * w * b.in_channels * es);
                    producer = pointwise.back().get();
                    producer->consumer_step = int(steps.size());
                }
                plan.touch(dw_in, step);
                plan.touch(dw_out, step);
                auto dl = std::make_unique<DepthwiseLayer>();
                dl->step = steps.size();
                DepthwiseLayer* dlp = dl.get();
                depthwise.push_back(std::move(dl));
                kernels::DepthwiseArgs dwk = dwa;
                dwk.batch = int(chunk_n);
                const size_t out_offset = size_t(k) * chunk_n * ho * wo * ce * es;
                const int64_t pool_off =
                    pooled_off < 0 ? -1 : pooled_off + k * chunk_n * ce * int64_t(sizeof(float));
                steps.push_back({p + ".dw" + suffix, "depthwise",
                                 [this, dwk, dw_w, dw_b, dw_in, dw_out, out_offset, pool_off, producer, act,
                                  dlp](cudaStream_t s) mutable {
                                     dwk.input = tensor(dw_in);
                                     dwk.input_act =
                                         producer && producer->choice == GemmChoice::CublasLtActInNext
                                             ? act
                                             : Act::None;
                                     dwk.weight = weight_f32(dw_w);
                                     dwk.bias = weight_f32(dw_b);
                                     dwk.output = tensor(dw_out) + out_offset;
                                     dwk.pooled_sum = squeeze_sum(pool_off);
                                     dwk.schedule = dlp->schedule;
                                     dlp->args = dwk;
                                     kernels::launch_depthwise_conv(dwk, precision, s);
                                 }});
                ++step;
            }
        }

        int gate_id = -1;
        if (b.has_se()) {
            const int S = b.se_channels;
            const Tensor& w1 = model.param(p + ".se.reduce.weight");
            const Tensor& b1 = model.param(p + ".se.reduce.bias");
            const Tensor& w2 = model.param(p + ".se.expand.weight");
            const Tensor& b2 = model.param(p + ".se.expand.bias");
            check_shape(w1, {S, ce, 1, 1}, p + ".se.reduce.weight");
            check_shape(b1, {S}, p + ".se.reduce.bias");
            check_shape(w2, {ce, S, 1, 1}, p + ".se.expand.weight");
            check_shape(b2, {ce}, p + ".se.expand.bias");
            const size_t w1_off = pack.add_f32(w1.data), b1_off = pack.add_f32(b1.data);
            const size_t w2_off = pack.add_f32(cuda::transpose(w2.data, ce, S)),
                         b2_off = pack.add_f32(b2.data);
            gate_id = plan.add(p + ".se.gate", size_t(N) * ce * sizeof(float), step, step);
            kernels::ExciteArgs ea;
            ea.inv_count = 1.0f / float(ho * wo);
            ea.batch = batch;
            ea.channels = ce;
            ea.reduced = S;
            ea.act = act;
            steps.push_back(
                {p + ".se.excite", "excite",
                 [this, ea, w1_off, b1_off, w2_off, b2_off, pooled_off, gate_id](cudaStream_t s) mutable {
                     ea.pooled_sum = squeeze_sum(pooled_off);
                     ea.w_reduce = weight_f32(w1_off);
                     ea.b_reduce = weight_f32(b1_off);
                     ea.w_expand_t = weight_f32(w2_off);
                     ea.b_expand = weight_f32(b2_off);
                     ea.gate = reinterpret_cast<float*>(tensor(gate_id));
                     kernels::launch_excite(ea, s);
                 }});
            ++step;
        }

        const cuda::FoldedConv project = cuda::fold_batchnorm(model, p + ".project");
        check_shape(model.param(p + ".project.conv.weight"), {b.out_channels, ce, 1, 1},
                    p + ".project.conv.weight");
        const int out_id = plan.add(p + ".out", size_t(N) * ho * wo * b.out_channels * es, step, step);
        add_pointwise(p + ".project", pack_conv(project), dw_out, N * ho * wo, ho * wo, gate_id,
                      b.has_residual() ? block_in : -1, Act::None, out_id);
        cur = out_id;
        h = ho;
        w = wo;
        c = b.out_channels;
    }

    // --- head, pool, classifier ------------------------------------------------------------
    const cuda::FoldedConv head = cuda::fold_batchnorm(model, "head");
    check_shape(model.param("head.conv.weight"), {cfg.head_channels, c, 1, 1}, "head.conv.weight");
    const int head_id = plan.add("head", size_t(N) * h * w * cfg.head_channels * es, step, step);
    add_pointwise("head", pack_conv(head), cur, N * h * w, h * w, -1, -1, act, head_id);

    const int pooled_id = plan.add("pool", size_t(N) * cfg.head_channels * sizeof(float), step, step);
    plan.touch(head_id, step);
    {
        const int pixels = h * w, channels = cfg.head_channels;
        steps.push_back(
            {"pool", "global_avg_pool", [this, head_id, pooled_id, pixels, channels](cudaStream_t s) {
                 kernels::launch_global_avg_pool(tensor(head_id), reinterpret_cast<float*>(tensor(pooled_id)),
                                                 batch, pixels, channels, precision, s);
             }});
        ++step;
    }

    const Tensor& cw = model.param("classifier.weight");
    const Tensor& cb = model.param("classifier.bias");
    check_shape(cw, {cfg.num_classes, cfg.head_channels}, "classifier.weight");
    check_shape(cb, {cfg.num_classes}, "classifier.bias");
    const size_t cw_off = pack.add_f32(cw.data), cb_off = pack.add_f32(cb.data);
    logits_bytes = size_t(N) * cfg.num_classes * sizeof(float);
    logits_id = plan.add("logits", logits_bytes, step, step);
    plan.touch(pooled_id, step);
    classifier.step = steps.size();
    classifier.in = cfg.head_channels;
    classifier.out = cfg.num_classes;
    classifier.w_off = cw_off;
    classifier.b_off = cb_off;
    classifier.in_id = pooled_id;
    classifier.out_id = logits_id;
    steps.push_back(
        {"classifier", "linear", [this](cudaStream_t s) { launch_classifier(classifier.lt != nullptr, s); }});
    ++step;

    // --- memory ----------------------------------------------------------------------------
    weights = cuda::DeviceBuffer(pack.bytes().size(), "weights");
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(weights.data(), pack.bytes().data(), pack.bytes().size(),
                                      cudaMemcpyHostToDevice, ctx->stream()));
    const size_t arena_bytes = plan.plan();
    arena = cuda::DeviceBuffer(arena_bytes, "activation arena");
    squeeze = cuda::DeviceBuffer(squeeze_bytes, "squeeze sums");
    zero_squeeze(ctx->stream());
    // Defined contents for the warm-up run (the input buffer is not yet written).
    EFFNET_CUDA_CHECK(cudaMemsetAsync(arena.data(), 0, arena.size(), ctx->stream()));
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(ctx->stream()));
    if (options.autotune) tune_depthwise(); // first: expand GEMMs are timed with their depthwise conv
    tune_gemms();
    // Tuning ran layers on whatever the arena held, and depthwise convs without their excite:
    // start the warm-up from zeros again.
    EFFNET_CUDA_CHECK(cudaMemsetAsync(arena.data(), 0, arena.size(), ctx->stream()));
    zero_squeeze(ctx->stream());
    EFFNET_CUDA_CHECK(cudaStreamSynchronize(ctx->stream()));
}

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

void InferenceSession::run(const float* input, float* logits, bool device_pointers) {
    EFFNET_CHECK(impl_, "InferenceSession::run on a moved-from session");
    EFFNET_CHECK(input && logits, "InferenceSession::run: null input or logits pointer");
    Impl& m = *impl_;
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
