#pragma once
// Fused MBConv front half on tensor cores: expand 1x1 (+ BN folded + act) as an mma.sync m16n8k16
// GEMM (fp16/bf16 in, fp32 accumulate) over an input tile and its depthwise halo, the expanded
// tile kept in shared memory (never in device memory), then the depthwise KxK (+ BN folded +
// act) from there, the output stored and the squeeze-excite sums (per image, per channel) added
// with atomics. The same outputs as the unfused sequence expand GEMM -> depthwise(+squeeze):
// the expanded values are rounded to the storage type before the depthwise conv, as the unfused
// path stores them. fp16 / bf16 only: fp32 sessions keep the unfused path. Tile design and
// shared-memory layout: top of fused_mbconv_tc.cu.
#include <cstddef>
#include <string>

#include "kernels/fused_mbconv.cuh"

namespace effnet::kernels {

// Why these arguments cannot run on the tensor-core kernel on the current device, or "" when
// they can: fp16/bf16, kernel 3 or 5, stride 1 or 2, pad_top/pad_left < kernel, Cin and Ce
// multiples of 8, 16-byte aligned pointers, batch <= 65535, and the shared memory the shape
// needs within the device's per-block opt-in limit.
std::string fused_mbconv_tc_ineligible_reason(const FusedExpandDepthwiseArgs& args, Precision precision);
inline bool fused_mbconv_tc_eligible(const FusedExpandDepthwiseArgs& args, Precision precision) {
    return fused_mbconv_tc_ineligible_reason(args, precision).empty();
}

// Dynamic shared memory of one block for (kernel, stride, Cin) (0 for a kernel / stride pair the
// kernel does not have).
size_t fused_mbconv_tc_smem_bytes(int kernel, int stride, int in_channels);

// slices_per_block: expanded-channel slices of 32 each block computes in turn over one input
// tile kept in shared memory; 0 lets the launcher choose (the most that still give the GPU two
// waves of blocks). Tests force small values so that blocks both loop and split the channels.
// Throws effnet::Error on arguments the kernel cannot run (see the reason above).
void launch_fused_mbconv_tc(const FusedExpandDepthwiseArgs& args, Precision precision, cudaStream_t stream,
                            int slices_per_block = 0);

} // namespace effnet::kernels
