#include "kernels/pointwise_conv_tc.cuh"

#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/mma.cuh"
#include "kernels/vector_io.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

// Y[M, N] = act(X'[M, K] W[N, K]^T + bias) (+ R[M, N]), X' = X * gate[image(m), k].
// Output tiles of BM x BN; K arrives in tiles of BK = 32 through a kStages-deep cp.async ring
// (zero-filled past M, N and K, so any K and N that are multiples of 8 work). Each warp owns a
// (BM / WARPS_M) x (BN / WARPS_N) sub-tile of m16n8k16 products. Tiles are numbered n fastest,
// so the blocks sharing an A tile run together. Two schedules: one tile per block (K > 96), or
// a persistent grid (as many blocks as fit at once) whose copy ring runs across tiles (K <= 96).

namespace effnet::kernels {
namespace {

constexpr int BK = 32; // K elements per pipeline stage
constexpr int LDS =
    BK + 8; // shared row pitch in elements: 80 B, so the 8 rows of an ldmatrix hit distinct banks
constexpr int kStages = 4; // K tiles in flight: 3 loading while one is multiplied

template <int BM, int BN, int WARPS_M, int WARPS_N>
struct TileShape {
    static constexpr int kThreads = WARPS_M * WARPS_N * 32;
    static constexpr int kWarpM = BM / WARPS_M, kWarpN = BN / WARPS_N;
    static constexpr int kFragM = kWarpM / 16, kFragN = kWarpN / 8; // m16 and n8 fragments per warp
    static constexpr int kChunksPerRow = BK / 8;                    // 16-byte chunks in a K-tile row
    static constexpr int kRowsPerPass = kThreads / kChunksPerRow;   // rows one sweep of the block copies
    static constexpr int kAChunks = BM / kRowsPerPass;              // A chunks per thread per stage
    static constexpr int kBChunks = BN / kRowsPerPass;
    static constexpr int kStageElems = (BM + BN) * LDS;
    static constexpr int kLdc =
        BN + 8; // fp32 staging pitch: float2 writes of 4 rows per half-warp hit distinct banks
    static constexpr int kOutChunksPerRow = BN / 8;
    static constexpr int kOutChunks = BM * kOutChunksPerRow / kThreads; // 8-channel outputs per thread
    static_assert(kFragM >= 1 && kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tile: m16 x (pairs of n8)");
    static_assert(BM % kRowsPerPass == 0 && BN % kRowsPerPass == 0, "copy sweep must divide the tile");
    static_assert((BM * kOutChunksPerRow) % kThreads == 0, "epilogue sweep must divide the tile");
    static_assert(kThreads % kOutChunksPerRow == 0, "each thread keeps the same 8 output columns");

    // The ring (all kStages slots: with several tiles per block the ring runs across tiles) and,
    // beside it, the fp32 staging tile of the epilogue, so the next tile's copies can be in
    // flight while this tile's outputs are written.
    static constexpr size_t kRingBytes = size_t(kStages) * kStageElems * 2;
    static constexpr size_t kSmemBytes = kRingBytes + size_t(BM) * kLdc * sizeof(float);

    // One tile per block: only the ring slots it ever writes, with the staging tile aliased.
    static size_t tile_per_block_smem_bytes(int k_tiles) {
        const int stages = k_tiles < kStages ? k_tiles : kStages;
        const size_t pipeline = size_t(stages) * kStageElems * 2;
        const size_t staging = size_t(BM) * kLdc * sizeof(float);
        return pipeline > staging ? pipeline : staging;
    }
};

// The squeeze-excite gate on one 8-element A chunk in shared memory, in place: the fp32 product
// rounded once to T, as the unfused path (gate applied to the stored input) does.
template <typename T>
__device__ __forceinline__ void gate_a_chunk(T* chunk, const float* gate) {
    float g[8], v[8];
    load_f32_readonly<8>(gate, g);
    load_vec<T, 8>(chunk, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] *= g[j];
    store_vec<T, 8>(chunk, v);
}

// The products of one K tile (ring slot As / Bs) into the warp's accumulators: m16n8k16 steps,
// skipping the all-zero padding of the last tile (K % 32 of 8, 16 or 24) and the fragments past
// Cout (warp-uniform).
template <typename T, typename S>
__device__ __forceinline__ void mma_k_tile(const T* As, const T* Bs, int kt, int K, int N, int n0, int wm,
                                           int wn, int lane, float (&acc)[S::kFragM][S::kFragN][4]) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        if (kt * BK + kk >= K) break;
        uint32_t af[S::kFragM][4];
#pragma unroll
        for (int i = 0; i < S::kFragM; ++i)
            ldmatrix_x4(af[i], As + (wm + i * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
        uint32_t bf[S::kFragN][2];
#pragma unroll
        for (int j = 0; j < S::kFragN; j += 2) {
            uint32_t r[4];
            ldmatrix_x4(r, Bs + (wn + j * 8 + (lane & 7) + ((lane >> 4) << 3)) * LDS + kk +
                               ((lane >> 3) & 1) * 8);
            bf[j][0] = r[0];
            bf[j][1] = r[1];
            bf[j + 1][0] = r[2];
            bf[j + 1][1] = r[3];
        }
#pragma unroll
        for (int j = 0; j < S::kFragN; ++j) {
            if (n0 + wn + j * 8 >= N) continue;
#pragma unroll
            for (int i = 0; i < S::kFragM; ++i) mma_16816<T>(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
    }
}

template <typename S>
__device__ __forceinline__ void clear_accumulators(float (&acc)[S::kFragM][S::kFragN][4]) {
#pragma unroll
    for (int i = 0; i < S::kFragM; ++i)
#pragma unroll
        for (int j = 0; j < S::kFragN; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
}

// The warp's accumulators into the fp32 staging tile. Fragment layout: c0, c1 at (row lane / 4,
// columns 2 * (lane % 4) + {0, 1}); c2, c3 eight rows below.
template <typename S>
__device__ __forceinline__ void stage_accumulators(float* staged, const float (&acc)[S::kFragM][S::kFragN][4],
                                                   int wm, int wn, int lane) {
#pragma unroll
    for (int i = 0; i < S::kFragM; ++i)
#pragma unroll
        for (int j = 0; j < S::kFragN; ++j) {
            const int r = wm + i * 16 + (lane >> 2), c = wn + j * 8 + (lane & 3) * 2;
            const float top[2] = {acc[i][j][0], acc[i][j][1]}, bottom[2] = {acc[i][j][2], acc[i][j][3]};
            store_f32<2>(&staged[r * S::kLdc + c], top);
            store_f32<2>(&staged[(r + 8) * S::kLdc + c], bottom);
        }
}

// One tile per block (grid = all tiles). Faster than the persistent kernel below when K is long
// (K > 96: many steps per tile, few tiles): it keeps its per-tile addressing out of the K loop
// and aliases the epilogue staging onto the ring, so more blocks fit. Epilogue with the
// accurate activation (as measured; the persistent kernel's wide outputs needed the fast one).
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int MIN_BLOCKS>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, MIN_BLOCKS)
    pointwise_mma_tile_kernel(PointwiseArgs a, int n_tiles) {
    using S = TileShape<BM, BN, WARPS_M, WARPS_N>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* const ring = reinterpret_cast<T*>(smem_raw);           // kStages x {A [BM][LDS], B [BN][LDS]}
    float* const staged = reinterpret_cast<float*>(smem_raw); // [BM][kLdc], aliases the ring after the K loop

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int tile_n = int(blockIdx.x % unsigned(n_tiles));
    const int64_t m0 = int64_t(blockIdx.x / unsigned(n_tiles)) * BM;
    const int n0 = tile_n * BN;
    const int64_t M = a.rows;
    const int N = a.out_channels, K = a.in_channels;
    const T* const x = static_cast<const T*>(a.input);
    const T* const w = static_cast<const T*>(a.weight);

    // This thread copies, for every K tile, the chunks at column kc of rows copy_row + i * kRowsPerPass.
    const int kc = (tid % S::kChunksPerRow) * 8;
    const int copy_row = tid / S::kChunksPerRow;
    const T* a_src[S::kAChunks];
    const float* g_src[S::kAChunks];
    bool a_ok[S::kAChunks];
#pragma unroll
    for (int i = 0; i < S::kAChunks; ++i) {
        const int64_t m = m0 + copy_row + i * S::kRowsPerPass;
        a_ok[i] = m < M;
        const int64_t row = a_ok[i] ? m : 0; // a valid address even when nothing is read
        a_src[i] = x + row * K + kc;
        g_src[i] = a.gate ? a.gate + (row / a.rows_per_image) * K + kc : nullptr;
    }
    const T* b_src[S::kBChunks];
    bool b_ok[S::kBChunks];
#pragma unroll
    for (int i = 0; i < S::kBChunks; ++i) {
        const int n = n0 + copy_row + i * S::kRowsPerPass;
        b_ok[i] = n < N;
        b_src[i] = w + int64_t(b_ok[i] ? n : 0) * K + kc;
    }

    auto load_stage = [&](int slot, int kt) {
        T* As = ring + slot * S::kStageElems;
        T* Bs = As + BM * LDS;
        const bool k_ok = kt * BK + kc < K; // K % 8 == 0: a chunk is wholly inside or outside
        const int k_off = k_ok ? kt * BK : 0;
#pragma unroll
        for (int i = 0; i < S::kAChunks; ++i)
            cp_async16(As + (copy_row + i * S::kRowsPerPass) * LDS + kc, a_src[i] + k_off, a_ok[i] && k_ok);
#pragma unroll
        for (int i = 0; i < S::kBChunks; ++i)
            cp_async16(Bs + (copy_row + i * S::kRowsPerPass) * LDS + kc, b_src[i] + k_off, b_ok[i] && k_ok);
    };

    // Squeeze-excite gate: each thread rescales, in place, the A chunks it copied itself (its own
    // cp.async writes are visible to it after the wait); the barrier that follows publishes them.
    auto gate_stage = [&](int slot, int kt) {
        const int k = kt * BK + kc;
        if (k >= K) return;
        T* As = ring + slot * S::kStageElems;
#pragma unroll
        for (int i = 0; i < S::kAChunks; ++i)
            if (a_ok[i])
                gate_a_chunk<T>(As + (copy_row + i * S::kRowsPerPass) * LDS + kc, g_src[i] + kt * BK);
    };

    const int wm = (warp % WARPS_M) * S::kWarpM, wn = (warp / WARPS_M) * S::kWarpN;
    float acc[S::kFragM][S::kFragN][4];
    clear_accumulators<S>(acc);

    const int k_tiles = (K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_tiles) load_stage(s, s);
        cp_async_commit(); // empty groups keep the wait count uniform
    }

    for (int kt = 0; kt < k_tiles; ++kt) {
        const int slot = kt % kStages;
        cp_async_wait<kStages - 2>(); // this thread's copies of tile kt have landed
        if (a.gate) gate_stage(slot, kt);
        __syncthreads(); // everyone's copies of tile kt visible; slot (kt - 1) % kStages is free
        const int next = kt + kStages - 1;
        if (next < k_tiles) load_stage(next % kStages, next);
        cp_async_commit();

        const T* As = ring + slot * S::kStageElems;
        mma_k_tile<T, S>(As, As + BM * LDS, kt, K, N, n0, wm, wn, lane, acc);
    }
    cp_async_wait<0>();
    __syncthreads(); // the ring is reused as the fp32 staging tile
    stage_accumulators<S>(staged, acc, wm, wn, lane);
    __syncthreads();

    // Epilogue: 8 consecutive channels per item (N % 8 == 0), 16-byte loads and stores; all
    // residual loads are issued before the first store so they overlap.
    T* const y = static_cast<T*>(a.output);
    const T* const res = static_cast<const T*>(a.residual);
    VecWord<T, 8> res_raw[S::kOutChunks];
    if (res) {
#pragma unroll
        for (int i = 0; i < S::kOutChunks; ++i) {
            const int item = tid + i * S::kThreads;
            const int64_t m = m0 + item / S::kOutChunksPerRow;
            const int n = n0 + (item % S::kOutChunksPerRow) * 8;
            res_raw[i] = (m < M && n < N) ? load_word_readonly<T, 8>(res + m * N + n) : VecWord<T, 8>{};
        }
    }
#pragma unroll
    for (int i = 0; i < S::kOutChunks; ++i) {
        const int item = tid + i * S::kThreads;
        const int r = item / S::kOutChunksPerRow, c = (item % S::kOutChunksPerRow) * 8;
        const int64_t m = m0 + r;
        const int n = n0 + c;
        if (m >= M || n >= N) continue;
        float v[8];
        load_f32<8>(&staged[r * S::kLdc + c], v);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = act_forward(v[j] + __ldg(a.bias + n + j), a.act);
        if (res) {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] += word_element<T, 8>(res_raw[i], j);
        }
        store_vec<T, 8>(y + m * N + n, v);
    }
}

// Persistent: block b computes tiles b, b + gridDim.x, ... Tile t = (m tile t / n_tiles, n tile
// t % n_tiles), so the blocks running together share A tiles through L2. The copy ring runs over
// (tile, K tile) steps, kStages - 1 ahead, across tile boundaries: a block keeps its next tiles'
// reads in flight while it multiplies and writes the current one (most of these layers are
// memory-bound with K <= 32: one step per tile).
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int MIN_BLOCKS>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, MIN_BLOCKS)
    pointwise_mma_kernel(PointwiseArgs a, int n_tiles, int total_tiles) {
    using S = TileShape<BM, BN, WARPS_M, WARPS_N>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* const ring = reinterpret_cast<T*>(smem_raw); // kStages x {A [BM][LDS], B [BN][LDS]}
    float* const staged = reinterpret_cast<float*>(smem_raw + S::kRingBytes); // [BM][kLdc]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t M = a.rows;
    const int N = a.out_channels, K = a.in_channels;
    const uint32_t rows_per_image = uint32_t(a.rows_per_image);
    const T* const x = static_cast<const T*>(a.input);
    const T* const w = static_cast<const T*>(a.weight);
    const int k_tiles = (K + BK - 1) / BK;
    const int first_tile = int(blockIdx.x), tile_stride = int(gridDim.x);
    const int my_tiles = first_tile < total_tiles ? (total_tiles - 1 - first_tile) / tile_stride + 1 : 0;
    const int steps = my_tiles * k_tiles;

    // This thread copies, for every step, the chunks at column kc of rows copy_row + i * kRowsPerPass.
    const int kc = (tid % S::kChunksPerRow) * 8;
    const int copy_row = tid / S::kChunksPerRow;

    auto tile_of_step = [&](int step, int64_t& m0, int& n0) {
        const int tile = first_tile + (step / k_tiles) * tile_stride;
        m0 = int64_t(tile / n_tiles) * BM;
        n0 = (tile % n_tiles) * BN;
    };

    auto load_step = [&](int step) {
        int64_t m0;
        int n0;
        tile_of_step(step, m0, n0);
        const int k = (step % k_tiles) * BK + kc;
        const bool k_ok = k < K; // K % 8 == 0: a chunk is wholly inside or outside
        T* As = ring + (step % kStages) * S::kStageElems;
        T* Bs = As + BM * LDS;
#pragma unroll
        for (int i = 0; i < S::kAChunks; ++i) {
            const int r = copy_row + i * S::kRowsPerPass;
            const bool ok = k_ok && m0 + r < M;
            cp_async16(As + r * LDS + kc, ok ? x + (m0 + r) * K + k : x,
                       ok); // x: a valid address, nothing read
        }
#pragma unroll
        for (int i = 0; i < S::kBChunks; ++i) {
            const int r = copy_row + i * S::kRowsPerPass;
            const bool ok = k_ok && n0 + r < N;
            cp_async16(Bs + r * LDS + kc, ok ? w + int64_t(n0 + r) * K + k : w, ok);
        }
    };

    // Squeeze-excite gate: each thread rescales, in place, the A chunks it copied itself (its own
    // cp.async writes are visible to it after the wait); the barrier that follows publishes them.
    auto gate_step = [&](int step) {
        const int k = (step % k_tiles) * BK + kc;
        if (k >= K) return;
        int64_t m0;
        int n0;
        tile_of_step(step, m0, n0);
        T* As = ring + (step % kStages) * S::kStageElems;
#pragma unroll
        for (int i = 0; i < S::kAChunks; ++i) {
            const int r = copy_row + i * S::kRowsPerPass;
            if (m0 + r >= M) continue;
            // rows < 2^32 (host check)
            gate_a_chunk<T>(As + r * LDS + kc, a.gate + int64_t(uint32_t(m0 + r) / rows_per_image) * K + k);
        }
    };

    const int wm = (warp % WARPS_M) * S::kWarpM, wn = (warp / WARPS_M) * S::kWarpN;
    float acc[S::kFragM][S::kFragN][4];
    clear_accumulators<S>(acc);

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < steps) load_step(s);
        cp_async_commit(); // empty groups keep the wait count uniform
    }

    T* const y = static_cast<T*>(a.output);
    const T* const res = static_cast<const T*>(a.residual);
    const int out_col = (tid % S::kOutChunksPerRow) * 8; // this thread's 8 output columns in every tile

    for (int step = 0; step < steps; ++step) {
        const int kt = step % k_tiles;
        cp_async_wait<kStages - 2>(); // this thread's copies of `step` have landed
        if (a.gate) gate_step(step);
        __syncthreads(); // everyone's copies of `step` visible; the slot of step - 1 is free; staging reads
                         // done
        if (step + kStages - 1 < steps) load_step(step + kStages - 1);
        cp_async_commit();

        int64_t m0;
        int n0;
        tile_of_step(step, m0, n0);
        const T* As = ring + (step % kStages) * S::kStageElems;
        mma_k_tile<T, S>(As, As + BM * LDS, kt, K, N, n0, wm, wn, lane, acc);
        if (kt != k_tiles - 1) continue;

        // Tile done (the top-of-step barrier ordered the previous tile's staging reads).
        stage_accumulators<S>(staged, acc, wm, wn, lane);
        clear_accumulators<S>(acc);
        __syncthreads();

        // Epilogue: 8 consecutive channels per item (N % 8 == 0), 16-byte loads and stores; the
        // residual loads are all issued before the first store so that they overlap.
        const int n = n0 + out_col;
        if (n < N) {
            float bias[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) bias[j] = __ldg(a.bias + n + j);
            VecWord<T, 8> res_raw[S::kOutChunks];
            if (res) {
#pragma unroll
                for (int i = 0; i < S::kOutChunks; ++i) {
                    const int64_t m = m0 + (tid + i * S::kThreads) / S::kOutChunksPerRow;
                    res_raw[i] = m < M ? load_word_readonly<T, 8>(res + m * N + n) : VecWord<T, 8>{};
                }
            }
#pragma unroll
            for (int i = 0; i < S::kOutChunks; ++i) {
                const int r = (tid + i * S::kThreads) / S::kOutChunksPerRow;
                const int64_t m = m0 + r;
                if (m >= M) continue;
                float v[8];
                load_f32<8>(&staged[r * S::kLdc + out_col], v);
                // Fast math: the accurate one made the wide short-K layers arithmetic-bound.
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = act_forward<act_math_for<T>>(v[j] + bias[j], a.act);
                if (res) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) v[j] += word_element<T, 8>(res_raw[i], j);
                }
                store_vec<T, 8>(y + m * N + n, v);
            }
        }
    }
    cp_async_wait<0>(); // nothing is left in flight at exit (the last groups are empty)
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int MIN_BLOCKS>
void launch_tile(const PointwiseArgs& a, int max_blocks, cudaStream_t stream) {
    using S = TileShape<BM, BN, WARPS_M, WARPS_N>;
    const int n_tiles = (a.out_channels + BN - 1) / BN;
    const int64_t tiles = ((a.rows + BM - 1) / BM) * n_tiles;
    EFFNET_CHECK(tiles < (int64_t(1) << 31) && a.rows < (int64_t(1) << 32),
                 "pointwise_conv: too many rows for the tensor-core kernel (M=" + std::to_string(a.rows) +
                     ")");
    auto kernel = pointwise_mma_kernel<T, BM, BN, WARPS_M, WARPS_N, MIN_BLOCKS>;
    const int smem = int(S::kSmemBytes);
    if (smem > 48 * 1024)
        EFFNET_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    int device = 0, sm_count = 0, per_sm = 0;
    EFFNET_CUDA_CHECK(cudaGetDevice(&device));
    EFFNET_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    EFFNET_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, S::kThreads, size_t(smem)));
    int64_t blocks = std::min<int64_t>(tiles, int64_t(std::max(per_sm, 1)) * sm_count);
    if (max_blocks > 0) blocks = std::min<int64_t>(blocks, max_blocks);
    kernel<<<unsigned(blocks), S::kThreads, size_t(smem), stream>>>(a, n_tiles, int(tiles));
    EFFNET_LAUNCH_CHECK("pointwise_mma_kernel");
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int MIN_BLOCKS>
void launch_tile_per_block(const PointwiseArgs& a, cudaStream_t stream) {
    using S = TileShape<BM, BN, WARPS_M, WARPS_N>;
    const int n_tiles = (a.out_channels + BN - 1) / BN;
    const int64_t m_tiles = (a.rows + BM - 1) / BM;
    const int64_t blocks = m_tiles * n_tiles;
    EFFNET_CHECK(blocks < (int64_t(1) << 31),
                 "pointwise_conv: too many tiles for one launch (M=" + std::to_string(a.rows) +
                     ", N=" + std::to_string(a.out_channels) + ")");
    const int k_tiles = (a.in_channels + BK - 1) / BK;
    const size_t smem = S::tile_per_block_smem_bytes(k_tiles);
    auto kernel = pointwise_mma_tile_kernel<T, BM, BN, WARPS_M, WARPS_N, MIN_BLOCKS>;
    if (smem > 48 * 1024)
        EFFNET_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<unsigned(blocks), S::kThreads, smem, stream>>>(a, n_tiles);
    EFFNET_LAUNCH_CHECK("pointwise_mma_tile_kernel");
}

// K <= 96 (at most 3 K tiles): the persistent kernel; longer K: one tile per block. Both were
// timed on every B0 layer at batch 32 and 256 (H200): the persistent one wins by up to 1.8x on
// the wide, short-K layers and loses by up to 2x on the long-K ones.
bool use_persistent(const PointwiseArgs& a) {
    return a.in_channels <= 96;
}

// One tile shape under either schedule; the MIN_BLOCKS of each were tuned separately.
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int PERSISTENT_MIN_BLOCKS,
          int TILE_MIN_BLOCKS>
void launch_shape(const PointwiseArgs& a, bool persistent, int max_blocks, cudaStream_t stream) {
    if (persistent)
        launch_tile<T, BM, BN, WARPS_M, WARPS_N, PERSISTENT_MIN_BLOCKS>(a, max_blocks, stream);
    else
        launch_tile_per_block<T, BM, BN, WARPS_M, WARPS_N, TILE_MIN_BLOCKS>(a, stream);
}

template <typename T>
void launch_typed(const PointwiseArgs& a, PointwiseTile tile, int max_blocks, cudaStream_t stream) {
    const bool persistent = max_blocks > 0 || (max_blocks == 0 && use_persistent(a));
    switch (tile) {
    case PointwiseTile::M128_N32:
        return launch_shape<T, 128, 32, 4, 1, 3, 4>(a, persistent, max_blocks, stream);
    case PointwiseTile::M128_N64:
        return launch_shape<T, 128, 64, 4, 2, 2, 3>(a, persistent, max_blocks, stream);
    case PointwiseTile::M64_N64:
        return launch_shape<T, 64, 64, 2, 2, 3, 4>(a, persistent, max_blocks, stream);
    case PointwiseTile::M32_N64:
        return launch_shape<T, 32, 64, 2, 2, 4, 4>(a, persistent, max_blocks, stream);
    }
}

} // namespace

PointwiseTile choose_pointwise_tile(int64_t rows, int out_channels, int in_channels, int sm_count) {
    auto blocks = [&](int bm, int bn) { return ((rows + bm - 1) / bm) * ((out_channels + bn - 1) / bn); };
    // The largest tile that still gives every multiprocessor two tiles (four when K >= 512: one
    // block's K loop is a chain of dependent copies, so long-K layers on 7x7 / 14x14 maps want
    // more, smaller tiles). Short K (<= 32) or narrow Cout (<= 32): 128 x 32, fastest measured
    // there even for Cout = 96 or 144 (more blocks resident, more reads in flight).
    const int64_t enough = (in_channels >= 512 ? 4 : 2) * int64_t(sm_count);
    if ((in_channels <= 32 || out_channels <= 32) && blocks(128, 32) >= enough)
        return PointwiseTile::M128_N32;
    if (blocks(128, 64) >= enough) return PointwiseTile::M128_N64;
    if (blocks(64, 64) >= enough) return PointwiseTile::M64_N64;
    return PointwiseTile::M32_N64;
}

void launch_pointwise_mma(const PointwiseArgs& a, Precision precision, cudaStream_t stream) {
    int device = 0, sm_count = 0;
    EFFNET_CUDA_CHECK(cudaGetDevice(&device));
    EFFNET_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    launch_pointwise_mma(a, precision, choose_pointwise_tile(a.rows, a.out_channels, a.in_channels, sm_count),
                         stream, 0);
}

void launch_pointwise_mma(const PointwiseArgs& a, Precision precision, PointwiseTile tile,
                          cudaStream_t stream, int max_blocks) {
    EFFNET_CHECK(pointwise_tensor_core_eligible(a, precision),
                 "pointwise_conv: tensor-core kernel needs fp16/bf16, K and N multiples of 8 and 16-byte "
                 "aligned pointers");
    dispatch_storage(precision, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if constexpr (std::is_same_v<T, float>)
            throw Error("pointwise_conv: the tensor-core kernel takes fp16 or bf16, not fp32");
        else
            launch_typed<T>(a, tile, max_blocks, stream);
    });
}

} // namespace effnet::kernels
