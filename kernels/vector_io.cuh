#pragma once
// Vector access (included by .cu files only): N consecutive elements moved as whole 16-byte words
// (or one 8- or 4-byte word for a short run) and converted to and from float, and the alignment
// checks with which the launchers choose or require it. Two kinds of data: tensors in the
// storage precision T (load_vec / store_vec, packed words) and fp32 arrays (load_f32 / store_f32,
// float4 words). Every vector load and store of the kernels goes through here; the caller
// guarantees the alignment (checked on the host).
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/common.cuh"

namespace effnet::kernels {

// ---- Host: alignment ----------------------------------------------------------------------------

inline bool aligned_to(const void* p, size_t bytes) {
    return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}
inline bool aligned16(const void* p) {
    return aligned_to(p, 16);
}
// Every pointer allows 16-byte access (a null pointer, i.e. an unused operand, passes).
inline bool aligned16(std::initializer_list<const void*> ptrs) {
    for (const void* p : ptrs)
        if (!aligned16(p)) return false;
    return true;
}
// Rows of `elements` elements can be read as vectors of `per_vector`: the rows split into whole
// vectors and every pointer is 16-byte aligned.
inline bool vectors_fit(int64_t elements, int per_vector, std::initializer_list<const void*> ptrs) {
    return elements % per_vector == 0 && aligned16(ptrs);
}

#ifdef __CUDACC__
// ---- Device: words ------------------------------------------------------------------------------

// The register word of one access of N storage elements of T: T itself for N == 1, else packed
// 32-bit words (4, 8 or 16 bytes).
template <typename T, int N>
struct VecWordOf {
    static constexpr int kBytes = N * int(sizeof(T));
    static_assert(N == 1 || kBytes == 4 || kBytes == 8 || kBytes == 16, "a word is 4, 8 or 16 bytes");
    using Packed = std::conditional_t<kBytes == 16, uint4, std::conditional_t<kBytes == 8, uint2, uint32_t>>;
    using type = std::conditional_t<N == 1, T, Packed>;
};
template <typename T, int N>
using VecWord = typename VecWordOf<T, N>::type;

template <typename T, int N>
__device__ __forceinline__ VecWord<T, N> load_word(const T* p) {
    return *reinterpret_cast<const VecWord<T, N>*>(p);
}
// Through the read-only data cache (__ldg): data no thread of the kernel writes.
template <typename T, int N>
__device__ __forceinline__ VecWord<T, N> load_word_readonly(const T* p) {
    return __ldg(reinterpret_cast<const VecWord<T, N>*>(p));
}
// Element i of a word, as a float.
template <typename T, int N>
__device__ __forceinline__ float word_element(const VecWord<T, N>& w, int i) {
    return to_float(reinterpret_cast<const T*>(&w)[i]);
}

// Elements per access for a run of N: 16 bytes' worth when N fills whole 16-byte words, all of
// them when they make one 8- or 4-byte word, else one (element by element).
template <typename T, int N>
constexpr int vec_word_elems() {
    constexpr int kBytes = N * int(sizeof(T));
    if (N > 1 && kBytes % 16 == 0) return 16 / int(sizeof(T));
    if (N > 1 && (kBytes == 8 || kBytes == 4)) return N;
    return 1;
}

// ---- Device: tensors in the storage precision: N elements of T <-> float[N] ----------------------
// Each word is built and taken apart in place: a read-modify-write of one word stays one load and
// one store, and the kernels compile as they did with the hand-written accesses.

template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[N]) {
    constexpr int E = vec_word_elems<T, N>();
    if constexpr (E == 1) {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = to_float(p[i]);
    } else {
#pragma unroll
        for (int w = 0; w < N / E; ++w) {
            const VecWord<T, E> raw = load_word<T, E>(p + w * E);
            const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int i = 0; i < E; ++i) out[w * E + i] = to_float(e[i]);
        }
    }
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[N]) {
    constexpr int E = vec_word_elems<T, N>();
    if constexpr (E == 1) {
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = from_float<T>(in[i]);
    } else {
#pragma unroll
        for (int w = 0; w < N / E; ++w) {
            VecWord<T, E> raw;
            T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
            for (int i = 0; i < E; ++i) e[i] = from_float<T>(in[w * E + i]);
            *reinterpret_cast<VecWord<T, E>*>(p + w * E) = raw;
        }
    }
}

// ---- Device: fp32 arrays (weights, batch-norm parameters, workspaces, staging tiles) -------------
// N floats as float4 words (float2 for N == 2; one by one otherwise).

template <typename W, bool ReadOnly>
__device__ __forceinline__ W load_float_word(const W* p) {
    if constexpr (ReadOnly)
        return __ldg(p);
    else
        return *p;
}

template <int N, bool ReadOnly = false>
__device__ __forceinline__ void load_f32(const float* p, float (&out)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; ++i) {
            const float4 w = load_float_word<float4, ReadOnly>(reinterpret_cast<const float4*>(p) + i);
            out[4 * i] = w.x;
            out[4 * i + 1] = w.y;
            out[4 * i + 2] = w.z;
            out[4 * i + 3] = w.w;
        }
    } else if constexpr (N == 2) {
        const float2 w = load_float_word<float2, ReadOnly>(reinterpret_cast<const float2*>(p));
        out[0] = w.x;
        out[1] = w.y;
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = load_float_word<float, ReadOnly>(p + i);
    }
}
template <int N>
__device__ __forceinline__ void load_f32_readonly(const float* p, float (&out)[N]) {
    load_f32<N, true>(p, out);
}

template <int N>
__device__ __forceinline__ void store_f32(float* p, const float (&in)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; ++i)
            reinterpret_cast<float4*>(p)[i] =
                make_float4(in[4 * i], in[4 * i + 1], in[4 * i + 2], in[4 * i + 3]);
    } else if constexpr (N == 2) {
        *reinterpret_cast<float2*>(p) = make_float2(in[0], in[1]);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = in[i];
    }
}
#endif

} // namespace effnet::kernels
