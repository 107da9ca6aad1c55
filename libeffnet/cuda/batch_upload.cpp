#include "libeffnet/cuda/batch_upload.hpp"

#include <string>

#include "effnet/error.hpp"

namespace effnet::cuda {

BatchUpload::BatchUpload(size_t bytes, cudaStream_t compute) : bytes_(bytes), compute_(compute) {
    EFFNET_CHECK(bytes > 0, "BatchUpload: empty batch");
    for (int i = 0; i < 2; ++i) {
        device_[i] = DeviceBuffer(bytes, "the input batch");
        staging_[i] = PinnedBuffer(bytes, "the input staging buffer");
    }
    try {
        EFFNET_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
        for (int i = 0; i < 2; ++i) {
            EFFNET_CUDA_CHECK(cudaEventCreateWithFlags(&copied_[i], cudaEventDisableTiming));
            EFFNET_CUDA_CHECK(cudaEventCreateWithFlags(&consumed_[i], cudaEventDisableTiming));
        }
    } catch (...) {
        destroy_handles(); // the buffers free themselves
        throw;
    }
}

BatchUpload::~BatchUpload() {
    destroy_handles();
}

void BatchUpload::destroy_handles() noexcept {
    // The buffers must not be freed under a queued copy that still writes them.
    if (copy_) cudaStreamSynchronize(copy_);
    for (int i = 0; i < 2; ++i) {
        if (copied_[i]) cudaEventDestroy(copied_[i]);
        if (consumed_[i]) cudaEventDestroy(consumed_[i]);
        copied_[i] = consumed_[i] = nullptr;
    }
    if (copy_) cudaStreamDestroy(copy_);
    copy_ = nullptr;
}

float* BatchUpload::staging(int which) const {
    EFFNET_CHECK(which == 0 || which == 1,
                 "input_staging: buffer " + std::to_string(which) + " (there are 0 and 1)");
    return staging_[which].as<float>();
}

int BatchUpload::pending_slot(const float* host) const {
    for (int i = 0; i < 2; ++i)
        if (pending_[i] == host) return i;
    return -1;
}

int BatchUpload::free_slot() {
    for (int i : {in_use_ < 0 ? 0 : 1 - in_use_, in_use_ < 0 ? 1 : in_use_})
        if (!pending_[i]) return i;
    const int older = pending_order_[0] <= pending_order_[1] ? 0 : 1;
    pending_[older] = nullptr;
    return older;
}

// Every copy into a slot waits for the last step that read it and for the slot's previous copy
// (a dropped prefetch may still be writing it).
void BatchUpload::copy(int slot, const float* host, cudaStream_t stream) {
    EFFNET_CUDA_CHECK(cudaStreamWaitEvent(stream, consumed_[slot], 0));
    EFFNET_CUDA_CHECK(cudaStreamWaitEvent(stream, copied_[slot], 0));
    EFFNET_CUDA_CHECK(cudaMemcpyAsync(device_[slot].data(), host, bytes_, cudaMemcpyHostToDevice, stream));
    EFFNET_CUDA_CHECK(cudaEventRecord(copied_[slot], stream));
}

void BatchUpload::prefetch(const float* host) {
    EFFNET_CHECK(host, "GpuTrainer::prefetch: null input");
    if (pending_slot(host) >= 0) return; // already on its way
    const int slot = free_slot();
    copy(slot, host, copy_);
    pending_[slot] = host;
    pending_order_[slot] = ++prefetches_;
}

const float* BatchUpload::acquire(const float* host) {
    EFFNET_CHECK(host, "GpuTrainer: null input");
    int slot = pending_slot(host);
    if (slot >= 0) {
        EFFNET_CUDA_CHECK(cudaStreamWaitEvent(compute_, copied_[slot], 0));
        pending_[slot] = nullptr;
    } else {
        slot = free_slot();
        copy(slot, host, compute_);
    }
    in_use_ = slot;
    return device_[slot].as<float>();
}

void BatchUpload::release() {
    EFFNET_CHECK(in_use_ >= 0, "BatchUpload::release without acquire");
    EFFNET_CUDA_CHECK(cudaEventRecord(consumed_[in_use_], compute_));
}

} // namespace effnet::cuda
