#pragma once
/// \file arch/salient_binary_x86.hpp
/// AVX2 and AVX-512 kernels of the BiLLM layout (salient_binary.hpp) × fp32 activations: per row and
/// 16-column chunk, the entry index e = 4·[salient lane] + 2·p2 + p1 of every weight is built from the
/// code bits and a float table of 8 entries per row and block (converted from fp16 once per row and
/// block) is permuted by e (`vpermps`), then multiplied into the gathered activations with FMA.
/// - AVX-512: the 16 bits of each plane are k-masks; e = sal4 + masked adds of 1 and 2; one
///   `vpermps` per 16 weights. Up to 4 tokens share each decoded weight vector.
/// - AVX2: 8 lanes at a time; each plane byte is broadcast, ANDed with the lane bits and compared.
/// Per-function target attributes; salient_binary.hpp calls them only when the CPU has the ISA.
///
/// Error: products w·x are rounded once (FMA), sums in float in a fixed order per path, so
/// |result − Σ_j w_ij x_j| ≤ (n + 16)·u·Σ_j |w_ij x_j| (n = padded columns, u = 2⁻²⁴), the bound of
/// salient_binary.hpp's contract, shared with its scalar reference.

#include <lowbit/arch/avx512_fp32.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>

#include <Eigen/Core>

#include <cstdint>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>
#endif

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// The arrays a salient-binary kernel reads (owned by `salient_binary_matrix`).
struct salient_binary_rows {
    const std::uint16_t* codes = nullptr;       ///< rows × stride words: p1 of every chunk, then the p2 words
    const std::uint16_t* lut = nullptr;         ///< rows × blocks × 8 fp16 bit patterns
    const std::uint16_t* chunk_salient = nullptr; ///< chunks: bit l set if lane l is a salient column
    const std::int32_t* chunk_p2 = nullptr;     ///< chunks: word of its p2 plane after the p1 words, −1: p2 = 0
    const std::int32_t* block_first_chunk = nullptr; ///< blocks + 1: first chunk of each block
    Eigen::Index chunks = 0;                    ///< 16-column chunks per row
    Eigen::Index stride = 0;                    ///< code words per row (chunks + p2 words)
    Eigen::Index blocks = 0;                    ///< blocks per row

    /// The 32-bit code of row `row` (its words), chunk c: bits 0..15 p1, 16..31 p2.
    [[nodiscard]] std::uint32_t code(const std::uint16_t* row, Eigen::Index c) const {
        const std::int32_t j = chunk_p2[c];
        return row[c] | (j >= 0 ? static_cast<std::uint32_t>(row[chunks + j]) << 16 : 0u);
    }
};

} // namespace detail

#if LOWBIT_HAVE_X86_KERNELS
/// Target strings of the salient-binary kernels (AVX-512: the set of arch/avx512.hpp, which the
/// dispatch requires, plus F16C).
#define LOWBIT_SB_AVX512_TARGET \
    LOWBIT_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vpopcntdq,avx512vbmi,avx2,fma,popcnt,bmi2,f16c")
#define LOWBIT_SB_AVX2_TARGET LOWBIT_TARGET("avx2,fma,f16c")

namespace detail::salient_binary_x86 {

/// Most tokens one `dot_rows_avx512` call shares a decoded weight vector with.
inline constexpr int max_tokens = 4;

/// The 8-entry table of row i, block b in the low half of a zmm (fp16 → float).
LOWBIT_SB_AVX512_TARGET inline __m512 table512(const std::uint16_t* lut8) {
    return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut8))));
}

/// The 16 weights of one chunk: table[sal4 + p1 + 2·p2].
LOWBIT_SB_AVX512_TARGET inline __m512 weights16(std::uint32_t code, __mmask16 sal, __m512 table) {
    const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2);
    __m512i e = _mm512_maskz_mov_epi32(sal, _mm512_set1_epi32(4));
    e = _mm512_mask_add_epi32(e, static_cast<__mmask16>(code & 0xFFFFu), e, one);
    e = _mm512_mask_add_epi32(e, static_cast<__mmask16>(code >> 16), e, two);
    return _mm512_maskz_permutexvar_ps(0xFFFF, e, table);
}

/// out[k·ldo + (i − r0)] = Σ_p w_ip·xp[k][p] for rows [r0, r1) and nt ≤ max_tokens tokens (xp: the
/// gathered, zero-padded activations of each token).
LOWBIT_SB_AVX512_TARGET inline void dot_rows_avx512(const salient_binary_rows& w, Eigen::Index r0, Eigen::Index r1,
                                                    const float* const* xp, int nt, float* out, Eigen::Index ldo) {
    for (Eigen::Index i = r0; i < r1; ++i) {
        __m512 acc[max_tokens][2];
        for (int k = 0; k < max_tokens; ++k) acc[k][0] = acc[k][1] = _mm512_setzero_ps();
        const std::uint16_t* codes = w.codes + i * w.stride;
        for (Eigen::Index b = 0; b < w.blocks; ++b) {
            const __m512 table = table512(w.lut + (i * w.blocks + b) * 8);
            for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c) {
                const __m512 wv = weights16(w.code(codes, c), static_cast<__mmask16>(w.chunk_salient[c]), table);
                const int h = static_cast<int>(c & 1);
                for (int k = 0; k < nt; ++k) acc[k][h] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp[k] + 16 * c), acc[k][h]);
            }
        }
        for (int k = 0; k < nt; ++k) out[k * ldo + (i - r0)] = avx512_kernels::reduce_add_f32(_mm512_add_ps(acc[k][0], acc[k][1]));
    }
}

/// Row i decoded to float in packed order into dst (padded columns).
LOWBIT_SB_AVX512_TARGET inline void decode_row_avx512(const salient_binary_rows& w, Eigen::Index i, float* dst) {
    const std::uint16_t* codes = w.codes + i * w.stride;
    for (Eigen::Index b = 0; b < w.blocks; ++b) {
        const __m512 table = table512(w.lut + (i * w.blocks + b) * 8);
        for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c)
            _mm512_storeu_ps(dst + 16 * c, weights16(w.code(codes, c), static_cast<__mmask16>(w.chunk_salient[c]), table));
    }
}

/// 8 lanes of bits (bit l of `bits` → lane l all ones).
LOWBIT_SB_AVX2_TARGET inline __m256i lanes8(unsigned bits) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
}

/// The 8 weights of half h (lanes 8h..8h+7) of one chunk.
LOWBIT_SB_AVX2_TARGET inline __m256 weights8(std::uint32_t code, unsigned sal, int h, __m256 table) {
    const unsigned s = 8u * static_cast<unsigned>(h);
    __m256i e = _mm256_and_si256(lanes8((sal >> s) & 0xFFu), _mm256_set1_epi32(4));
    e = _mm256_sub_epi32(e, lanes8((code >> s) & 0xFFu));                            // + 1 where p1
    e = _mm256_sub_epi32(e, _mm256_add_epi32(lanes8((code >> (16 + s)) & 0xFFu),      // + 2 where p2
                                             lanes8((code >> (16 + s)) & 0xFFu)));
    return _mm256_permutevar8x32_ps(table, e);
}

/// As `dot_rows_avx512` with 8-lane vectors, one token at a time.
LOWBIT_SB_AVX2_TARGET inline void dot_rows_avx2(const salient_binary_rows& w, Eigen::Index r0, Eigen::Index r1,
                                                const float* const* xp, int nt, float* out, Eigen::Index ldo) {
    for (int k = 0; k < nt; ++k)
        for (Eigen::Index i = r0; i < r1; ++i) {
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            const std::uint16_t* codes = w.codes + i * w.stride;
            for (Eigen::Index b = 0; b < w.blocks; ++b) {
                const __m256 table =
                    _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.lut + (i * w.blocks + b) * 8)));
                for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c) {
                    const unsigned sal = w.chunk_salient[c];
                    const std::uint32_t code = w.code(codes, c);
                    acc0 = _mm256_fmadd_ps(weights8(code, sal, 0, table), _mm256_loadu_ps(xp[k] + 16 * c), acc0);
                    acc1 = _mm256_fmadd_ps(weights8(code, sal, 1, table), _mm256_loadu_ps(xp[k] + 16 * c + 8), acc1);
                }
            }
            const __m256 s8 = _mm256_add_ps(acc0, acc1);
            __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
            s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
            out[k * ldo + (i - r0)] = _mm_cvtss_f32(s4);
        }
}

/// Row i decoded to float in packed order into dst (padded columns).
LOWBIT_SB_AVX2_TARGET inline void decode_row_avx2(const salient_binary_rows& w, Eigen::Index i, float* dst) {
    const std::uint16_t* codes = w.codes + i * w.stride;
    for (Eigen::Index b = 0; b < w.blocks; ++b) {
        const __m256 table =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.lut + (i * w.blocks + b) * 8)));
        for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c) {
            const std::uint32_t code = w.code(codes, c);
            _mm256_storeu_ps(dst + 16 * c, weights8(code, w.chunk_salient[c], 0, table));
            _mm256_storeu_ps(dst + 16 * c + 8, weights8(code, w.chunk_salient[c], 1, table));
        }
    }
}

} // namespace detail::salient_binary_x86
#endif // LOWBIT_HAVE_X86_KERNELS

LOWBIT_END_NAMESPACE
