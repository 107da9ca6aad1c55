#pragma once
// Tensor-core path of the 1x1 convolution (see pointwise_conv.cuh for the operation): mma.sync
// m16n8k16 (fp16/bf16 in, fp32 accumulate), ldmatrix from shared memory, a cp.async pipeline
// of K tiles, the squeeze-excite gate applied to the A tile in shared memory, and an epilogue
// staged through shared memory so that bias + activation + residual leave as 16-byte stores.
// Two schedules of the same tiles: persistent blocks whose copy ring runs across tiles (short
// K: memory-bound layers) and one tile per block (long K).
// Internal to kernels/: launch_pointwise_conv() validates the arguments and calls this.
#include "kernels/pointwise_conv.cuh"

namespace effnet::kernels {

// Block-tile configuration picked per shape (exposed so benchmarks and tests can name it).
enum class PointwiseTile {
    M128_N32, // 4 warps, warp tile 32x32: Cout <= 32 (most project convs of early stages)
    M128_N64, // 8 warps, warp tile 32x32: the default for large M
    M64_N64,  // 4 warps, warp tile 32x32: mid-size M, more blocks
    M32_N64,  // 4 warps, warp tile 16x32: small M (7x7 / 14x14 maps), long K
};

// The tile launch_pointwise_mma picks for this shape on a device with `sm_count` multiprocessors.
PointwiseTile choose_pointwise_tile(int64_t rows, int out_channels, int in_channels, int sm_count);

// Precondition: pointwise_tensor_core_eligible(args, precision) and precision != FP32.
void launch_pointwise_mma(const PointwiseArgs& args, Precision precision, cudaStream_t stream);
// The same with the tile forced (tests run every tile on every shape; benchmarks compare them).
// max_blocks: 0, the launcher's choice of kernel (persistent when K <= 96, else one tile per
// block); -1, one tile per block; > 0, the persistent kernel with its grid capped there, so that
// a test on a small shape still makes each block walk several tiles.
void launch_pointwise_mma(const PointwiseArgs& args, Precision precision, PointwiseTile tile,
                          cudaStream_t stream, int max_blocks = 0);

} // namespace effnet::kernels
