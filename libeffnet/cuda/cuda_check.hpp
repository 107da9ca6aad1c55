#pragma once
// Checks for CUDA runtime calls and kernel launches: failures throw effnet::Error naming the
// call, file and line. (cuBLAS checks live in context.hpp, which includes its header.)
#include <cuda_runtime_api.h>

#include <string>

#include "effnet/error.hpp"

namespace effnet::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
    throw Error(std::string("CUDA error: ") + what + " failed with " + cudaGetErrorName(err) + " (" +
                cudaGetErrorString(err) + ") at " + file + ":" + std::to_string(line));
}

} // namespace effnet::cuda

#define EFFNET_CUDA_CHECK(expr)                                                                              \
    do {                                                                                                     \
        const cudaError_t effnet_err_ = (expr);                                                              \
        if (effnet_err_ != cudaSuccess)                                                                      \
            ::effnet::cuda::throw_cuda_error(effnet_err_, #expr, __FILE__, __LINE__);                        \
    } while (0)

// After a <<<...>>> launch: configuration errors surface here (execution errors at the next sync).
#define EFFNET_LAUNCH_CHECK(kernel_name)                                                                     \
    do {                                                                                                     \
        const cudaError_t effnet_err_ = cudaGetLastError();                                                  \
        if (effnet_err_ != cudaSuccess)                                                                      \
            ::effnet::cuda::throw_cuda_error(effnet_err_, "launch of " kernel_name, __FILE__, __LINE__);     \
    } while (0)
