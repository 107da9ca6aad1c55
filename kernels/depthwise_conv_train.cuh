#pragma once
// Depthwise convolution for training, NHWC activations, weight [C, 1, k, k] fp32 (the master
// weights, PyTorch layout, i.e. [C, k*k]); no batch-norm folding; k 3 or 5, stride 1 or 2.
// The forward and the stride-1 data gradient run the inference kernels (depthwise_conv.cuh) on
// tap-major weights; the stride-2 data gradient is a gather kernel here; the weight gradient is a
// deterministic reduction over N*Ho*Wo: a fixed grid of row chunks writes per-chunk partial sums,
// then a fixed-order sum in double (no atomics: training steps are bit-identical run to run).
#include <cstddef>
#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

struct DepthwiseShape {
    int batch = 0, height = 0, width = 0, channels = 0; // input [N, H, W, C]
    int kernel = 3, stride = 1;                         // kernel 3 or 5, stride 1 or 2
    int pad_top = 0, pad_left = 0;                      // bottom/right padding is implied by out_*
    int out_height = 0, out_width = 0;                  // output [N, Ho, Wo, C]
};

// x' = act(x * scale[c] + shift[c]) applied to every in-bounds input element as it is loaded
// (zero padding stays zero): the preceding batch norm + activation, so that the trainer never
// stores the BN output of the expand conv. scale == null: identity (act must then be None).
struct DepthwiseInputTransform {
    const float* scale = nullptr; // [C] float32
    const float* shift = nullptr; // [C] float32, set when scale is
    Act act = Act::None;
};

// w [C, k*k] (the parameter, PyTorch layout) -> taps [k*k, C] (the layout the forward kernels read)
// and flipped [k*k, C] with flipped[(k-1-kh)*k + (k-1-kw)][c] = w[c][kh*k + kw] (the data gradient's).
// Either output may be null (not written).
void launch_depthwise_weight_taps(const float* w, float* taps, float* flipped, int channels, int kernel,
                                  cudaStream_t stream);

// y [N, Ho, Wo, C] = depthwise(x', taps): no bias, no output activation.
void launch_depthwise_train_forward(const void* x, const DepthwiseInputTransform& in, const float* taps,
                                    void* y, const DepthwiseShape& shape, Precision storage,
                                    cudaStream_t stream);
// dx [N, H, W, C] = conv^T(dy [N, Ho, Wo, C], w) (+ add [N, H, W, C] when non-null, e.g. a
// residual gradient), from the FLIPPED taps. dx may alias add (not dy).
void launch_depthwise_backward_data(const void* dy, const float* flipped, const void* add, void* dx,
                                    const DepthwiseShape& shape, Precision storage, cudaStream_t stream);
// Floats of scratch space the weight gradient needs (the same for every storage precision).
size_t depthwise_weight_grad_workspace_floats(const DepthwiseShape& shape);
// dw [C, k*k] (fp32, overwritten) = sum over n, ho, wo of dy * x'(tap).
void launch_depthwise_backward_weight(const void* x, const DepthwiseInputTransform& in, const void* dy,
                                      float* dw, float* workspace, const DepthwiseShape& shape,
                                      Precision storage, cudaStream_t stream);

} // namespace effnet::kernels
