#pragma once
// One cuDNN forward convolution (legacy API), as a per-layer candidate of InferenceSession:
// descriptors built once, the algorithm found by timing (cudnnFindConvolutionForwardAlgorithmEx)
// on the session's own buffers, run on a stream. Convolution only: the caller adds the bias,
// activation and squeeze passes cuDNN cannot fuse with a grouped convolution.
#include <cudnn.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "effnet/inference.hpp"

namespace effnet::cuda {

struct CudnnConvShape {
    int batch = 0, in_channels = 0, height = 0, width = 0;
    int out_channels = 0, out_height = 0, out_width = 0;
    int kernel = 3, stride = 1, pad_top = 0, pad_left = 0;
    int groups = 1;          // depthwise: groups = in_channels = out_channels
    bool input_nchw = false; // the stem reads the user's NCHW input; everything else is NHWC
    Precision precision = Precision::FP32;
    bool allow_tf32 = false; // fp32 only
};

struct CudnnConvBuffers {
    const void* x = nullptr; // [N, H, W, Cin] (or [N, Cin, H, W] with input_nchw), storage precision
    const void* w = nullptr; // [Cout, Cin/groups, k, k] storage precision (PyTorch layout)
    void* y = nullptr;       // [N, Ho, Wo, Cout] storage precision
};

class CudnnConv {
public:
    // Builds the descriptors and times cuDNN's algorithms on `probe` (y is overwritten), keeping
    // the fastest that succeeds within `workspace_bytes`. Throws effnet::Error when cuDNN cannot
    // run the shape (an asymmetric padding, an unsupported layout or type): the caller drops
    // the candidate.
    CudnnConv(cudnnHandle_t handle, const CudnnConvShape& shape, const CudnnConvBuffers& probe,
              void* workspace, size_t workspace_bytes, cudaStream_t stream);
    ~CudnnConv();
    CudnnConv(const CudnnConv&) = delete;
    CudnnConv& operator=(const CudnnConv&) = delete;

    void run(const CudnnConvBuffers& b, cudaStream_t stream) const;
    float measured_ms() const { return measured_ms_; }
    std::string algo_name() const; // e.g. "implicit_precomp_gemm"

private:
    void destroy();
    cudnnHandle_t handle_ = nullptr;
    cudnnTensorDescriptor_t x_ = nullptr, y_ = nullptr;
    cudnnFilterDescriptor_t w_ = nullptr;
    cudnnConvolutionDescriptor_t conv_ = nullptr;
    cudnnConvolutionFwdAlgo_t algo_ = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    void* workspace_ = nullptr;
    size_t workspace_bytes_ = 0; // the chosen algorithm's need
    float measured_ms_ = 0.0f;
};

} // namespace effnet::cuda
