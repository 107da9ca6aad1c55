#include "libeffnet/cuda/context.hpp"

namespace effnet::cuda {

Context::Context(int device) : device_(device) {
    int count = 0;
    EFFNET_CUDA_CHECK(cudaGetDeviceCount(&count));
    EFFNET_CHECK(device >= 0 && device < count, "CUDA device " + std::to_string(device) +
                                                    " does not exist (" + std::to_string(count) +
                                                    " present)");
    EFFNET_CUDA_CHECK(cudaSetDevice(device));
    EFFNET_CUDA_CHECK(cudaGetDeviceProperties(&props_, device));
    EFFNET_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

Context::~Context() {
    // Destructors cannot throw: release in reverse order and ignore errors.
    if (cudnn_) cudnnDestroy(cudnn_);
    if (cublaslt_) cublasLtDestroy(cublaslt_);
    if (stream_) cudaStreamDestroy(stream_);
}

void Context::activate() const {
    EFFNET_CUDA_CHECK(cudaSetDevice(device_));
}

cublasLtHandle_t Context::cublaslt() {
    if (!cublaslt_) {
        activate();
        EFFNET_CUBLAS_CHECK(cublasLtCreate(&cublaslt_));
    }
    return cublaslt_;
}

cudnnHandle_t Context::cudnn() {
    if (!cudnn_) {
        activate();
        cudnnHandle_t h = nullptr;
        const cudnnStatus_t st = cudnnCreate(&h);
        EFFNET_CHECK(st == CUDNN_STATUS_SUCCESS,
                     std::string("cudnnCreate failed: ") + cudnnGetErrorString(st));
        if (cudnnSetStream(h, stream_) != CUDNN_STATUS_SUCCESS) {
            cudnnDestroy(h);
            throw Error("cudnnSetStream failed");
        }
        cudnn_ = h;
    }
    return cudnn_;
}

void* Context::workspace(size_t bytes) {
    if (workspace_.size() < bytes) {
        activate();
        EFFNET_CUDA_CHECK(cudaStreamSynchronize(stream_)); // the old workspace may still be in use
        workspace_ = DeviceBuffer(bytes, "workspace");
    }
    return workspace_.data();
}

} // namespace effnet::cuda
