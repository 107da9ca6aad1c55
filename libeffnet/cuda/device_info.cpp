// cuda_available() and cuda_device_description() for a build with CUDA.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <string>

#include "effnet/inference.hpp"

namespace effnet {

bool cuda_available() {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); // clear the (non-sticky) error: no driver or no device
        return false;
    }
    return count > 0;
}

std::string cuda_device_description() {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return std::string("no usable CUDA device: ") + cudaGetErrorString(err);
    }
    if (count == 0) return "no CUDA device present";
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        return "CUDA device 0: properties unavailable";
    }
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    char line[512];
    std::snprintf(
        line, sizeof(line), "%s, %d SMs, compute %d.%d, %.1f GiB, L2 %d MiB, driver %d.%d, runtime %d.%d%s",
        p.name, p.multiProcessorCount, p.major, p.minor, double(p.totalGlobalMem) / (1ull << 30),
        p.l2CacheSize >> 20, driver / 1000, (driver % 1000) / 10, runtime / 1000, (runtime % 1000) / 10,
        count > 1 ? (" (+" + std::to_string(count - 1) + " more)").c_str() : "");
    return line;
}

} // namespace effnet
