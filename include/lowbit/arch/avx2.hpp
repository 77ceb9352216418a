#pragma once
/// \file arch/avx2.hpp
/// AVX2 kernels for packed weights × int8 activations (per-function target attributes; gemm.hpp
/// calls them only when detail::host_cpu_features().avx2 is true).
///
/// Inner step: 32 bytes of packed weights yield 32-lane vectors of unsigned digits u, multiplied
/// with int8 activations by `vpmaddubsw` (u8 × s8 → pairwise s16; |u·x + u·x| ≤ 2·15·127, no
/// saturation, and two such results are added in int16 before `vpmaddwd` with ones widens to
/// int32). Binary digits come from the bit-to-byte expansion (`vpshufb` broadcast, AND bit mask,
/// compare), base-3 digits from two unsigned compares (max/cmpeq) and a multiply by 3 mod 256.
/// Same contract and exact results as detail::scalar_kernels::dot_rows (arch/generic.hpp).

#include <lowbit/arch/generic.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>
#include <lowbit/pack.hpp>

#include <cstdint>
#include <cstring>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>

/// Target string of the AVX2 kernels.
#define LOWBIT_AVX2_TARGET LOWBIT_TARGET("avx2,fma,popcnt")

LOWBIT_BEGIN_NAMESPACE
namespace detail::avx2_kernels {

/// (u0·x0 + u1·x1) pairwise, widened to int32 lanes (exact for digits ≤ 15).
LOWBIT_AVX2_TARGET inline __m256i madd_pair(__m256i u0, const std::int8_t* x0, __m256i u1, const std::int8_t* x1) {
    const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(u0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0))),
                                       _mm256_maddubs_epi16(u1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x1))));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

/// Unsigned digit of a base-3 state byte: [s ≥ 86] + [s ≥ 171].
LOWBIT_AVX2_TARGET inline __m256i trit(__m256i s) {
    const __m256i t86 = _mm256_set1_epi8(86), t171 = _mm256_set1_epi8(static_cast<char>(171));
    const __m256i ge1 = _mm256_cmpeq_epi8(_mm256_max_epu8(s, t86), s);
    const __m256i ge2 = _mm256_cmpeq_epi8(_mm256_max_epu8(s, t171), s);
    return _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge1), ge2);
}

/// The next base-3 state: 3·s mod 256.
LOWBIT_AVX2_TARGET inline __m256i times3(__m256i s) { return _mm256_add_epi8(s, _mm256_add_epi8(s, s)); }

/// 32 bits → 32 bytes in {0, 1} (bit i → byte i).
LOWBIT_AVX2_TARGET inline __m256i expand_bits(std::uint32_t bits) {
    const __m256i v = _mm256_set1_epi32(static_cast<int>(bits));
    const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                                         3, 3, 3, 3);
    const __m256i bitm = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
    const __m256i sel = _mm256_and_si256(_mm256_shuffle_epi8(v, idx), bitm);
    return _mm256_and_si256(_mm256_cmpeq_epi8(sel, bitm), _mm256_set1_epi8(1));
}

/// Unaligned 32-byte load.
LOWBIT_AVX2_TARGET inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

/// Σ_j u_ij · x_j over one packed row (u = stored digits), int32; consecutive blocks of the row are
/// `stride` bytes apart (block_bytes for packed_matrix, 4·block_bytes for interleaved_matrix).
template <class F>
LOWBIT_AVX2_TARGET inline std::int32_t digit_dot_row(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks,
                                                     Eigen::Index stride = pack_format<F>::block_bytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        const __m256i m3 = _mm256_set1_epi8(3);
        for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 256)
            for (int h = 0; h < 2; ++h) {
                const __m256i w = load32(p + 32 * h);
                const std::int8_t* xh = x + 32 * h;
                a0 = _mm256_add_epi32(a0, madd_pair(_mm256_and_si256(w, m3), xh, _mm256_and_si256(_mm256_srli_epi16(w, 2), m3),
                                                    xh + 64));
                a1 = _mm256_add_epi32(a1, madd_pair(_mm256_and_si256(_mm256_srli_epi16(w, 4), m3), xh + 128,
                                                    _mm256_and_si256(_mm256_srli_epi16(w, 6), m3), xh + 192));
            }
    } else if constexpr (std::is_same_v<F, int4>) {
        const __m256i m15 = _mm256_set1_epi8(15);
        for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 256)
            for (int h = 0; h < 4; h += 2) {
                const __m256i w0 = load32(p + 32 * h), w1 = load32(p + 32 * h + 32);
                a0 = _mm256_add_epi32(a0, madd_pair(_mm256_and_si256(w0, m15), x + 32 * h, _mm256_and_si256(w1, m15),
                                                    x + 32 * h + 32));
                a1 = _mm256_add_epi32(a1, madd_pair(_mm256_and_si256(_mm256_srli_epi16(w0, 4), m15), x + 128 + 32 * h,
                                                    _mm256_and_si256(_mm256_srli_epi16(w1, 4), m15), x + 128 + 32 * h + 32));
            }
    } else if constexpr (std::is_same_v<F, binary1>) {
        for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 256)
            for (int m = 0; m < 8; m += 2) {
                std::uint32_t bits[2];
                std::memcpy(bits, p + 4 * m, 8);
                (m & 2 ? a1 : a0) = _mm256_add_epi32(m & 2 ? a1 : a0,
                                                     madd_pair(expand_bits(bits[0]), x + 32 * m, expand_bits(bits[1]), x + 32 * m + 32));
            }
    } else if constexpr (std::is_same_v<F, ternary_base3>) {
        for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 320)
            for (int h = 0; h < 2; ++h) {
                const std::int8_t* xh = x + 32 * h;
                const __m256i s0 = load32(p + 32 * h), s1 = times3(s0), s2 = times3(s1), s3 = times3(s2), s4 = times3(s3);
                a0 = _mm256_add_epi32(a0, madd_pair(trit(s0), xh, trit(s1), xh + 64));
                a1 = _mm256_add_epi32(a1, madd_pair(trit(s2), xh + 128, trit(s3), xh + 192));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(trit(s4), _mm256_loadu_si256(
                                                                                            reinterpret_cast<const __m256i*>(xh + 256))),
                                                            _mm256_set1_epi16(1)));
            }
    }
    const __m256i s = _mm256_add_epi32(a0, a1);
    const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    const __m128i q2 = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4E));
    const __m128i q3 = _mm_add_epi32(q2, _mm_shuffle_epi32(q2, 0xB1));
    return _mm_cvtsi128_si32(q3);
}

/// AVX2 `dot_rows` (contract of arch/generic.hpp).
template <class F>
LOWBIT_AVX2_TARGET inline void dot_rows(const packed_matrix<F>& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x,
                                        Eigen::Index ldx, const std::int32_t* qsum, Eigen::Index ntok, std::int32_t* out,
                                        Eigen::Index ldo) {
    using T = pack_format<F>;
    const Eigen::Index nb = w.blocks_per_row(), rb = w.row_bytes();
    const std::uint8_t* base = w.row_data(0);
    for (Eigen::Index i0 = r0; i0 < r1; i0 += gemm_row_tile) {
        const Eigen::Index i1 = i0 + gemm_row_tile < r1 ? i0 + gemm_row_tile : r1;
        for (Eigen::Index k = 0; k < ntok; ++k)
            for (Eigen::Index i = i0; i < i1; ++i)
                out[k * ldo + (i - r0)] =
                    T::digit_mul * digit_dot_row<F>(base + i * rb, x + k * ldx, nb) - T::digit_offset * qsum[k];
    }
}

/// Horizontal int32 sum of a ymm.
LOWBIT_AVX2_TARGET inline std::int32_t reduce_add_epi32(__m256i s) {
    const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    const __m128i q2 = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(q2, _mm_shuffle_epi32(q2, 0xB1)));
}

/// out[0] = Σ lanes of l, out[1] = Σ lanes of h (int32, exact): two horizontal sums for the price of
/// about one (two vphaddd on the pair, then one 128-bit fold).
LOWBIT_AVX2_TARGET inline void reduce_pair_epi32(__m256i l, __m256i h, std::int32_t* out) {
    __m256i t = _mm256_hadd_epi32(l, h); // l01 l23 h01 h23 | l45 l67 h45 h67
    t = _mm256_hadd_epi32(t, t);         // l0-3 h0-3 l0-3 h0-3 | l4-7 h4-7 ...
    const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    out[0] = _mm_cvtsi128_si32(q);
    out[1] = _mm_extract_epi32(q, 1);
}

/// AVX2 int4_half_dots (contract of scalar_kernels::int4_half_dots, exact): per nibble half of a
/// block, four madd_pair steps (low nibbles × activations 0…127, high nibbles × 128…255), one
/// reduce_pair_epi32 for both halves.
LOWBIT_AVX2_TARGET inline void int4_half_dots(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks,
                                              Eigen::Index stride, std::int32_t* out) {
    const __m256i m15 = _mm256_set1_epi8(15);
    for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 256) {
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        for (int h = 0; h < 4; h += 2) {
            const __m256i w0 = load32(p + 32 * h), w1 = load32(p + 32 * h + 32);
            a0 = _mm256_add_epi32(a0, madd_pair(_mm256_and_si256(w0, m15), x + 32 * h, _mm256_and_si256(w1, m15), x + 32 * h + 32));
            a1 = _mm256_add_epi32(a1, madd_pair(_mm256_and_si256(_mm256_srli_epi16(w0, 4), m15), x + 128 + 32 * h,
                                                _mm256_and_si256(_mm256_srli_epi16(w1, 4), m15), x + 128 + 32 * h + 32));
        }
        reduce_pair_epi32(a0, a1, out + 2 * b);
    }
}

/// One 4-row tile of a 2-bit interleaved_matrix (ternary2, int2): r[j] = Σ_c u_{4t+j, c}·x_c. Per
/// 32-byte half block the four activation vectors are loaded once and feed the four rows (one
/// accumulator per row: 16 ymm registers); one reduction per row.
template <class F>
LOWBIT_AVX2_TARGET inline void tile_dot4_2bit(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks,
                                              std::int32_t* r) {
    const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i a[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (Eigen::Index b = 0; b < nblocks; ++b, p += 256, x += 256)
        for (int h = 0; h < 2; ++h) {
            const __m256i x0 = load32(x + 32 * h), x1 = load32(x + 32 * h + 64), x2 = load32(x + 32 * h + 128),
                          x3 = load32(x + 32 * h + 192);
            for (int j = 0; j < 4; ++j) {
                const __m256i w = load32(p + 64 * j + 32 * h);
                const __m256i s0 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w, m3), x0),
                                                    _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 2), m3), x1));
                const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), m3), x2),
                                                    _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 6), m3), x3));
                // |s0 + s1| ≤ 4·2·3·127 < 2^15: one int16 add, then one widening madd
                a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones));
            }
        }
    for (int j = 0; j < 4; ++j) r[j] = reduce_add_epi32(a[j]);
}

/// AVX2 `dot_rows` for an interleaved_matrix: 2-bit formats run tile_dot4_2bit per tile and token
/// (rows of a cut tile outside [r0, r1) are dropped); the other formats stream each row with the
/// block stride 4·block_bytes through digit_dot_row (no sharing between the rows of a tile).
template <class F>
LOWBIT_AVX2_TARGET inline void dot_rows(const interleaved_matrix<F>& w, Eigen::Index r0, Eigen::Index r1,
                                        const std::int8_t* x, Eigen::Index ldx, const std::int32_t* qsum, Eigen::Index ntok,
                                        std::int32_t* out, Eigen::Index ldo) {
    using T = pack_format<F>;
    const Eigen::Index nb = w.blocks_per_row();
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        if (r0 >= r1) return;
        for (Eigen::Index t = r0 / 4; t * 4 < r1; ++t)
            for (Eigen::Index k = 0; k < ntok; ++k) {
                std::int32_t r[4];
                tile_dot4_2bit<F>(w.tile_data(t), x + k * ldx, nb, r);
                for (int j = 0; j < 4; ++j) {
                    const Eigen::Index i = 4 * t + j;
                    if (i >= r0 && i < r1) out[k * ldo + (i - r0)] = T::digit_mul * r[j] - T::digit_offset * qsum[k];
                }
            }
    } else {
        for (Eigen::Index k = 0; k < ntok; ++k)
            for (Eigen::Index i = r0; i < r1; ++i)
                out[k * ldo + (i - r0)] =
                    T::digit_mul * digit_dot_row<F>(w.block_data(i, 0), x + k * ldx, nb, w.block_stride()) - T::digit_offset * qsum[k];
    }
}

/// AVX2 binary × binary on an interleaved_matrix: `popcnt` on 64-bit words, per row and block.
LOWBIT_AVX2_TARGET inline void xnor_rows(const interleaved_matrix<binary1>& w, Eigen::Index r0, Eigen::Index r1,
                                         const std::uint8_t* a, std::int32_t* out) {
    for (Eigen::Index i = r0; i < r1; ++i) {
        long long pc0 = 0, pc1 = 0;
        for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
            std::uint64_t pw[4], aw[4];
            std::memcpy(pw, w.block_data(i, b), 32);
            std::memcpy(aw, a + 32 * b, 32);
            pc0 += _mm_popcnt_u64(pw[0] ^ aw[0]) + _mm_popcnt_u64(pw[2] ^ aw[2]);
            pc1 += _mm_popcnt_u64(pw[1] ^ aw[1]) + _mm_popcnt_u64(pw[3] ^ aw[3]);
        }
        out[i - r0] = static_cast<std::int32_t>(w.cols() - 2 * (pc0 + pc1));
    }
}

/// AVX2 binary × binary: hardware `popcnt` on 64-bit words, four per 32-byte block.
LOWBIT_AVX2_TARGET inline void xnor_rows(const packed_matrix<binary1>& w, Eigen::Index r0, Eigen::Index r1,
                                         const std::uint8_t* a, std::int32_t* out) {
    const Eigen::Index nwords = w.row_bytes() / 8;
    for (Eigen::Index i = r0; i < r1; ++i) {
        const std::uint8_t* p = w.row_data(i);
        long long pc0 = 0, pc1 = 0;
        for (Eigen::Index j = 0; j < nwords; j += 2) {
            std::uint64_t pw[2], aw[2];
            std::memcpy(pw, p + 8 * j, 16);
            std::memcpy(aw, a + 8 * j, 16);
            pc0 += _mm_popcnt_u64(pw[0] ^ aw[0]);
            pc1 += _mm_popcnt_u64(pw[1] ^ aw[1]);
        }
        out[i - r0] = static_cast<std::int32_t>(w.cols() - 2 * (pc0 + pc1));
    }
}

} // namespace detail::avx2_kernels
LOWBIT_END_NAMESPACE

#endif // LOWBIT_HAVE_X86_KERNELS
