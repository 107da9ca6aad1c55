#pragma once
// The GPU trainer's parameter store: every parameter and running statistic in one flat fp32
// "master" buffer (tensors at multiples of kernels::kParamChunk elements), gradients and the
// optimizer state (one or two slots per parameter, as train::Optimizer names them) at the same
// offsets in their own flat buffers, and under AMP a cast of the master buffer for the GEMMs.
// Imports and exports models and optimizer state; one launch updates every parameter.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "effnet/cpu_engine.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/param_map.hpp"
#include "libeffnet/cuda/device_buffer.hpp"

namespace effnet::cuda {

class ParamStore {
public:
    // Allocates the flat buffers for `specs` (parameter_specs of the trained config), the
    // optimizer's slots at their initial values; validates the optimizer config.
    ParamStore(const std::vector<ParamSpec>& specs, Precision storage,
               const train::OptimizerConfig& optimizer, bool clip_grad_norm, cudaStream_t stream);

    float* param(const std::string& name) { return master_.as<float>() + slot(name).offset; }
    float* grad(const std::string& name) { return grads_.as<float>() + slot(name).offset; }
    // The GEMM operand for a weight: the master weights in fp32, their cast under AMP.
    const void* gemm_weight(const std::string& name) const;
    float* grads() { return grads_.as<float>(); }
    int64_t count() const { return total_; } // elements of each flat buffer

    // Refreshes the half-precision cast of the master weights (AMP; nothing in fp32).
    void cast_for_gemms(cudaStream_t stream);
    // Every trainable parameter: one launch of the optimizer, gradients times grad_scale first.
    void update(double lr, double grad_scale, cudaStream_t stream);
    // The global sum of squares of the gradients (for clipping); synchronises.
    double gradient_sum_squares(cudaStream_t stream);

    void upload(const Model& model); // checks every parameter's shape
    void download(Model& model) const;
    cpu::Gradients download_gradients() const;

    // As GpuTrainer::optimizer_state / set_optimizer_state (validates everything before
    // changing anything).
    train::ParamMap optimizer_state() const;
    void set_optimizer_state(const train::ParamMap& state, int64_t steps);
    int64_t optimizer_steps() const { return optimizer_steps_; }

    size_t bytes() const { return bytes_; } // device memory it holds

private:
    struct Slot {
        std::string name;
        Shape shape;
        int64_t offset = 0, count = 0;
        bool trainable = false;
    };
    // One slot of optimizer state per trainable parameter, as train::Optimizer names it.
    struct StateSlot {
        const char* name;   // "momentum", "ms", "mom", "exp_avg", "exp_avg_sq"
        bool second_moment; // held in second_moment_ (else in momentum_)
        float initial;      // the value train::Optimizer starts the slot at
    };

    const Slot& slot(const std::string& name) const;
    std::vector<StateSlot> state_slots() const;
    DeviceBuffer& state_buffer(const StateSlot& s) { return s.second_moment ? second_moment_ : momentum_; }
    const DeviceBuffer& state_buffer(const StateSlot& s) const {
        return s.second_moment ? second_moment_ : momentum_;
    }
    DeviceBuffer alloc(size_t bytes, const std::string& what);
    void upload_flat(DeviceBuffer& buf, const std::vector<float>& host);
    std::vector<float> download_flat(const DeviceBuffer& buf) const;
    // Host copy [count()] -> one tensor per slot (trainable ones only when asked).
    std::map<std::string, Tensor> unflatten(const std::vector<float>& host, bool trainable_only) const;

    Precision storage_;
    train::OptimizerConfig optimizer_;
    cudaStream_t stream_;
    std::vector<Slot> slots_;
    std::map<std::string, size_t> slot_index_;
    int64_t total_ = 0;
    size_t bytes_ = 0;
    DeviceBuffer master_, grads_, half_params_;
    // Optimizer state, offsets as master: momentum holds SGD's "momentum", RMSProp's "mom" and
    // AdamW's "exp_avg"; second_moment (RMSProp and AdamW only) RMSProp's "ms" and AdamW's
    // "exp_avg_sq".
    DeviceBuffer momentum_, second_moment_;
    DeviceBuffer chunk_class_;              // [count / kParamChunk] kernels::ParamClass: one update launch
    DeviceBuffer norm_partials_, norm_sum_; // gradient clipping: the global sum of squares (double)
    int64_t optimizer_steps_ = 0;
    bool has_optimizer_state_ = false; // false: a fresh optimizer (exports as an empty map)
};

} // namespace effnet::cuda
