#pragma once
// One planned cuBLASLt matmul for a 1x1 convolution on NHWC rows:
//   Y[M, N] = X[M, K] * W[N, K]^T + bias[N] (+ R[M, N])
// All row-major in the storage precision (bias too), fp32 accumulation. cuBLASLt is
// column-major, so it computes Y^T[N, M] = W * X^T: A = W (transposed), B = X, C = R, D = Y,
// and the bias runs along D's N rows (CUBLASLT_EPILOGUE_BIAS). Descriptors and the algorithm
// are fixed at construction (the algorithm by timing the heuristic's candidates on the given
// buffers); run() only launches, so it can be captured in a CUDA graph.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "effnet/inference.hpp"

namespace effnet::cuda {

struct LtMatmulShape {
    int64_t rows = 0; // M
    int out = 0;      // N
    int in = 0;       // K
    bool residual = false;
    bool tf32 = false; // fp32 only: TF32 tensor cores
};

// The buffers a launch reads and writes (device pointers).
struct LtMatmulBuffers {
    const void* x = nullptr;        // [M, K]
    const void* w = nullptr;        // [N, K]
    const void* bias = nullptr;     // [N], storage precision; bound at construction (the
                                    // descriptor holds it), ignored by run()
    const void* residual = nullptr; // [M, N] or null
    void* y = nullptr;              // [M, N]
};

class LtMatmul {
public:
    // Chooses the algorithm by timing up to `candidates` heuristic results on `buffers` (whose
    // contents are overwritten); throws effnet::Error when cuBLASLt has no algorithm.
    LtMatmul(cublasLtHandle_t handle, Precision precision, const LtMatmulShape& shape,
             const LtMatmulBuffers& buffers, void* workspace, size_t workspace_bytes, cudaStream_t stream,
             int candidates = 8);
    ~LtMatmul();
    LtMatmul(const LtMatmul&) = delete;
    LtMatmul& operator=(const LtMatmul&) = delete;

    void run(const LtMatmulBuffers& buffers, cudaStream_t stream) const;
    // Mean time of one launch of the chosen algorithm, measured while choosing (milliseconds).
    float measured_ms() const { return measured_ms_; }

private:
    void launch(const cublasLtMatmulAlgo_t& algo, const LtMatmulBuffers& b, cudaStream_t stream) const;

    cublasLtHandle_t handle_;
    LtMatmulShape shape_;
    cublasLtMatmulDesc_t op_ = nullptr;
    cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
    cublasLtMatmulAlgo_t algo_{};
    void* workspace_ = nullptr;
    size_t workspace_bytes_ = 0;
    float measured_ms_ = 0.0f;
};

} // namespace effnet::cuda
