#pragma once
/// \file arch/avx512.hpp
/// AVX-512 kernels (F, BW, VL, VNNI, VPOPCNTDQ) for packed weights × int8 activations, compiled with
/// per-function target attributes so that they exist in a build without `-march` flags; gemm.hpp
/// calls them only when detail::host_cpu_features().avx512 is true.
///
/// Inner step: one 64-byte load of packed weights yields 4 (base 3: 5) vectors of 64 unsigned
/// digits u ∈ [0, 15], each multiplied with 64 int8 activations by `vpdpbusd` (u8 × s8, four
/// products summed into each int32 lane, no saturation), with one accumulator per digit plane to
/// hide the instruction latency. Digit extraction: AND/shift (2-bit, 4-bit), k-mask byte moves
/// (binary), two unsigned compares and a multiply-by-3 mod 256 per trit (base 3). Same contract
/// and exact results as detail::scalar_kernels::dot_rows (arch/generic.hpp).

#include <lowbit/arch/generic.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>
#include <lowbit/pack.hpp>

#include <cstdint>
#include <cstring>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>

/// Target string of the AVX-512 kernels.
#define LOWBIT_AVX512_TARGET LOWBIT_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vpopcntdq,avx2,fma,popcnt,bmi2")

LOWBIT_BEGIN_NAMESPACE
namespace detail::avx512_kernels {

/// Horizontal int32 sum of a zmm (masked extract with an explicit source: avoids GCC 12's
/// maybe-uninitialized warnings inside _mm512_reduce_add_epi32).
LOWBIT_AVX512_TARGET inline std::int32_t reduce_add_epi32(__m512i v) {
    const __m256i h = _mm256_add_epi32(_mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, v, 0), _mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, v, 1));
    const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    const __m128i q2 = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(q2, _mm_shuffle_epi32(q2, 0xB1)));
}

/// Horizontal int64 sum of a zmm.
LOWBIT_AVX512_TARGET inline long long reduce_add_epi64(__m512i v) {
    const __m256i h = _mm256_add_epi64(_mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, v, 0), _mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, v, 1));
    const __m128i q = _mm_add_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    return _mm_cvtsi128_si64(_mm_add_epi64(q, _mm_unpackhi_epi64(q, q)));
}

/// Σ_j u_ij · x_j over one packed row (u = stored digits), int32.
template <class F>
LOWBIT_AVX512_TARGET inline std::int32_t digit_dot_row(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks) {
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512(), a2 = _mm512_setzero_si512(),
            a3 = _mm512_setzero_si512(), a4 = _mm512_setzero_si512();
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        const __m512i m3 = _mm512_set1_epi8(3);
        for (Eigen::Index b = 0; b < nblocks; ++b, p += 64, x += 256) {
            const __m512i w = _mm512_loadu_si512(p);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(w, m3), _mm512_loadu_si512(x));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(_mm512_srli_epi16(w, 2), m3), _mm512_loadu_si512(x + 64));
            a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(_mm512_srli_epi16(w, 4), m3), _mm512_loadu_si512(x + 128));
            a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(_mm512_srli_epi16(w, 6), m3), _mm512_loadu_si512(x + 192));
        }
    } else if constexpr (std::is_same_v<F, int4>) {
        const __m512i m15 = _mm512_set1_epi8(15);
        for (Eigen::Index b = 0; b < nblocks; ++b, p += 128, x += 256) {
            const __m512i w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(w0, m15), _mm512_loadu_si512(x));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(w1, m15), _mm512_loadu_si512(x + 64));
            a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(_mm512_srli_epi16(w0, 4), m15), _mm512_loadu_si512(x + 128));
            a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(_mm512_srli_epi16(w1, 4), m15), _mm512_loadu_si512(x + 192));
        }
    } else if constexpr (std::is_same_v<F, binary1>) {
        const __m512i one = _mm512_set1_epi8(1);
        for (Eigen::Index b = 0; b < nblocks; ++b, p += 32, x += 256) {
            std::uint64_t m[4];
            std::memcpy(m, p, 32);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_maskz_mov_epi8(_cvtu64_mask64(m[0]), one), _mm512_loadu_si512(x));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_maskz_mov_epi8(_cvtu64_mask64(m[1]), one), _mm512_loadu_si512(x + 64));
            a2 = _mm512_dpbusd_epi32(a2, _mm512_maskz_mov_epi8(_cvtu64_mask64(m[2]), one), _mm512_loadu_si512(x + 128));
            a3 = _mm512_dpbusd_epi32(a3, _mm512_maskz_mov_epi8(_cvtu64_mask64(m[3]), one), _mm512_loadu_si512(x + 192));
        }
    } else if constexpr (std::is_same_v<F, ternary_base3>) {
        const __m512i one = _mm512_set1_epi8(1), t86 = _mm512_set1_epi8(86), t171 = _mm512_set1_epi8(static_cast<char>(171));
#define LOWBIT_TRIT512(s) _mm512_mask_add_epi8(_mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(s, t86), one), \
                                            _mm512_cmpge_epu8_mask(s, t171), \
                                            _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(s, t86), one), one)
#define LOWBIT_TIMES3_512(s) _mm512_add_epi8(s, _mm512_add_epi8(s, s))
        for (Eigen::Index b = 0; b < nblocks; ++b, p += 64, x += 320) {
            __m512i s = _mm512_loadu_si512(p);
            a0 = _mm512_dpbusd_epi32(a0, LOWBIT_TRIT512(s), _mm512_loadu_si512(x));
            s = LOWBIT_TIMES3_512(s);
            a1 = _mm512_dpbusd_epi32(a1, LOWBIT_TRIT512(s), _mm512_loadu_si512(x + 64));
            s = LOWBIT_TIMES3_512(s);
            a2 = _mm512_dpbusd_epi32(a2, LOWBIT_TRIT512(s), _mm512_loadu_si512(x + 128));
            s = LOWBIT_TIMES3_512(s);
            a3 = _mm512_dpbusd_epi32(a3, LOWBIT_TRIT512(s), _mm512_loadu_si512(x + 192));
            s = LOWBIT_TIMES3_512(s);
            a4 = _mm512_dpbusd_epi32(a4, LOWBIT_TRIT512(s), _mm512_loadu_si512(x + 256));
        }
#undef LOWBIT_TRIT512
#undef LOWBIT_TIMES3_512
    }
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)), a4);
    return reduce_add_epi32(s);
}

/// Decodes one packed block into its digit vectors d0..d4 (64 digits each, aligned with activations
/// [64k, 64k + 64) of the block; d4 only for base 3).
template <class F>
LOWBIT_AVX512_TARGET inline void decode_block(const std::uint8_t* p, __m512i& d0, __m512i& d1, __m512i& d2, __m512i& d3,
                                              __m512i& d4) {
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        const __m512i m3 = _mm512_set1_epi8(3), w = _mm512_loadu_si512(p);
        d0 = _mm512_and_si512(w, m3);
        d1 = _mm512_and_si512(_mm512_srli_epi16(w, 2), m3);
        d2 = _mm512_and_si512(_mm512_srli_epi16(w, 4), m3);
        d3 = _mm512_and_si512(_mm512_srli_epi16(w, 6), m3);
    } else if constexpr (std::is_same_v<F, int4>) {
        const __m512i m15 = _mm512_set1_epi8(15), w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);
        d0 = _mm512_and_si512(w0, m15);
        d1 = _mm512_and_si512(w1, m15);
        d2 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), m15);
        d3 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), m15);
    } else if constexpr (std::is_same_v<F, binary1>) {
        const __m512i one = _mm512_set1_epi8(1);
        std::uint64_t m[4];
        std::memcpy(m, p, 32);
        d0 = _mm512_maskz_mov_epi8(_cvtu64_mask64(m[0]), one);
        d1 = _mm512_maskz_mov_epi8(_cvtu64_mask64(m[1]), one);
        d2 = _mm512_maskz_mov_epi8(_cvtu64_mask64(m[2]), one);
        d3 = _mm512_maskz_mov_epi8(_cvtu64_mask64(m[3]), one);
    } else {
        const __m512i one = _mm512_set1_epi8(1), t86 = _mm512_set1_epi8(86), t171 = _mm512_set1_epi8(static_cast<char>(171));
        __m512i s = _mm512_loadu_si512(p);
        __m512i* d[5] = {&d0, &d1, &d2, &d3, &d4};
        for (int k = 0; k < 5; ++k) {
            const __m512i lo = _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(s, t86), one);
            *d[k] = _mm512_mask_add_epi8(lo, _mm512_cmpge_epu8_mask(s, t171), lo, one);
            s = _mm512_add_epi8(s, _mm512_add_epi8(s, s));
        }
    }
}

/// Four tokens at once: r[t] = Σ_j u_j · x[t·ldx + j] over one packed row, each block decoded once.
template <class F>
LOWBIT_AVX512_TARGET inline void digit_dot_row4(const std::uint8_t* p, const std::int8_t* x, Eigen::Index ldx,
                                                Eigen::Index nblocks, std::int32_t* r) {
    using T = pack_format<F>;
    __m512i a00 = _mm512_setzero_si512(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    const std::int8_t *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    for (Eigen::Index b = 0; b < nblocks; ++b, p += T::block_bytes) {
        __m512i d0, d1, d2, d3, d4 = _mm512_setzero_si512();
        decode_block<F>(p, d0, d1, d2, d3, d4);
        const Eigen::Index o = b * T::block_weights;
#define LOWBIT_TOKEN4(A0, A1, X)                                                   \
    A0 = _mm512_dpbusd_epi32(A0, d0, _mm512_loadu_si512(X + o));                   \
    A1 = _mm512_dpbusd_epi32(A1, d1, _mm512_loadu_si512(X + o + 64));              \
    A0 = _mm512_dpbusd_epi32(A0, d2, _mm512_loadu_si512(X + o + 128));             \
    A1 = _mm512_dpbusd_epi32(A1, d3, _mm512_loadu_si512(X + o + 192));             \
    if constexpr (T::block_weights == 320) A0 = _mm512_dpbusd_epi32(A0, d4, _mm512_loadu_si512(X + o + 256));
        LOWBIT_TOKEN4(a00, a01, x0)
        LOWBIT_TOKEN4(a10, a11, x1)
        LOWBIT_TOKEN4(a20, a21, x2)
        LOWBIT_TOKEN4(a30, a31, x3)
#undef LOWBIT_TOKEN4
    }
    r[0] = reduce_add_epi32(_mm512_add_epi32(a00, a01));
    r[1] = reduce_add_epi32(_mm512_add_epi32(a10, a11));
    r[2] = reduce_add_epi32(_mm512_add_epi32(a20, a21));
    r[3] = reduce_add_epi32(_mm512_add_epi32(a30, a31));
}

/// AVX-512 `dot_rows` (contract of arch/generic.hpp). Rows are processed in tiles of
/// gemm_row_tile so that several tokens reuse a weight tile from cache.
template <class F>
LOWBIT_AVX512_TARGET inline void dot_rows(const packed_matrix<F>& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x,
                                          Eigen::Index ldx, const std::int32_t* qsum, Eigen::Index ntok, std::int32_t* out,
                                          Eigen::Index ldo) {
    using T = pack_format<F>;
    const Eigen::Index nb = w.blocks_per_row(), rb = w.row_bytes();
    const std::uint8_t* base = w.row_data(0);
    if (ntok == 1) { // GEMV: stream rows in order
        for (Eigen::Index i = r0; i < r1; ++i)
            out[i - r0] = T::digit_mul * digit_dot_row<F>(base + i * rb, x, nb) - T::digit_offset * qsum[0];
        return;
    }
    for (Eigen::Index i0 = r0; i0 < r1; i0 += gemm_row_tile) {
        const Eigen::Index i1 = i0 + gemm_row_tile < r1 ? i0 + gemm_row_tile : r1;
        Eigen::Index k = 0;
        for (; k + 4 <= ntok; k += 4) // groups of four tokens share each decoded weight block
            for (Eigen::Index i = i0; i < i1; ++i) {
                std::int32_t r[4];
                digit_dot_row4<F>(base + i * rb, x + k * ldx, ldx, nb, r);
                for (int t = 0; t < 4; ++t)
                    out[(k + t) * ldo + (i - r0)] = T::digit_mul * r[t] - T::digit_offset * qsum[k + t];
            }
        for (; k < ntok; ++k)
            for (Eigen::Index i = i0; i < i1; ++i)
                out[k * ldo + (i - r0)] =
                    T::digit_mul * digit_dot_row<F>(base + i * rb, x + k * ldx, nb) - T::digit_offset * qsum[k];
    }
}

/// E8M0 code → 2^(c − 127) as float bits (c = 0 is the subnormal 2^-127).
inline float e8m0_float(std::uint8_t c) noexcept {
    const std::uint32_t bits = c ? static_cast<std::uint32_t>(c) << 23 : 0x00200000u;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

/// AVX-512 MXFP4 × int8 (contract of scalar_kernels::mxfp4_rows up to float summation order).
/// Two blocks per step: nibbles → `vpshufb` table of e2m1_doubled + 12 (unsigned), `vpdpbusd` with
/// 64 activations, minus the precomputed 12·Σ of each 4 activations (`corr12`, int32 per 4 columns),
/// converted to float, times the blocks' scales, accumulated with FMA.
template <class L>
LOWBIT_AVX512_TARGET inline void mxfp4_rows(const packed_mxfp4<L>& w, Eigen::Index r0, Eigen::Index r1,
                                            const std::int8_t* x, const std::int32_t* corr12, float* out) {
    const __m512i lut = _mm512_mask_broadcast_i32x4(
        _mm512_setzero_si512(), 0xFFFF, _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    const __m128i m15 = _mm_set1_epi8(15);
    const Eigen::Index nb = w.blocks_per_row();
    auto elements = [&](const std::uint8_t* q, __m128i& e0, __m128i& e1) LOWBIT_AVX512_TARGET {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
        const __m128i lo = _mm_and_si128(v, m15), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m15);
        if constexpr (std::is_same_v<L, mxfp4_ggml>) {
            e0 = lo;
            e1 = hi;
        } else {
            e0 = _mm_unpacklo_epi8(lo, hi);
            e1 = _mm_unpackhi_epi8(lo, hi);
        }
    };
    for (Eigen::Index i = r0; i < r1; ++i) {
        const std::uint8_t* p = w.row_data(i);
        __m512 acc = _mm512_setzero_ps();
        Eigen::Index b = 0;
        for (; b + 2 <= nb; b += 2, p += 34) {
            __m128i e0, e1, e2, e3;
            elements(p + 1, e0, e1);
            elements(p + 18, e2, e3);
            __m512i idx = _mm512_castsi128_si512(e0);
            idx = _mm512_inserti32x4(idx, e1, 1);
            idx = _mm512_inserti32x4(idx, e2, 2);
            idx = _mm512_inserti32x4(idx, e3, 3);
            const __m512i u = _mm512_shuffle_epi8(lut, idx);
            const __m512i d = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, _mm512_loadu_si512(x + 32 * b)),
                                               _mm512_loadu_si512(corr12 + 8 * b));
            const __m512 sc = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(e8m0_float(p[0])), _mm512_set1_ps(e8m0_float(p[17])));
            acc = _mm512_fmadd_ps(_mm512_mask_cvtepi32_ps(_mm512_setzero_ps(), 0xFFFF, d), sc, acc);
        }
        float tail = 0.0f;
        if (b < nb) { // odd last block: 256-bit step
            __m128i e0, e1;
            elements(p + 1, e0, e1);
            const __m256i idx = _mm256_inserti128_si256(_mm256_castsi128_si256(e0), e1, 1);
            const __m256i u = _mm256_shuffle_epi8(
                _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13, 14, 15, 16, 18, 20, 24, 12,
                                 11, 10, 9, 8, 6, 4, 0),
                idx);
            const __m256i d = _mm256_sub_epi32(
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * b))),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr12 + 8 * b)));
            const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
            const __m128i q2 = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4E));
            tail = e8m0_float(p[0]) * static_cast<float>(_mm_cvtsi128_si32(_mm_add_epi32(q2, _mm_shuffle_epi32(q2, 0xB1))));
        }
        const __m256 h = _mm256_add_ps(_mm512_mask_extractf32x8_ps(_mm256_setzero_ps(), 0xFF, acc, 0),
                                       _mm512_mask_extractf32x8_ps(_mm256_setzero_ps(), 0xFF, acc, 1));
        __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        q = _mm_add_ss(q, _mm_movehdup_ps(q));
        out[i - r0] = _mm_cvtss_f32(q) + tail;
    }
}

/// AVX-512 binary × binary: `vpopcntq` over 64-byte chunks, masked load for the 32-byte tail.
LOWBIT_AVX512_TARGET inline void xnor_rows(const packed_matrix<binary1>& w, Eigen::Index r0, Eigen::Index r1,
                                           const std::uint8_t* a, std::int32_t* out) {
    const Eigen::Index nbytes = w.row_bytes(); // a multiple of 32
    for (Eigen::Index i = r0; i < r1; ++i) {
        const std::uint8_t* p = w.row_data(i);
        __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512();
        Eigen::Index j = 0;
        for (; j + 128 <= nbytes; j += 128) {
            c0 = _mm512_add_epi64(c0, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + j), _mm512_loadu_si512(a + j))));
            c1 = _mm512_add_epi64(c1, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + j + 64),
                                                                           _mm512_loadu_si512(a + j + 64))));
        }
        for (; j < nbytes; j += 32) {
            const __mmask8 m = 0x0F;
            c0 = _mm512_add_epi64(c0, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(m, p + j),
                                                                           _mm512_maskz_loadu_epi64(m, a + j))));
        }
        const long long pc = reduce_add_epi64(_mm512_add_epi64(c0, c1));
        out[i - r0] = static_cast<std::int32_t>(w.cols() - 2 * pc);
    }
}

} // namespace detail::avx512_kernels
LOWBIT_END_NAMESPACE

#endif // LOWBIT_HAVE_X86_KERNELS
