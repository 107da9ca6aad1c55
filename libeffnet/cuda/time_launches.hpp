#pragma once
// Timing for autotuning at session construction (never inside run()).
#include <cuda_runtime_api.h>

#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::cuda {

// RAII CUDA event (timing enabled).
class Event {
public:
    Event() { EFFNET_CUDA_CHECK(cudaEventCreate(&event_)); }
    ~Event() { cudaEventDestroy(event_); }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
    cudaEvent_t get() const { return event_; }

private:
    cudaEvent_t event_ = nullptr;
};

// Mean milliseconds per call of `launch` over `reps` calls after `warmup` calls, timed with
// CUDA events on `stream` (synchronises). Exceptions from launch() propagate.
template <typename F>
float time_launches(cudaStream_t stream, F&& launch, int warmup = 2, int reps = 10) {
    Event start, stop;
    for (int i = 0; i < warmup; ++i) launch();
    EFFNET_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    for (int i = 0; i < reps; ++i) launch();
    EFFNET_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    EFFNET_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0.0f;
    EFFNET_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    return ms / float(reps);
}

} // namespace effnet::cuda
