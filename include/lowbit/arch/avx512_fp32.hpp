#pragma once
/// \file arch/avx512_fp32.hpp
/// AVX-512 kernels for packed weights × fp32 activations (weight-only quantization): the per-token
/// (decode) GEMV of `gemm(w, x, act_fp32)` and the block decoder of its batched path. Compiled with
/// per-function target attributes (no `-march` needed); gemm.hpp calls them only when
/// detail::host_cpu_features().avx512 is true.
///
/// Weights are decoded in registers, 16 at a time, straight to float codes t and multiplied into the
/// activations with FMA — no byte or float staging buffer:
/// - 2-bit (ternary2, int2), 4-bit (int4): `vpmovzxbd` widens 16 packed bytes to dword lanes,
///   a shift brings a digit to bits 3..0 and `vpermps` maps it through a 16-entry float table of
///   t = digit_mul·u − digit_offset (the permute reads only bits 3..0, so no AND is needed);
/// - base 3: the block's 64 bytes stay in one register as 16-bit words (even and odd bytes), each
///   step takes the next trit as (3·s) >> 8, s ← 3·s mod 256 (as the scalar decoder does) with one
///   `vpmullw` per 32 bytes, and shifts bring the trits of the low and high word of every dword to
///   bits 3..0 for `vpermps` — no widening; lane l then holds bytes 4l + r, so the activations are
///   read in `base3_x_order` (the callers reorder each token's x once per call);
/// - binary1: the 16 code bits, loaded as a k-mask, select the x_j with t_j = +1 for a masked add:
///   P = Σ_{t=+1} x_j, one ALU instruction per 16 weights; Σ t·x = 2P − Σx.
/// Up to 4 tokens share each decoded weight vector (4 accumulators per token: one per digit plane;
/// base 3: one per byte position r).
///
/// Error: every product t·x is exact (t ∈ small integers), the sums are float in a fixed order per
/// compiled path, so |result − Σ_j t_ij x_j| ≤ (n + 2)·u·Σ_j |t_ij x_j| (n = padded columns, u = 2^-24),
/// the bound of gemm.hpp's act_fp32 contract; binary1 (2P − Σx): ≤ (2n + 4)·u·Σ_j |x_j|.

#include <lowbit/arch/avx512.hpp>

#include <cstdint>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>

LOWBIT_BEGIN_NAMESPACE
namespace detail::avx512_kernels {

/// Most tokens one call of `dot_rows_f32_tokens` handles (accumulators: 4 per token).
inline constexpr int f32_max_tokens = 4;

/// `vpermps` table of the float codes: entry e = digit_mul·(e & digit_mask) − digit_offset, where
/// digit_mask = 3 (2-bit), 15 (4-bit), 3 (base 3: digits 0..2 reach the permute with bits 4.. zero).
template <class F>
LOWBIT_AVX512_TARGET inline __m512 code_table_f32() {
    using T = pack_format<F>;
    constexpr int mask = std::is_same_v<F, int4> ? 15 : 3;
    alignas(64) float t[16];
    for (int e = 0; e < 16; ++e) t[e] = static_cast<float>(T::digit_mul * (e & mask) - T::digit_offset);
    return _mm512_load_ps(t);
}

/// 16 packed bytes widened to dword lanes (zero-masked form: GCC 12 warns on the unmasked intrinsic's
/// undefined source).
LOWBIT_AVX512_TARGET inline __m512i widen_bytes(const std::uint8_t* p) {
    return _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

/// table[idx & 15] per lane (`vpermps`; zero-masked form for the same reason).
LOWBIT_AVX512_TARGET inline __m512 lookup(__m512i idx, __m512 table) {
    return _mm512_maskz_permutexvar_ps(0xFFFF, idx, table);
}

/// The 16 bits at p as a k-mask, loaded straight into the mask register (`kmovw k, m16`: a load,
/// no ALU port; GCC otherwise goes through a general register and `kmovw k, r32`).
LOWBIT_AVX512_TARGET inline __mmask16 load_mask16(const std::uint8_t* p) {
#if defined(__GNUC__)
    using u16_alias = std::uint16_t __attribute__((may_alias, aligned(1)));
    __mmask16 m;
    __asm__("kmovw %1, %0" : "=k"(m) : "m"(*reinterpret_cast<const u16_alias*>(p)));
    return m;
#else
    std::uint16_t bits;
    std::memcpy(&bits, p, 2);
    return _cvtu32_mask16(bits);
#endif
}

/// acc[k][plane] += wf · x_k[col] for the NT tokens.
template <int NT>
LOWBIT_AVX512_TARGET inline void fma_tokens(__m512 (&acc)[NT][4], int plane, __m512 wf, const float* const* x, Eigen::Index col) {
#pragma GCC unroll 4
    for (int k = 0; k < NT; ++k) acc[k][plane] = _mm512_fmadd_ps(wf, _mm512_loadu_ps(x[k] + col), acc[k][plane]);
}

/// Lanes i and i + 8 of a zmm added.
LOWBIT_AVX512_TARGET inline __m256 fold_halves_ps(__m512 v) {
    return _mm256_add_ps(_mm512_mask_extractf32x8_ps(_mm256_setzero_ps(), 0xFF, v, 0),
                         _mm512_mask_extractf32x8_ps(_mm256_setzero_ps(), 0xFF, v, 1));
}

/// Horizontal float sum of a zmm (fixed order).
LOWBIT_AVX512_TARGET inline float reduce_add_f32(__m512 v) {
    const __m256 h = fold_halves_ps(v);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/// The activation order the base-3 per-token kernel reads (`accumulate_row_f32` for ternary_base3):
/// out[64q + 16r + l] = in[64q + 4l + r] for every 64-column plane q (r < 4, l < 16), i.e. each
/// plane's columns 4l + r grouped by r. `padded_cols` a multiple of 64; in and out distinct. O(cols).
inline void base3_x_order(const float* in, float* out, Eigen::Index padded_cols) noexcept {
    for (Eigen::Index q = 0; q < padded_cols; q += 64)
        for (int r = 0; r < 4; ++r)
            for (int l = 0; l < 16; ++l) out[q + 16 * r + l] = in[q + 4 * l + r];
}

/// One int4 block (256 columns from c0; byte j holds columns j (low nibble) and 128 + j (high
/// nibble)): acc[k][0..1] += the products of columns c0 .. c0 + 127 (alternating 16-column chunks),
/// acc[k][2..3] += those of columns c0 + 128 .. c0 + 255, only over the first `planes` 64-column
/// planes (the rest meet zero-padded activations). `table`: code_table_f32<int4>().
template <int NT>
LOWBIT_AVX512_TARGET inline void accumulate_int4_block(const std::uint8_t* p, Eigen::Index c0, int planes, __m512 table,
                                                       const float* const* x, __m512 (&acc)[NT][4]) {
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
        if (planes <= c / 4) break; // columns 16c.. and 128 + 16c.. both start past the live planes
        const __m512i v = widen_bytes(p + 16 * c);
        fma_tokens<NT>(acc, c & 1, lookup(v, table), x, c0 + 16 * c);
        if (planes > 2 + c / 4)
            fma_tokens<NT>(acc, 2 + (c & 1), lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 4), table), x, c0 + 128 + 16 * c);
    }
}

/// acc[k][·] += the products t_ij·x_k[j] of row i for NT ≤ 4 tokens (binary1: P = Σ_{t=+1} x_k[j]),
/// over every block; the last block only over its first `last_planes` 64-column planes (the others
/// meet zero-padded activations, so skipping them drops only zero terms). x_k zero-padded to
/// w.padded_cols(). Either layout (blocks read through block_data). O(padded_cols·NT).
template <int NT, class M>
LOWBIT_AVX512_TARGET inline void accumulate_row_f32(const M& w, Eigen::Index i, const float* const* x, int last_planes,
                                                    __m512 (&acc)[NT][4]) {
    using F = typename M::format;
    using T = pack_format<F>;
    constexpr Eigen::Index bw = T::block_weights;
    constexpr int all_planes = static_cast<int>(bw / 64);
    const Eigen::Index nb = w.blocks_per_row(), stride = M::block_stride();
    [[maybe_unused]] const __m512 table = code_table_f32<F>();
    [[maybe_unused]] const __m512i word_low_byte = _mm512_set1_epi16(0xFF), three = _mm512_set1_epi16(3);
    const std::uint8_t* p = w.block_data(i, 0);
    for (Eigen::Index b = 0; b < nb; ++b, p += stride) {
        const Eigen::Index c0 = b * bw;
        const int planes = b + 1 == nb ? last_planes : all_planes;
        prefetch_ahead(p);
        if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
            // byte j holds columns j, 64 + j, 128 + j, 192 + j (bits 0-1, 2-3, 4-5, 6-7)
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) {
                const __m512i v = widen_bytes(p + 16 * c);
                fma_tokens<NT>(acc, 0, lookup(v, table), x, c0 + 16 * c);
                if (planes > 1) fma_tokens<NT>(acc, 1, lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 2), table), x, c0 + 64 + 16 * c);
                if (planes > 2) fma_tokens<NT>(acc, 2, lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 4), table), x, c0 + 128 + 16 * c);
                if (planes > 3) fma_tokens<NT>(acc, 3, lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 6), table), x, c0 + 192 + 16 * c);
            }
        } else if constexpr (std::is_same_v<F, int4>) {
            accumulate_int4_block<NT>(p, c0, planes, table, x, acc);
        } else if constexpr (std::is_same_v<F, ternary_base3>) {
            // byte j holds the trits of columns j, 64 + j, …, 256 + j: trit = (3·s) >> 8, s ← 3·s mod 256,
            // here on 16-bit words without widening: the block's 64 bytes split into their even bytes
            // (words 0x00bb) and odd bytes; ×3 per word (`vpmullw`); in dword lane l the low word's
            // trit is bits 3..0 of (t3 >> 8 per word), the high word's of (t3 >> 24 per dword), both
            // read by `vpermps` directly. Lane l of the four vectors holds bytes 4l, 4l + 1, 4l + 2,
            // 4l + 3: x must be in `base3_x_order` (position 64q + 16r + l = column 64q + 4l + r).
            const __m512i v = _mm512_loadu_si512(p);
            __m512i se = _mm512_and_si512(v, word_low_byte), so = _mm512_srli_epi16(v, 8);
#pragma GCC unroll 5
            for (int k = 0; k < 5; ++k) {
                if (k >= planes) break;
                const __m512i te = _mm512_mullo_epi16(se, three), to = _mm512_mullo_epi16(so, three);
                const Eigen::Index c = c0 + 64 * k;
                fma_tokens<NT>(acc, 0, lookup(_mm512_srli_epi16(te, 8), table), x, c);
                fma_tokens<NT>(acc, 1, lookup(_mm512_srli_epi16(to, 8), table), x, c + 16);
                fma_tokens<NT>(acc, 2, lookup(_mm512_maskz_srli_epi32(0xFFFF, te, 24), table), x, c + 32);
                fma_tokens<NT>(acc, 3, lookup(_mm512_maskz_srli_epi32(0xFFFF, to, 24), table), x, c + 48);
                se = _mm512_and_si512(te, word_low_byte);
                so = _mm512_and_si512(to, word_low_byte);
            }
        } else if constexpr (std::is_same_v<F, binary1>) {
            // bit j (LSB first) is column j: P = Σ_{t_j = +1} x_j by masked adds (the mask loaded
            // straight from the packed bytes), Σ t·x = 2P − Σx at the end
#pragma GCC unroll 16
            for (int c = 0; c < 16; ++c) {
                if (c / 4 >= planes) break;
                const __mmask16 m = load_mask16(p + 2 * c);
#pragma GCC unroll 4
                for (int k = 0; k < NT; ++k)
                    acc[k][c & 3] = _mm512_mask_add_ps(acc[k][c & 3], m, acc[k][c & 3], _mm512_loadu_ps(x[k] + c0 + 16 * c));
            }
        } else {
            static_assert(dependent_false<F>, "lowbit: accumulate_row_f32: unknown packed format tag");
        }
    }
}

/// Horizontal float sums of four zmm: lane j of the result = Σ of a_j's 16 lanes (fixed order).
LOWBIT_AVX512_TARGET inline __m128 reduce4_add_ps(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(fold_halves_ps(a0), fold_halves_ps(a1)),
                                    _mm256_hadd_ps(fold_halves_ps(a2), fold_halves_ps(a3)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/// out[k·ldo + i − r0] = Σ_j t_ij · x_k[j] for rows [r0, r1) and NT ≤ 4 tokens; x_k zero-padded to
/// w.padded_cols(); xsum[k] = Σ_j x_k[j] rounded to float (read for binary1 only). One token: four
/// rows at a time, their sums reduced together. Either layout. O((r1 − r0)·padded_cols·NT).
template <int NT, class M>
LOWBIT_AVX512_TARGET inline void dot_rows_f32_tokens(const M& w, Eigen::Index r0, Eigen::Index r1, const float* const* x,
                                                     const float* xsum, float* out, Eigen::Index ldo) {
    using F = typename M::format;
    const int last_planes = last_block_planes(w);
    const auto finish = [&](float s, int k) { return std::is_same_v<F, binary1> ? 2.0f * s - xsum[k] : s; };
    Eigen::Index i = r0;
    if constexpr (NT == 1) {
        for (; i + 4 <= r1; i += 4) {
            __m512 acc[4][1][4];
            __m512 row[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r) {
#pragma GCC unroll 4
                for (int l = 0; l < 4; ++l) acc[r][0][l] = _mm512_setzero_ps();
                accumulate_row_f32<1>(w, i + r, x, last_planes, acc[r]);
                row[r] = _mm512_add_ps(_mm512_add_ps(acc[r][0][0], acc[r][0][1]), _mm512_add_ps(acc[r][0][2], acc[r][0][3]));
            }
            alignas(16) float s[4];
            _mm_store_ps(s, reduce4_add_ps(row[0], row[1], row[2], row[3]));
            for (int r = 0; r < 4; ++r) out[i + r - r0] = finish(s[r], 0);
        }
    }
    for (; i < r1; ++i) {
        __m512 acc[NT][4];
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k)
#pragma GCC unroll 4
            for (int l = 0; l < 4; ++l) acc[k][l] = _mm512_setzero_ps();
        accumulate_row_f32<NT>(w, i, x, last_planes, acc);
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k)
            out[k * ldo + (i - r0)] =
                finish(reduce_add_f32(_mm512_add_ps(_mm512_add_ps(acc[k][0], acc[k][1]), _mm512_add_ps(acc[k][2], acc[k][3]))), k);
    }
}

/// Σ_j t_ij·x_k[j] for rows [r0, r1) and `tokens` tokens (any count; groups of up to 4 share each
/// decoded weight vector): out[k·ldo + i − r0].
template <class M>
LOWBIT_AVX512_TARGET inline void dot_rows_f32(const M& w, Eigen::Index r0, Eigen::Index r1, const float* const* x,
                                              const float* xsum, Eigen::Index tokens, float* out, Eigen::Index ldo) {
    for_token_groups(tokens, [&](auto nt, Eigen::Index k) {
        dot_rows_f32_tokens<decltype(nt)::value>(w, r0, r1, x + k, xsum + k, out + k * ldo, ldo);
    });
}

/// One row of grouped int4 codes for NT ≤ 4 tokens: row[k] (16 lanes, not reduced) = Σ over blocks of
/// α_lo·(low-half lane sums) + α_hi·(high-half lane sums), `al` the row's α per group.
template <int NT>
LOWBIT_AVX512_TARGET inline void grouped_int4_row_f32(const packed_matrix<int4>& w, const float* al, Eigen::Index groups,
                                                      Eigen::Index group_cols, Eigen::Index i, const float* const* x, int last_planes,
                                                      __m512 table, __m512 (&row)[NT]) {
    const Eigen::Index nb = w.blocks_per_row(), stride = packed_matrix<int4>::block_stride();
#pragma GCC unroll 4
    for (int k = 0; k < NT; ++k) row[k] = _mm512_setzero_ps();
    const std::uint8_t* p = w.block_data(i, 0);
    for (Eigen::Index b = 0; b < nb; ++b, p += stride) {
        prefetch_ahead(p);
        __m512 acc[NT][4];
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k)
#pragma GCC unroll 4
            for (int l = 0; l < 4; ++l) acc[k][l] = _mm512_setzero_ps();
        accumulate_int4_block<NT>(p, b * 256, b + 1 == nb ? last_planes : 4, table, x, acc);
        // the high half of the last block may hold no column (and then has no group): its sums are 0
        const Eigen::Index g_lo = group_cols == 128 ? 2 * b : b, g_hi = group_cols == 128 ? 2 * b + 1 : b;
        const __m512 a_lo = _mm512_set1_ps(al[g_lo]), a_hi = _mm512_set1_ps(g_hi < groups ? al[g_hi] : 0.0f);
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) {
            row[k] = _mm512_fmadd_ps(_mm512_add_ps(acc[k][0], acc[k][1]), a_lo, row[k]);
            row[k] = _mm512_fmadd_ps(_mm512_add_ps(acc[k][2], acc[k][3]), a_hi, row[k]);
        }
    }
}

/// Grouped int4 (`grouped_int4_matrix`: per-group scale α over G = 128 or 256 columns): for rows
/// [r0, r1) of the codes `w` and NT ≤ 4 tokens, out[k·ldo + i − r0] = Σ_g α_ig·Σ_{j∈g} t_ij·x_k[j]
/// (the offsets' term is the caller's). Per block the two nibble halves' lane sums are formed as in
/// `accumulate_int4_block`, scaled lane-wise by their group's α (one FMA per half into a row
/// accumulator, `grouped_int4_row_f32`) and the row accumulator reduced once, the same way for any
/// token count (so a token's result does not depend on the tokens beside it): every product t·x exact, each lane's sum a fixed-order float sum, so
/// |out − Σ_g α_g Σ_{j∈g} t x| ≤ (n + 2·groups + 8)·u·Σ_g |α_g|·Σ_{j∈g}|t x| (n = padded columns).
/// `alpha`: row-major `[rows x groups]`; x_k zero-padded to w.padded_cols(). O((r1 − r0)·padded_cols·NT).
template <int NT>
LOWBIT_AVX512_TARGET inline void dot_rows_grouped_int4_f32_tokens(const packed_matrix<int4>& w, const float* alpha, Eigen::Index groups,
                                                                  Eigen::Index group_cols, Eigen::Index r0, Eigen::Index r1,
                                                                  const float* const* x, float* out, Eigen::Index ldo) {
    const int last_planes = last_block_planes(w);
    const __m512 table = code_table_f32<int4>();
    for (Eigen::Index i = r0; i < r1; ++i) {
        __m512 row[NT];
        grouped_int4_row_f32<NT>(w, alpha + i * groups, groups, group_cols, i, x, last_planes, table, row);
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) out[k * ldo + (i - r0)] = reduce_add_f32(row[k]);
    }
}

/// `dot_rows_grouped_int4_f32_tokens` for any token count (groups of up to 4 tokens share each
/// decoded weight vector): out[k·ldo + i − r0].
LOWBIT_AVX512_TARGET inline void dot_rows_grouped_int4_f32(const packed_matrix<int4>& w, const float* alpha, Eigen::Index groups,
                                                           Eigen::Index group_cols, Eigen::Index r0, Eigen::Index r1,
                                                           const float* const* x, Eigen::Index tokens, float* out, Eigen::Index ldo) {
    for_token_groups(tokens, [&](auto nt, Eigen::Index k) {
        dot_rows_grouped_int4_f32_tokens<decltype(nt)::value>(w, alpha, groups, group_cols, r0, r1, x + k, out + k * ldo, ldo);
    });
}

/// Decodes row i's codes to float t values, out[0 .. padded_cols) (the batched fp32 path's weight
/// block decoder; same codes as detail::unpack_block, written in column order).
template <class M>
LOWBIT_AVX512_TARGET inline void decode_row_f32(const M& w, Eigen::Index i, float* out) {
    using F = typename M::format;
    using T = pack_format<F>;
    constexpr Eigen::Index bw = T::block_weights;
    const Eigen::Index nb = w.blocks_per_row(), stride = M::block_stride();
    [[maybe_unused]] const __m512 table = code_table_f32<F>();
    [[maybe_unused]] const __m512i byte_mask = _mm512_set1_epi32(255);
    const std::uint8_t* p = w.block_data(i, 0);
    for (Eigen::Index b = 0; b < nb; ++b, p += stride) {
        float* o = out + b * bw;
        if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
            for (int c = 0; c < 4; ++c) {
                const __m512i v = widen_bytes(p + 16 * c);
                _mm512_storeu_ps(o + 16 * c, lookup(v, table));
                _mm512_storeu_ps(o + 64 + 16 * c, lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 2), table));
                _mm512_storeu_ps(o + 128 + 16 * c, lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 4), table));
                _mm512_storeu_ps(o + 192 + 16 * c, lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 6), table));
            }
        } else if constexpr (std::is_same_v<F, int4>) {
            for (int c = 0; c < 8; ++c) {
                const __m512i v = widen_bytes(p + 16 * c);
                _mm512_storeu_ps(o + 16 * c, lookup(v, table));
                _mm512_storeu_ps(o + 128 + 16 * c, lookup(_mm512_maskz_srli_epi32(0xFFFF, v, 4), table));
            }
        } else if constexpr (std::is_same_v<F, ternary_base3>) {
            for (int c = 0; c < 4; ++c) {
                __m512i s = widen_bytes(p + 16 * c);
                for (int k = 0; k < 5; ++k) {
                    const __m512i t3 = _mm512_add_epi32(s, _mm512_maskz_slli_epi32(0xFFFF, s, 1));
                    _mm512_storeu_ps(o + 64 * k + 16 * c, lookup(_mm512_maskz_srli_epi32(0xFFFF, t3, 8), table));
                    s = _mm512_and_si512(t3, byte_mask);
                }
            }
        } else if constexpr (std::is_same_v<F, binary1>) {
            const __m512 plus = _mm512_set1_ps(1.0f), minus = _mm512_set1_ps(-1.0f);
            for (int c = 0; c < 16; ++c) {
                std::uint16_t bits;
                std::memcpy(&bits, p + 2 * c, 2);
                _mm512_storeu_ps(o + 16 * c, _mm512_mask_blend_ps(_cvtu32_mask16(bits), minus, plus));
            }
        } else {
            static_assert(dependent_false<F>, "lowbit: decode_row_f32: unknown packed format tag");
        }
    }
}

} // namespace detail::avx512_kernels
LOWBIT_END_NAMESPACE

#endif // LOWBIT_HAVE_X86_KERNELS
