#pragma once
/// \file arch/fwht_avx512.hpp
/// AVX-512F fast Walsh–Hadamard transform of float rows (length 2^m, m ≥ 4), compiled with per-function
/// target attributes so that it exists in a build without `-march` flags; hadamard.hpp calls it only when
/// detail::host_cpu_features().avx512 is true (sources.md §P 5).
///
/// Schedule (radix-2 butterflies a+b, a−b throughout, so the result is bit-identical to
/// detail::fwht_scalar — every stage performs the same roundings on the same operands):
/// - pass 1 loads min(n, 256) contiguous floats into up to 16 zmm registers, runs the 4 in-register
///   stages h = 1, 2, 4, 8 (one lane permute + one FMA with a ±1 pattern each: x·s + perm(x) is exact
///   a ± b) and the up-to-4 cross-register stages h = 16 … 128, and stores once;
/// - every further pass is register-resident radix-16 (or 8/4/2 for the last one): 2^S zmm vectors at
///   stride h, S stages, one load and one store per element.
/// n = 4096 therefore touches memory twice (2 passes), n = 2^16 four times. An optional scale (1/√n for
/// the orthonormal transform) is applied in the last pass's stores. `fwht_over_rows` / `scale_rows` are the
/// row-butterfly and row-scale steps of hadamard.hpp's windowed construction W_b.

#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>

#include <cstddef>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>

/// Target string of the AVX-512 FWHT kernel (F only).
#define LOWBIT_FWHT_AVX512_TARGET LOWBIT_TARGET("avx512f,avx2,fma")

LOWBIT_BEGIN_NAMESPACE
namespace detail::fwht_avx512 {

/// The 4 in-register stages (h = 1, 2, 4, 8) on one vector of 16 floats. (The all-ones masked forms of the
/// permutes name their source explicitly: GCC 12 warns about the undefined source of the unmasked ones.)
LOWBIT_FWHT_AVX512_TARGET inline __m512 in_lane_stages(__m512 v) {
    // lane i gets +1 where bit h of i is clear (the "a" of the butterfly), −1 where it is set
    const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
    const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
    const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
    v = _mm512_fmadd_ps(v, s1, _mm512_mask_permute_ps(v, 0xFFFF, v, 0xB1));        // swap neighbours
    v = _mm512_fmadd_ps(v, s2, _mm512_mask_permute_ps(v, 0xFFFF, v, 0x4E));        // swap pairs
    v = _mm512_fmadd_ps(v, s4, _mm512_mask_shuffle_f32x4(v, 0xFFFF, v, v, 0xB1));  // swap 128-bit lanes
    v = _mm512_fmadd_ps(v, s8, _mm512_mask_shuffle_f32x4(v, 0xFFFF, v, v, 0x4E));  // swap 256-bit halves
    return v;
}

/// S radix-2 stages across the 2^S registers of `v` (register k = element offset k·h).
template <int S>
LOWBIT_FWHT_AVX512_TARGET inline void cross_stages(__m512 (&v)[1 << S]) {
#pragma GCC unroll 16
    for (int st = 0; st < S; ++st) {
        const int d = 1 << st;
#pragma GCC unroll 16
        for (int k = 0; k < (1 << S); ++k)
            if ((k & d) == 0) {
                const __m512 a = v[k], b = v[k + d];
                v[k] = _mm512_add_ps(a, b);
                v[k + d] = _mm512_sub_ps(a, b);
            }
    }
}

/// Pass 1: every chunk of 16·2^S contiguous floats gets the 4 in-lane stages and S cross-register stages.
template <int S, bool Scale>
LOWBIT_FWHT_AVX512_TARGET inline void first_pass(float* x, std::size_t n, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (std::size_t c = 0; c < n; c += 16u << S) {
        __m512 v[1 << S];
#pragma GCC unroll 16
        for (int k = 0; k < (1 << S); ++k) v[k] = in_lane_stages(_mm512_loadu_ps(x + c + 16 * k));
        cross_stages<S>(v);
#pragma GCC unroll 16
        for (int k = 0; k < (1 << S); ++k) _mm512_storeu_ps(x + c + 16 * k, Scale ? _mm512_mul_ps(v[k], sc) : v[k]);
    }
}

/// A later pass: S stages with butterfly distances h, 2h, …, 2^(S−1)h (h ≥ 16), 2^S vectors per group.
template <int S, bool Scale>
LOWBIT_FWHT_AVX512_TARGET inline void stride_pass(float* x, std::size_t n, std::size_t h, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    const std::size_t span = h << S;
    for (std::size_t i = 0; i < n; i += span)
        for (std::size_t j = i; j < i + h; j += 16) {
            __m512 v[1 << S];
#pragma GCC unroll 16
            for (int k = 0; k < (1 << S); ++k) v[k] = _mm512_loadu_ps(x + j + k * h);
            cross_stages<S>(v);
#pragma GCC unroll 16
            for (int k = 0; k < (1 << S); ++k) _mm512_storeu_ps(x + j + k * h, Scale ? _mm512_mul_ps(v[k], sc) : v[k]);
        }
}

// FWHT of length n on each of the total/n consecutive rows at x (every pass works on independent groups of
// at most n contiguous floats, so running it over `total` transforms the rows one after another).
template <bool Scale>
LOWBIT_FWHT_AVX512_TARGET inline void transform(float* x, std::size_t n, std::size_t total, float scale) {
    int m = 0;
    while ((std::size_t{1} << m) < n) ++m;
    const int first = m - 4 < 4 ? m - 4 : 4; // cross-register stages of pass 1
    int left = m - 4 - first;
    const bool s1 = Scale && left == 0;
    switch (first) {
    case 0: s1 ? first_pass<0, true>(x, total, scale) : first_pass<0, false>(x, total, scale); break;
    case 1: s1 ? first_pass<1, true>(x, total, scale) : first_pass<1, false>(x, total, scale); break;
    case 2: s1 ? first_pass<2, true>(x, total, scale) : first_pass<2, false>(x, total, scale); break;
    case 3: s1 ? first_pass<3, true>(x, total, scale) : first_pass<3, false>(x, total, scale); break;
    default: s1 ? first_pass<4, true>(x, total, scale) : first_pass<4, false>(x, total, scale); break;
    }
    std::size_t h = 256;
    while (left > 0) {
        // split the remaining stages as evenly as possible into passes of at most 4
        const int passes = (left + 3) / 4;
        const int s = (left + passes - 1) / passes;
        const bool last = Scale && left == s;
        switch (s) {
        case 1: last ? stride_pass<1, true>(x, total, h, scale) : stride_pass<1, false>(x, total, h, scale); break;
        case 2: last ? stride_pass<2, true>(x, total, h, scale) : stride_pass<2, false>(x, total, h, scale); break;
        case 3: last ? stride_pass<3, true>(x, total, h, scale) : stride_pass<3, false>(x, total, h, scale); break;
        default: last ? stride_pass<4, true>(x, total, h, scale) : stride_pass<4, false>(x, total, h, scale); break;
        }
        h <<= s;
        left -= s;
    }
}

/// In-place FWHT of x[0..n) times `scale` (scale = 1 leaves the unnormalised transform; exact, no multiply).
/// Preconditions (caller-promised): n a power of two, n ≥ 16; the CPU supports AVX-512F.
LOWBIT_FWHT_AVX512_TARGET inline void fwht(float* x, std::size_t n, float scale = 1.0f) noexcept {
    if (scale == 1.0f)
        transform<false>(x, n, n, scale);
    else
        transform<true>(x, n, n, scale);
}

/// In-place FWHT of length n of each of `rows` consecutive rows x[r·n .. (r+1)·n) (one call, no per-row
/// overhead: the K blocks of a Kronecker construction). Preconditions as `fwht`.
LOWBIT_FWHT_AVX512_TARGET inline void fwht_rows(float* x, std::size_t n, std::size_t rows) noexcept {
    transform<false>(x, n, n * rows, 1.0f);
}

/// Unnormalised FWHT over rows lo .. lo + w − 1 of a slice of C columns (row stride `stride`): radix-4 row
/// butterflies (two stages per pass over the rows), a last radix-2 stage when log2(w) is odd; every butterfly
/// is a + b, a − b on whole rows. Preconditions: C a multiple of 16, w a power of two.
LOWBIT_FWHT_AVX512_TARGET inline void fwht_over_rows(float* x, std::ptrdiff_t stride, std::ptrdiff_t C, std::ptrdiff_t lo,
                                                     std::ptrdiff_t w) noexcept {
    std::ptrdiff_t h = 1;
    for (; 4 * h <= w; h *= 4)
        for (std::ptrdiff_t i = lo; i < lo + w; i += 4 * h)
            for (std::ptrdiff_t j = i; j < i + h; ++j) {
                float* r0 = x + j * stride;
                float* r1 = r0 + h * stride;
                float* r2 = r1 + h * stride;
                float* r3 = r2 + h * stride;
                for (std::ptrdiff_t p = 0; p < C; p += 16) {
                    const __m512 a = _mm512_loadu_ps(r0 + p), b = _mm512_loadu_ps(r1 + p);
                    const __m512 c = _mm512_loadu_ps(r2 + p), d = _mm512_loadu_ps(r3 + p);
                    const __m512 s0 = _mm512_add_ps(a, b), s1 = _mm512_sub_ps(a, b);
                    const __m512 s2 = _mm512_add_ps(c, d), s3 = _mm512_sub_ps(c, d);
                    _mm512_storeu_ps(r0 + p, _mm512_add_ps(s0, s2));
                    _mm512_storeu_ps(r1 + p, _mm512_add_ps(s1, s3));
                    _mm512_storeu_ps(r2 + p, _mm512_sub_ps(s0, s2));
                    _mm512_storeu_ps(r3 + p, _mm512_sub_ps(s1, s3));
                }
            }
    if (h < w)
        for (std::ptrdiff_t j = lo; j < lo + h; ++j) {
            float* a = x + j * stride;
            float* b = x + (j + h) * stride;
            for (std::ptrdiff_t p = 0; p < C; p += 16) {
                const __m512 u = _mm512_loadu_ps(a + p), v = _mm512_loadu_ps(b + p);
                _mm512_storeu_ps(a + p, _mm512_add_ps(u, v));
                _mm512_storeu_ps(b + p, _mm512_sub_ps(u, v));
            }
        }
}

/// Row k of a slice of C columns (row stride `stride`) times s[k], k < K. Precondition: C a multiple of 16.
LOWBIT_FWHT_AVX512_TARGET inline void scale_rows(float* x, std::ptrdiff_t stride, std::ptrdiff_t C, const float* s,
                                                 std::ptrdiff_t K) noexcept {
    for (std::ptrdiff_t k = 0; k < K; ++k) {
        const __m512 sk = _mm512_set1_ps(s[k]);
        float* r = x + k * stride;
        for (std::ptrdiff_t p = 0; p < C; p += 16) _mm512_storeu_ps(r + p, _mm512_mul_ps(_mm512_loadu_ps(r + p), sk));
    }
}

/// x[i] *= s[i] for i < n when s is not null; returns Σ x[i] (after the multiply). One pass: the sign flip of
/// the randomised transform and the finiteness check of its input (a finite sum ⇒ every term finite).
LOWBIT_FWHT_AVX512_TARGET inline float multiply_and_sum(float* x, const float* s, std::size_t n) noexcept {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        if (s) {
            a = _mm512_mul_ps(a, _mm512_loadu_ps(s + i));
            b = _mm512_mul_ps(b, _mm512_loadu_ps(s + i + 16));
            _mm512_storeu_ps(x + i, a);
            _mm512_storeu_ps(x + i + 16, b);
        }
        acc0 = _mm512_add_ps(acc0, a);
        acc1 = _mm512_add_ps(acc1, b);
    }
    float tail = 0.0f;
    for (; i < n; ++i) {
        if (s) x[i] *= s[i];
        tail += x[i];
    }
    alignas(64) float lanes[16]; // (_mm512_reduce_add_ps trips GCC 12's uninitialized warning)
    _mm512_store_ps(lanes, _mm512_add_ps(acc0, acc1));
    float sum = 0.0f;
    for (float v : lanes) sum += v;
    return sum + tail;
}

} // namespace detail::fwht_avx512
LOWBIT_END_NAMESPACE

#endif // LOWBIT_HAVE_X86_KERNELS
