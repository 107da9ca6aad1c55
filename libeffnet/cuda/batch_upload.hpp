#pragma once
// The training batch's way to the GPU: two device buffers, two page-locked host buffers, and a
// copy stream, so that the next batch uploads while the current step computes.
//
//   prefetch(next)   queues next's copy on the copy stream, into a device buffer no pending
//                    step reads (it waits for the last step that read it);
//   acquire(host)    the device copy of host for a step on the compute stream: the prefetched
//                    one (the compute stream waits for its copy), else copied now, in order;
//   release()        after the step's last read of that copy is queued.
// At most two batches are pending; a third prefetch drops the older one. A host buffer must
// stay unchanged until the step that consumes it returns. From pageable memory every copy still
// works, without the overlap (the driver stages such copies synchronously).
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "libeffnet/cuda/device_buffer.hpp"

namespace effnet::cuda {

class BatchUpload {
public:
    BatchUpload(size_t bytes, cudaStream_t compute);
    ~BatchUpload();
    BatchUpload(const BatchUpload&) = delete;
    BatchUpload& operator=(const BatchUpload&) = delete;

    float* staging(int which) const; // which: 0 or 1
    void prefetch(const float* host);
    const float* acquire(const float* host);
    void release();
    size_t device_bytes() const { return 2 * bytes_; }

private:
    int pending_slot(const float* host) const; // -1: none holds host
    int free_slot();                           // a slot with no pending batch (drops the older)
    void copy(int slot, const float* host, cudaStream_t stream);
    void destroy_handles() noexcept;

    size_t bytes_;
    cudaStream_t compute_;
    cudaStream_t copy_ = nullptr;
    DeviceBuffer device_[2];
    PinnedBuffer staging_[2];
    cudaEvent_t copied_[2] = {nullptr, nullptr};   // a slot's last copy is done
    cudaEvent_t consumed_[2] = {nullptr, nullptr}; // the last step that read a slot is done with it
    const float* pending_[2] = {nullptr, nullptr}; // the host batch a slot holds for a coming step
    uint64_t pending_order_[2] = {0, 0};           // when it was prefetched (drop the older)
    uint64_t prefetches_ = 0;
    int in_use_ = -1; // the slot of the last acquire
};

} // namespace effnet::cuda
