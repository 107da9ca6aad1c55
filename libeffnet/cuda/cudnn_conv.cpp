#include "libeffnet/cuda/cudnn_conv.hpp"

#include <string>

#include "effnet/error.hpp"

// Any cuDNN status but success throws (the session catches it and drops the candidate).
#define EFFNET_CUDNN_CALL(expr)                                                                              \
    do {                                                                                                     \
        const cudnnStatus_t effnet_st_ = (expr);                                                             \
        if (effnet_st_ != CUDNN_STATUS_SUCCESS)                                                              \
            throw ::effnet::Error(std::string("cuDNN error: ") + #expr + " returned " +                      \
                                  cudnnGetErrorString(effnet_st_));                                          \
    } while (0)

namespace effnet::cuda {
namespace {

cudnnDataType_t data_type(Precision p) {
    return p == Precision::FP32   ? CUDNN_DATA_FLOAT
           : p == Precision::FP16 ? CUDNN_DATA_HALF
                                  : CUDNN_DATA_BFLOAT16;
}

const char* algo_string(cudnnConvolutionFwdAlgo_t a) {
    switch (a) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM:
        return "implicit_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM:
        return "implicit_precomp_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM:
        return "gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT:
        return "direct";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT:
        return "fft";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING:
        return "fft_tiling";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD:
        return "winograd";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED:
        return "winograd_nonfused";
    default:
        return "unknown";
    }
}

} // namespace

CudnnConv::CudnnConv(cudnnHandle_t handle, const CudnnConvShape& s, const CudnnConvBuffers& probe,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream)
    : handle_(handle), workspace_(workspace) {
    EFFNET_CHECK(handle && probe.x && probe.w && probe.y, "CudnnConv: null handle or buffer");
    EFFNET_CHECK(s.batch > 0 && s.in_channels > 0 && s.out_channels > 0 && s.groups > 0 &&
                     s.in_channels % s.groups == 0 && s.out_channels % s.groups == 0,
                 "CudnnConv: invalid shape");
    try {
        const cudnnDataType_t type = data_type(s.precision);
        EFFNET_CUDNN_CALL(cudnnCreateTensorDescriptor(&x_));
        EFFNET_CUDNN_CALL(cudnnCreateTensorDescriptor(&y_));
        EFFNET_CUDNN_CALL(cudnnCreateFilterDescriptor(&w_));
        EFFNET_CUDNN_CALL(cudnnCreateConvolutionDescriptor(&conv_));
        // cudnnSetTensor4dDescriptor takes N, C, H, W whatever the memory format.
        EFFNET_CUDNN_CALL(cudnnSetTensor4dDescriptor(x_, s.input_nchw ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC,
                                                     type, s.batch, s.in_channels, s.height, s.width));
        EFFNET_CUDNN_CALL(cudnnSetTensor4dDescriptor(y_, CUDNN_TENSOR_NHWC, type, s.batch, s.out_channels,
                                                     s.out_height, s.out_width));
        // The weight is [Cout, Cin/groups, k, k] (KCRS, i.e. the NCHW filter format). For a
        // depthwise conv (Cin/groups = 1) those bytes are also the NHWC filter [K, R, S, 1]:
        // declare the filter in the tensors' format so cuDNN need not transpose it.
        const cudnnTensorFormat_t filter_format =
            (s.input_nchw || s.in_channels / s.groups != 1) ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC;
        EFFNET_CUDNN_CALL(cudnnSetFilter4dDescriptor(w_, type, filter_format, s.out_channels,
                                                     s.in_channels / s.groups, s.kernel, s.kernel));
        // cuDNN pads symmetrically: the session's top/left padding is cuDNN's; the bottom/right
        // padding it implies must give the same output size (checked below), else the layer's
        // padding is asymmetric (TF "same" at stride 2) and the candidate is dropped.
        EFFNET_CUDNN_CALL(cudnnSetConvolution2dDescriptor(conv_, s.pad_top, s.pad_left, s.stride, s.stride, 1,
                                                          1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        if (s.groups > 1) EFFNET_CUDNN_CALL(cudnnSetConvolutionGroupCount(conv_, s.groups));
        // fp32 without TF32: FMA math only (tensor cores would round the inputs to TF32).
        const cudnnMathType_t math =
            s.precision == Precision::FP32 && !s.allow_tf32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
        EFFNET_CUDNN_CALL(cudnnSetConvolutionMathType(conv_, math));
        int n = 0, c = 0, h = 0, w = 0;
        EFFNET_CUDNN_CALL(cudnnGetConvolution2dForwardOutputDim(conv_, x_, w_, &n, &c, &h, &w));
        EFFNET_CHECK(n == s.batch && c == s.out_channels && h == s.out_height && w == s.out_width,
                     "CudnnConv: cuDNN's symmetric padding gives " + std::to_string(h) + "x" +
                         std::to_string(w) + ", the layer " + std::to_string(s.out_height) + "x" +
                         std::to_string(s.out_width));

        EFFNET_CUDNN_CALL(cudnnSetStream(handle_, stream));
        constexpr int kMaxAlgos = 8;
        cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
        int returned = 0;
        EFFNET_CUDNN_CALL(cudnnFindConvolutionForwardAlgorithmEx(handle_, x_, probe.x, w_, probe.w, conv_, y_,
                                                                 probe.y, kMaxAlgos, &returned, perf,
                                                                 workspace, workspace_bytes));
        // Sorted fastest first; skip failures, algorithms over the workspace, and (fp32 without
        // TF32) any that would use tensor-op math anyway.
        int best = -1;
        for (int i = 0; i < returned && best < 0; ++i) {
            if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > workspace_bytes) continue;
            if (math == CUDNN_FMA_MATH && perf[i].mathType != CUDNN_FMA_MATH &&
                perf[i].mathType != CUDNN_DEFAULT_MATH)
                continue;
            best = i;
        }
        EFFNET_CHECK(best >= 0, "CudnnConv: no cuDNN algorithm runs this convolution");
        algo_ = perf[best].algo;
        workspace_bytes_ = perf[best].memory;
        measured_ms_ = perf[best].time;
        EFFNET_CUDNN_CALL(cudnnSetConvolutionMathType(conv_, perf[best].mathType));
    } catch (...) {
        destroy();
        throw;
    }
}

CudnnConv::~CudnnConv() {
    destroy();
}

void CudnnConv::destroy() {
    // Destructors cannot throw: statuses ignored.
    if (conv_) cudnnDestroyConvolutionDescriptor(conv_);
    if (w_) cudnnDestroyFilterDescriptor(w_);
    if (y_) cudnnDestroyTensorDescriptor(y_);
    if (x_) cudnnDestroyTensorDescriptor(x_);
    conv_ = nullptr;
    w_ = nullptr;
    x_ = y_ = nullptr;
}

void CudnnConv::run(const CudnnConvBuffers& b, cudaStream_t stream) const {
    const float alpha = 1.0f, beta = 0.0f; // float scalars: every compute type here is fp32
    EFFNET_CUDNN_CALL(cudnnSetStream(handle_, stream));
    EFFNET_CUDNN_CALL(cudnnConvolutionForward(handle_, &alpha, x_, b.x, w_, b.w, conv_, algo_, workspace_,
                                              workspace_bytes_, &beta, y_, b.y));
}

std::string CudnnConv::algo_name() const {
    return algo_string(algo_);
}

} // namespace effnet::cuda
