#pragma once
/// \file arch/avx2_fp32.hpp
/// AVX2 kernels for packed weights × fp32 activations (weight-only quantization): the per-token
/// (decode) GEMV of `gemm(w, x, act_fp32)` on an `avx2` path. Compiled with per-function target
/// attributes (no `-march` needed); gemm.hpp calls them only when detail::host_cpu_features().avx2
/// is true (before, avx2 requests ran the xsimd path, which is SSE2 in a build without `-march`).
///
/// Weights are decoded in registers, 8 at a time, straight to float codes t and multiplied into the
/// activations (natural column order) with FMA:
/// - 2-bit (ternary2, int2) and base 3: `vpmovzxbd` widens the 8 packed bytes of columns j .. j + 7
///   of a 64-column plane to dword lanes; 2-bit: a shift brings the plane's digit to bits 1..0;
///   base 3: t3 = 3·s, digit = t3 >> 8, s ← t3 & 255 per plane (as the scalar decoder); `vpermps`
///   maps bits 2..0 through an 8-entry float table of t = digit_mul·(e & 3) − digit_offset;
/// - int4: the low / high nibbles of bytes j .. j + 7 (columns j and 128 + j of the block), masked,
///   converted (`vcvtdq2ps`) and shifted by −8 in float (exact);
/// - binary1: byte c of a block (columns 8c .. 8c + 7) broadcast, shifted per lane by 0..7
///   (`vpsrlvd`) and mapped by `vpermps` to t = 2·bit − 1.
/// Up to 4 tokens share each decoded weight vector (2 accumulators per token, alternating planes).
/// Grouped int4 (`dot_rows_grouped_int4_f32`): the int4 block decoder, each nibble half's lane sums
/// scaled by its group's α, one reduction per row.
///
/// Error: every t is exact, each product is added by one FMA (one rounding) into lane sums of a
/// fixed order, so |result − Σ_j t_ij x_j| ≤ (n + 2)·u·Σ_j |t_ij x_j| (n = padded columns,
/// u = 2^-24): the bound of gemm.hpp's act_fp32 contract.

#include <lowbit/arch/avx2.hpp>
#include <lowbit/detail/dependent_false.hpp>

#include <cstdint>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>

LOWBIT_BEGIN_NAMESPACE
namespace detail::avx2_kernels {

/// `vpermps` table (index bits 2..0) of the float codes: 2-bit and base 3: entry e = digit_mul·(e & 3)
/// − digit_offset (base-3 digits are 0..2 with bits 2.. zero; a 2-bit digit's bit 2 is the next
/// digit's low bit, ignored by the duplicated entries); binary1: entry e = 2·(e & 1) − 1.
template <class F>
LOWBIT_AVX2_TARGET inline __m256 code_table8_f32() {
    using T = pack_format<F>;
    constexpr int mask = std::is_same_v<F, binary1> ? 1 : 3;
    alignas(32) float t[8];
    for (int e = 0; e < 8; ++e) t[e] = static_cast<float>(T::digit_mul * (e & mask) - T::digit_offset);
    return _mm256_load_ps(t);
}

/// 8 packed bytes widened to dword lanes.
LOWBIT_AVX2_TARGET inline __m256i widen8(const std::uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

/// acc[k][a] += wf · x_k[col .. col + 7] for the NT tokens.
template <int NT>
LOWBIT_AVX2_TARGET inline void fma_tokens(__m256 (&acc)[NT][2], int a, __m256 wf, const float* const* x, Eigen::Index col) {
#pragma GCC unroll 4
    for (int k = 0; k < NT; ++k) acc[k][a] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x[k] + col), acc[k][a]);
}

/// Horizontal float sum of a ymm (fixed order).
LOWBIT_AVX2_TARGET inline float reduce_add_f32(__m256 v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/// One int4 block (256 columns from c0; byte j holds columns j (low nibble) and 128 + j (high
/// nibble), t = u − 8): acc[k][0] += the products of columns c0 .. c0 + 127, acc[k][1] += those of
/// c0 + 128 .. c0 + 255, only over the first `planes` 64-column planes.
template <int NT>
LOWBIT_AVX2_TARGET inline void accumulate_int4_block(const std::uint8_t* p, Eigen::Index c0, int planes, const float* const* x,
                                                     __m256 (&acc)[NT][2]) {
    const __m256i m15 = _mm256_set1_epi32(15);
    const __m256 eight = _mm256_set1_ps(8.0f);
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) {
        if (planes <= c / 8) break; // columns 8c.. and 128 + 8c.. both start past the live planes
        const __m256i v = widen8(p + 8 * c);
        fma_tokens<NT>(acc, 0, _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, m15)), eight), x, c0 + 8 * c);
        if (planes > 2 + c / 8)
            fma_tokens<NT>(acc, 1, _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), eight), x, c0 + 128 + 8 * c);
    }
}

/// acc[k][·] += the products t_ij·x_k[j] of row i for NT ≤ 4 tokens over every block; the last block
/// only over its first `last_planes` 64-column planes (the others meet zero-padded activations).
/// x_k zero-padded to w.padded_cols(). Either layout (blocks read through block_data).
/// O(padded_cols·NT).
template <int NT, class M>
LOWBIT_AVX2_TARGET inline void accumulate_row_f32(const M& w, Eigen::Index i, const float* const* x, int last_planes,
                                                  __m256 (&acc)[NT][2]) {
    using F = typename M::format;
    using T = pack_format<F>;
    constexpr Eigen::Index bw = T::block_weights;
    constexpr int all_planes = static_cast<int>(bw / 64);
    const Eigen::Index nb = w.blocks_per_row(), stride = M::block_stride();
    [[maybe_unused]] const __m256 table = code_table8_f32<F>();
    const std::uint8_t* p = w.block_data(i, 0);
    for (Eigen::Index b = 0; b < nb; ++b, p += stride) {
        const Eigen::Index c0 = b * bw;
        const int planes = b + 1 == nb ? last_planes : all_planes;
        if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
            // byte j holds columns j, 64 + j, 128 + j, 192 + j (bits 0-1, 2-3, 4-5, 6-7)
#pragma GCC unroll 8
            for (int c = 0; c < 8; ++c) {
                const __m256i v = widen8(p + 8 * c);
#pragma GCC unroll 4
                for (int k = 0; k < 4; ++k) {
                    if (k >= planes) break;
                    fma_tokens<NT>(acc, k & 1, _mm256_permutevar8x32_ps(table, _mm256_srli_epi32(v, 2 * k)), x, c0 + 64 * k + 8 * c);
                }
            }
        } else if constexpr (std::is_same_v<F, ternary_base3>) {
            // byte j holds the trits of columns j, 64 + j, …, 256 + j: trit = (3·s) >> 8, s ← 3·s mod 256
            const __m256i low_byte = _mm256_set1_epi32(0xFF);
#pragma GCC unroll 8
            for (int c = 0; c < 8; ++c) {
                __m256i s = widen8(p + 8 * c);
#pragma GCC unroll 5
                for (int k = 0; k < 5; ++k) {
                    if (k >= planes) break;
                    const __m256i t3 = _mm256_add_epi32(s, _mm256_add_epi32(s, s));
                    fma_tokens<NT>(acc, k & 1, _mm256_permutevar8x32_ps(table, _mm256_srli_epi32(t3, 8)), x, c0 + 64 * k + 8 * c);
                    s = _mm256_and_si256(t3, low_byte);
                }
            }
        } else if constexpr (std::is_same_v<F, int4>) {
            accumulate_int4_block<NT>(p, c0, planes, x, acc);
        } else if constexpr (std::is_same_v<F, binary1>) {
            // bit j (LSB first) is column j: byte c broadcast, lane l shifted right by l
            const __m256i lane_shift = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#pragma GCC unroll 32
            for (int c = 0; c < 32; ++c) {
                if (c / 8 >= planes) break;
                const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(p[c]), lane_shift);
                fma_tokens<NT>(acc, (c / 8) & 1, _mm256_permutevar8x32_ps(table, v), x, c0 + 8 * c);
            }
        } else {
            static_assert(dependent_false<F>, "lowbit: avx2 accumulate_row_f32: unknown packed format tag");
        }
    }
}

/// out[k·ldo + i − r0] = Σ_j t_ij · x_k[j] for rows [r0, r1) and NT ≤ 4 tokens; x_k zero-padded to
/// w.padded_cols() (natural column order). Either layout. O((r1 − r0)·padded_cols·NT).
template <int NT, class M>
LOWBIT_AVX2_TARGET inline void dot_rows_f32_tokens(const M& w, Eigen::Index r0, Eigen::Index r1, const float* const* x, float* out,
                                                   Eigen::Index ldo) {
    const int last_planes = last_block_planes(w);
    for (Eigen::Index i = r0; i < r1; ++i) {
        __m256 acc[NT][2];
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) acc[k][0] = acc[k][1] = _mm256_setzero_ps();
        accumulate_row_f32<NT>(w, i, x, last_planes, acc);
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) out[k * ldo + (i - r0)] = reduce_add_f32(_mm256_add_ps(acc[k][0], acc[k][1]));
    }
}

/// Σ_j t_ij·x_k[j] for rows [r0, r1) and `tokens` tokens (any count; groups of up to 4 share each
/// decoded weight vector): out[k·ldo + i − r0]. O(tokens·(r1 − r0)·padded_cols).
template <class M>
LOWBIT_AVX2_TARGET inline void dot_rows_f32(const M& w, Eigen::Index r0, Eigen::Index r1, const float* const* x, Eigen::Index tokens,
                                            float* out, Eigen::Index ldo) {
    for_token_groups(tokens, [&](auto nt, Eigen::Index k) {
        dot_rows_f32_tokens<decltype(nt)::value>(w, r0, r1, x + k, out + k * ldo, ldo);
    });
}

/// Grouped int4 (`grouped_int4_matrix`: per-group scale α over G = 128 or 256 columns): for rows
/// [r0, r1) of the codes `w` and NT ≤ 4 tokens, out[k·ldo + i − r0] = Σ_g α_ig·Σ_{j∈g} t_ij·x_k[j]
/// (the offsets' term is the caller's). Per block the two nibble halves' lane sums
/// (`accumulate_int4_block`) are scaled lane-wise by their group's α (one FMA per half into a row
/// accumulator) and the row accumulator is reduced once — the structure of the AVX-512 kernel, so
/// the same bound: |out − Σ_g α_g Σ_{j∈g} t x| ≤ (n + 2·groups + 8)·u·Σ_g |α_g|·Σ_{j∈g}|t x|
/// (n = padded columns). `alpha`: row-major `[rows x groups]`; x_k zero-padded to w.padded_cols().
/// O((r1 − r0)·padded_cols·NT).
template <int NT>
LOWBIT_AVX2_TARGET inline void dot_rows_grouped_int4_f32_tokens(const packed_matrix<int4>& w, const float* alpha, Eigen::Index groups,
                                                                Eigen::Index group_cols, Eigen::Index r0, Eigen::Index r1,
                                                                const float* const* x, float* out, Eigen::Index ldo) {
    const int last_planes = last_block_planes(w);
    const Eigen::Index nb = w.blocks_per_row(), stride = packed_matrix<int4>::block_stride();
    for (Eigen::Index i = r0; i < r1; ++i) {
        const float* al = alpha + i * groups;
        __m256 row[NT];
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) row[k] = _mm256_setzero_ps();
        const std::uint8_t* p = w.block_data(i, 0);
        for (Eigen::Index b = 0; b < nb; ++b, p += stride) {
            __m256 acc[NT][2];
#pragma GCC unroll 4
            for (int k = 0; k < NT; ++k) acc[k][0] = acc[k][1] = _mm256_setzero_ps();
            accumulate_int4_block<NT>(p, b * 256, b + 1 == nb ? last_planes : 4, x, acc);
            // the high half of the last block may hold no column (and then has no group): its sums are 0
            const Eigen::Index g_lo = group_cols == 128 ? 2 * b : b, g_hi = group_cols == 128 ? 2 * b + 1 : b;
            const __m256 a_lo = _mm256_set1_ps(al[g_lo]), a_hi = _mm256_set1_ps(g_hi < groups ? al[g_hi] : 0.0f);
#pragma GCC unroll 4
            for (int k = 0; k < NT; ++k) {
                row[k] = _mm256_fmadd_ps(acc[k][0], a_lo, row[k]);
                row[k] = _mm256_fmadd_ps(acc[k][1], a_hi, row[k]);
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) out[k * ldo + (i - r0)] = reduce_add_f32(row[k]);
    }
}

/// `dot_rows_grouped_int4_f32_tokens` for any token count (groups of up to 4 tokens share each
/// decoded weight vector): out[k·ldo + i − r0].
LOWBIT_AVX2_TARGET inline void dot_rows_grouped_int4_f32(const packed_matrix<int4>& w, const float* alpha, Eigen::Index groups,
                                                         Eigen::Index group_cols, Eigen::Index r0, Eigen::Index r1,
                                                         const float* const* x, Eigen::Index tokens, float* out, Eigen::Index ldo) {
    for_token_groups(tokens, [&](auto nt, Eigen::Index k) {
        dot_rows_grouped_int4_f32_tokens<decltype(nt)::value>(w, alpha, groups, group_cols, r0, r1, x + k, out + k * ldo, ldo);
    });
}

} // namespace detail::avx2_kernels
LOWBIT_END_NAMESPACE

#endif
