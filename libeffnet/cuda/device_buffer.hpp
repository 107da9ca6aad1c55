#pragma once
// RAII device memory: one cudaMalloc, freed on destruction. Move-only.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::cuda {

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    // `what` names the buffer in the out-of-memory message.
    explicit DeviceBuffer(size_t bytes, const std::string& what = "buffer") : bytes_(bytes) {
        if (bytes == 0) return;
        const cudaError_t err = cudaMalloc(&ptr_, bytes);
        if (err != cudaSuccess) {
            ptr_ = nullptr;
            (void)cudaGetLastError();
            throw Error("cudaMalloc of " + std::to_string(bytes) + " bytes for " + what +
                        " failed: " + cudaGetErrorString(err));
        }
    }
    ~DeviceBuffer() { release(); }
    DeviceBuffer(DeviceBuffer&& o) noexcept
        : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) {
            release();
            ptr_ = std::exchange(o.ptr_, nullptr);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    void* data() const { return ptr_; }
    template <typename T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    size_t size() const { return bytes_; }

private:
    void release() noexcept {
        if (ptr_) cudaFree(ptr_); // errors here cannot be reported from a destructor
        ptr_ = nullptr;
        bytes_ = 0;
    }
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

} // namespace effnet::cuda
