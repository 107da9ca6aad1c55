// TrainBlas: the cuBLAS GEMMs of the GPU training step (see train_blas.hpp).
#include "libeffnet/cuda/train_blas.hpp"

#include <climits>
#include <string>

#include "effnet/error.hpp"
#include "libeffnet/cuda/context.hpp"

namespace effnet::cuda {

namespace {

cudaDataType_t cuda_type(Precision p) {
    switch (p) {
    case Precision::FP32:
        return CUDA_R_32F;
    case Precision::FP16:
        return CUDA_R_16F;
    case Precision::BF16:
        return CUDA_R_16BF;
    }
    throw Error("TrainBlas: unknown precision");
}

int checked_int(int64_t v, const char* what) {
    EFFNET_CHECK(v >= 0 && v <= INT_MAX, std::string("TrainBlas: ") + what + " = " + std::to_string(v) +
                                             " does not fit a cuBLAS int");
    return int(v);
}

constexpr size_t kBlasWorkspaceBytes = size_t(32) << 20;

} // namespace

TrainBlas::TrainBlas(cudaStream_t stream, Precision storage, bool deterministic, bool allow_tf32)
    : storage_(storage),
      compute_(storage == Precision::FP32 && allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F),
      workspace_(kBlasWorkspaceBytes, "cuBLAS workspace") {
    EFFNET_CUBLAS_CHECK(cublasCreate(&handle_));
    try {
        EFFNET_CUBLAS_CHECK(cublasSetStream(handle_, stream));
        EFFNET_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_.data(), workspace_.size()));
        // No TF32 unless asked for (then through the compute type of each GEMM).
        EFFNET_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
        EFFNET_CUBLAS_CHECK(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST));
        EFFNET_CUBLAS_CHECK(cublasSetAtomicsMode(handle_, deterministic ? CUBLAS_ATOMICS_NOT_ALLOWED
                                                                        : CUBLAS_ATOMICS_ALLOWED));
    } catch (...) {
        cublasDestroy(handle_);
        throw;
    }
}

TrainBlas::~TrainBlas() {
    if (handle_) cublasDestroy(handle_);
}

// Row-major [rows, C] activations are column-major [C, rows]: every product below is written
// for cuBLAS's column-major view.
void TrainBlas::forward(const void* x, int64_t x_ld, const void* w, int64_t w_ld, void* z, int64_t rows,
                        int in, int out) {
    EFFNET_CHECK(x && w && z && in >= 1 && out >= 1 && rows >= 1 && x_ld >= in && w_ld >= in,
                 "TrainBlas::forward: bad arguments rows=" + std::to_string(rows) +
                     " in=" + std::to_string(in) + " out=" + std::to_string(out));
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t t = cuda_type(storage_);
    // z^T [out, rows] = w [out, in] * x^T [in, rows]
    EFFNET_CUBLAS_CHECK(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, out, checked_int(rows, "rows"), in,
                                     &alpha, w, t, checked_int(w_ld, "w_ld"), x, t, checked_int(x_ld, "x_ld"),
                                     &beta, z, t, out, compute_, CUBLAS_GEMM_DEFAULT));
}

void TrainBlas::backward_data(const void* dz, const void* w, void* dx, int64_t rows, int in, int out,
                              bool accumulate) {
    EFFNET_CHECK(dz && w && dx && in >= 1 && out >= 1 && rows >= 1,
                 "TrainBlas::backward_data: bad arguments rows=" + std::to_string(rows) +
                     " in=" + std::to_string(in) + " out=" + std::to_string(out));
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cudaDataType_t t = cuda_type(storage_);
    // dx^T [in, rows] = w^T [in, out] * dz^T [out, rows]
    EFFNET_CUBLAS_CHECK(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, in, checked_int(rows, "rows"), out,
                                     &alpha, w, t, in, dz, t, out, &beta, dx, t, in, compute_,
                                     CUBLAS_GEMM_DEFAULT));
}

void TrainBlas::backward_weight(const void* x, int64_t x_ld, const void* dz, float* dw, int64_t rows, int in,
                                int out) {
    EFFNET_CHECK(x && dz && dw && in >= 1 && out >= 1 && rows >= 1 && x_ld >= in,
                 "TrainBlas::backward_weight: bad arguments rows=" + std::to_string(rows) +
                     " in=" + std::to_string(in) + " out=" + std::to_string(out));
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t t = cuda_type(storage_);
    // dw^T [in, out] = x^T [in, rows] * dz [rows, out]
    EFFNET_CUBLAS_CHECK(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_T, in, out, checked_int(rows, "rows"),
                                     &alpha, x, t, checked_int(x_ld, "x_ld"), dz, t, out, &beta, dw,
                                     CUDA_R_32F, in, compute_, CUBLAS_GEMM_DEFAULT));
}

} // namespace effnet::cuda
