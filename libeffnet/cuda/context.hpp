#pragma once
// The CUDA context of one session or benchmark: device, stream, a cuBLASLt and a cuDNN handle
// (each created on first use) and a workspace.
// No global state: everything a launch needs is reachable from here.
#include <cublasLt.h>
#include <cudnn.h>
#include <cuda_runtime_api.h>

#include <string>

#include "libeffnet/cuda/cuda_check.hpp"
#include "libeffnet/cuda/device_buffer.hpp"

#define EFFNET_CUBLAS_CHECK(expr)                                                                            \
    do {                                                                                                     \
        const cublasStatus_t effnet_st_ = (expr);                                                            \
        if (effnet_st_ != CUBLAS_STATUS_SUCCESS)                                                             \
            throw ::effnet::Error(std::string("cuBLAS error: ") + #expr + " returned " +                     \
                                  cublasLtGetStatusName(effnet_st_) + " at " + __FILE__ + ":" +              \
                                  std::to_string(__LINE__));                                                 \
    } while (0)

namespace effnet::cuda {

class Context {
public:
    // Selects `device` and creates a non-blocking stream on it. Throws effnet::Error.
    explicit Context(int device = 0);
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    int device() const { return device_; }
    const cudaDeviceProp& properties() const { return props_; }
    cudaStream_t stream() const { return stream_; }
    cublasLtHandle_t cublaslt(); // created on first call
    cudnnHandle_t cudnn();       // created on first call, bound to stream()
    // A workspace of at least `bytes` (grown by reallocation: call outside timed/captured code).
    void* workspace(size_t bytes);
    size_t workspace_bytes() const { return workspace_.size(); }
    // Makes this context's device current for the calling thread.
    void activate() const;

private:
    int device_ = 0;
    cudaDeviceProp props_{};
    cudaStream_t stream_ = nullptr;
    cublasLtHandle_t cublaslt_ = nullptr;
    cudnnHandle_t cudnn_ = nullptr;
    DeviceBuffer workspace_;
};

} // namespace effnet::cuda
