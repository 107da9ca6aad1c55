// The fast CPU kernels, written once with GCC/Clang vector extensions and compiled once per
// instruction set: the including file defines EFFNET_ISA (the namespace), EFFNET_VW (floats per
// vector) and EFFNET_MR (GEMM tile rows), and is compiled with that ISA's flags. Nothing from
// the standard library is instantiated here, so no inline function built for a wide ISA can be
// picked by the linker for code that runs on a narrower one.
#include <cstdint>
#include <type_traits> // std::integral_constant: a type, no code
#include <utility>     // std::integer_sequence: a type, no code

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps() and warn about it.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include "cpu_fast/kernels.hpp"

namespace effnet::cpu_fast::EFFNET_ISA {
namespace {

constexpr int VW = EFFNET_VW;
constexpr int MR = EFFNET_MR;
constexpr int NR = 2 * VW;

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vf_unaligned __attribute__((vector_size(VW * 4), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

inline vf load(const float* p) {
    return *reinterpret_cast<const vf_unaligned*>(p);
}
inline void store(float* p, vf v) {
    *reinterpret_cast<vf_unaligned*>(p) = v;
}
inline vf splat(float s) {
    return s - vf{};
} // s - 0 is s for every s (s + 0 is not for -0)
inline int imin(int a, int b) {
    return a < b ? a : b;
}
inline int imax(int a, int b) {
    return a > b ? a : b;
}

// e^r for |r| <= ln2 / 2 by its degree-6 Taylor polynomial in Horner form (6 multiply-adds;
// truncation error <= 0.347^7 / 7! = 1.2e-7 relative).
inline vf exp_poly(vf r) {
    vf p = splat(1.0f / 720.0f);
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}

// e^-v (the SiLU's and the sigmoid's): -v = n ln2 + r, e^r by the polynomial, times 2^n. v is
// clamped below at -88 (e^88 is still finite); a NaN stays NaN.
#if defined(__AVX512F__) && EFFNET_VW == 16
inline vf exp_neg(vf v) {
    // max returns its second operand when one is NaN: v comes second. Above v = 88, scalef's
    // result is a denormal or 0, flushed to 0 inside a forward (FlushDenormals).
    const __m512 c = _mm512_max_ps(_mm512_set1_ps(-88.0f), (__m512)v);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(-1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf s = (vf)c + (vf)n * 0.693359375f; // s = -r: ln2 in two parts, exact products
    s = s + (vf)n * -2.12194440e-4f;
    return (vf)_mm512_scalef_ps((__m512)exp_poly(-s), n); // p * 2^n in one instruction
}
#else
inline vf exp_neg(vf v) {
    vf x = -v;
    x = x < splat(-87.0f) ? splat(-87.0f) : x; // 2^n stays a normal float
    x = x > splat(88.0f) ? splat(88.0f) : x;   // NaN compares false: it stays NaN
    const vf shifter = splat(12582912.0f);     // 1.5 * 2^23: adding it rounds to an integer
    const vf n = (x * 1.44269504088896341f + shifter) - shifter;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return exp_poly(r) * (vf)bits; // a vector cast reinterprets the bits
}
#endif

// 1 / d. AVX-512: the 14-bit hardware estimate refined by one Newton step (~1 ulp; a division
// costs ~10x a multiply-add and the SiLU epilogues would be bound by it). Elsewhere a division:
// AVX2's 12-bit estimate needs two steps, and with them B5..B7's logits drifted 3x further from
// the reference engine (1.4e-5 instead of 5e-6) than with the division.
inline vf reciprocal(vf d) {
#if defined(__AVX512F__) && EFFNET_VW == 16
    const vf r = (vf)_mm512_maskz_rcp14_ps(0xffff, (__m512)d); // maskz: no undefined source
    return r * (2.0f - d * r);
#else
    return 1.0f / d;
#endif
}

template <Act A>
inline vf activate(vf v) {
    if constexpr (A == Act::SiLU) {
        // x / (1 + e^-x); for x < -88 the denominator is e^88 (clamped) and the result ~ -0.
        return v * reciprocal(exp_neg(v) + 1.0f);
    } else if constexpr (A == Act::ReLU6) {
        v = v < splat(0.0f) ? splat(0.0f) : v; // NaN compares false: it stays NaN
        return v > splat(6.0f) ? splat(6.0f) : v;
    } else {
        return v;
    }
}

inline vf activate(vf v, Act a) {
    switch (a) {
    case Act::SiLU:
        return activate<Act::SiLU>(v);
    case Act::ReLU6:
        return activate<Act::ReLU6>(v);
    case Act::None:
        break;
    }
    return v;
}

// ---- GEMM -------------------------------------------------------------------------------
// One R x NR tile of C (R <= MR rows; TWO: both vectors of the panel, else only the first,
// for the last panel of an n that is an odd number of vectors) over kc columns of A (row-major,
// rows `a` .. `a + (R-1) * lda`) and a packed B chunk ([kc][NR]). first: C is overwritten (else
// accumulated); last: the epilogue runs.
// The tile's epilogue when its K chunk is the last: v = act(acc [+ C] + bias) [+ residual],
// specialised so that no branch runs per vector.
template <int R, int V, Act A, bool ACCUMULATE, bool RESIDUAL>
inline void finish_tile(const GemmArgs& g, vf (&acc)[R][V], int64_t row0, int col0) {
    vf bias[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) bias[v] = load(g.bias + col0 + v * VW);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
        float* c = g.c + (row0 + i) * g.ldc + col0;
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) {
            vf x = acc[i][v];
            if constexpr (ACCUMULATE) x += load(c + v * VW);
            x = activate<A>(x + bias[v]);
            if constexpr (RESIDUAL) x += load(g.residual + (row0 + i) * g.ld_residual + col0 + v * VW);
            store(c + v * VW, x);
        }
    }
}

template <int R, bool TWO, Act A>
void gemm_tile(const GemmArgs& g, const float* a, int kc, const float* b, int64_t row0, int col0, bool first,
               bool last) {
    constexpr int V = TWO ? 2 : 1;
    const float* ar[R];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) ar[i] = a + int64_t(i) * g.lda;
    vf acc[R][V];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) acc[i][v] = splat(0.0f);
    for (int k = 0; k < kc; ++k, b += NR) {
        vf bv[V];
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) bv[v] = load(b + v * VW);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            const vf ai = splat(ar[i][k]);
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) acc[i][v] += ai * bv[v];
        }
    }
    if (!last) { // a partial sum: no epilogue
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            float* c = g.c + (row0 + i) * g.ldc + col0;
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) store(c + v * VW, first ? acc[i][v] : acc[i][v] + load(c + v * VW));
        }
    } else if (g.residual) {
        if (first)
            finish_tile<R, V, A, false, true>(g, acc, row0, col0);
        else
            finish_tile<R, V, A, true, true>(g, acc, row0, col0);
    } else {
        if (first)
            finish_tile<R, V, A, false, false>(g, acc, row0, col0);
        else
            finish_tile<R, V, A, true, false>(g, acc, row0, col0);
    }
}

// The tile function for each row count 1..MR and panel width (a block's last tile, a GEMM of
// few rows, an odd number of vectors).
using TileFn = void (*)(const GemmArgs&, const float*, int, const float*, int64_t, int, bool, bool);
template <typename Rows>
struct TileTable;
template <int... R>
struct TileTable<std::integer_sequence<int, R...>> {
    template <Act A>
    static constexpr TileFn two[] = {&gemm_tile<R + 1, true, A>...};
    template <Act A>
    static constexpr TileFn one[] = {&gemm_tile<R + 1, false, A>...};
};
using Tiles = TileTable<std::make_integer_sequence<int, MR>>;

inline TileFn tile_fn(Act act, bool two, int rows) {
    switch (act) {
    case Act::SiLU:
        return two ? Tiles::two<Act::SiLU>[rows - 1] : Tiles::one<Act::SiLU>[rows - 1];
    case Act::ReLU6:
        return two ? Tiles::two<Act::ReLU6>[rows - 1] : Tiles::one<Act::ReLU6>[rows - 1];
    case Act::None:
        break;
    }
    return two ? Tiles::two<Act::None>[rows - 1] : Tiles::one<Act::None>[rows - 1];
}

void gemm(const GemmArgs& g, int64_t m0, int64_t m1, int p0, int p1, float* scratch) {
    // With a gate, every row of [m0, m1) belongs to one image (the caller splits by image), and
    // the gate scales B's rows (k) instead of A's columns: kc x NR multiplies per chunk.
    const float* gate = g.gate ? g.gate + (m0 / g.rows_per_image) * g.ld_gate : nullptr;
    for (int p = p0; p < p1; ++p) {
        const int col0 = p * NR;
        const int cols = imin(NR, g.n - col0);
        for (int k0 = 0; k0 < g.k; k0 += kGemmKC) {
            const int kc = imin(kGemmKC, g.k - k0);
            const float* b = g.b_packed + (int64_t(p) * g.k + k0) * NR;
            if (gate) {
                for (int kk = 0; kk < kc; ++kk) {
                    const float s = gate[k0 + kk];
                    store(scratch + kk * NR, load(b + kk * NR) * s);
                    store(scratch + kk * NR + VW, load(b + kk * NR + VW) * s);
                }
                b = scratch;
            }
            const bool first = k0 == 0, last = k0 + kc == g.k;
            // The task's next B chunk follows this one in memory (panels are [k][NR], one after
            // the other): prefetch it into L2 a share per tile, so that a block of few rows (a
            // small batch) does not wait on the weights at every chunk's first tile.
            const char* next = reinterpret_cast<const char*>(g.b_packed + (int64_t(p) * g.k + k0 + kc) * NR);
            const char* next_end = reinterpret_cast<const char*>(g.b_packed + int64_t(p1) * g.k * NR);
            const int64_t next_bytes = imin(kGemmKC * NR * 4, int(next_end - next));
            const int64_t tiles = (m1 - m0 + MR - 1) / MR;
            const int64_t share = (next_bytes / 64 + tiles - 1) / tiles * 64;
            for (int64_t t = m0; t < m1; t += MR) {
                const int rows = int(m1 - t < MR ? m1 - t : MR);
                const TileFn tile = tile_fn(g.act, cols == NR, rows);
                const int64_t from = (t - m0) / MR * share;
                for (int64_t off = from; off < from + share && off < next_bytes; off += 64)
                    __builtin_prefetch(next + off, 0, 2);
                tile(g, g.a + t * g.lda + k0, kc, b, t, col0, first, last);
            }
        }
    }
}

// ---- Depthwise --------------------------------------------------------------------------
// A strip of up to SW neighbouring output pixels of one row, one channel vector: each input
// vector the strip reads is loaded once and multiplied into every output that uses it (a
// 3x3 stride-1 strip of 8 loads 10 input vectors per kernel row, not 24). x: the strip's first
// input column in its first kernel row (ky0), channel c; w: kernel row ky0's weights at c; y:
// the strip's first output at c. EDGE: taps outside the row are skipped (ix0: the first input
// column's index, in [-pad, w)) and only `count` outputs are written; else all SW outputs and
// their taps are inside.
struct StripArgs {
    int64_t cs, row_stride; // floats between neighbouring pixels, input rows
    int rows;               // kernel rows inside the image (ky0..ky1)
    int ix0, w, count;      // EDGE only
};

template <int K, int S, int SW, bool EDGE, Act A>
__attribute__((always_inline)) inline vf dw_strip(const StripArgs& s, const float* x, const float* w, vf bias,
                                                  float* y) {
    constexpr int IN = (SW - 1) * S + K; // input columns the strip reads
    vf acc[SW];
#pragma GCC unroll 16
    for (int o = 0; o < SW; ++o) acc[o] = bias;
    for (int ky = 0; ky < s.rows; ++ky, x += s.row_stride, w += K * s.cs) {
        vf wk[K];
#pragma GCC unroll 8
        for (int kx = 0; kx < K; ++kx) wk[kx] = load(w + kx * s.cs);
        const float* xp = x;
#pragma GCC unroll 32
        for (int j = 0; j < IN; ++j, xp += s.cs) {
            // One pointer stepped along the row: without the barrier GCC keeps an address per
            // column and spills them.
            asm("" : "+r"(xp));
            if constexpr (EDGE) {
                if (s.ix0 + j < 0 || s.ix0 + j >= s.w || j > (s.count - 1) * S + K - 1) continue;
            }
            const vf xv = load(xp);
#pragma GCC unroll 16
            for (int o = 0; o < SW; ++o) {
                const int kx = j - o * S;
                if (kx >= 0 && kx < K) acc[o] += xv * wk[kx];
            }
        }
    }
    vf sum = splat(0.0f);
#pragma GCC unroll 16
    for (int o = 0; o < SW; ++o) {
        if (EDGE && o >= s.count) break;
        const vf v = activate<A>(acc[o]);
        store(y + o * s.cs, v);
        sum += v;
    }
    return sum;
}

// Strip width: 8 outputs when the accumulators, the K weights and an input fit the registers.
template <int K>
constexpr int strip_width() {
    return VW == 16 || K <= 5 ? 8 : 4;
}

// Output rows [oy0, oy1), channels [c0, c1): each row in strips along x (every channel vector
// of a strip before the next strip: the strip's input columns stay in L1 for the next one's
// overlap): the inside in strips of SW, then SW / 2; the borders and what is left in edge
// strips of SW / 2.
template <int K, int S, Act A>
void dw_rows(const DepthwiseArgs& d, int image, int oy0, int oy1, int c0, int c1) {
    constexpr int SW = strip_width<K>(), SH = SW / 2;
    const float* x = d.x + int64_t(image) * d.x_image_stride;
    // Output columns whose taps all fall inside the row: [lo, hi).
    const int lo = imin(d.wo, (d.pad_left + S - 1) / S);
    const int hi = imax(lo, imin(d.wo, (d.w - K + d.pad_left) / S + 1));
    StripArgs s;
    s.cs = d.cs;
    s.row_stride = int64_t(d.w) * d.cs;
    s.w = d.w;
    for (int oy = oy0; oy < oy1; ++oy) {
        const int iy0 = oy * S - d.pad_top;
        const int ky0 = imax(0, -iy0), ky1 = imin(K, d.h - iy0);
        s.rows = ky1 - ky0;
        const float* xrow = x + int64_t(iy0 + ky0 - d.x_row0) * s.row_stride; // at column 0
        const float* wrow = d.weight + ky0 * K * d.cs;
        float* yrow = d.y + (int64_t(image) * d.ho + oy) * d.wo * d.cs;
        float* sums = d.row_sums ? d.row_sums + (int64_t(image) * d.ho + oy) * d.cs : nullptr;
        if (sums)
            for (int c = c0; c < c1; c += VW) store(sums + c, splat(0.0f));
        auto edges = [&](int from, int to) {
            for (int ox = from; ox < to; ox += SH) {
                s.ix0 = ox * S - d.pad_left;
                s.count = imin(SH, to - ox);
                for (int c = c0; c < c1; c += VW) {
                    const vf sum =
                        dw_strip<K, S, SH, true, A>(s, xrow + int64_t(s.ix0) * d.cs + c, wrow + c,
                                                    load(d.bias + c), yrow + int64_t(ox) * d.cs + c);
                    if (sums) store(sums + c, load(sums + c) + sum);
                }
            }
        };
        auto inside = [&](auto width, int& ox) {
            constexpr int W = decltype(width)::value;
            for (; ox + W <= hi; ox += W) {
                const float* xs = xrow + int64_t(ox * S - d.pad_left) * d.cs;
                float* ys = yrow + int64_t(ox) * d.cs;
                for (int c = c0; c < c1; c += VW) {
                    const vf sum = dw_strip<K, S, W, false, A>(s, xs + c, wrow + c, load(d.bias + c), ys + c);
                    if (sums) store(sums + c, load(sums + c) + sum);
                }
            }
        };
        edges(0, lo);
        int ox = lo;
        inside(std::integral_constant<int, SW>{}, ox);
        inside(std::integral_constant<int, SH>{}, ox);
        edges(ox, d.wo);
    }
}

template <int K, int S>
void dw_act(const DepthwiseArgs& d, int image, int oy0, int oy1, int c0, int c1) {
    switch (d.act) {
    case Act::SiLU:
        return dw_rows<K, S, Act::SiLU>(d, image, oy0, oy1, c0, c1);
    case Act::ReLU6:
        return dw_rows<K, S, Act::ReLU6>(d, image, oy0, oy1, c0, c1);
    case Act::None:
        return dw_rows<K, S, Act::None>(d, image, oy0, oy1, c0, c1);
    }
}

// Kernel sizes 3, 5 (every EfficientNet) and 7 (custom configs), strides 1 and 2; the caller
// refuses others.
void depthwise(const DepthwiseArgs& d, int image, int oy0, int oy1, int c0, int c1) {
    const int key = d.k * 10 + d.stride;
    switch (key) {
    case 31:
        return dw_act<3, 1>(d, image, oy0, oy1, c0, c1);
    case 32:
        return dw_act<3, 2>(d, image, oy0, oy1, c0, c1);
    case 51:
        return dw_act<5, 1>(d, image, oy0, oy1, c0, c1);
    case 52:
        return dw_act<5, 2>(d, image, oy0, oy1, c0, c1);
    case 71:
        return dw_act<7, 1>(d, image, oy0, oy1, c0, c1);
    case 72:
        return dw_act<7, 2>(d, image, oy0, oy1, c0, c1);
    }
}

// ---- Squeeze-excite ---------------------------------------------------------------------
// out[o] = bias[o] + sum_i in[i] * w[i][o] for o in [0, n) (a multiple of VW), w rows ld apart:
// up to four output vectors accumulate in registers over all of in (stored once, not once per
// input).
inline void matvec(const float* in, int count, const float* w, int64_t ld, const float* bias, int n,
                   float* out) {
    int o = 0;
    for (; o + 4 * VW <= n; o += 4 * VW) {
        vf acc[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) acc[v] = load(bias + o + v * VW);
        for (int i = 0; i < count; ++i) {
            const vf x = splat(in[i]);
            const float* wr = w + i * ld + o;
#pragma GCC unroll 4
            for (int v = 0; v < 4; ++v) acc[v] += x * load(wr + v * VW);
        }
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) store(out + o + v * VW, acc[v]);
    }
    for (; o < n; o += VW) {
        vf acc = load(bias + o);
        for (int i = 0; i < count; ++i) acc += splat(in[i]) * load(w + i * ld + o);
        store(out + o, acc);
    }
}

void squeeze_excite(const SqueezeExciteArgs& a, int image, float* scratch) {
    float* mean = scratch;          // [cs]
    float* hidden = scratch + a.cs; // [rs]
    const float* sums = a.row_sums + int64_t(image) * a.rows * a.cs;
    for (int i = 0; i < a.cs; i += VW) {
        vf m = load(sums + i);
        for (int y = 1; y < a.rows; ++y) m += load(sums + int64_t(y) * a.cs + i);
        store(mean + i, m * a.inv_pixels);
    }
    matvec(mean, a.c, a.reduce, a.rs, a.reduce_bias, a.rs, hidden);
    for (int j = 0; j < a.rs; j += VW) store(hidden + j, activate(load(hidden + j), a.act));
    float* g = a.gate + int64_t(image) * a.cs;
    matvec(hidden, a.r, a.expand, a.cs, a.expand_bias, a.cs, g);
    for (int i = 0; i < a.cs; i += VW) store(g + i, reciprocal(exp_neg(load(g + i)) + 1.0f));
}

} // namespace

const KernelTable& table() {
    static const KernelTable t{EFFNET_ISA_NAME, VW, MR, NR, &gemm, &depthwise, &squeeze_excite};
    return t;
}

} // namespace effnet::cpu_fast::EFFNET_ISA
