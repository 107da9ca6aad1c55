#pragma once
// RAII CUDA memory, move-only, one allocation freed on destruction: DeviceBuffer (cudaMalloc)
// and PinnedBuffer (cudaMallocHost: page-locked host memory, which copies to the device by DMA
// at the bus's speed, without the driver's pageable staging).
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "libeffnet/cuda/cuda_check.hpp"
#include "libeffnet/host_memory.hpp"

namespace effnet::cuda {

// "; the GPU has 1.20 GB free of 79.10 GB: use a smaller batch or image size" after an
// out-of-memory error, so that the message says what would fit; "" for other errors.
inline std::string device_memory_shortage(cudaError_t err) {
    size_t free_bytes = 0, total_bytes = 0;
    if (err != cudaErrorMemoryAllocation || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess)
        return "";
    return "; the GPU has " + format_bytes(free_bytes) + " free of " + format_bytes(total_bytes) +
           ": use a smaller batch or image size";
}

struct DeviceMemory {
    static constexpr const char* kAllocator = "cudaMalloc";
    static cudaError_t allocate(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
    static void release(void* p) { cudaFree(p); } // errors here cannot be reported from a destructor
    static std::string shortage(cudaError_t err) { return device_memory_shortage(err); }
};

struct PinnedMemory {
    static constexpr const char* kAllocator = "cudaMallocHost";
    static cudaError_t allocate(void** p, size_t bytes) { return cudaMallocHost(p, bytes); }
    static void release(void* p) { cudaFreeHost(p); }
    static std::string shortage(cudaError_t) { return ""; }
};

template <typename Memory>
class CudaBuffer {
public:
    CudaBuffer() = default;
    // `what` names the buffer in the out-of-memory message.
    explicit CudaBuffer(size_t bytes, const std::string& what = "buffer") : bytes_(bytes) {
        if (bytes == 0) return;
        const cudaError_t err = Memory::allocate(&ptr_, bytes);
        if (err != cudaSuccess) {
            ptr_ = nullptr;
            (void)cudaGetLastError();
            throw Error(std::string(Memory::kAllocator) + " of " + std::to_string(bytes) + " bytes (" +
                        format_bytes(bytes) + ") for " + what + " failed: " + cudaGetErrorString(err) +
                        Memory::shortage(err));
        }
    }
    ~CudaBuffer() { release(); }
    CudaBuffer(CudaBuffer&& o) noexcept
        : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    CudaBuffer& operator=(CudaBuffer&& o) noexcept {
        if (this != &o) {
            release();
            ptr_ = std::exchange(o.ptr_, nullptr);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }
    CudaBuffer(const CudaBuffer&) = delete;
    CudaBuffer& operator=(const CudaBuffer&) = delete;

    void* data() const { return ptr_; }
    template <typename T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    size_t size() const { return bytes_; }

private:
    void release() noexcept {
        if (ptr_) Memory::release(ptr_);
        ptr_ = nullptr;
        bytes_ = 0;
    }
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

using DeviceBuffer = CudaBuffer<DeviceMemory>;
using PinnedBuffer = CudaBuffer<PinnedMemory>;

} // namespace effnet::cuda
