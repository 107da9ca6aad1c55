#include "libeffnet/cuda/lt_matmul.hpp"

#include <limits>
#include <string>
#include <vector>

#include "libeffnet/cuda/context.hpp"
#include "libeffnet/cuda/time_launches.hpp"

namespace effnet::cuda {
namespace {

cudaDataType_t data_type(Precision p) {
    return p == Precision::FP32 ? CUDA_R_32F : p == Precision::FP16 ? CUDA_R_16F : CUDA_R_16BF;
}

template <typename T>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& value) {
    EFFNET_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof(value)));
}

} // namespace

LtMatmul::LtMatmul(cublasLtHandle_t handle, Precision precision, const LtMatmulShape& shape,
                   const LtMatmulBuffers& buffers, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream, int candidates)
    : handle_(handle), shape_(shape), workspace_(workspace), workspace_bytes_(workspace_bytes) {
    EFFNET_CHECK(handle && shape.rows >= 1 && shape.out >= 1 && shape.in >= 1 &&
                     shape.rows <= std::numeric_limits<int32_t>::max(),
                 "LtMatmul: bad shape M=" + std::to_string(shape.rows) + " N=" + std::to_string(shape.out) +
                     " K=" + std::to_string(shape.in));
    EFFNET_CHECK(!shape.tf32 || precision == Precision::FP32, "LtMatmul: TF32 applies to fp32 only");
    const cudaDataType_t type = data_type(precision);
    const cublasComputeType_t compute = shape.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    // Destroys whatever was created if a later call throws (the destructor does not run then).
    struct Cleanup {
        LtMatmul* self;
        bool armed = true;
        ~Cleanup() {
            if (!armed) return;
            if (self->c_) cublasLtMatrixLayoutDestroy(self->c_);
            if (self->b_) cublasLtMatrixLayoutDestroy(self->b_);
            if (self->a_) cublasLtMatrixLayoutDestroy(self->a_);
            if (self->op_) cublasLtMatmulDescDestroy(self->op_);
        }
    } cleanup{this};

    EFFNET_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, compute, CUDA_R_32F));
    set_desc(op_, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(CUBLAS_OP_T));
    set_desc(op_, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(CUBLAS_OP_N));
    set_desc(op_, CUBLASLT_MATMUL_DESC_EPILOGUE, uint32_t(CUBLASLT_EPILOGUE_BIAS));
    set_desc(op_, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(type));
    set_desc(op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, buffers.bias);
    const uint64_t M = uint64_t(shape.rows), N = uint64_t(shape.out), K = uint64_t(shape.in);
    // Column-major views: A = W^T stored as [K, N] (ld K), B = X^T as [K, M] (ld K), C/D [N, M].
    EFFNET_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_, type, K, N, int64_t(K)));
    EFFNET_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_, type, K, M, int64_t(K)));
    EFFNET_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c_, type, N, M, int64_t(N)));

    cublasLtMatmulPreference_t pref = nullptr;
    EFFNET_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    std::vector<cublasLtMatmulHeuristicResult_t> results(size_t(std::max(1, candidates)));
    int found = 0;
    const cublasStatus_t st = [&] {
        cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes));
        if (s != CUBLAS_STATUS_SUCCESS) return s;
        return cublasLtMatmulAlgoGetHeuristic(handle, op_, a_, b_, c_, c_, pref, int(results.size()),
                                              results.data(), &found);
    }();
    cublasLtMatmulPreferenceDestroy(pref);
    EFFNET_CUBLAS_CHECK(st);
    EFFNET_CHECK(found > 0, "LtMatmul: cuBLASLt has no algorithm for M=" + std::to_string(M) +
                                " N=" + std::to_string(N) + " K=" + std::to_string(K));

    // The heuristic's first choice is often not the fastest for these skinny shapes: time them.
    float best = std::numeric_limits<float>::infinity();
    for (int i = 0; i < found; ++i) {
        if (results[size_t(i)].state != CUBLAS_STATUS_SUCCESS) continue;
        const cublasLtMatmulAlgo_t algo = results[size_t(i)].algo;
        const float ms = time_launches(
            stream, [&] { launch(algo, buffers, stream); }, 1, 5);
        if (ms < best) {
            best = ms;
            algo_ = algo;
        }
    }
    EFFNET_CHECK(best < std::numeric_limits<float>::infinity(), "LtMatmul: no usable cuBLASLt algorithm");
    measured_ms_ = best;
    cleanup.armed = false;
}

LtMatmul::~LtMatmul() {
    if (c_) cublasLtMatrixLayoutDestroy(c_);
    if (b_) cublasLtMatrixLayoutDestroy(b_);
    if (a_) cublasLtMatrixLayoutDestroy(a_);
    if (op_) cublasLtMatmulDescDestroy(op_);
}

void LtMatmul::launch(const cublasLtMatmulAlgo_t& algo, const LtMatmulBuffers& b, cudaStream_t stream) const {
    const float alpha = 1.0f, beta = shape_.residual ? 1.0f : 0.0f;
    // With beta == 0 cuBLASLt does not read C; point it at D.
    const void* c = shape_.residual ? b.residual : b.y;
    EFFNET_CUBLAS_CHECK(cublasLtMatmul(handle_, op_, &alpha, b.w, a_, b.x, b_, &beta, c, c_, b.y, c_, &algo,
                                       workspace_, workspace_bytes_, stream));
}

void LtMatmul::run(const LtMatmulBuffers& b, cudaStream_t stream) const {
    launch(algo_, b, stream);
}

} // namespace effnet::cuda
