#pragma once
/// \file arch/avx512.hpp
/// AVX-512 kernels (F, BW, VL, VNNI, VPOPCNTDQ, VBMI) for packed weights × int8 activations, compiled with
/// per-function target attributes so that they exist in a build without `-march` flags; gemm.hpp
/// calls them only when detail::host_cpu_features().avx512 is true.
///
/// Inner step: one 64-byte load of packed weights yields 4 (base 3: 5) vectors of 64 unsigned
/// digits u ∈ [0, 15], each multiplied with 64 int8 activations by `vpdpbusd` (u8 × s8, four
/// products summed into each int32 lane, no saturation), with one accumulator per digit plane to
/// hide the instruction latency. Digit extraction: AND/shift (2-bit, 4-bit), k-mask byte moves
/// (binary), two unsigned compares and a multiply-by-3 mod 256 per trit (base 3, 4-token GEMM);
/// base 3 in GEMV is not decoded: `base3_dot_planes` multiplies the raw bytes (linear form). Same
/// contract and exact results as detail::scalar_kernels::dot_rows (arch/generic.hpp).
///
/// interleaved_matrix (4-row tiles): `tile_dot4` loads each block's activation vectors once for
/// four rows (2 accumulators per row, one reduction per row per call) and prefetches the tile
/// stream `prefetch_distance` bytes ahead; `tile_dot4_and_only` is the AND-only 2-bit variant of
/// sources.md §P 7 (measured: no faster here — see `interleaved_and_only`; kept, tested,
/// selectable). `load_pinned` keeps loaded vectors in registers: GCC otherwise folds a load into
/// each of its users (4 loads per weight line), which cost 20 % from cache and 15 % from DRAM.

#include <lowbit/arch/generic.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>
#include <lowbit/pack.hpp>

#include <cstdint>
#include <cstring>
#include <limits>

#if LOWBIT_HAVE_X86_KERNELS
#include <immintrin.h>

/// Target string of the AVX-512 kernels.
#define LOWBIT_AVX512_TARGET LOWBIT_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vpopcntdq,avx512vbmi,avx2,fma,popcnt,bmi2")

LOWBIT_BEGIN_NAMESPACE
namespace detail::avx512_kernels {

/// Lanes i and i + 8 of a zmm added: the first step of every horizontal int32 sum.
LOWBIT_AVX512_TARGET inline __m256i fold_halves_epi32(__m512i v) {
    return _mm256_add_epi32(_mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, v, 0),
                            _mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, v, 1));
}

/// Horizontal int32 sum of a zmm (masked extract with an explicit source: avoids GCC 12's
/// maybe-uninitialized warnings inside _mm512_reduce_add_epi32).
LOWBIT_AVX512_TARGET inline std::int32_t reduce_add_epi32(__m512i v) {
    const __m256i h = fold_halves_epi32(v);
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

/// Bytes ahead of the current read position that the GEMV kernels prefetch into L1: about one
/// DRAM latency (≈ 100 ns) of a 20–40 GB/s stream, so that more lines are in flight than the
/// hardware prefetcher alone keeps.
/// Measured (THP on, 4096² from DRAM, 1 thread, CPU µs): 4 KiB 162–166, 8 KiB 153–161, 12 KiB 163;
/// T1 or NTA instead of T0 no better; adding an L2 (T1) prefetch at 3·distance: 152 vs 161.
inline constexpr int prefetch_distance = 8192;

/// Prefetches the 64-byte line at p + prefetch_distance into L1 and the one at p + 3·prefetch_distance
/// into L2 (prefetches never fault, so reading past the buffer's end is harmless).
LOWBIT_AVX512_TARGET inline void prefetch_ahead(const std::uint8_t* p) {
    _mm_prefetch(reinterpret_cast<const char*>(p + prefetch_distance), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + 3 * prefetch_distance), _MM_HINT_T1);
}

/// 64-byte load kept in a register: the empty asm stops GCC from folding the load into each of its
/// users as a memory operand (it did: 4 loads of every weight line and of every activation vector).
LOWBIT_AVX512_TARGET inline __m512i load_pinned(const void* p) {
    __m512i v = _mm512_loadu_si512(p);
#if defined(__GNUC__)
    __asm__("" : "+v"(v));
#endif
    return v;
}

/// Blocks one accumulator pair of the linear base-3 dot (`base3_dot_planes`) takes before it is
/// folded into an exact sum: 64 blocks = 20 480 columns, so 256·|Σ u·x| ≤ 256·2·127·20 480 < 2^31.
inline constexpr Eigen::Index base3_chunk_blocks = 64;

/// Base 3 without decoding the trits. The bytes s_0 = stored, s_{k+1} = 3·s_k mod 256 satisfy
/// 3·s_k = 256·u_k + s_{k+1} (u_k = ⌊3·s_k/256⌋, the k-th digit), so Σ_j u_kj·x_j =
/// (3·Σ_j s_kj·x_j − Σ_j s_{k+1,j}·x_j)/256: per 64-column plane two `vpdpbusd` on raw bytes and
/// one multiply-by-3 (two byte adds) instead of two compares and two mask moves. Adds
/// Σ_k s_k·x_k to p and Σ_k s_{k+1}·x_k to n over planes k < `planes` (≤ 5); `base3_fold` turns the
/// pair into 256·Σ u·x (int32 arithmetic wraps mod 2^32, which is exact as long as the true value
/// fits: at most `base3_chunk_blocks` blocks per pair).
LOWBIT_AVX512_TARGET inline void base3_dot_planes(__m512i s, const __m512i* x, int planes, __m512i& p, __m512i& n) {
#pragma GCC unroll 5
    for (int k = 0; k < 5; ++k) {
        if (k >= planes) break;
        p = _mm512_dpbusd_epi32(p, s, x[k]);
        s = _mm512_add_epi8(s, _mm512_add_epi8(s, s));
        n = _mm512_dpbusd_epi32(n, s, x[k]);
    }
}

/// 3·p − n lane-wise (wrapping int32): lanes summing to 256·Σ u·x for `base3_dot_planes`' pair.
LOWBIT_AVX512_TARGET inline __m512i base3_fold(__m512i p, __m512i n) {
    return _mm512_sub_epi32(_mm512_add_epi32(p, _mm512_add_epi32(p, p)), n);
}

/// Σ_j u_ij · x_j over one packed row (u = stored digits), int32.
template <class F>
LOWBIT_AVX512_TARGET inline std::int32_t digit_dot_row(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks) {
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512(), a2 = _mm512_setzero_si512(),
            a3 = _mm512_setzero_si512(), a4 = _mm512_setzero_si512();
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        const __m512i m3 = _mm512_set1_epi8(3);
        for (Eigen::Index b = 0; b < nblocks; ++b, p += 64, x += 256) {
            prefetch_ahead(p);
            const __m512i w = load_pinned(p);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(w, m3), _mm512_loadu_si512(x));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(_mm512_srli_epi16(w, 2), m3), _mm512_loadu_si512(x + 64));
            a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(_mm512_srli_epi16(w, 4), m3), _mm512_loadu_si512(x + 128));
            a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(_mm512_srli_epi16(w, 6), m3), _mm512_loadu_si512(x + 192));
        }
    } else if constexpr (std::is_same_v<F, int4>) {
        const __m512i m15 = _mm512_set1_epi8(15);
        for (Eigen::Index b = 0; b < nblocks; ++b, p += 128, x += 256) {
            const __m512i w0 = load_pinned(p), w1 = load_pinned(p + 64);
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
        // the linear form of base3_dot_planes, folded every base3_chunk_blocks blocks
        std::int32_t r = 0;
        for (Eigen::Index c0 = 0; c0 < nblocks; c0 += base3_chunk_blocks) {
            const Eigen::Index c1 = c0 + base3_chunk_blocks < nblocks ? c0 + base3_chunk_blocks : nblocks;
            __m512i pa = _mm512_setzero_si512(), na = pa, pb = pa, nb = pa;
            // blocks alternate between two accumulator pairs: two dependency chains in flight
            for (Eigen::Index b = c0; b < c1; ++b, p += 64, x += 320) {
                prefetch_ahead(p);
                const __m512i xv[5] = {_mm512_loadu_si512(x), _mm512_loadu_si512(x + 64), _mm512_loadu_si512(x + 128),
                                       _mm512_loadu_si512(x + 192), _mm512_loadu_si512(x + 256)};
                if ((b - c0) % 2 == 0) base3_dot_planes(load_pinned(p), xv, 5, pa, na);
                else base3_dot_planes(load_pinned(p), xv, 5, pb, nb);
            }
            r += reduce_add_epi32(_mm512_add_epi32(base3_fold(pa, na), base3_fold(pb, nb))) >> 8;
        }
        return r;
    }
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)), a4);
    return reduce_add_epi32(s);
}

/// The two nibble-half digit sums of one int4 block as 8-lane vectors (lo: columns 0…127, hi: 128…255).
LOWBIT_AVX512_TARGET inline void int4_block_halves(const std::uint8_t* q, const std::int8_t* xb, __m256i& lo, __m256i& hi) {
    const __m512i m15 = _mm512_set1_epi8(15);
    const __m512i w0 = load_pinned(q), w1 = load_pinned(q + 64);
    __m512i l = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(w0, m15), _mm512_loadu_si512(xb));
    __m512i h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(w0, 4), m15),
                                    _mm512_loadu_si512(xb + 128));
    l = _mm512_dpbusd_epi32(l, _mm512_and_si512(w1, m15), _mm512_loadu_si512(xb + 64));
    h = _mm512_dpbusd_epi32(h, _mm512_and_si512(_mm512_srli_epi16(w1, 4), m15), _mm512_loadu_si512(xb + 192));
    lo = fold_halves_epi32(l);
    hi = fold_halves_epi32(h);
}

/// AVX-512 int4_half_dots (contract of scalar_kernels::int4_half_dots, exact): two `vpdpbusd` per
/// nibble half of a block; the horizontal sums of two blocks (four halves) share one reduction
/// (fold to 256 bits, three vphaddd, one 128-bit add: the four sums in order).
LOWBIT_AVX512_TARGET inline void int4_half_dots(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks,
                                                Eigen::Index stride, std::int32_t* out) {
    Eigen::Index b = 0;
    for (; b + 2 <= nblocks; b += 2, p += 2 * stride, x += 512) {
        __m256i l0, h0, l1, h1;
        int4_block_halves(p, x, l0, h0);
        int4_block_halves(p + stride, x + 256, l1, h1);
        const __m256i u = _mm256_hadd_epi32(_mm256_hadd_epi32(l0, h0), _mm256_hadd_epi32(l1, h1));
        const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1)); // l0 h0 l1 h1
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * b), q);
    }
    if (b < nblocks) {
        __m256i l0, h0;
        int4_block_halves(p, x, l0, h0);
        __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(l0, h0), _mm256_setzero_si256());
        const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        out[2 * b] = _mm_cvtsi128_si32(q);
        out[2 * b + 1] = _mm_extract_epi32(q, 1);
    }
}

/// Decodes one packed block into its digit vectors d0..d4 (64 digits each, aligned with activations
/// [64k, 64k + 64) of the block; d4 only for base 3).
template <class F>
LOWBIT_AVX512_TARGET inline void decode_block(const std::uint8_t* p, __m512i& d0, __m512i& d1, __m512i& d2, __m512i& d3,
                                              __m512i& d4) {
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        const __m512i m3 = _mm512_set1_epi8(3), w = load_pinned(p);
        d0 = _mm512_and_si512(w, m3);
        d1 = _mm512_and_si512(_mm512_srli_epi16(w, 2), m3);
        d2 = _mm512_and_si512(_mm512_srli_epi16(w, 4), m3);
        d3 = _mm512_and_si512(_mm512_srli_epi16(w, 6), m3);
    } else if constexpr (std::is_same_v<F, int4>) {
        const __m512i m15 = _mm512_set1_epi8(15), w0 = load_pinned(p), w1 = load_pinned(p + 64);
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
        __m512i s = load_pinned(p);
        __m512i* d[5] = {&d0, &d1, &d2, &d3, &d4};
#pragma GCC unroll 5
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

/// Horizontal int32 sums of four zmm: lane j of the result = Σ of a_j's 16 lanes.
LOWBIT_AVX512_TARGET inline __m128i reduce4_add_epi32(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(fold_halves_epi32(a0), fold_halves_epi32(a1)),
                                        _mm256_hadd_epi32(fold_halves_epi32(a2), fold_halves_epi32(a3)));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}


/// Base 3, one token, four rows in the linear form (`base3_dot_planes`): row j's block b at
/// p + j·row_stride + b·block_stride (rows: row_stride = row bytes, block_stride = 64; 4-row tiles:
/// 64 and 256); r[j] = Σ_c u_jc·x_c. The last block multiplies its first `last_planes` planes; the
/// pairs are folded every `base3_chunk_blocks` blocks; `Prefetch`: the 4 rows' lines of each block
/// are prefetched (the tile stream; the row GEMV leaves it to the hardware).
template <bool Prefetch>
LOWBIT_AVX512_TARGET inline void base3_dot4(const std::uint8_t* p, Eigen::Index row_stride, Eigen::Index block_stride,
                                            const std::int8_t* x, Eigen::Index nblocks, int last_planes, std::int32_t* r) {
    __m128i tot = _mm_setzero_si128();
    for (Eigen::Index c0 = 0; c0 < nblocks; c0 += base3_chunk_blocks) {
        const Eigen::Index c1 = c0 + base3_chunk_blocks < nblocks ? c0 + base3_chunk_blocks : nblocks;
        __m512i pa[4], na[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) pa[j] = na[j] = _mm512_setzero_si512();
        const std::uint8_t* q = p + c0 * block_stride;
        const std::int8_t* xb = x + c0 * 320;
        for (Eigen::Index b = c0; b < c1; ++b, q += block_stride, xb += 320) {
            const int planes = b + 1 == nblocks ? last_planes : 5;
            if constexpr (Prefetch)
#pragma GCC unroll 4
                for (int j = 0; j < 4; ++j) prefetch_ahead(q + j * row_stride);
            __m512i xv[5];
#pragma GCC unroll 5
            for (int k = 0; k < 5; ++k) xv[k] = k < planes ? load_pinned(xb + 64 * k) : _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) base3_dot_planes(load_pinned(q + j * row_stride), xv, planes, pa[j], na[j]);
        }
        tot = _mm_add_epi32(tot, _mm_srai_epi32(reduce4_add_epi32(base3_fold(pa[0], na[0]), base3_fold(pa[1], na[1]),
                                                                  base3_fold(pa[2], na[2]), base3_fold(pa[3], na[3])),
                                                8));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(r), tot);
}

/// One token, four rows (row j at p + j·rb): r[j] = Σ_c u_jc·x_c. Each activation vector is loaded
/// once for the four rows, the four sums are reduced together, and the last block multiplies only
/// its first `last_planes` 64-column planes (the others meet zero-padded activations: skipping
/// them changes no sum). Used by the GEMV path, where narrow rows (64, 172 columns) made the
/// per-row reduction and the padded planes most of the work.
template <class F>
LOWBIT_AVX512_TARGET inline void digit_dot_rows4(const std::uint8_t* p, Eigen::Index rb, const std::int8_t* x,
                                                 Eigen::Index nblocks, int last_planes, std::int32_t* r) {
    using T = pack_format<F>;
    constexpr int all_planes = T::block_weights / 64;
    if constexpr (std::is_same_v<F, ternary_base3>) { // linear form, no trit decode
        base3_dot4<false>(p, rb, T::block_bytes, x, nblocks, last_planes, r);
        return;
    }
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (Eigen::Index b = 0; b < nblocks; ++b, p += T::block_bytes, x += T::block_weights) {
        const int planes = b + 1 == nblocks ? last_planes : all_planes;
        // (fully unrolled: the tests' and tools' -O2 builds otherwise keep these arrays on the stack)
        __m512i xv[5];
#pragma GCC unroll 5
        for (int k = 0; k < all_planes; ++k) xv[k] = k < planes ? _mm512_loadu_si512(x + 64 * k) : _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) prefetch_ahead(p + j * rb);
            __m512i d[5];
            d[4] = _mm512_setzero_si512();
            decode_block<F>(p + j * rb, d[0], d[1], d[2], d[3], d[4]);
            acc[j] = _mm512_dpbusd_epi32(acc[j], d[0], xv[0]);
#pragma GCC unroll 5
            for (int k = 1; k < all_planes; ++k)
                if (k < planes) acc[j] = _mm512_dpbusd_epi32(acc[j], d[k], xv[k]);
        }
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(r), reduce4_add_epi32(acc[0], acc[1], acc[2], acc[3]));
}

/// Lane i of the result = Σ of the 16 lanes of a[i], for 16 vectors at once (a transposing
/// reduction: 256-, 128-, 64- and 32-bit halves added pairwise, 45 shuffles/adds for 16 sums, then
/// one permute back to row order) — about 3 instructions per row where `reduce4_add_epi32` takes 4–5
/// plus a scalar extract. Integer adds, so the order does not matter.
#if defined(__GNUC__)
__attribute__((always_inline)) // inlined, the 16 accumulators stay in registers (GCC left a call: 17 % of a 64×64 GEMV)
#endif
LOWBIT_AVX512_TARGET inline __m512i reduce16_add_epi32(const __m512i (&a)[16]) {
    // (maskz forms: GCC 12's plain forms start from an undefined source and warn)
    __m512i s8[8], s4[4], s2[2];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) // [a.lo256 + a.hi256 | b.lo256 + b.hi256]
        s8[k] = _mm512_add_epi32(_mm512_maskz_shuffle_i64x2(0xFF, a[2 * k], a[2 * k + 1], 0x44),
                                 _mm512_maskz_shuffle_i64x2(0xFF, a[2 * k], a[2 * k + 1], 0xEE));
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) // 128-bit chunks: rows 4k..4k+3, four partial lanes each
        s4[k] = _mm512_add_epi32(_mm512_maskz_shuffle_i32x4(0xFFFF, s8[2 * k], s8[2 * k + 1], 0x88),
                                 _mm512_maskz_shuffle_i32x4(0xFFFF, s8[2 * k], s8[2 * k + 1], 0xDD));
#pragma GCC unroll 2
    for (int k = 0; k < 2; ++k) // per chunk: two lanes of row c (from s4[2k]) and of row c + 4 (s4[2k+1])
        s2[k] = _mm512_add_epi32(_mm512_maskz_unpacklo_epi64(0xFF, s4[2 * k], s4[2 * k + 1]),
                                 _mm512_maskz_unpackhi_epi64(0xFF, s4[2 * k], s4[2 * k + 1]));
    const __m512 x0 = _mm512_castsi512_ps(s2[0]), x1 = _mm512_castsi512_ps(s2[1]);
    const __m512i r = _mm512_add_epi32(_mm512_castps_si512(_mm512_maskz_shuffle_ps(0xFFFF, x0, x1, 0x88)),
                                       _mm512_castps_si512(_mm512_maskz_shuffle_ps(0xFFFF, x0, x1, 0xDD)));
    // lane 4c + m holds row: c + 4·m' with m ↦ {0: c, 1: c + 4, 2: c + 8, 3: c + 12}
    const __m512i back = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_maskz_permutexvar_epi32(0xFFFF, back, r);
}

/// One token, 16 rows (row j at p + j·rb) of at most `gemv16_max_blocks` blocks: lane j of the
/// result = Σ_c u_jc·x_c. For narrow rows (the 64- to 512-column layers of small and MoE models),
/// where the per-row reduction and the scalar row loop cost more than the dot products; the last
/// block multiplies only its first `last_planes` planes. Base 3 takes the linear form per row.
inline constexpr Eigen::Index gemv16_max_blocks = 2;

/// (`Planes` > 0: one block of exactly that many live planes, unrolled at compile time; 0: any.)
template <class F, int Planes = 0>
LOWBIT_AVX512_TARGET inline __m512i digit_dot_rows16(const std::uint8_t* p, Eigen::Index rb, const std::int8_t* x,
                                                     Eigen::Index nblocks, int last_planes) {
    using T = pack_format<F>;
    constexpr int all_planes = T::block_weights / 64;
    if constexpr (Planes > 0) {
        nblocks = 1;
        last_planes = Planes;
    } else if (nblocks == 1) {
        switch (last_planes) { // the common narrow case (rows of ≤ 256/320 columns) with constant planes
        case 1: return digit_dot_rows16<F, 1>(p, rb, x, 1, 1);
        case 2: return digit_dot_rows16<F, 2>(p, rb, x, 1, 2);
        case 3: return digit_dot_rows16<F, 3>(p, rb, x, 1, 3);
        case 4: return digit_dot_rows16<F, 4>(p, rb, x, 1, 4);
        default: break;
        }
    }
    __m512i acc[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_si512();
    for (Eigen::Index b = 0; b < nblocks; ++b) {
        const int planes = b + 1 == nblocks ? last_planes : all_planes;
        const std::int8_t* xb = x + b * T::block_weights;
        __m512i xv[5];
#pragma GCC unroll 5
        for (int k = 0; k < 5; ++k) xv[k] = k < planes ? _mm512_loadu_si512(xb + 64 * k) : _mm512_setzero_si512();
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) {
            const std::uint8_t* q = p + j * rb + b * T::block_bytes;
            if constexpr (std::is_same_v<F, ternary_base3>) {
                __m512i pa = _mm512_setzero_si512(), na = pa;
                base3_dot_planes(_mm512_loadu_si512(q), xv, planes, pa, na);
                acc[j] = _mm512_add_epi32(acc[j], base3_fold(pa, na)); // 256·Σu·x ≤ 2^31 for 2 blocks
            } else {
                __m512i d[5];
                d[4] = _mm512_setzero_si512();
                decode_block<F>(q, d[0], d[1], d[2], d[3], d[4]);
#pragma GCC unroll 5
                for (int k = 0; k < all_planes; ++k)
                    if (k < planes) acc[j] = _mm512_dpbusd_epi32(acc[j], d[k], xv[k]);
            }
        }
    }
    const __m512i r = reduce16_add_epi32(acc);
    if constexpr (std::is_same_v<F, ternary_base3>) return _mm512_maskz_srai_epi32(0xFFFF, r, 8);
    else return r;
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
    if (ntok == 1) { // GEMV: stream rows in order, four at a time
        const int last_planes = last_block_planes(w);
        Eigen::Index i = r0;
        if (nb <= gemv16_max_blocks) {
            const __m512i mul = _mm512_set1_epi32(T::digit_mul), off = _mm512_set1_epi32(T::digit_offset * qsum[0]);
            for (; i + 16 <= r1; i += 16)
                _mm512_storeu_si512(out + (i - r0), _mm512_sub_epi32(_mm512_mullo_epi32(mul, digit_dot_rows16<F>(base + i * rb, rb, x, nb, last_planes)), off));
        }
        for (; i + 4 <= r1; i += 4) {
            std::int32_t r[4];
            digit_dot_rows4<F>(base + i * rb, rb, x, nb, last_planes, r);
            for (int j = 0; j < 4; ++j) out[i + j - r0] = T::digit_mul * r[j] - T::digit_offset * qsum[0];
        }
        for (; i < r1; ++i)
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

/// One 4-row tile of an interleaved_matrix (block b of the 4 rows contiguous, pack.hpp):
/// r[j] = Σ_c u_{4t+j, c}·x_c for j = 0..3. Each block's activation vectors are loaded once and
/// feed the four rows; two accumulators per row; the tile stream is prefetched `prefetch_distance`
/// ahead; one horizontal reduction per row at the end.
template <class F>
LOWBIT_AVX512_TARGET inline void tile_dot4(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks,
                                           std::int32_t* r) {
    using T = pack_format<F>;
    constexpr int bb = T::block_bytes;
    if constexpr (std::is_same_v<F, ternary_base3>) { // linear form, no trit decode
        base3_dot4<true>(p, bb, 4 * bb, x, nblocks, 5, r);
        return;
    }
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, e0 = a0, e1 = a0;
    for (Eigen::Index b = 0; b < nblocks; ++b, p += 4 * bb, x += T::block_weights) {
        for (int l = 0; l < 4 * bb; l += 64) prefetch_ahead(p + l);
        const __m512i x0 = load_pinned(x), x1 = load_pinned(x + 64), x2 = load_pinned(x + 128), x3 = load_pinned(x + 192);
        __m512i x4 = _mm512_setzero_si512();
        if constexpr (T::block_weights == 320) x4 = load_pinned(x + 256);
#define LOWBIT_TILE_ROW(A0, A1, P)                                                                 \
    {                                                                                               \
        __m512i d0, d1, d2, d3, d4 = _mm512_setzero_si512();                                        \
        decode_block<F>(P, d0, d1, d2, d3, d4);                                                     \
        A0 = _mm512_dpbusd_epi32(A0, d0, x0);                                                       \
        A1 = _mm512_dpbusd_epi32(A1, d1, x1);                                                       \
        A0 = _mm512_dpbusd_epi32(A0, d2, x2);                                                       \
        A1 = _mm512_dpbusd_epi32(A1, d3, x3);                                                       \
        if constexpr (T::block_weights == 320) A0 = _mm512_dpbusd_epi32(A0, d4, x4);                \
    }
        LOWBIT_TILE_ROW(a0, a1, p)
        LOWBIT_TILE_ROW(b0, b1, p + bb)
        LOWBIT_TILE_ROW(c0, c1, p + 2 * bb)
        LOWBIT_TILE_ROW(e0, e1, p + 3 * bb)
#undef LOWBIT_TILE_ROW
    }
    r[0] = reduce_add_epi32(_mm512_add_epi32(a0, a1));
    r[1] = reduce_add_epi32(_mm512_add_epi32(b0, b1));
    r[2] = reduce_add_epi32(_mm512_add_epi32(c0, c1));
    r[3] = reduce_add_epi32(_mm512_add_epi32(e0, e1));
}

/// 2-bit formats (ternary2, int2), AND-only unpack (sources.md §P 7): field k of a byte,
/// b & (3 << 2k) = 4^k·u, feeds `vpdpbusd` directly (≤ 192 fits u8), one accumulator per field and
/// row; the exact int32 sums are divided by 4^k (arithmetic shift, exact) once per chunk of 128
/// blocks (|4^k·Σ| ≤ 64·128·4·3·127 < 2^31 inside a chunk). 1 AND + 1 `vpdpbusd` per 64 weights.
template <class F>
LOWBIT_AVX512_TARGET inline void tile_dot4_and_only(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks,
                                                    std::int32_t* r) {
    static_assert(std::is_same_v<F, ternary2> || std::is_same_v<F, int2>, "lowbit: AND-only unpack needs 2-bit digits");
    const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0C), m2 = _mm512_set1_epi8(0x30),
                  m3 = _mm512_set1_epi8(static_cast<char>(0xC0));
    r[0] = r[1] = r[2] = r[3] = 0;
    constexpr Eigen::Index chunk = 128;
    for (Eigen::Index c0 = 0; c0 < nblocks; c0 += chunk) {
        const Eigen::Index c1 = c0 + chunk < nblocks ? c0 + chunk : nblocks;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0, e0 = a0,
                e1 = a0, e2 = a0, e3 = a0, f0 = a0, f1 = a0, f2 = a0, f3 = a0;
        const std::uint8_t* q = p + c0 * 256;
        const std::int8_t* xb = x + c0 * 256;
        for (Eigen::Index b = c0; b < c1; ++b, q += 256, xb += 256) {
            for (int l = 0; l < 256; l += 64) prefetch_ahead(q + l);
            const __m512i x0 = load_pinned(xb), x1 = load_pinned(xb + 64), x2 = load_pinned(xb + 128), x3 = load_pinned(xb + 192);
#define LOWBIT_AND_ROW(A0, A1, A2, A3, P)                                                \
    {                                                                                     \
        const __m512i w = load_pinned(P);                                                 \
        A0 = _mm512_dpbusd_epi32(A0, _mm512_and_si512(w, m0), x0);                        \
        A1 = _mm512_dpbusd_epi32(A1, _mm512_and_si512(w, m1), x1);                        \
        A2 = _mm512_dpbusd_epi32(A2, _mm512_and_si512(w, m2), x2);                        \
        A3 = _mm512_dpbusd_epi32(A3, _mm512_and_si512(w, m3), x3);                        \
    }
            LOWBIT_AND_ROW(a0, a1, a2, a3, q)
            LOWBIT_AND_ROW(b0, b1, b2, b3, q + 64)
            LOWBIT_AND_ROW(e0, e1, e2, e3, q + 128)
            LOWBIT_AND_ROW(f0, f1, f2, f3, q + 192)
#undef LOWBIT_AND_ROW
        }
        r[0] += reduce_add_epi32(a0) + (reduce_add_epi32(a1) >> 2) + (reduce_add_epi32(a2) >> 4) + (reduce_add_epi32(a3) >> 6);
        r[1] += reduce_add_epi32(b0) + (reduce_add_epi32(b1) >> 2) + (reduce_add_epi32(b2) >> 4) + (reduce_add_epi32(b3) >> 6);
        r[2] += reduce_add_epi32(e0) + (reduce_add_epi32(e1) >> 2) + (reduce_add_epi32(e2) >> 4) + (reduce_add_epi32(e3) >> 6);
        r[3] += reduce_add_epi32(f0) + (reduce_add_epi32(f1) >> 2) + (reduce_add_epi32(f2) >> 4) + (reduce_add_epi32(f3) >> 6);
    }
}

/// Which 4-row tile micro-kernel the interleaved AVX-512 path uses for 2-bit formats
/// (true: AND-only unpack; false: shift + AND through decode_block). Measured on Zen 4, 4096²
/// GEMV, 1 thread, CPU µs (median of 5, load ≈ 3.4): from cache 76.7 (AND-only) vs 70.0 (decode),
/// from DRAM 133.0 vs 132.0. The loop is bound by `vpdpbusd`, not by the 3 shifts per 64 bytes, and
/// the AND-only form needs 16 accumulators, so the decode form is the default.
inline constexpr bool interleaved_and_only = false;

/// AVX-512 `dot_rows` for an interleaved_matrix (contract of arch/generic.hpp): per tile and token,
/// one 4-row micro-kernel call; rows of the range's first/last tile outside [r0, r1) are computed
/// and dropped.
template <class F>
LOWBIT_AVX512_TARGET inline void dot_rows(const interleaved_matrix<F>& w, Eigen::Index r0, Eigen::Index r1,
                                          const std::int8_t* x, Eigen::Index ldx, const std::int32_t* qsum, Eigen::Index ntok,
                                          std::int32_t* out, Eigen::Index ldo) {
    using T = pack_format<F>;
    const Eigen::Index nb = w.blocks_per_row();
    if (r0 >= r1) return;
    for (Eigen::Index t = r0 / 4; t * 4 < r1; ++t)
        for (Eigen::Index k = 0; k < ntok; ++k) {
            std::int32_t r[4];
            if constexpr ((std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) && interleaved_and_only)
                tile_dot4_and_only<F>(w.tile_data(t), x + k * ldx, nb, r);
            else
                tile_dot4<F>(w.tile_data(t), x + k * ldx, nb, r);
            for (int j = 0; j < 4; ++j) {
                const Eigen::Index i = 4 * t + j;
                if (i >= r0 && i < r1) out[k * ldo + (i - r0)] = T::digit_mul * r[j] - T::digit_offset * qsum[k];
            }
        }
}

/// AVX-512 binary × binary on an interleaved_matrix<binary1>: per block, the 128 bytes of the 4 rows
/// are two zmm (rows 0|1, rows 2|3), XORed with the block's 32 activation bytes broadcast to each
/// 256-bit half, `vpopcntq`, one 64-bit accumulator pair per half; 4 rows reduced at the end.
LOWBIT_AVX512_TARGET inline void xnor_rows(const interleaved_matrix<binary1>& w, Eigen::Index r0, Eigen::Index r1,
                                           const std::uint8_t* a, std::int32_t* out) {
    const Eigen::Index nb = w.blocks_per_row();
    if (r0 >= r1) return;
    for (Eigen::Index t = r0 / 4; t * 4 < r1; ++t) {
        const std::uint8_t* p = w.tile_data(t);
        __m512i c01 = _mm512_setzero_si512(), c23 = c01, d01 = c01, d23 = c01;
        Eigen::Index b = 0;
        for (; b + 2 <= nb; b += 2, p += 256) {
            const __m512i x0 = _mm512_mask_broadcast_i64x4(_mm512_setzero_si512(), 0xFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 32 * b)));
            const __m512i x1 = _mm512_mask_broadcast_i64x4(_mm512_setzero_si512(), 0xFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 32 * b + 32)));
            c01 = _mm512_add_epi64(c01, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p), x0)));
            c23 = _mm512_add_epi64(c23, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 64), x0)));
            d01 = _mm512_add_epi64(d01, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 128), x1)));
            d23 = _mm512_add_epi64(d23, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 192), x1)));
        }
        if (b < nb) {
            const __m512i x0 = _mm512_mask_broadcast_i64x4(_mm512_setzero_si512(), 0xFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 32 * b)));
            c01 = _mm512_add_epi64(c01, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p), x0)));
            c23 = _mm512_add_epi64(c23, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 64), x0)));
        }
        c01 = _mm512_add_epi64(c01, d01);
        c23 = _mm512_add_epi64(c23, d23);
        // lanes 0..3: row 4t (or 4t+2), lanes 4..7: row 4t+1 (4t+3)
        long long pc[4];
        const __m256i h0 = _mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, c01, 0),
                      h1 = _mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, c01, 1),
                      h2 = _mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, c23, 0),
                      h3 = _mm512_mask_extracti64x4_epi64(_mm256_setzero_si256(), 0xF, c23, 1);
        const __m256i hs[4] = {h0, h1, h2, h3};
        for (int j = 0; j < 4; ++j) {
            const __m128i q = _mm_add_epi64(_mm256_castsi256_si128(hs[j]), _mm256_extracti128_si256(hs[j], 1));
            pc[j] = _mm_cvtsi128_si64(_mm_add_epi64(q, _mm_unpackhi_epi64(q, q)));
        }
        for (int j = 0; j < 4; ++j) {
            const Eigen::Index i = 4 * t + j;
            if (i >= r0 && i < r1) out[i - r0] = static_cast<std::int32_t>(w.cols() - 2 * pc[j]);
        }
    }
}

/// E8M0 code → 2^(c − 127) as float bits (c = 0 is the subnormal 2^-127).
inline float e8m0_float(std::uint8_t c) noexcept {
    const std::uint32_t bits = c ? static_cast<std::uint32_t>(c) << 23 : 0x00200000u;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

/// Per-token activation layout of the AVX-512 MXFP4 kernel, for each group of 4 blocks (128 columns,
/// g < nb / 4): xp[128g + slot] where slot = 16·b' + i (the element whose code is the low nibble of
/// byte 1 + i of block b') or 64 + 16·b' + i (high nibble); ncorr[16g + l] = −12·Σ of the 8
/// activations at slots 4l..4l+3 and 64+4l..64+4l+3 (the offset of the unsigned e2m1 + 12 codes that
/// meet in int32 lane l). O(nb·32).
template <class L>
inline void mxfp4_prepare(const std::int8_t* x, Eigen::Index nb, std::int8_t* xp, std::int32_t* ncorr) {
    int slot[32];
    for (int j = 0; j < 32; ++j) {
        int byte = 0, shift = 0;
        mxfp4_position<L>(j, byte, shift);
        slot[j] = (shift ? 64 : 0) + (byte - 1);
    }
    for (Eigen::Index g = 0; g < nb / 4; ++g) {
        std::int8_t* o = xp + 128 * g;
        for (int b = 0; b < 4; ++b)
            for (int j = 0; j < 32; ++j) o[slot[j] + 16 * b] = x[128 * g + 32 * b + j];
        for (int l = 0; l < 16; ++l) {
            int s = 0;
            for (int t = 0; t < 4; ++t) s += o[4 * l + t] + o[64 + 4 * l + t];
            ncorr[16 * g + l] = -12 * s;
        }
    }
}

/// AVX-512 MXFP4 × int8 (contract of scalar_kernels::mxfp4_rows up to float summation order), four
/// blocks (68 bytes) per step: one 64-byte load plus a 4-byte masked load, `vpermi2b` gathers the
/// 64 code bytes, a zero-masked `vpermb` each block's E8M0 byte into its 4 lanes; nibbles →
/// `vpshufb` table of e2m1_doubled + 12 (unsigned), two `vpdpbusd` with the reordered activations of
/// mxfp4_prepare starting from −12·Σx (so every int32 lane holds an exact partial block sum), then
/// converted to float, FMA with 2^(E−127) built from the E8M0 byte by a shift (E = 0: 2^-127).
/// Blocks beyond the last multiple of 4 of a row: scalar. `xp`, `ncorr` from mxfp4_prepare; `x` the
/// original codes (tail).
template <class L>
LOWBIT_AVX512_TARGET inline void mxfp4_rows(const packed_mxfp4<L>& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x,
                                            const std::int8_t* xp, const std::int32_t* ncorr, float* out) {
    const __m512i lut = _mm512_mask_broadcast_i32x4(
        _mm512_setzero_si512(), 0xFFFF, _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    alignas(64) std::uint8_t iq[64], is[64];
    std::uint64_t scale_bytes = 0;
    for (int q = 0; q < 64; ++q) {
        iq[q] = static_cast<std::uint8_t>(17 * (q / 16) + 1 + q % 16); // code byte of slot q (< 68)
        is[q] = static_cast<std::uint8_t>(17 * (q / 16));               // lane q/4's block scale byte
        if (q % 4 == 1) scale_bytes |= std::uint64_t{1} << q;            // ... placed at bits 8..15
    }
    const __m512i idx_q = _mm512_load_si512(iq), idx_s = _mm512_load_si512(is), m15 = _mm512_set1_epi8(15);
    const __mmask64 ks = _cvtu64_mask64(scale_bytes);
    const __m512i e0_bits = _mm512_set1_epi32(0x00200000); // 2^-127 (E8M0 code 0)
    const Eigen::Index nb = w.blocks_per_row(), ng = nb / 4;
    for (Eigen::Index i = r0; i < r1; ++i) {
        const std::uint8_t* p = w.row_data(i);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (Eigen::Index g = 0; g < ng; ++g, p += 68) {
            prefetch_ahead(p);
            const __m512i v0 = _mm512_loadu_si512(p), v1 = _mm512_maskz_loadu_epi8(0xF, p + 64);
            const __m512i q = _mm512_permutex2var_epi8(v0, idx_q, v1);
            const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(q, m15));
            const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(q, 4), m15));
            __m512i d = _mm512_dpbusd_epi32(_mm512_loadu_si512(ncorr + 16 * g), lo, _mm512_loadu_si512(xp + 128 * g));
            d = _mm512_dpbusd_epi32(d, hi, _mm512_loadu_si512(xp + 128 * g + 64));
            // 2^(E−127) as float bits E << 23; E = 0 gives 0 → max with the bits of 2^-127
            const __m512i e = _mm512_maskz_max_epu32(0xFFFF, _mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_permutexvar_epi8(ks, idx_s, v0), 15), e0_bits);
            const __m512 df = _mm512_mask_cvtepi32_ps(_mm512_setzero_ps(), 0xFFFF, d);
            if (g & 1) acc1 = _mm512_fmadd_ps(df, _mm512_castsi512_ps(e), acc1);
            else acc0 = _mm512_fmadd_ps(df, _mm512_castsi512_ps(e), acc0);
        }
        const __m512 acc = _mm512_add_ps(acc0, acc1);
        const __m256 h = _mm256_add_ps(_mm512_mask_extractf32x8_ps(_mm256_setzero_ps(), 0xFF, acc, 0),
                                       _mm512_mask_extractf32x8_ps(_mm256_setzero_ps(), 0xFF, acc, 1));
        __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
        float sum = _mm_cvtss_f32(s4);
        for (Eigen::Index b = 4 * ng; b < nb; ++b, p += 17) { // tail blocks: scalar
            std::int32_t sb = 0;
            for (int j = 0; j < 32; ++j) {
                int byte = 0, shift = 0;
                mxfp4_position<L>(j, byte, shift);
                sb += e2m1_doubled[(p[byte] >> shift) & 15] * x[b * 32 + j];
            }
            sum += e8m0_float(p[0]) * static_cast<float>(sb);
        }
        out[i - r0] = sum;
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

/// Statistics of one token for the activation quantizer, equal bit for bit to the scalar body
/// (gemm.hpp `quantize_row_stats`): `amax` = max|x_j| (exact in any order), `sum` = Σx_j in double as
/// 8 partial sums p_l += x_{8i+l} in index order (one zmm of 8 doubles: the same additions in the
/// same order; the tail's masked add leaves the other lanes untouched) combined as
/// ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)). Returns false if some x_j is NaN or ±Inf. O(n).
LOWBIT_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
inline bool activation_stats(const float* x, Eigen::Index n, float& amax, double& sum) {
    const __mmask16 all16 = 0xFFFF;
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
    __m512 m = _mm512_setzero_ps();
    __m512d p = _mm512_setzero_pd();
    __mmask16 finite = all16;
    for (Eigen::Index j = 0; j < n; j += 16) {
        const Eigen::Index left = n - j;
        const __mmask16 k = left >= 16 ? all16 : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(k, x + j);
        const __m512 a = _mm512_and_ps(v, abs_mask);
        finite &= _mm512_cmp_ps_mask(a, fmax, _CMP_LE_OQ) | static_cast<__mmask16>(~k);
        m = _mm512_maskz_max_ps(all16, m, a);
        const __mmask8 k0 = static_cast<__mmask8>(k & 0xFF), k1 = static_cast<__mmask8>(k >> 8);
        p = _mm512_mask_add_pd(p, k0, p, _mm512_maskz_cvtps_pd(k0, _mm512_maskz_extractf32x8_ps(0xFF, v, 0)));
        if (k1) // the second 8 lanes: x_{j+8..j+15}, the next round of the 8 partial sums
            p = _mm512_mask_add_pd(p, k1, p,
                                   _mm512_maskz_cvtps_pd(k1, _mm512_maskz_extractf32x8_ps(0xFF, v, 1)));
    }
    if (finite != all16) return false;
    // _mm512_reduce_max_ps warns under GCC 12 (undefined source); max is exact in any order
    const __m256 h = _mm256_max_ps(_mm512_maskz_extractf32x8_ps(0xFF, m, 0), _mm512_maskz_extractf32x8_ps(0xFF, m, 1));
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    amax = _mm_cvtss_f32(_mm_max_ss(q, _mm_movehdup_ps(q)));
    alignas(64) double l[8];
    _mm512_store_pd(l, p);
    sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    return true;
}

/// Activation codes of one token, exactly the scalar rule q_j = clamp(round_half_even(x_j / s), −L, L)
/// (x_j, s float, s > 0; the scalar body divides in double, which decides every half-integer boundary
/// as the exact quotient does) without a division: k₀ = round(clamp(x_j·(1/s), ±(L + 1))) in double is
/// within one of the exact rounding (relative error 2⁻⁵², |k₀| ≤ L + 1 ≤ 128), and the boundaries
/// (k₀ ± ½)·s are exact in double (≤ 9 + 24 significant bits), so comparing x_j with them moves k₀
/// to the exact result: one step up or down, a tie to the even neighbour. 8 lanes per step, the tail
/// masked; stores n codes and returns Σq_j. `lim` = L ≤ 127. Needs AVX-512 F/DQ/VL/BW (the target
/// of `quantize_row_avx512`). Bit-exact against the scalar body (test_gemm: every width 1–72, ties,
/// the clamp). O(n).
LOWBIT_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
inline std::int32_t activation_codes_f64(const float* x, Eigen::Index n, double s, double lim, std::int8_t* q) {
    // maskz forms throughout: GCC 12's plain forms start from _mm512_undefined_* and warn
    // (-Wmaybe-uninitialized); lanes past n are zero and never stored
    const __mmask8 all = 0xFF;
    const __m512d sv = _mm512_set1_pd(s), half_s = _mm512_set1_pd(0.5 * s), inv = _mm512_set1_pd(1.0 / s);
    const __m512d hi = _mm512_set1_pd(lim + 1.0), lo = _mm512_set1_pd(-lim - 1.0);
    const __m256i ilim = _mm256_set1_epi32(static_cast<int>(lim)), one = _mm256_set1_epi32(1);
    __m256i acc = _mm256_setzero_si256();
    for (Eigen::Index j = 0; j < n; j += 8) {
        const Eigen::Index left = n - j;
        const __mmask8 m = left >= 8 ? all : static_cast<__mmask8>((1u << left) - 1u);
        const __m512d v = _mm512_maskz_cvtps_pd(m, _mm256_maskz_loadu_ps(m, x + j));
        const __m512d t = _mm512_maskz_min_pd(all, _mm512_maskz_max_pd(all, _mm512_maskz_mul_pd(all, v, inv), lo), hi);
        const __m512d k0 = _mm512_maskz_roundscale_pd(all, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512d up = _mm512_maskz_fmadd_pd(all, k0, sv, half_s);    // (k0 + ½)·s, exact
        const __m512d down = _mm512_maskz_fmsub_pd(all, k0, sv, half_s);  // (k0 − ½)·s, exact
        __m256i c = _mm512_maskz_cvtpd_epi32(all, k0);
        const __mmask8 odd = _mm256_test_epi32_mask(c, one);
        const __mmask8 inc = _mm512_cmp_pd_mask(v, up, _CMP_GT_OQ) | (_mm512_cmp_pd_mask(v, up, _CMP_EQ_OQ) & odd);
        const __mmask8 dec = _mm512_cmp_pd_mask(v, down, _CMP_LT_OQ) | (_mm512_cmp_pd_mask(v, down, _CMP_EQ_OQ) & odd);
        c = _mm256_mask_add_epi32(c, inc, c, one);
        c = _mm256_mask_sub_epi32(c, dec, c, one);
        c = _mm256_min_epi32(_mm256_max_epi32(c, _mm256_sub_epi32(_mm256_setzero_si256(), ilim)), ilim);
        c = _mm256_maskz_mov_epi32(m, c);
        acc = _mm256_add_epi32(acc, c);
        _mm256_mask_cvtepi32_storeu_epi8(q + j, m, c);
    }
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
}

/// `activation_codes_f64` in float, 16 lanes per step (the decode step of small layers spends a third
/// of its time here). k₀ = round(clamp(x_j·(1/s), ±(L + 1))) in float is within one of the exact
/// rounding (|x_j/s| ≤ L + 1 ≤ 128, relative error ≤ 2⁻²²); each boundary test is one FMA:
/// fma(k₀ ± ½, s, −x_j) is the exact (k₀ ± ½)·s − x_j rounded once, so its sign and whether it is zero
/// are exact as long as a non-zero exact value cannot round to zero. For s ∈ [2⁻¹⁰⁰, 2¹⁰⁰] it
/// cannot: the exact value is 0 or at least 2⁻¹²⁵ in magnitude (and far from overflow), so
/// `float_codes_exact(s)` must hold (activation_scale keeps s in [1e-5, 1e4]). Same results as
/// the scalar body and `activation_codes_f64` (test_gemm: every width, ties, the clamp). O(n).
inline bool float_codes_exact(float s) noexcept { return s >= 0x1p-100f && s <= 0x1p100f; }

LOWBIT_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
inline std::int32_t activation_codes_f32(const float* x, Eigen::Index n, float s, float lim, std::int8_t* q) {
    const __mmask16 all = 0xFFFF;
    const __m512 sv = _mm512_set1_ps(s), inv = _mm512_set1_ps(1.0f / s), half = _mm512_set1_ps(0.5f);
    const __m512 hi = _mm512_set1_ps(lim + 1.0f), lo = _mm512_set1_ps(-lim - 1.0f), zero = _mm512_setzero_ps();
    const __m512i ilim = _mm512_set1_epi32(static_cast<int>(lim)), nlim = _mm512_set1_epi32(-static_cast<int>(lim)),
                  one = _mm512_set1_epi32(1);
    __m512i acc = _mm512_setzero_si512();
    for (Eigen::Index j = 0; j < n; j += 16) {
        const Eigen::Index left = n - j;
        const __mmask16 m = left >= 16 ? all : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        const __m512 t = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, _mm512_maskz_mul_ps(all, v, inv), lo), hi);
        const __m512 k0 = _mm512_maskz_roundscale_ps(all, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512 ru = _mm512_maskz_fmsub_ps(all, _mm512_maskz_add_ps(all, k0, half), sv, v); // (k0 + ½)·s − x
        const __m512 rd = _mm512_maskz_fmsub_ps(all, _mm512_maskz_sub_ps(all, k0, half), sv, v); // (k0 − ½)·s − x
        __m512i c = _mm512_maskz_cvtps_epi32(all, k0);
        const __mmask16 odd = _mm512_test_epi32_mask(c, one);
        const __mmask16 inc = _mm512_cmp_ps_mask(ru, zero, _CMP_LT_OQ) | (_mm512_cmp_ps_mask(ru, zero, _CMP_EQ_OQ) & odd);
        const __mmask16 dec = _mm512_cmp_ps_mask(rd, zero, _CMP_GT_OQ) | (_mm512_cmp_ps_mask(rd, zero, _CMP_EQ_OQ) & odd);
        c = _mm512_mask_add_epi32(c, inc, c, one);
        c = _mm512_mask_sub_epi32(c, dec, c, one);
        c = _mm512_maskz_min_epi32(m, _mm512_maskz_max_epi32(all, c, nlim), ilim);
        acc = _mm512_add_epi32(acc, c);
        _mm512_mask_cvtepi32_storeu_epi8(q + j, m, c);
    }
    const __m256i h = _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xF, acc, 0), _mm512_maskz_extracti64x4_epi64(0xF, acc, 1));
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
}

} // namespace detail::avx512_kernels
LOWBIT_END_NAMESPACE

#endif // LOWBIT_HAVE_X86_KERNELS
