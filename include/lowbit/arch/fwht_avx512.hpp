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
#include <cstdint>

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

/// Lane i of the result = Σ of the 16 lanes of a[i] (float), for 16 vectors at once: 256-, 128-, 64-
/// and 32-bit halves added pairwise, then one permute back to row order (fixed order of additions).
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
LOWBIT_FWHT_AVX512_TARGET inline __m512 reduce16_add_ps(const __m512 (&a)[16]) {
    // (maskz forms: GCC 12's plain forms start from an undefined source and warn)
    __m512 s8[8], s4[4], s2[2];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k)
        s8[k] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(0xFFFF, a[2 * k], a[2 * k + 1], 0x44),
                              _mm512_maskz_shuffle_f32x4(0xFFFF, a[2 * k], a[2 * k + 1], 0xEE));
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k)
        s4[k] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(0xFFFF, s8[2 * k], s8[2 * k + 1], 0x88),
                              _mm512_maskz_shuffle_f32x4(0xFFFF, s8[2 * k], s8[2 * k + 1], 0xDD));
#pragma GCC unroll 2
    for (int k = 0; k < 2; ++k) {
        const __m512d lo = _mm512_castps_pd(s4[2 * k]), hi = _mm512_castps_pd(s4[2 * k + 1]);
        s2[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, lo, hi)),
                              _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, lo, hi)));
    }
    const __m512 r = _mm512_add_ps(_mm512_maskz_shuffle_ps(0xFFFF, s2[0], s2[1], 0x88),
                                   _mm512_maskz_shuffle_ps(0xFFFF, s2[0], s2[1], 0xDD));
    const __m512i back = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_maskz_permutexvar_ps(0xFFFF, back, r);
}

/// Horizontal float sum of one zmm (fixed order).
LOWBIT_FWHT_AVX512_TARGET inline float reduce_add_ps(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

/// y_i = c·Σ_j s_ij·x_j (s_ij = ±1) for the rows of a ±1 block, by table lookup: for every group q of 4
/// columns the 16 signed sums T_q[e] = Σ_{t<4} (bit t of e ? +x_{4q+t} : −x_{4q+t}) fill one zmm (4 FMAs),
/// and 16 rows at a time add T_q[e_iq] with one `vpermps`, where e_iq holds row i's 4 signs of group q
/// (bit t set where s_{i,4q+t} = +1). `idx` holds, for each 16-row group g and column group q, the 16 rows'
/// e as int32: idx[(g·qgroups + q)·16 + r]. 4 columns × 16 rows per permute + add, against 64 multiply-adds
/// of the float product (whose K×K matrix does not stay in L1). x holds 4·qgroups floats, zero past the
/// block's width; rgroups is a multiple of 4 (pad with zero rows); y gets 16·rgroups values. Float sums in a fixed order: |y_i − c·Σ_j s_ij x_j| ≤
/// c·(qgroups + 3)·u·Σ_j |x_j| (u = 2⁻²⁴, first order). O(rgroups·qgroups·16) plus O(qgroups) for the tables.
LOWBIT_FWHT_AVX512_TARGET inline void sign_table_matvec(const std::int32_t* idx, std::size_t qgroups, std::size_t rgroups,
                                                         const float* x, float c, float* tables, float* y) noexcept {
    const __m512 s0 = _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
    const __m512 s1 = _mm512_setr_ps(-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1);
    const __m512 s2 = _mm512_setr_ps(-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1);
    const __m512 s3 = _mm512_setr_ps(-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1);
    for (std::size_t q = 0; q < qgroups; ++q) {
        const float* xq = x + 4 * q;
        __m512 t = _mm512_mul_ps(s0, _mm512_set1_ps(xq[0]));
        t = _mm512_fmadd_ps(s1, _mm512_set1_ps(xq[1]), t);
        t = _mm512_fmadd_ps(s2, _mm512_set1_ps(xq[2]), t);
        t = _mm512_fmadd_ps(s3, _mm512_set1_ps(xq[3]), t);
        _mm512_storeu_ps(tables + 16 * q, t);
    }
    const __m512 cv = _mm512_set1_ps(c);
    for (std::size_t g = 0; g < rgroups; g += 4) { // four independent accumulator chains
        __m512 acc[4];
#pragma GCC unroll 4
        for (std::size_t k = 0; k < 4; ++k) acc[k] = _mm512_setzero_ps();
        for (std::size_t q = 0; q < qgroups; ++q) {
            const __m512 t = _mm512_loadu_ps(tables + 16 * q);
#pragma GCC unroll 4
            for (std::size_t k = 0; k < 4; ++k)
                acc[k] = _mm512_add_ps(acc[k], _mm512_maskz_permutexvar_ps(0xFFFF, _mm512_loadu_si512(idx + ((g + k) * qgroups + q) * 16), t));
        }
#pragma GCC unroll 4
        for (std::size_t k = 0; k < 4; ++k) _mm512_storeu_ps(y + 16 * (g + k), _mm512_mul_ps(cv, acc[k]));
    }
}

} // namespace detail::fwht_avx512
LOWBIT_END_NAMESPACE

#endif // LOWBIT_HAVE_X86_KERNELS
