#pragma once
// The CPU reference engine: the whole network forward (eval and train) and backward.
// Activations are NCHW float32. Written for clarity; threaded with OpenMP.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"
#include "effnet/tensor.hpp"

namespace effnet::cpu {

// Synchronized batch norm (data-parallel training, ForwardOptions::bn_reducer): every train-mode
// batch norm sums its per-channel statistics over all ranks through allreduce_sum (forward: the
// sums and count, then the squared deviations from the global mean; backward: sum dy and
// sum dy * xhat, and count), each rank calling it in the same order with the same n.
class BatchNormReducer {
public:
    virtual ~BatchNormReducer() = default;
    virtual void allreduce_sum(double* data, size_t n) = 0; // in place, over every rank
};

struct ForwardOptions {
    bool train = false;               // batch statistics, dropout, stochastic depth
    bool update_running_stats = true; // train only
    bool dropout = true;              // train only: apply config.dropout and stochastic depth
    uint64_t seed = 0;                // for dropout / stochastic depth masks
    bool record_stages = false;       // fill ForwardResult::stages
    bool find_non_finite = false;     // fill ForwardResult::first_non_finite (a diagnosis: slower)
    // Backbone features to return (indices into feature_info(plan): 0..4 = strides 2..32,
    // strictly increasing; check_feature_indices). Empty: none.
    std::vector<int> features;
    // Stop after the last requested feature's layer: head, pool and classifier never run (nor,
    // in train mode, update their running statistics) and ForwardResult::logits is empty.
    // Needs at least one index in `features`.
    bool features_only = false;
    // Train only: synchronized batch norm through this reducer (null: each process's own batch);
    // the backward of this forward uses it too.
    BatchNormReducer* bn_reducer = nullptr;
};

struct ForwardResult {
    Tensor logits; // [N, num_classes]
    // With record_stages: "stem" (after BN+act), "stage.{s}" (output of stage s), "head"
    // (after head BN+act), "pool" ([N, head_channels]).
    std::map<std::string, Tensor> stages;
    // With find_non_finite: the plan name of the first layer whose output holds a NaN or an
    // Inf ("blocks.5.project"), or "" when every layer's output is finite.
    std::string first_non_finite;
    // With options.features: each requested feature map, NCHW [N, C, H, W], in the order of
    // options.features (shapes: feature_info(plan)[index].shape).
    std::vector<Tensor> features;
};

// Bytes of host memory a forward of `plan` will hold at its peak, estimated from the layer
// shapes (every saved activation in train mode; the widest layer and the kept residuals in eval).
uint64_t forward_memory_bytes(const NetworkPlan& plan, bool train);
// Throws effnet::Error naming the bytes needed and available when forward_memory_bytes(plan,
// train) exceeds the host memory this process may still allocate.
void check_forward_memory(const NetworkPlan& plan, bool train);

struct Gradients {
    std::map<std::string, Tensor> params; // canonical name -> gradient (trainable params only)
    Tensor input;                         // [N, 3, H, W]
};

// Holds a reference to the model: forward in train mode updates its running statistics.
class Network {
public:
    explicit Network(Model& model);
    ~Network();
    Network(const Network&) = delete;
    Network& operator=(const Network&) = delete;

    // input [N, C, H, W]; validated (rank, channels, size >= 1) with a clear error, and
    // refused when forward_memory_bytes() exceeds the memory the system has available.
    ForwardResult forward(const Tensor& input, const ForwardOptions& options = {});
    // Backward of the last forward (which must have been a train forward, or an eval forward
    // with options.train = false for eval-mode gradients) given dloss/dlogits [N, classes].
    Gradients backward(const Tensor& dlogits);
    // Backward with gradients also (or only) entering at the last forward's requested features:
    // dfeatures[k] is dloss/d(features[k]) with the feature's shape, or an empty Tensor for no
    // gradient there; the vector is empty (no feature gradients) or as long as the forward's
    // options.features. dlogits is [N, classes], or an empty Tensor for none (it must be empty
    // after a features_only forward); at least one gradient must be given. Without dlogits the
    // walk starts at the last feature with a gradient: the layers after it are not walked and
    // their parameters (head, classifier, later blocks) are absent from Gradients::params;
    // every walked layer's parameters are present.
    Gradients backward(const Tensor& dlogits, const std::vector<Tensor>& dfeatures);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace effnet::cpu
