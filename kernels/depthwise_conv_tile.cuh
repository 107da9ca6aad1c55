#pragma once
// Shared-memory-tile schedule of the depthwise convolution (see depthwise_conv.cuh for the op).
// A block stages its whole input tile (output tile + halo, a slab of channels) in shared memory
// with cp.async, 16-byte copies, zero-filled padding, every copy in flight at once; then each
// thread computes a strip of outputs along W from shared memory. The register-strip schedule
// (depthwise_conv.cu) instead loads each kernel row from global memory as it goes, so a thread
// waits on memory K times; here a block waits once. Internal to kernels/:
// launch_depthwise_conv() validates the arguments and calls this.
#include <algorithm>

#include "kernels/depthwise_conv.cuh"

namespace effnet::kernels {

// Whether the tile schedule can run these arguments: K 3 or 5, stride 1 or 2, C a multiple of
// the 16-byte vector, 16-byte aligned input, output and weights.
bool depthwise_shared_tile_eligible(const DepthwiseArgs& args, Precision precision);

// max_threads: the block size budget, 256 or 128.
void launch_depthwise_shared_tile(const DepthwiseArgs& args, Precision precision, int max_threads,
                                  cudaStream_t stream);

// Threads across channels in a block: `widest` (8 x 16 B: one 128-byte line per pixel), unless
// that leaves more than a fifth of the last slab's lanes idle and a divisor of `groups` at
// least half as wide exists. Measured on an H200 (B0, batch 32, register strips): 144 fp16
// channels (18 groups: 8 + 8 + 2) run 10-14% faster as 3 slabs of 6; 240, 480 and 672 channels
// (a few percent idle at 8) ran 25-70% slower as slabs of 6 or 7, so they stay at 8.
inline int channel_groups_per_block(int groups, int widest) {
    if (groups <= widest) return groups;
    const int slabs = (groups + widest - 1) / widest;
    if (5 * (slabs * widest - groups) <= slabs * widest) return widest;
    for (int cg = widest - 1; cg * 2 >= widest; --cg)
        if (groups % cg == 0) return cg;
    return widest;
}

} // namespace effnet::kernels
