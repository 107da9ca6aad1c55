#pragma once
// Squeeze-excite for training, NHWC activations x [N, HW, C] in the storage precision, small
// tensors in fp32:
//   squeezed = mean_hw(x) [N, C]; reduced_pre = squeezed W1^T + b1 [N, S]; reduced = act(.);
//   gate = sigmoid(reduced W2^T + b2) [N, C]; y = x * gate.
// The backward (same as the CPU reference):
//   dgate = sum_hw dy * x; dgate_pre = dgate * gate * (1 - gate); dW2, db2, dreduced;
//   dreduced_pre = act'(reduced_pre) dreduced; dW1, db1, dsqueezed; dx = dy * gate + dsqueezed / HW.
// Every reduction runs in a fixed order (no atomics). Also the spatial mean, reused for the
// global average pool before the classifier. The NHWC kernels use 16-byte accesses when C is a
// multiple of 8 halfs / 4 floats and the tensors are 16-byte aligned (scalar otherwise).
#include <cstddef>
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

// out[n, c] = scale * sum_hw x[n, hw, c] (y == null) or scale * sum_hw x * y.
void launch_spatial_sum(const void* x, const void* y, float* out, int batch, int64_t hw, int channels,
                        float scale, Precision storage, cudaStream_t stream);

struct SqueezeExciteTrainArgs {
    int batch = 0;
    int64_t hw = 0;
    int channels = 0, reduced = 0; // C, S
    Act act = Act::SiLU;
    const void* x = nullptr;   // [N, HW, C]
    const float* w1 = nullptr; // [S, C]
    const float* b1 = nullptr; // [S]
    const float* w2 = nullptr; // [C, S]
    const float* b2 = nullptr; // [C]
    // Saved by the forward, read by the backward (fp32):
    float* squeezed = nullptr;    // [N, C]
    float* reduced_pre = nullptr; // [N, S]
    float* reduced_out = nullptr; // [N, S] act(reduced_pre)
    float* gate = nullptr;        // [N, C]
};

// y [N, HW, C] = x * gate (fills the saved tensors).
void launch_squeeze_excite_train_forward(const SqueezeExciteTrainArgs& args, void* y, Precision storage,
                                         cudaStream_t stream);

// y [N, HW, C] = x * gate [N, C] (the forward's output; the trainer recomputes it in the backward).
void launch_squeeze_excite_gate(const void* x, const float* gate, void* y, int batch, int64_t hw,
                                int channels, Precision storage, cudaStream_t stream);

size_t squeeze_excite_workspace_floats(int batch, int channels, int reduced);

// dx [N, HW, C] and fp32 parameter gradients (overwritten). dx may be dy itself (in place: the
// gradient overwrites dy, saving a buffer) or must not overlap it at all; checked. Workspace:
// squeeze_excite_workspace_floats.
void launch_squeeze_excite_backward(const SqueezeExciteTrainArgs& args, const void* dy, void* dx, float* dw1,
                                    float* db1, float* dw2, float* db2, float* workspace, Precision storage,
                                    cudaStream_t stream);

} // namespace effnet::kernels
