#pragma once
// The GPU training step's GEMMs (internal): cuBLAS for the 1x1 convolutions
// (and the im2col'd stem) on NHWC activations, forward, data and weight gradients.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "effnet/inference.hpp"
#include "libeffnet/cuda/device_buffer.hpp"

namespace effnet::cuda {

// One cuBLAS handle bound to a stream, with its own workspace (fixed, so results are
// reproducible). Activations in the storage precision, fp32 accumulation; weight gradients
// written in fp32. fp32 storage runs true fp32 GEMMs unless allow_tf32 (TF32 tensor cores: the
// operands rounded to 10 mantissa bits, fp32 accumulation, as PyTorch's cuDNN convolutions by default).
class TrainBlas {
public:
    TrainBlas(cudaStream_t stream, Precision storage, bool deterministic, bool allow_tf32 = false);
    ~TrainBlas();
    TrainBlas(const TrainBlas&) = delete;
    TrainBlas& operator=(const TrainBlas&) = delete;

    // z [rows, out] = x [rows, in] (row stride x_ld) * w^T, w [out, in] (row stride w_ld).
    void forward(const void* x, int64_t x_ld, const void* w, int64_t w_ld, void* z, int64_t rows, int in,
                 int out);
    // dx [rows, in] (+)= dz [rows, out] * w [out, in]; accumulate adds to what dx holds.
    void backward_data(const void* dz, const void* w, void* dx, int64_t rows, int in, int out,
                       bool accumulate);
    // dw [out, in] (fp32, row stride `in`, overwritten) = dz^T [out, rows] * x [rows, in] (row stride x_ld).
    void backward_weight(const void* x, int64_t x_ld, const void* dz, float* dw, int64_t rows, int in,
                         int out);

    size_t workspace_bytes() const { return workspace_.size(); }

private:
    cublasHandle_t handle_ = nullptr;
    Precision storage_;
    cublasComputeType_t compute_;
    DeviceBuffer workspace_;
};

} // namespace effnet::cuda
