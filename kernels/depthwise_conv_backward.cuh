#pragma once
// Depthwise convolution for training, NHWC activations, weight [C, 1, k, k] fp32 (the master
// weights, PyTorch layout, i.e. [C, k*k]); no batch-norm folding. Forward, data gradient, and
// weight gradient as a deterministic reduction over N*Ho*Wo: a fixed grid of row chunks writes
// per-chunk partial sums, then one thread per weight adds them in chunk order (no atomics).
#include <cstddef>
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct DepthwiseShape {
    int batch = 0, height = 0, width = 0, channels = 0; // input [N, H, W, C]
    int kernel = 3, stride = 1;                         // kernel 3 or 5 (weight gradient), stride >= 1
    int pad_top = 0, pad_left = 0;                      // bottom/right padding is implied by out_*
    int out_height = 0, out_width = 0;                  // output [N, Ho, Wo, C]
};

// y [N, Ho, Wo, C] = depthwise(x [N, H, W, C], w [C, k*k]).
void launch_depthwise_train_forward(const void* x, const float* w, void* y, const DepthwiseShape& shape,
                                    Precision storage, cudaStream_t stream);
// dx [N, H, W, C] = conv^T(dy [N, Ho, Wo, C], w) (+ add [N, H, W, C] when non-null, e.g. a
// residual gradient). dx may alias add.
void launch_depthwise_backward_data(const void* dy, const float* w, const void* add, void* dx,
                                    const DepthwiseShape& shape, Precision storage, cudaStream_t stream);
// Floats of scratch space the weight gradient needs.
size_t depthwise_weight_grad_workspace_floats(const DepthwiseShape& shape);
// dw [C, k*k] (fp32, overwritten) = sum over n, ho, wo of dy * x (the tap's input).
void launch_depthwise_backward_weight(const void* x, const void* dy, float* dw, float* workspace,
                                      const DepthwiseShape& shape, Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
