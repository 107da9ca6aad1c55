#pragma once
// InferenceSession's state, shared by its build (session_build.cpp), its tuning
// (session_tuning.cpp) and its public API (session.cpp). Internal to the library.
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "effnet/network_plan.hpp"
#include "kernels/depthwise_conv.cuh"
#include "kernels/pointwise_conv.cuh"
#include "kernels/stem_conv.cuh"
#include "libeffnet/cuda/arena_plan.hpp"
#include "libeffnet/cuda/context.hpp"
#include "libeffnet/cuda/cudnn_conv.hpp"
#include "libeffnet/cuda/device_buffer.hpp"
#include "libeffnet/cuda/folded_weights.hpp"
#include "libeffnet/cuda/lt_matmul.hpp"

namespace effnet {

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

// A 1x1 convolution's weights, packed once (a chunked expand conv runs them several times).
struct PackedConv {
    int out = 0, in = 0;
    size_t w_off = 0, b_off = 0, lt_b_off = 0;
};

// What a layer's output is in the session: an arena tensor, and for a squeeze-excite output,
// the gate that the next 1x1 convolution applies as it loads (the gated tensor is never written).
struct SessionValue {
    int id = -1;                 // arena tensor
    int gate_id = -1;            // [N, C] fp32 gate to apply, or -1
    int64_t squeeze_offset = -1; // the depthwise conv's per-channel sums for the squeeze, or -1
};

inline cuda::LtMatmulBuffers lt_buffers(const kernels::PointwiseArgs& a, const void* lt_bias) {
    cuda::LtMatmulBuffers b;
    b.x = a.input;
    b.w = a.weight;
    b.bias = lt_bias;
    b.residual = a.residual;
    b.y = a.output;
    return b;
}

struct InferenceSession::Impl {
    int batch = 0, height = 0, width = 0, num_classes = 0;
    // Set while a call enqueues work: the session's one stream and one arena admit one caller.
    std::atomic<bool> in_use{false};
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
        size_t cudnn_w_off = 0;                 // [C, 1, k, k] storage precision (cuDNN's weight)
        std::unique_ptr<cuda::CudnnConv> cudnn; // set when cuDNN runs this layer (tune_cudnn)
    };
    std::vector<std::unique_ptr<DepthwiseLayer>> depthwise;
    // The stem and whether cuDNN runs it (tune_cudnn).
    struct StemLayer {
        size_t step = 0;
        kernels::StemConvArgs args; // as last launched
        size_t cudnn_w_off = 0;     // [Cout, Cin, k, k] storage precision
        std::unique_ptr<cuda::CudnnConv> cudnn;
    } stem;
    // The cuDNN candidates' shared state: the convolution writes into cudnn_scratch, the bias +
    // activation pass (batchnorm_apply with mean 0, invstd 1, gamma 1) writes the layer's
    // output from it. One scratch for all layers: the steps run one at a time on one stream.
    bool cudnn_candidates = false; // options allow cuDNN (set by build)
    int cudnn_max_channels = 0;
    size_t cudnn_unit_off = 0, cudnn_zero_off = 0; // [cudnn_max_channels] fp32 ones / zeros
    cuda::DeviceBuffer cudnn_scratch;
    // An expand + depthwise pair the tensor-core fused kernel (kernels/fused_mbconv_tc.cuh) can
    // also run: tune_fused_mbconv times it against the unfused steps [first_step, end_step) and
    // puts it in their place where it is faster.
    struct FusedCandidate {
        size_t first_step = 0, end_step = 0;
        std::string name; // the fused step's name
        std::function<void(cudaStream_t)> launch;
    };
    std::vector<FusedCandidate> fused_candidates;
    // The classifier (fp32 in every precision): effnet's linear kernel or a cuBLASLt fp32 GEMM.
    struct Classifier {
        size_t step = 0;
        int in = 0, out = 0;
        size_t w_off = 0, b_off = 0;
        int in_id = -1, out_id = -1;
        std::unique_ptr<cuda::LtMatmul> lt; // set when it is the faster
    } classifier;
    int input_id = -1, logits_id = -1; // logits_id: -1 with features_only
    // The requested features and their NCHW float32 copies in the arena (live to the end).
    std::vector<FeatureInfo> features;
    std::vector<int> feature_ids;
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

    // Building (session_build.cpp): one step per layer of the network plan, or per group of
    // layers the session runs as one kernel.
    void build(const Model& model);
    SessionValue add_stem(const Model& model, const Layer& l, WeightPack& pack);
    SessionValue add_depthwise(const Model& model, const Layer* expand, const Layer& dw, bool squeezed,
                               const SessionValue& in, WeightPack& pack);
    SessionValue add_squeeze_excite(const Model& model, const Layer& l, const SessionValue& in,
                                    WeightPack& pack);
    SessionValue add_conv1x1(const Model& model, const Layer& l, const SessionValue& in,
                             const SessionValue* residual, WeightPack& pack);
    SessionValue add_pool(const Layer& l, const SessionValue& in);
    int add_feature_copy(const FeatureInfo& f, const SessionValue& value);
    SessionValue add_classifier(const Model& model, const Layer& l, const SessionValue& in, WeightPack& pack);
    void add_pointwise(const std::string& name, const PackedConv& conv, int in_id, int64_t rows,
                       int rows_per_image, int gate_id, int residual_id, kernels::Act epilogue_act,
                       int out_id, size_t in_offset = 0);
    PackedConv pack_conv(const cuda::FoldedConv& conv, WeightPack& pack) const;
    void allocate(const WeightPack& pack);
    int next_step() const { return int(steps.size()); }

    // Tuning (session_tuning.cpp).
    void launch_pointwise(PointwiseLayer& l, GemmChoice choice, cudaStream_t stream);
    void tune_gemms();
    void tune_depthwise();
    void tune_fused_mbconv();
    void tune_cudnn();
    bool try_cudnn_depthwise(DepthwiseLayer& d, void* workspace);
    bool try_cudnn_stem(void* workspace);
    void ensure_cudnn_scratch(size_t bytes);
    size_t depthwise_cudnn_scratch_bytes(const kernels::DepthwiseArgs& a) const;
    size_t stem_cudnn_scratch_bytes() const;
    void run_depthwise_cudnn(const DepthwiseLayer& d, const kernels::DepthwiseArgs& a, cudaStream_t stream);
    void run_stem_cudnn(const kernels::StemConvArgs& a, cudaStream_t stream);
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

} // namespace effnet
