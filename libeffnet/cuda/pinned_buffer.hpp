#pragma once
// RAII page-locked host memory: one cudaMallocHost, freed on destruction. Move-only. Copies
// from it to the device run by DMA at the bus's speed, without the driver's pageable staging.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::cuda {

class PinnedBuffer {
public:
    PinnedBuffer() = default;
    // `what` names the buffer in the error message.
    explicit PinnedBuffer(size_t bytes, const std::string& what = "pinned buffer") : bytes_(bytes) {
        if (bytes == 0) return;
        const cudaError_t err = cudaMallocHost(&ptr_, bytes);
        if (err != cudaSuccess) {
            ptr_ = nullptr;
            (void)cudaGetLastError();
            throw Error("cudaMallocHost of " + std::to_string(bytes) + " bytes for " + what +
                        " failed: " + cudaGetErrorString(err));
        }
    }
    ~PinnedBuffer() { release(); }
    PinnedBuffer(PinnedBuffer&& o) noexcept
        : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
        if (this != &o) {
            release();
            ptr_ = std::exchange(o.ptr_, nullptr);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;

    void* data() const { return ptr_; }
    template <typename T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    size_t size() const { return bytes_; }

private:
    void release() noexcept {
        if (ptr_) cudaFreeHost(ptr_);
        ptr_ = nullptr;
        bytes_ = 0;
    }
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

} // namespace effnet::cuda
