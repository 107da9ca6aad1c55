#pragma once
// The GPU trainer's graph: walks the network plan to allocate every activation buffer, runs
// the forward (with the loss) and the backward (the plan in reverse), writing into the
// parameter store's gradients.
//
// Layout: activations NHWC in the storage precision (fp32, or fp16/bf16 under AMP), viewed as
// [rows = N*H*W, C].
//
// What the forward keeps for the backward: every conv's output z (the BN input) and the batch
// statistics; of the BN outputs only the stem's and each block's (the next block's input and
// residual). The rest is recomputed from z, which costs less than storing it:
//   - the expand BN + activation is applied by the depthwise kernels as they load their input
//     (the per-channel scale and shift the BN statistics pass writes), in the forward and in the
//     weight gradient, so the largest tensor of each block is never written at all;
//   - the depthwise BN output and the squeeze-excite output (the project GEMM's input) live in
//     scratch buffers in the forward and are recomputed from z in the backward.
// Squeeze-excite keeps its small fp32 tensors. The backward runs through three scratch buffers
// of the largest activation size and one of the largest gated (SE) output.
#include <functional>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "effnet/gpu_training.hpp"
#include "effnet/network_plan.hpp"
#include "kernels/depthwise_conv_train.cuh"
#include "kernels/squeeze_excite_train.cuh"
#include "kernels/types.cuh"
#include "libeffnet/cuda/device_buffer.hpp"
#include "libeffnet/cuda/param_store.hpp"
#include "libeffnet/cuda/train_blas.hpp"

namespace effnet::cuda {

// A conv -> BN [-> act] layer's buffers.
struct BnUnit {
    int64_t rows = 0; // N * Ho * Wo
    int channels = 0;
    DeviceBuffer z;            // [rows, C] conv output = BN input
    DeviceBuffer y;            // [rows, C] BN (+act) output, when kept
    DeviceBuffer mean, invstd; // [C] fp32
    DeviceBuffer scale, shift; // [C] fp32 gamma * invstd, beta - mean * scale (when a consumer
                               // applies the BN as it loads)
};

// What the graph holds for one layer of the plan.
struct TrainLayer {
    BnUnit bn;                        // conv layers
    DeviceBuffer taps, flipped_taps;  // depthwise: [k*k, C] the weights as the kernels read them
    kernels::DepthwiseShape dw_shape; // depthwise
    DeviceBuffer squeezed, reduced_pre, reduced_out, gate; // squeeze-excite, fp32
    bool masked = false;                                   // stochastic depth / dropout applied in training
    DeviceBuffer mask;                                     // project: [N]; dropout: [N, C]; 0 or 1/(1-p)
    std::vector<float> host_mask; // kept: the mask's upload reads it after upload_masks returns
    DeviceBuffer output;          // pool, and dropout when masked: [N, C] fp32
};

class TrainGraph {
public:
    TrainGraph(const NetworkPlan& plan, Precision storage, const GpuTrainOptions& options, ParamStore& params,
               cudaStream_t stream);

    // Dropout and stochastic-depth masks for a step seeded `seed`, as the CPU engine draws them.
    void upload_masks(uint64_t seed);
    // input [N, C, H, W] fp32 on the device; targets [N] int32 (targets()) set before. Writes
    // the logits, each sample's loss and dlogits (times loss_scale).
    void forward(const float* input, float loss_scale);
    void backward(); // gradients into the parameter store (overwritten)
    // The same, calling after_layer(i) once layer i's backward is enqueued (its parameter
    // gradients are then complete on the stream): data-parallel training starts each gradient
    // bucket's all-reduce there.
    void backward(const std::function<void(size_t)>& after_layer);

    int32_t* targets() { return targets_.as<int32_t>(); }
    const float* sample_loss() const { return sample_loss_.as<float>(); }
    const float* logits() const { return logits_.as<float>(); }
    size_t bytes() const { return bytes_; } // device memory it holds, the GEMMs' workspace included

private:
    // A layer's output as the next layer reads it: a buffer, with the BN + activation a
    // depthwise conv applies as it loads (the expand conv's output is never written whole).
    struct Value {
        const void* data = nullptr;
        kernels::DepthwiseInputTransform transform;

        Value() = default;
        Value(const void* d, const kernels::DepthwiseInputTransform& t = {}) : data(d), transform(t) {}
    };

    DeviceBuffer alloc(size_t bytes, const std::string& what);
    DeviceBuffer alloc_activation(const FeatureShape& shape, const std::string& what);
    void note_activation(const FeatureShape& shape);
    void plan_bn(const Layer& l, BnUnit& u, bool keep_output, bool load_transform);
    void plan_layer(const Layer& l, TrainLayer& t);

    // Forward.
    Value forward_layer(const Layer& l, TrainLayer& t, const Value& in, const float* input);
    void bn_stats(const Layer& l, BnUnit& u);
    void bn_apply(const Layer& l, BnUnit& u, kernels::Act act, const void* residual, void* out,
                  const float* sample_scale = nullptr, int64_t rows_per_image = 1);
    kernels::SqueezeExciteTrainArgs se_args(const Layer& l, TrainLayer& t, const void* x);
    void* forward_scratch(const Value& in);     // a scratch buffer that is not `in`
    const void* stored_output(int layer) const; // a layer whose output the forward keeps
    const float* classifier_input() const;

    // Backward: each layer turns the gradient of its output into the gradient of its input.
    struct Grad {
        void* data = nullptr;          // [rows, C] in the storage precision
        const float* pooled = nullptr; // or: [N, C] fp32, broadcast over the pool's pixels

        Grad() = default;
        Grad(void* d, const float* p = nullptr) : data(d), pooled(p) {}
    };
    Grad backward_layer(size_t i, const Grad& dout);
    Grad backward_conv1x1(size_t i, const Grad& dout);
    Grad backward_depthwise(size_t i, const Grad& dout);
    Grad backward_squeeze_excite(size_t i, const Grad& dout);
    void bn_backward(const Layer& l, BnUnit& u, kernels::Act act, const Grad& dy, int64_t rows_per_image,
                     void* dz, const float* dy_sample_scale = nullptr);
    // The input of layer i recomputed into a scratch buffer (project: act(bn(dw.z)) [* gate]).
    void* recompute_input(size_t i);
    // Where the gradient of layer i's input goes: the buffer holding the residual gradient of
    // that output (accumulate), or a free scratch buffer.
    void* input_grad_target(size_t i, bool& accumulate);
    void* acquire_scratch();
    void release_scratch(const void* buffer);

    const NetworkPlan plan_;
    Precision storage_;
    GpuTrainOptions options_;
    ParamStore& params_;
    cudaStream_t stream_;
    size_t elem_; // bytes per stored activation element
    size_t bytes_ = 0;
    std::vector<TrainLayer> layers_; // one per plan layer

    int stem_ld_ = 0, stem_taps_ = 0;
    DeviceBuffer columns_; // [N*Ho*Wo, stem_ld] the stem's im2col
    DeviceBuffer logits_, dlogits_, dpooled_, sample_loss_, targets_;
    DeviceBuffer scratch_[3];
    bool scratch_busy_[3] = {false, false, false};
    DeviceBuffer gated_;     // [rows, E] the largest squeeze-excite output (the backward's recompute)
    DeviceBuffer workspace_; // fp32
    int64_t max_activation_ = 0, max_gated_ = 0;
    size_t workspace_floats_ = 0;
    // Backward bookkeeping: the residual gradient waiting for the layer whose output it is.
    int residual_layer_ = -1;
    void* residual_grad_ = nullptr;
    void* recomputed_ = nullptr; // the depthwise output recomputed for a project, until its SE's backward
    std::unique_ptr<TrainBlas> blas_;
};

} // namespace effnet::cuda
