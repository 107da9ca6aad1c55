#pragma once
// Gradient buckets for data-parallel training, shared by the CPU path (effnet-train over MPI)
// and the GPU trainer (NCCL): parameters in the order the backward produces their gradients
// (the reverse of the network order) grouped into consecutive buckets of about bucket_bytes,
// each all-reduced as one call (as soon as its last gradient is written, where the engine can).
// Header-only: no link dependency for either side.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "effnet/error.hpp"

namespace effnet::dist {

struct Bucket {
    size_t first = 0, last = 0;    // tensors [first, last) of the list given to plan_buckets
    int64_t offset = 0, count = 0; // floats, in the concatenation of the tensors in list order
};

// sizes: floats per tensor, in gradient-production order. A bucket closes once it holds
// >= bucket_bytes (a tensor is never split; the last bucket may be smaller). bucket_bytes 0:
// one bucket per tensor. No tensors: no buckets.
inline std::vector<Bucket> plan_buckets(const std::vector<int64_t>& sizes, size_t bucket_bytes) {
    std::vector<Bucket> buckets;
    Bucket b;
    int64_t offset = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
        EFFNET_CHECK(sizes[i] >= 0, "plan_buckets: negative tensor size");
        if (b.last == b.first) {
            b.first = b.last = i;
            b.offset = offset;
            b.count = 0;
        }
        b.last = i + 1;
        b.count += sizes[i];
        offset += sizes[i];
        if (size_t(b.count) * sizeof(float) >= bucket_bytes) {
            buckets.push_back(b);
            b = Bucket{};
            b.first = b.last = i + 1;
        }
    }
    if (b.last > b.first) buckets.push_back(b);
    return buckets;
}

} // namespace effnet::dist
