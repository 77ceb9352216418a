#pragma once
/// \file arch/salient_ternary_x86.hpp
/// AVX2 and AVX-512 kernels of the TRA-GPTQ layout (salient_ternary.hpp) × fp32 activations.
/// Per row and block the 10 fp16 parameters become a 32-entry float table (two groups × 16):
///   entry 16·g + 4 + 3·t₀ + t₁ = (μ + α₀·t₀) + α₁·t₁  of the salient group g (entries 0..8),
///   entry 16·g + 12 + 3·t₀     = μ + α·t₀             of the other group g (entries 9, 12, 15),
/// computed with two FMAs per half from lane constants (t exact in {−1, 0, 1}, so each FMA rounds
/// exactly like the scalar reference's `(μ + α₀·t₀) + α₁·t₁`: the weights are bit-identical on every
/// path). Per 16-column chunk the entry index of every lane, e = 16·G + (salient ? 4 : 12) +
/// 3·(P − N) + (P₁ − N₁), is built from the code planes, and the weights are looked up in the table.
/// - AVX-512: the plane words are k-masks loaded from memory; e = masked adds on a base vector; one
///   `vpermt2ps` per 16 weights; up to 4 tokens share each decoded vector (FMA).
/// - AVX2: 8 lanes at a time; plane bytes expand to 0/1 int32 lanes through arch/salient_binary_x86.hpp's
///   table; the weights are gathered from the table in memory (`vgatherdps`).
/// Per-function target attributes; salient_ternary.hpp calls them only when the CPU has the ISA.
///
/// Error: products w·x are rounded once (FMA), sums in float in a fixed order per path, so
/// |result − Σ_j w_ij x_j| ≤ (n + 16)·u·Σ_j |w_ij x_j| (n = padded columns, u = 2⁻²⁴), the bound of
/// salient_ternary.hpp's contract, shared with its scalar reference.

#include <lowbit/arch/avx512_fp32.hpp>
#include <lowbit/arch/salient_binary_x86.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>

#include <Eigen/Core>

#include <cstdint>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>
#endif

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// The arrays a salient-ternary kernel reads (owned by `salient_ternary_matrix`).
struct salient_ternary_rows {
    const std::uint16_t* codes = nullptr;         ///< rows × stride words: per chunk P, N, G (+ P₁, N₁ if salient lanes)
    const std::uint16_t* params = nullptr;        ///< rows × blocks × 10 fp16 bit patterns
    const std::uint16_t* chunk_salient = nullptr; ///< chunks: bit l set if lane l is a salient column
    const std::int32_t* block_first_chunk = nullptr; ///< blocks + 1: first chunk of each block
    Eigen::Index stride = 0;                      ///< code words per row
    Eigen::Index blocks = 0;                      ///< blocks per row
};

} // namespace detail

#if LOWBIT_HAVE_X86_KERNELS
namespace detail::salient_ternary_x86 {

/// Most tokens one `dot_rows_avx512` call shares a decoded weight vector with.
inline constexpr int max_tokens = 4;

/// One 16-entry table (see the file comment) from the 10 parameters p (as floats): lanes 0..8 the
/// salient group whose μ, α₀, α₁ are parameters s, s + 1, s + 2, lanes 9..15 the other group whose μ, α
/// are o, o + 1.
LOWBIT_SB_AVX512_TARGET inline __m512 table_half512(__m512 p, int s, int o) {
    const __m512 t0 = _mm512_setr_ps(-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, 0, 0, 0, 0, 0, 1);
    const __m512 t1 = _mm512_setr_ps(-1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0);
    const __m512i mu = _mm512_mask_mov_epi32(_mm512_set1_epi32(s), 0xFE00, _mm512_set1_epi32(o));
    const __m512i a0 = _mm512_mask_mov_epi32(_mm512_set1_epi32(s + 1), 0xFE00, _mm512_set1_epi32(o + 1));
    const __m512 v = _mm512_fmadd_ps(_mm512_maskz_permutexvar_ps(0xFFFF, a0, p), t0, _mm512_maskz_permutexvar_ps(0xFFFF, mu, p));
    return _mm512_fmadd_ps(_mm512_maskz_permutexvar_ps(0xFFFF, _mm512_set1_epi32(s + 2), p), t1, v);
}

/// The two 16-entry tables (group lo, group hi) of one row and block from its 10 fp16 parameters
/// (μ₀, α₀₀, α₁₀, μ₁, α₀₁, α₁₁ of the salient groups, μ, α of the other lo and hi groups).
LOWBIT_SB_AVX512_TARGET inline void tables512(const std::uint16_t* p10, __m512& lo, __m512& hi) {
    const __m512 p = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_maskz_loadu_epi16(0x03FF, p10));
    lo = table_half512(p, 0, 6);
    hi = table_half512(p, 3, 8);
}

/// The 16 weights of the chunk whose plane words start at `wp` (P, N, G, then P₁, N₁ when `Salient`:
/// the chunk holds salient lanes `sal`).
template <bool Salient>
LOWBIT_SB_AVX512_TARGET inline __m512 chunk_weights(const std::uint16_t* wp, unsigned sal, __m512 lo, __m512 hi) {
    const auto* b = reinterpret_cast<const std::uint8_t*>(wp);
    __m512i e = _mm512_set1_epi32(12);
    if constexpr (Salient) e = _mm512_mask_mov_epi32(e, static_cast<__mmask16>(sal), _mm512_set1_epi32(4));
    e = _mm512_mask_add_epi32(e, avx512_kernels::load_mask16(b + 4), e, _mm512_set1_epi32(16));
    e = _mm512_mask_add_epi32(e, avx512_kernels::load_mask16(b), e, _mm512_set1_epi32(3));
    e = _mm512_mask_sub_epi32(e, avx512_kernels::load_mask16(b + 2), e, _mm512_set1_epi32(3));
    if constexpr (Salient) {
        e = _mm512_mask_add_epi32(e, avx512_kernels::load_mask16(b + 6), e, _mm512_set1_epi32(1));
        e = _mm512_mask_sub_epi32(e, avx512_kernels::load_mask16(b + 8), e, _mm512_set1_epi32(1));
    }
    return _mm512_maskz_permutex2var_ps(0xFFFF, lo, e, hi);
}

/// `dot_rows_avx512` for NT tokens (two accumulators per token); per block the chunks with salient
/// lanes first, then the others in pairs.
template <int NT>
LOWBIT_SB_AVX512_TARGET inline void dot_rows_tokens(const salient_ternary_rows& w, Eigen::Index r0, Eigen::Index r1,
                                                    const float* const* xp, float* out, Eigen::Index ldo) {
    for (Eigen::Index i = r0; i < r1; ++i) {
        __m512 a0[NT], a1[NT];
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) a0[k] = a1[k] = _mm512_setzero_ps();
        const std::uint16_t* wp = w.codes + i * w.stride;
        for (Eigen::Index b = 0; b < w.blocks; ++b) {
            __m512 lo, hi;
            tables512(w.params + (i * w.blocks + b) * 10, lo, hi);
            Eigen::Index c = w.block_first_chunk[b];
            const Eigen::Index end = w.block_first_chunk[b + 1];
            for (; c < end && w.chunk_salient[c] != 0; ++c, wp += 5) {
                const __m512 w1 = chunk_weights<true>(wp, w.chunk_salient[c], lo, hi);
#pragma GCC unroll 4
                for (int k = 0; k < NT; ++k) a1[k] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp[k] + 16 * c), a1[k]);
            }
            for (; c + 1 < end; c += 2, wp += 6) {
                const __m512 w0 = chunk_weights<false>(wp, 0, lo, hi);
                const __m512 w1 = chunk_weights<false>(wp + 3, 0, lo, hi);
#pragma GCC unroll 4
                for (int k = 0; k < NT; ++k) {
                    a0[k] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp[k] + 16 * c), a0[k]);
                    a1[k] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp[k] + 16 * c + 16), a1[k]);
                }
            }
            if (c < end) {
                const __m512 w0 = chunk_weights<false>(wp, 0, lo, hi);
                wp += 3;
#pragma GCC unroll 4
                for (int k = 0; k < NT; ++k) a0[k] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp[k] + 16 * c), a0[k]);
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) out[k * ldo + (i - r0)] = avx512_kernels::reduce_add_f32(_mm512_add_ps(a0[k], a1[k]));
    }
}

/// out[k·ldo + (i − r0)] = Σ_p w_ip·xp[k][p] for rows [r0, r1) and nt ≤ max_tokens tokens (xp: the
/// gathered, zero-padded activations of each token).
LOWBIT_SB_AVX512_TARGET inline void dot_rows_avx512(const salient_ternary_rows& w, Eigen::Index r0, Eigen::Index r1,
                                                    const float* const* xp, int nt, float* out, Eigen::Index ldo) {
    switch (nt) {
    case 1: return dot_rows_tokens<1>(w, r0, r1, xp, out, ldo);
    case 2: return dot_rows_tokens<2>(w, r0, r1, xp, out, ldo);
    case 3: return dot_rows_tokens<3>(w, r0, r1, xp, out, ldo);
    default: return dot_rows_tokens<4>(w, r0, r1, xp, out, ldo);
    }
}

/// Row i decoded to float in packed order into dst (padded columns).
LOWBIT_SB_AVX512_TARGET inline void decode_row_avx512(const salient_ternary_rows& w, Eigen::Index i, float* dst) {
    const std::uint16_t* wp = w.codes + i * w.stride;
    for (Eigen::Index b = 0; b < w.blocks; ++b) {
        __m512 lo, hi;
        tables512(w.params + (i * w.blocks + b) * 10, lo, hi);
        for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c) {
            if (const unsigned sal = w.chunk_salient[c]; sal != 0) {
                _mm512_storeu_ps(dst + 16 * c, chunk_weights<true>(wp, sal, lo, hi));
                wp += 5;
            } else {
                _mm512_storeu_ps(dst + 16 * c, chunk_weights<false>(wp, 0, lo, hi));
                wp += 3;
            }
        }
    }
}

/// The 32-entry table of one row and block (see the file comment) into t (AVX2 path).
LOWBIT_SB_AVX2_TARGET inline void table_avx2(const std::uint16_t* p10, float* t) {
    alignas(16) std::uint16_t h[16] = {};
    for (int k = 0; k < 10; ++k) h[k] = p10[k];
    alignas(32) float p[16];
    _mm256_store_ps(p, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h))));
    _mm256_store_ps(p + 8, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h + 8))));
    for (int g = 0; g < 2; ++g) {
        const float* s = p + 3 * g;
        const float* o = p + 6 + 2 * g;
        float* tg = t + 16 * g;
        for (int k = 0; k < 16; ++k) tg[k] = o[0]; // unused entries: μ
        for (int t0 = -1; t0 <= 1; ++t0) {
            for (int t1 = -1; t1 <= 1; ++t1) {
                const float v = s[0] + s[1] * static_cast<float>(t0);
                tg[4 + 3 * t0 + t1] = v + s[2] * static_cast<float>(t1);
            }
            tg[12 + 3 * t0] = o[0] + o[1] * static_cast<float>(t0);
        }
    }
}

/// The 8 weights of half h (lanes 8h..8h+7) of the chunk whose plane words start at wp.
LOWBIT_SB_AVX2_TARGET inline __m256 weights8(const std::uint16_t* wp, unsigned sal, int h, const float* table) {
    using salient_binary_x86::lanes8;
    const unsigned s = 8u * static_cast<unsigned>(h);
    const __m256i three = _mm256_set1_epi32(3);
    __m256i e = _mm256_add_epi32(_mm256_set1_epi32(12), _mm256_slli_epi32(lanes8(static_cast<unsigned>(wp[2]) >> s), 4));
    e = _mm256_add_epi32(e, _mm256_mullo_epi32(_mm256_sub_epi32(lanes8(static_cast<unsigned>(wp[0]) >> s),
                                                                lanes8(static_cast<unsigned>(wp[1]) >> s)), three));
    if (const unsigned sb = (sal >> s) & 0xFFu; sb != 0) {
        e = _mm256_sub_epi32(e, _mm256_slli_epi32(lanes8(sb), 3)); // 12 → 4 on salient lanes
        e = _mm256_add_epi32(e, _mm256_sub_epi32(lanes8(static_cast<unsigned>(wp[3]) >> s), lanes8(static_cast<unsigned>(wp[4]) >> s)));
    }
    return _mm256_i32gather_ps(table, e, 4);
}

/// As `dot_rows_avx512` with 8-lane vectors, one token at a time.
LOWBIT_SB_AVX2_TARGET inline void dot_rows_avx2(const salient_ternary_rows& w, Eigen::Index r0, Eigen::Index r1,
                                                const float* const* xp, int nt, float* out, Eigen::Index ldo) {
    alignas(32) float table[32];
    for (int k = 0; k < nt; ++k)
        for (Eigen::Index i = r0; i < r1; ++i) {
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            const std::uint16_t* wp = w.codes + i * w.stride;
            for (Eigen::Index b = 0; b < w.blocks; ++b) {
                table_avx2(w.params + (i * w.blocks + b) * 10, table);
                for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c) {
                    const unsigned sal = w.chunk_salient[c];
                    acc0 = _mm256_fmadd_ps(weights8(wp, sal, 0, table), _mm256_loadu_ps(xp[k] + 16 * c), acc0);
                    acc1 = _mm256_fmadd_ps(weights8(wp, sal, 1, table), _mm256_loadu_ps(xp[k] + 16 * c + 8), acc1);
                    wp += sal != 0 ? 5 : 3;
                }
            }
            out[k * ldo + (i - r0)] = salient_binary_x86::reduce_add256(_mm256_add_ps(acc0, acc1));
        }
}

/// Row i decoded to float in packed order into dst (padded columns).
LOWBIT_SB_AVX2_TARGET inline void decode_row_avx2(const salient_ternary_rows& w, Eigen::Index i, float* dst) {
    alignas(32) float table[32];
    const std::uint16_t* wp = w.codes + i * w.stride;
    for (Eigen::Index b = 0; b < w.blocks; ++b) {
        table_avx2(w.params + (i * w.blocks + b) * 10, table);
        for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c) {
            const unsigned sal = w.chunk_salient[c];
            _mm256_storeu_ps(dst + 16 * c, weights8(wp, sal, 0, table));
            _mm256_storeu_ps(dst + 16 * c + 8, weights8(wp, sal, 1, table));
            wp += sal != 0 ? 5 : 3;
        }
    }
}

} // namespace detail::salient_ternary_x86
#endif // LOWBIT_HAVE_X86_KERNELS

LOWBIT_END_NAMESPACE
