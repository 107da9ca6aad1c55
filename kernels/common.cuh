#pragma once
// Device-side helpers shared by the kernels (included by .cu files only): conversion between
// the storage type and float, fused activations, 16-byte vector loads/stores.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/types.cuh"

namespace effnet::kernels {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
    return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Whether a pointer allows 16-byte vector access (host side: the launchers choose the vector
// path or check a precondition with it).
inline bool aligned16(const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Accurate expf (not __expf): the fp32 path is checked to 1e-5 against the CPU reference.
__device__ __forceinline__ float apply_act(float v, Act a) {
    if (a == Act::SiLU) return v / (1.0f + expf(-v));
    if (a == Act::ReLU6) return fminf(fmaxf(v, 0.0f), 6.0f);
    return v;
}

__device__ __forceinline__ float sigmoidf_accurate(float v) {
    return 1.0f / (1.0f + expf(-v));
}

// V consecutive elements of T <-> float[V]. When V * sizeof(T) == 16 the access is one
// 16-byte load/store: the caller guarantees 16-byte alignment (checked on the host).
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
    if constexpr (V * sizeof(T) == 16) {
        const uint4 raw = *reinterpret_cast<const uint4*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < V; ++i) out[i] = to_float(e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < V; ++i) out[i] = to_float(p[i]);
    }
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[V]) {
    if constexpr (V * sizeof(T) == 16) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < V; ++i) e[i] = from_float<T>(in[i]);
        *reinterpret_cast<uint4*>(p) = raw;
    } else {
#pragma unroll
        for (int i = 0; i < V; ++i) p[i] = from_float<T>(in[i]);
    }
}

// Activation for a value about to be stored in precision T: fp32 keeps the accurate one (checked
// to 1e-5 against the CPU); fp16/bf16 carry 8-11 bits, so SiLU uses the fast exp and divide
// (relative error ~1e-6).
template <typename T>
__device__ __forceinline__ float activate_for(float v, Act a) {
    if constexpr (sizeof(T) == 4) {
        return apply_act(v, a);
    } else {
        if (a == Act::SiLU) return __fdividef(v, 1.0f + __expf(-v));
        if (a == Act::ReLU6) return fminf(fmaxf(v, 0.0f), 6.0f);
        return v;
    }
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; when !valid, writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

} // namespace effnet::kernels
