#pragma once
/// \file arch/salient_binary_x86.hpp
/// AVX2 and AVX-512 kernels of the BiLLM layout (salient_binary.hpp) × fp32 activations: per row and
/// 16-column chunk, the entry index e = 4·[salient lane] + 2·p2 + p1 of every weight is built from the
/// code bits and a float table of 8 entries per row and block (converted from fp16 once per row and
/// block) is permuted by e (`vpermps`), then multiplied into the gathered activations with FMA.
/// - AVX-512: the 16 bits of each plane are k-masks loaded from memory; e = masked moves of 1 and 2
///   (+ 4 on salient lanes); one `vpermps` per 16 weights. Up to 4 tokens share each decoded vector.
/// - AVX2: 8 lanes at a time; each plane byte expands to 0/1 int32 lanes through a constant table.
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

/// The weights of chunk c of a row whose code words start at `row`: table[4·sal + 2·p2 + p1], the p1
/// and p2 lane masks loaded from memory (AllP2: every chunk stores p2, at word chunks + c). `Salient`:
/// the chunk holds salient lanes (only the first chunks of a block do); the others take two masked
/// moves, a permute and no mask transfer from a general register.
template <bool AllP2, bool Salient>
LOWBIT_SB_AVX512_TARGET inline __m512 chunk_weights(const salient_binary_rows& w, const std::uint16_t* row, Eigen::Index c,
                                                    __m512 table) {
    const __mmask16 p1 = avx512_kernels::load_mask16(reinterpret_cast<const std::uint8_t*>(row + c));
    __mmask16 p2 = 0;
    if constexpr (AllP2) {
        p2 = avx512_kernels::load_mask16(reinterpret_cast<const std::uint8_t*>(row + w.chunks + c));
    } else if (const std::int32_t j = w.chunk_p2[c]; j >= 0) {
        p2 = avx512_kernels::load_mask16(reinterpret_cast<const std::uint8_t*>(row + w.chunks + j));
    }
    __m512i e = _mm512_maskz_mov_epi32(p1, _mm512_set1_epi32(1));
    e = _mm512_mask_add_epi32(e, p2, e, _mm512_set1_epi32(2));
    if constexpr (Salient)
        e = _mm512_mask_add_epi32(e, static_cast<__mmask16>(w.chunk_salient[c]), e, _mm512_set1_epi32(4));
    return _mm512_maskz_permutexvar_ps(0xFFFF, e, table);
}

/// `dot_rows_avx512` for NT tokens (accumulators in registers: two per token); per block the chunks
/// with salient lanes first, then the others in pairs.
template <int NT, bool AllP2>
LOWBIT_SB_AVX512_TARGET inline void dot_rows_tokens(const salient_binary_rows& w, Eigen::Index r0, Eigen::Index r1,
                                                    const float* const* xp, float* out, Eigen::Index ldo) {
    for (Eigen::Index i = r0; i < r1; ++i) {
        __m512 a0[NT], a1[NT];
#pragma GCC unroll 4
        for (int k = 0; k < NT; ++k) a0[k] = a1[k] = _mm512_setzero_ps();
        const std::uint16_t* row = w.codes + i * w.stride;
        for (Eigen::Index b = 0; b < w.blocks; ++b) {
            const __m512 table = table512(w.lut + (i * w.blocks + b) * 8);
            Eigen::Index c = w.block_first_chunk[b];
            const Eigen::Index end = w.block_first_chunk[b + 1];
            for (; c < end && w.chunk_salient[c] != 0; ++c) {
                const __m512 w1 = chunk_weights<AllP2, true>(w, row, c, table);
#pragma GCC unroll 4
                for (int k = 0; k < NT; ++k) a1[k] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp[k] + 16 * c), a1[k]);
            }
            for (; c + 1 < end; c += 2) {
                const __m512 w0 = chunk_weights<AllP2, false>(w, row, c, table);
                const __m512 w1 = chunk_weights<AllP2, false>(w, row, c + 1, table);
#pragma GCC unroll 4
                for (int k = 0; k < NT; ++k) {
                    a0[k] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp[k] + 16 * c), a0[k]);
                    a1[k] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp[k] + 16 * c + 16), a1[k]);
                }
            }
            if (c < end) {
                const __m512 w0 = chunk_weights<AllP2, false>(w, row, c, table);
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
LOWBIT_SB_AVX512_TARGET inline void dot_rows_avx512(const salient_binary_rows& w, Eigen::Index r0, Eigen::Index r1,
                                                    const float* const* xp, int nt, float* out, Eigen::Index ldo) {
    const bool all = w.stride == 2 * w.chunks;
    switch (nt) {
    case 1: return all ? dot_rows_tokens<1, true>(w, r0, r1, xp, out, ldo) : dot_rows_tokens<1, false>(w, r0, r1, xp, out, ldo);
    case 2: return all ? dot_rows_tokens<2, true>(w, r0, r1, xp, out, ldo) : dot_rows_tokens<2, false>(w, r0, r1, xp, out, ldo);
    case 3: return all ? dot_rows_tokens<3, true>(w, r0, r1, xp, out, ldo) : dot_rows_tokens<3, false>(w, r0, r1, xp, out, ldo);
    default: return all ? dot_rows_tokens<4, true>(w, r0, r1, xp, out, ldo) : dot_rows_tokens<4, false>(w, r0, r1, xp, out, ldo);
    }
}

/// Row i decoded to float in packed order into dst (padded columns).
LOWBIT_SB_AVX512_TARGET inline void decode_row_avx512(const salient_binary_rows& w, Eigen::Index i, float* dst) {
    const std::uint16_t* row = w.codes + i * w.stride;
    for (Eigen::Index b = 0; b < w.blocks; ++b) {
        const __m512 table = table512(w.lut + (i * w.blocks + b) * 8);
        for (Eigen::Index c = w.block_first_chunk[b]; c < w.block_first_chunk[b + 1]; ++c)
            _mm512_storeu_ps(dst + 16 * c, chunk_weights<false, true>(w, row, c, table));
    }
}

/// Bit expansion table of the AVX2 path: entry b holds the 8 bits of b as int32 lanes 0/1.
struct bit_lanes8 {
    alignas(32) std::int32_t lanes[256][8];
    constexpr bit_lanes8() : lanes{} {
        for (int b = 0; b < 256; ++b)
            for (int l = 0; l < 8; ++l) lanes[b][l] = (b >> l) & 1;
    }
};
inline constexpr bit_lanes8 bit_lanes8_table{};

/// The lanes of byte b as int32 0/1.
LOWBIT_SB_AVX2_TARGET inline __m256i lanes8(unsigned b) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(bit_lanes8_table.lanes[b & 0xFFu]));
}

/// The 8 weights of half h (lanes 8h..8h+7) of one chunk: table[4·sal + 2·p2 + p1].
LOWBIT_SB_AVX2_TARGET inline __m256 weights8(std::uint32_t code, unsigned sal, int h, __m256 table) {
    const unsigned s = 8u * static_cast<unsigned>(h);
    const __m256i p2 = lanes8(code >> (16 + s));
    __m256i e = _mm256_add_epi32(lanes8(code >> s), _mm256_add_epi32(p2, p2));
    if (const unsigned sb = (sal >> s) & 0xFFu; sb != 0) e = _mm256_add_epi32(e, _mm256_slli_epi32(lanes8(sb), 2));
    return _mm256_permutevar8x32_ps(table, e);
}

/// Horizontal float sum of a ymm (fixed order; also the salient-ternary AVX2 kernels').
LOWBIT_SB_AVX2_TARGET inline float reduce_add256(__m256 s8) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
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
            out[k * ldo + (i - r0)] = reduce_add256(_mm256_add_ps(acc0, acc1));
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
