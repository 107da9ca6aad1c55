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

struct ForwardOptions {
    bool train = false;               // batch statistics, dropout, stochastic depth
    bool update_running_stats = true; // train only
    bool dropout = true;              // train only: apply config.dropout and stochastic depth
    uint64_t seed = 0;                // for dropout / stochastic depth masks
    bool record_stages = false;       // fill ForwardResult::stages
    bool find_non_finite = false;     // fill ForwardResult::first_non_finite (a diagnosis: slower)
};

struct ForwardResult {
    Tensor logits; // [N, num_classes]
    // With record_stages: "stem" (after BN+act), "stage.{s}" (output of stage s), "head"
    // (after head BN+act), "pool" ([N, head_channels]).
    std::map<std::string, Tensor> stages;
    // With find_non_finite: the plan name of the first layer whose output holds a NaN or an
    // Inf ("blocks.5.project"), or "" when every layer's output is finite.
    std::string first_non_finite;
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

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace effnet::cpu
