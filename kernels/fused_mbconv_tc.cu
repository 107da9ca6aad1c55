#include "kernels/fused_mbconv_tc.cuh"

#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/mma.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

// Tile design.
//
// Operands: x [N, H, W, Cin], We [Ce, Cin] (storage type T = fp16 / bf16, BN folded), be [Ce],
// Wd [K*K, Ce], bd [Ce] (fp32), y [N, Ho, Wo, Ce] (T), pooled [N, Ce] (fp32, += squeeze sums).
//
// A block owns one output tile of TH x TW pixels of one image and a run of `slices_per_block`
// slices of 32 expanded channels:
//   stride 1: output tile 8 x 8, input tile (with halo) IH x IW = (8-1)*1+K: 10 x 10 (K 3), 12 x 12 (K 5)
//   stride 2: output tile 4 x 8, input tile (4-1)*2+K x (8-1)*2+K: 9 x 17 (K 3), 11 x 19 (K 5)
// P = IH * IW input pixels (100, 144, 153, 209), MP = P rounded up to 16 (112, 144, 160, 224):
// the rows of the expand GEMM. Input pixel p (row-major in the tile) is image pixel
// (oh0 * S - pad_top + p / IW, ow0 * S - pad_left + p % IW).
//
// Shared memory (bytes; Kp = Cin rounded up to 16, LDX = Kp + 8 elements, an odd number of
// 16-byte units so that the 8 rows of an ldmatrix hit distinct banks):
//   X   [MP][LDX] T        the input tile, all Cin channels, loaded once per block (cp.async,
//                          zeros outside the image, past Cin and past P)
//   W   [2][32][LDX] T     the expand weights of a slice, double-buffered: slice s + 1 loads
//                          while slice s is computed
//   DW  [2][K*K][32] fp32  the depthwise weights of the slice, same ring
//   E   [P][40] T          the expanded, activated tile of the slice (pitch 40 = 20 words: the
//                          MMA epilogue's pair writes and the depthwise strips' pair reads
//                          are both conflict-free), 0 outside the image (the depthwise conv
//                          zero-pads the *expanded* tensor)
//   RED [8][32] fp32       the squeeze's per-warp partial sums
// fused_mbconv_tc_smem_bytes() computes the total on the host; the launcher checks it against
// cudaDevAttrMaxSharedMemoryPerBlockOptin (B0: 25-102 KB; Cin = 384: 149 KB; Cin = 640, B7's
// last stage: 239 KB, over an H100 / H200's 227 KB, so those blocks stay unfused).
//
// Per slice (256 threads, 8 warps):
//   1. expand: E[MP x 32] = X[MP x Kp] * W[32 x Kp]^T, mma.sync m16n8k16. Warps form a 4 (M) x 2
//      (N) grid: warp (wm, wn) computes m16 fragments wm, wm + 4, ... (< MP / 16) for the two n8
//      fragments of channels wn * 16 .. + 16. A from X by ldmatrix.x4 (rows = pixels), B from W
//      by ldmatrix.x4 (rows = channels: the "col" operand), as in pointwise_conv_tc.cu.
//      Epilogue: + be, act, rounded to T, into E (0 outside the image).
//   2. depthwise: thread t handles the channel pair 2 * (t % 16) of the slice and a strip of PW
//      output pixels along W (slot t / 16 of 16: stride 1, 8 rows x 2 strips of 4; stride 2,
//      4 rows x 4 strips of 2); per kernel row it reads (PW - 1) * S + K pairs of E and does
//      the strip's FMAs; + bd, act, stored as one 4-byte pair per pixel; per-thread sums of the
//      activated outputs (before rounding, as the unfused depthwise kernel sums them).
//   3. squeeze: lanes t and t ^ 16 hold the same channels (shuffle), 8 warps through RED, one
//      atomicAdd per channel and slice.
// Barriers per slice: (A) the slice's cp.async data has landed for everyone; (B) E is
// complete; (C) RED is complete and E / the slice's ring slot are free again.
//
// The grid: blockIdx.x = tile * groups + group (the blocks of one input tile run together and
// share it through L2), blockIdx.z = image. groups = ceil(slices / slices_per_block).

namespace effnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kSlice = 32;            // expanded channels per slice (the GEMM's N)
constexpr int kLde = kSlice + 8;      // E pitch in elements
constexpr int kWarpsM = 4;            // MMA warp grid: 4 along M ...
constexpr int kWarpsN = 2;            // ... x 2 along N (16 channels each: two n8 fragments)
constexpr int kSlots = kThreads / 16; // depthwise strips per block (16 lanes per strip: 32 channels)
constexpr int kMaxInChannels = 4096;  // beyond any EfficientNet; keeps the smem arithmetic in int
static_assert(kWarpsM * kWarpsN == kWarps && kWarpsN * 16 == kSlice, "MMA warp grid covers the slice");

__host__ __device__ constexpr int round_up(int v, int m) {
    return (v + m - 1) / m * m;
}

// Output and input tile of a (kernel, stride).
template <int K, int S>
struct TileGeom {
    static constexpr int TH = S == 1 ? 8 : 4, TW = 8;
    static constexpr int IH = (TH - 1) * S + K, IW = (TW - 1) * S + K;
    static constexpr int P = IH * IW;
    static constexpr int MF = (P + 15) / 16; // m16 fragments
    static constexpr int MP = MF * 16;
    static constexpr int kFragsPerWarp = (MF + kWarpsM - 1) / kWarpsM;
    static constexpr int PW = TH * TW / kSlots; // outputs per depthwise strip
    static constexpr int kStripsPerRow = TW / PW;
    static constexpr int kStripIn = (PW - 1) * S + K; // E pixels a strip reads per kernel row
    static_assert(TW % PW == 0 && TH * kStripsPerRow == kSlots, "the strips tile the output tile");
    // The two strips of a warp (slots 2w, 2w + 1) start 4 input pixels apart in one tile row:
    // 4 * 20 words = 16 banks apart, so their E reads do not conflict.
    static_assert(kStripsPerRow % 2 == 0 && PW * S == 4, "strip pairs 4 input pixels apart");
};

// Byte offsets of the shared-memory regions (see the top of the file). Every region starts on a
// 16-byte boundary: LDX * 2 and 32 * 4 are multiples of 16, E is rounded up.
struct SmemLayout {
    int ldx = 0; // X and W pitch, elements
    int x_off = 0, w_off = 0, dw_off = 0, e_off = 0, red_off = 0, total = 0;
};

__host__ __device__ inline SmemLayout smem_layout(int mp, int p, int taps, int cin) {
    SmemLayout l;
    l.ldx = round_up(cin, 16) + 8;
    l.x_off = 0;
    l.w_off = l.x_off + mp * l.ldx * 2;
    l.dw_off = l.w_off + 2 * kSlice * l.ldx * 2;
    l.e_off = l.dw_off + 2 * taps * kSlice * 4;
    l.red_off = l.e_off + round_up(p * kLde * 2, 16);
    l.total = l.red_off + kWarps * kSlice * 4;
    return l;
}

template <int K, int S>
SmemLayout layout_for(int cin) {
    using G = TileGeom<K, S>;
    return smem_layout(G::MP, G::P, K * K, cin);
}

// Where a block is: its tile origin in the output and in the (padded) input, its image.
struct BlockTile {
    int oh0, ow0; // first output row / column
    int ih0, iw0; // image coordinates of input-tile pixel 0 (negative inside the top/left padding)
    int n;
};

template <int IW>
__device__ __forceinline__ bool inside_image(const FusedExpandDepthwiseArgs& a, const BlockTile& b, int p) {
    const int ih = b.ih0 + p / IW, iw = b.iw0 + p % IW;
    return ih >= 0 && ih < a.height && iw >= 0 && iw < a.width;
}

// Issues the copies of the input tile X [MP][ldx]: 16-byte chunks, zeros outside the image, in
// the K padding (Cin .. Kp) and in the M padding (P .. MP).
template <typename T, int K, int S>
__device__ __forceinline__ void load_input_tile(const FusedExpandDepthwiseArgs& a, const BlockTile& b, T* xs,
                                                int ldx) {
    using G = TileGeom<K, S>;
    const int cin = a.in_channels, chunks = round_up(cin, 16) / 8;
    const T* x_img = static_cast<const T*>(a.input) + int64_t(b.n) * a.height * a.width * cin;
    for (int i = threadIdx.x; i < G::MP * chunks; i += kThreads) {
        const int p = i / chunks, k = (i % chunks) * 8;
        const bool ok = p < G::P && k < cin && inside_image<G::IW>(a, b, p);
        const int ih = b.ih0 + p / G::IW, iw = b.iw0 + p % G::IW;
        // a.input: a valid address when nothing is read
        cp_async16(xs + p * ldx + k, ok ? x_img + (int64_t(ih) * a.width + iw) * cin + k : a.input, ok);
    }
}

// Issues the copies of slice `slice`'s expand weights W [32][ldx] (rows past Ce and columns
// past Cin zero) and depthwise weights DW [K*K][32] (channels past Ce zero; Ce % 8 == 0, so a
// 4-float chunk is wholly inside or outside).
template <typename T, int K>
__device__ __forceinline__ void load_slice_weights(const FusedExpandDepthwiseArgs& a, int slice, T* ws,
                                                   float* dws, int ldx) {
    const int cin = a.in_channels, ce = a.expand_channels, chunks = round_up(cin, 16) / 8;
    const int c0 = slice * kSlice;
    const T* we = static_cast<const T*>(a.expand_weight);
    for (int i = threadIdx.x; i < kSlice * chunks; i += kThreads) {
        const int r = i / chunks, k = (i % chunks) * 8;
        const bool ok = c0 + r < ce && k < cin;
        cp_async16(ws + r * ldx + k, ok ? we + int64_t(c0 + r) * cin + k : we, ok);
    }
    constexpr int kDwChunks = K * K * kSlice / 4;
    for (int i = threadIdx.x; i < kDwChunks; i += kThreads) {
        const int tap = i / (kSlice / 4), c = c0 + (i % (kSlice / 4)) * 4;
        const bool ok = c < ce;
        cp_async16(dws + i * 4, ok ? a.dw_weight + tap * ce + c : a.dw_weight, ok);
    }
}

// Step 1: the expand GEMM of one slice into E, with bias, activation, rounding and the zero
// padding of the expanded tensor.
template <typename T, int K, int S>
__device__ __forceinline__ void expand_slice(const FusedExpandDepthwiseArgs& a, const BlockTile& b, int c0,
                                             const T* xs, const T* ws, T* es, int ldx) {
    using G = TileGeom<K, S>;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp % kWarpsM, wn = warp / kWarpsM;
    const int kp = round_up(a.in_channels, 16);
    float acc[G::kFragsPerWarp][2][4];
#pragma unroll
    for (int i = 0; i < G::kFragsPerWarp; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Channels wn * 16 .. + 16 all past Ce (the last slice of a Ce that is not a multiple of 32):
    // nothing to multiply; E gets act(0) there, which no one reads.
    if (c0 + wn * 16 < a.expand_channels) {
        for (int kk = 0; kk < kp; kk += 16) {
            // B: r[0], r[1] = n8 fragment 0 (k 0-7, 8-15); r[2], r[3] = fragment 1.
            uint32_t bf[4];
            ldmatrix_x4(bf,
                        ws + (wn * 16 + (lane & 7) + ((lane >> 4) << 3)) * ldx + kk + ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int i = 0; i < G::kFragsPerWarp; ++i) {
                const int f = wm + i * kWarpsM;
                if (f >= G::MF) break; // warp-uniform
                uint32_t af[4];
                ldmatrix_x4(af, xs + (f * 16 + (lane & 15)) * ldx + kk + (lane >> 4) * 8);
                mma_16816<T>(acc[i][0], af, bf[0], bf[1]);
                mma_16816<T>(acc[i][1], af, bf[2], bf[3]);
            }
        }
    }

    // Fragment layout: c0, c1 at (row lane / 4, columns 2 * (lane % 4) + {0, 1}); c2, c3 eight
    // rows below.
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int col = wn * 16 + j * 8 + (lane & 3) * 2;
        const int c = c0 + col;
        const bool c_ok = c < a.expand_channels; // Ce even: c + 1 too
        const float bias0 = c_ok ? __ldg(a.expand_bias + c) : 0.0f;
        const float bias1 = c_ok ? __ldg(a.expand_bias + c + 1) : 0.0f;
#pragma unroll
        for (int i = 0; i < G::kFragsPerWarp; ++i) {
            const int f = wm + i * kWarpsM;
            if (f >= G::MF) break;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int p = f * 16 + (lane >> 2) + h * 8;
                if (p >= G::P) continue;
                float v[2] = {0.0f, 0.0f};
                if (inside_image<G::IW>(a, b, p)) {
                    v[0] = act_forward<act_math_for<T>>(acc[i][j][2 * h] + bias0, a.act);
                    v[1] = act_forward<act_math_for<T>>(acc[i][j][2 * h + 1] + bias1, a.act);
                }
                store_vec<T, 2>(es + p * kLde + col, v);
            }
        }
    }
}

// Step 2: the depthwise conv of one slice from E: this thread's strip of PW outputs for its
// channel pair, stored, and its share of the squeeze sums added to sum[2].
template <typename T, int K, int S>
__device__ __forceinline__ void depthwise_slice(const FusedExpandDepthwiseArgs& a, const BlockTile& b, int c0,
                                                const T* es, const float* dws, float (&sum)[2]) {
    using G = TileGeom<K, S>;
    const int pair = threadIdx.x & 15, slot = threadIdx.x >> 4;
    const int col = pair * 2, c = c0 + col;
    const int oy = slot / G::kStripsPerRow, ox0 = (slot % G::kStripsPerRow) * G::PW;
    const int oh = b.oh0 + oy, ow_first = b.ow0 + ox0;
    if (c >= a.expand_channels || oh >= a.out_height || ow_first >= a.out_width) return;

    float acc[G::PW][2];
    const float bias0 = __ldg(a.dw_bias + c), bias1 = __ldg(a.dw_bias + c + 1);
#pragma unroll
    for (int j = 0; j < G::PW; ++j) {
        acc[j][0] = bias0;
        acc[j][1] = bias1;
    }
#pragma unroll
    for (int ky = 0; ky < K; ++ky) {
        const T* row = es + ((oy * S + ky) * G::IW + ox0 * S) * kLde + col;
        float in[G::kStripIn][2];
#pragma unroll
        for (int t = 0; t < G::kStripIn; ++t) load_vec<T, 2>(row + t * kLde, in[t]);
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
            float w[2];
            load_f32<2>(dws + (ky * K + kx) * kSlice + col, w);
#pragma unroll
            for (int j = 0; j < G::PW; ++j) {
                acc[j][0] = fmaf(in[j * S + kx][0], w[0], acc[j][0]);
                acc[j][1] = fmaf(in[j * S + kx][1], w[1], acc[j][1]);
            }
        }
    }
    T* y = static_cast<T*>(a.output) +
           ((int64_t(b.n) * a.out_height + oh) * a.out_width) * a.expand_channels + c;
#pragma unroll
    for (int j = 0; j < G::PW; ++j) {
        const int ow = ow_first + j;
        if (ow >= a.out_width) break;
        float v[2];
        v[0] = act_forward<act_math_for<T>>(acc[j][0], a.act);
        v[1] = act_forward<act_math_for<T>>(acc[j][1], a.act);
        sum[0] += v[0];
        sum[1] += v[1];
        store_vec<T, 2>(y + int64_t(ow) * a.expand_channels, v);
    }
}

// Step 3, first half: the per-warp sums of each channel into red [8][32]. Lanes t and t ^ 16
// hold the same channels (two strips). All lanes take part (full-mask shuffle).
__device__ __forceinline__ void stage_squeeze_sums(const float (&sum)[2], float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float s0 = sum[0] + __shfl_xor_sync(0xffffffffu, sum[0], 16);
    const float s1 = sum[1] + __shfl_xor_sync(0xffffffffu, sum[1], 16);
    if (lane < 16) {
        red[warp * kSlice + lane * 2] = s0;
        red[warp * kSlice + lane * 2 + 1] = s1;
    }
}

// Step 3, second half (after a barrier): one atomicAdd per channel of the slice.
__device__ __forceinline__ void add_squeeze_sums(const FusedExpandDepthwiseArgs& a, int n, int c0,
                                                 const float* red) {
    const int i = threadIdx.x;
    if (i >= kSlice || c0 + i >= a.expand_channels) return;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += red[w * kSlice + i];
    atomicAdd(a.pooled_sum + int64_t(n) * a.expand_channels + c0 + i, total);
}

// Two blocks per SM: at most 128 registers a thread (the B0 shapes need <= 102 KB of shared
// memory a block, so two fit beside each other).
template <typename T, int K, int S>
__global__ void __launch_bounds__(kThreads, 2)
    fused_mbconv_tc_kernel(FusedExpandDepthwiseArgs a, int groups, int slices_per_block, int tiles_w) {
    using G = TileGeom<K, S>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const SmemLayout l = smem_layout(G::MP, G::P, K * K, a.in_channels);
    T* const xs = reinterpret_cast<T*>(smem_raw + l.x_off);            // [MP][ldx]
    T* const ws = reinterpret_cast<T*>(smem_raw + l.w_off);            // [2][32][ldx]
    float* const dws = reinterpret_cast<float*>(smem_raw + l.dw_off);  // [2][K*K][32]
    T* const es = reinterpret_cast<T*>(smem_raw + l.e_off);            // [P][kLde]
    float* const red = reinterpret_cast<float*>(smem_raw + l.red_off); // [8][32]

    const int group = int(blockIdx.x % unsigned(groups)), tile = int(blockIdx.x / unsigned(groups));
    BlockTile b;
    b.oh0 = (tile / tiles_w) * G::TH;
    b.ow0 = (tile % tiles_w) * G::TW;
    b.ih0 = b.oh0 * S - a.pad_top;
    b.iw0 = b.ow0 * S - a.pad_left;
    b.n = int(blockIdx.z);
    const int slices = (a.expand_channels + kSlice - 1) / kSlice;
    const int first = group * slices_per_block, last = min(slices, first + slices_per_block);
    if (first >= last) return; // block-uniform, before any barrier (the host leaves no empty group)

    const int slot_elems = kSlice * l.ldx, dw_slot = K * K * kSlice;
    load_input_tile<T, K, S>(a, b, xs, l.ldx);
    load_slice_weights<T, K>(a, first, ws, dws, l.ldx);
    cp_async_commit();
    for (int s = first; s < last; ++s) {
        const int slot = (s - first) & 1;
        // The other ring slot was last read by slice s - 1, before its barrier (C).
        if (s + 1 < last)
            load_slice_weights<T, K>(a, s + 1, ws + (slot ^ 1) * slot_elems, dws + (slot ^ 1) * dw_slot,
                                     l.ldx);
        cp_async_commit();  // possibly empty: keeps the wait count uniform
        cp_async_wait<1>(); // this thread's copies of the tile and of slice s have landed
        __syncthreads();    // (A) everyone's
        const int c0 = s * kSlice;
        expand_slice<T, K, S>(a, b, c0, xs, ws + slot * slot_elems, es, l.ldx);
        __syncthreads(); // (B) E complete
        float sum[2] = {0.0f, 0.0f};
        depthwise_slice<T, K, S>(a, b, c0, es, dws + slot * dw_slot, sum);
        if (a.pooled_sum != nullptr) stage_squeeze_sums(sum, red); // uniform across the grid
        __syncthreads(); // (C) RED complete; E and this ring slot free for the next slice
        if (a.pooled_sum != nullptr) add_squeeze_sums(a, b.n, c0, red);
        // RED is next written after the next slice's barrier (B): these reads are done by then.
    }
    cp_async_wait<0>(); // nothing in flight at exit (the last group is empty)
}

// Geometry of a launch: output tiles, channel slices, slices per block and groups.
struct LaunchPlan {
    int tiles_h = 0, tiles_w = 0, slices = 0, slices_per_block = 0, groups = 0;
    size_t smem = 0;
};

template <typename T, int K, int S>
void launch_typed(const FusedExpandDepthwiseArgs& a, int slices_per_block, cudaStream_t stream) {
    using G = TileGeom<K, S>;
    auto kernel = fused_mbconv_tc_kernel<T, K, S>;
    LaunchPlan plan;
    plan.smem = size_t(layout_for<K, S>(a.in_channels).total);
    if (plan.smem > 48 * 1024)
        EFFNET_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)));
    plan.tiles_h = (a.out_height + G::TH - 1) / G::TH;
    plan.tiles_w = (a.out_width + G::TW - 1) / G::TW;
    plan.slices = (a.expand_channels + kSlice - 1) / kSlice;
    const int64_t spatial_blocks = int64_t(plan.tiles_h) * plan.tiles_w * a.batch;
    if (slices_per_block > 0) {
        plan.slices_per_block = std::min(slices_per_block, plan.slices);
    } else {
        // The fewest channel groups (each block reloads the input tile, from L2, once per group)
        // that still give the GPU two waves of resident blocks.
        int device = 0, sm_count = 0, per_sm = 0;
        EFFNET_CUDA_CHECK(cudaGetDevice(&device));
        EFFNET_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
        EFFNET_CUDA_CHECK(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.smem));
        const int64_t wanted = 2 * int64_t(std::max(per_sm, 1)) * sm_count;
        const int64_t groups =
            std::clamp<int64_t>((wanted + spatial_blocks - 1) / spatial_blocks, 1, plan.slices);
        plan.slices_per_block = int((plan.slices + groups - 1) / groups);
    }
    // Recomputed from slices_per_block so that no group is empty.
    plan.groups = (plan.slices + plan.slices_per_block - 1) / plan.slices_per_block;
    const int64_t blocks_x = int64_t(plan.tiles_h) * plan.tiles_w * plan.groups;
    EFFNET_CHECK(blocks_x < (int64_t(1) << 31),
                 "fused_mbconv_tc: too many tiles for one launch (" + std::to_string(blocks_x) + ")");
    const dim3 grid(unsigned(blocks_x), 1u, unsigned(a.batch));
    kernel<<<grid, kThreads, plan.smem, stream>>>(a, plan.groups, plan.slices_per_block, plan.tiles_w);
    EFFNET_LAUNCH_CHECK("fused_mbconv_tc_kernel");
}

template <typename T>
void launch_shape(const FusedExpandDepthwiseArgs& a, int slices_per_block, cudaStream_t stream) {
    if (a.kernel == 3 && a.stride == 1)
        launch_typed<T, 3, 1>(a, slices_per_block, stream);
    else if (a.kernel == 3 && a.stride == 2)
        launch_typed<T, 3, 2>(a, slices_per_block, stream);
    else if (a.kernel == 5 && a.stride == 1)
        launch_typed<T, 5, 1>(a, slices_per_block, stream);
    else
        launch_typed<T, 5, 2>(a, slices_per_block, stream);
}

int max_smem_per_block() {
    int device = 0, bytes = 0;
    EFFNET_CUDA_CHECK(cudaGetDevice(&device));
    EFFNET_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return bytes;
}

} // namespace

size_t fused_mbconv_tc_smem_bytes(int kernel, int stride, int in_channels) {
    if (in_channels < 1 || in_channels > kMaxInChannels) return 0;
    if (kernel == 3 && stride == 1) return size_t(layout_for<3, 1>(in_channels).total);
    if (kernel == 3 && stride == 2) return size_t(layout_for<3, 2>(in_channels).total);
    if (kernel == 5 && stride == 1) return size_t(layout_for<5, 1>(in_channels).total);
    if (kernel == 5 && stride == 2) return size_t(layout_for<5, 2>(in_channels).total);
    return 0;
}

std::string fused_mbconv_tc_ineligible_reason(const FusedExpandDepthwiseArgs& a, Precision precision) {
    if (precision == Precision::FP32) return "fp32 (the tensor-core kernel takes fp16 or bf16)";
    if (!((a.kernel == 3 || a.kernel == 5) && (a.stride == 1 || a.stride == 2)))
        return "kernel " + std::to_string(a.kernel) + " / stride " + std::to_string(a.stride) +
               " (3 or 5 / 1 or 2)";
    if (a.pad_top < 0 || a.pad_left < 0 || a.pad_top >= a.kernel || a.pad_left >= a.kernel)
        return "padding " + std::to_string(a.pad_top) + "/" + std::to_string(a.pad_left);
    if (a.in_channels < 8 || a.in_channels % 8 != 0 || a.in_channels > kMaxInChannels ||
        a.expand_channels < 8 || a.expand_channels % 8 != 0)
        return "Cin=" + std::to_string(a.in_channels) + " Ce=" + std::to_string(a.expand_channels) +
               " (multiples of 8, Cin <= " + std::to_string(kMaxInChannels) + ")";
    if (a.batch < 1 || a.batch > 65535) return "batch " + std::to_string(a.batch) + " (1..65535)";
    // 16-byte cp.async reads of x, We and Wd; 4-byte pair stores of y (biases and the squeeze
    // sums are read and added one float at a time).
    if (!aligned16({a.input, a.expand_weight, a.dw_weight, a.output}))
        return "input, weight or output pointer not 16-byte aligned";
    const size_t smem = fused_mbconv_tc_smem_bytes(a.kernel, a.stride, a.in_channels);
    const int limit = max_smem_per_block();
    if (smem > size_t(limit))
        return "shared memory " + std::to_string(smem) + " B > the device's " + std::to_string(limit) + " B";
    return "";
}

void launch_fused_mbconv_tc(const FusedExpandDepthwiseArgs& a, Precision precision, cudaStream_t stream,
                            int slices_per_block) {
    EFFNET_CHECK(a.input && a.expand_weight && a.expand_bias && a.dw_weight && a.dw_bias && a.output,
                 "fused_mbconv_tc: null pointer argument");
    EFFNET_CHECK(a.height >= 1 && a.width >= 1 && a.out_height >= 1 && a.out_width >= 1,
                 "fused_mbconv_tc: bad shape H=" + std::to_string(a.height) +
                     " W=" + std::to_string(a.width) + " Ho=" + std::to_string(a.out_height) +
                     " Wo=" + std::to_string(a.out_width));
    const std::string why = fused_mbconv_tc_ineligible_reason(a, precision);
    EFFNET_CHECK(why.empty(), "fused_mbconv_tc: cannot run these arguments: " + why);
    EFFNET_CHECK((a.out_height - 1) * a.stride - a.pad_top < a.height &&
                     (a.out_width - 1) * a.stride - a.pad_left < a.width,
                 "fused_mbconv_tc: output size inconsistent with input size and padding");
    EFFNET_CHECK(slices_per_block >= 0, "fused_mbconv_tc: slices_per_block must be >= 0");
    dispatch_storage(precision, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if constexpr (std::is_same_v<T, float>)
            throw Error("fused_mbconv_tc: the tensor-core kernel takes fp16 or bf16, not fp32");
        else
            launch_shape<T>(a, slices_per_block, stream);
    });
}

} // namespace effnet::kernels
