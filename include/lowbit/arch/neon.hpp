#pragma once
/// \file arch/neon.hpp
/// ARM NEON (AArch64 ASIMD) kernels for packed weights × int8 activations, compiled only on aarch64
/// (LOWBIT_HAVE_NEON_KERNELS); gemm.hpp calls them for `kernel_isa::neon`.
///
/// Inner step: 16 bytes of packed weights yield 16-lane vectors of unsigned digits u ∈ [0, 15]
/// (2-bit: AND/shift; int4: AND/shift; binary: table lookup of the bit bytes, bit test; base 3:
/// two unsigned compares and a multiply by 3 mod 256 per trit), each multiplied with 16 int8
/// activations into four int32 lanes by one of two multiply-accumulate steps:
///   - `mla_widen` (baseline ASIMD, every AArch64 CPU): `smull` + `smlal2` (int16, |2·15·127| < 2^15,
///     no overflow) then `sadalp` into int32;
///   - `mla_sdot` (FEAT_DotProd, Armv8.2+ optional, Armv8.4+ mandatory): `sdot`, four products per
///     int32 lane — compiled with a per-function target attribute and chosen at run time when
///     detail::host_cpu_features().neon_dotprod (Linux getauxval HWCAP_ASIMDDP) is set.
/// Both layouts (packed_matrix, interleaved_matrix) go through block_data/block_stride; four tokens
/// share each decoded weight block (GEMM). With FEAT_I8MM (HWCAP2_I8MM) and two or more tokens, pairs
/// of rows × pairs of tokens run `smmla` (2×8 digits by 8×2 activations into a 2×2 int32 tile, after
/// zipping the 8-byte halves of the two rows and of the two tokens); odd rows/tokens use `sdot`. Same contract and exact results as
/// detail::scalar_kernels::dot_rows (arch/generic.hpp).
///
/// The per-target entry points carry `flatten` so that the shared body (templated on the
/// multiply-accumulate step) is inlined into a function with the right target: GCC refuses to inline
/// the SDOT intrinsic into a function compiled without the extension.

#include <lowbit/arch/generic.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>
#include <lowbit/pack.hpp>

#include <cstdint>
#include <type_traits>

#if LOWBIT_HAVE_NEON_KERNELS
#include <arm_neon.h>

#if !defined(__clang__) || defined(__ARM_FEATURE_DOTPROD)
/// 1 when the `sdot` path is compiled: always with GCC (target attribute); with Clang only when the
/// translation unit targets the extension (Clang before 17 declares vdotq_s32 only then).
#define LOWBIT_HAVE_NEON_SDOT 1
#else
#define LOWBIT_HAVE_NEON_SDOT 0
#endif

#if !defined(__clang__) || (defined(__ARM_FEATURE_DOTPROD) && defined(__ARM_FEATURE_MATMUL_INT8))
/// 1 when the `smmla` path is compiled (same rule as LOWBIT_HAVE_NEON_SDOT).
#define LOWBIT_HAVE_NEON_I8MM 1
#else
#define LOWBIT_HAVE_NEON_I8MM 0
#endif

#if defined(__clang__)
/// Target of the dot-product kernels (Clang spelling).
#define LOWBIT_NEON_DOTPROD_TARGET LOWBIT_TARGET("dotprod")
/// Target of the int8 matrix-multiply kernels (Clang spelling).
#define LOWBIT_NEON_I8MM_TARGET LOWBIT_TARGET("dotprod,i8mm")
#else
/// Target of the dot-product kernels (GCC 12 needs the architecture level with the extension).
#define LOWBIT_NEON_DOTPROD_TARGET LOWBIT_TARGET("arch=armv8.2-a+dotprod")
/// Target of the int8 matrix-multiply kernels (with dotprod for the odd rows and tokens).
#define LOWBIT_NEON_I8MM_TARGET LOWBIT_TARGET("arch=armv8.2-a+dotprod+i8mm")
#endif
/// Inlines every call of the marked entry point into it (the body then gets the entry's target).
#define LOWBIT_NEON_FLATTEN __attribute__((flatten))

LOWBIT_BEGIN_NAMESPACE
namespace detail::neon_kernels {

/// Baseline ASIMD step: a + pairwise-widened Σ of d·x over 16 lanes (digits d ≤ 15 as int8).
struct mla_widen {
    static inline int32x4_t step(int32x4_t a, uint8x16_t d, int8x16_t x) {
        const int8x16_t s = vreinterpretq_s8_u8(d);
        int16x8_t p = vmull_s8(vget_low_s8(s), vget_low_s8(x));
        p = vmlal_high_s8(p, s, x);
        return vpadalq_s16(a, p);
    }
};

#if LOWBIT_HAVE_NEON_SDOT
/// Dot-product step (FEAT_DotProd): a + `sdot`(d, x), four products per int32 lane.
struct mla_sdot {
    LOWBIT_NEON_DOTPROD_TARGET static inline int32x4_t step(int32x4_t a, uint8x16_t d, int8x16_t x) {
        return vdotq_s32(a, vreinterpretq_s8_u8(d), x);
    }
};
#endif

/// Calls fn(d, o) for every 16-digit vector d of one packed block, o being the offset of its
/// activations inside the block (the block layouts of pack.hpp).
template <class F, class Fn>
inline void for_each_digit_vector(const std::uint8_t* p, Fn&& fn) {
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        const uint8x16_t m3 = vdupq_n_u8(3);
        #pragma GCC unroll 8
        for (int h = 0; h < 4; ++h) { // byte j holds columns j, 64 + j, 128 + j, 192 + j
            const uint8x16_t w = vld1q_u8(p + 16 * h);
            fn(vandq_u8(w, m3), 16 * h);
            fn(vandq_u8(vshrq_n_u8(w, 2), m3), 64 + 16 * h);
            fn(vandq_u8(vshrq_n_u8(w, 4), m3), 128 + 16 * h);
            fn(vshrq_n_u8(w, 6), 192 + 16 * h);
        }
    } else if constexpr (std::is_same_v<F, int4>) {
        const uint8x16_t m15 = vdupq_n_u8(15);
        #pragma GCC unroll 8
        for (int h = 0; h < 8; ++h) { // byte j holds columns j and 128 + j
            const uint8x16_t w = vld1q_u8(p + 16 * h);
            fn(vandq_u8(w, m15), 16 * h);
            fn(vshrq_n_u8(w, 4), 128 + 16 * h);
        }
    } else if constexpr (std::is_same_v<F, binary1>) {
        // bit j (LSB first) of byte j/8 is column j: broadcast each bit byte to 8 lanes, test its bit
        const uint8x16_t bit = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
        #pragma GCC unroll 8
        for (int h = 0; h < 2; ++h) {
            const uint8x16_t v = vld1q_u8(p + 16 * h);
            #pragma GCC unroll 8
            for (int g = 0; g < 8; ++g) {
                const std::uint8_t b0 = static_cast<std::uint8_t>(2 * g), b1 = static_cast<std::uint8_t>(2 * g + 1);
                const uint8x16_t idx = {b0, b0, b0, b0, b0, b0, b0, b0, b1, b1, b1, b1, b1, b1, b1, b1};
                fn(vshrq_n_u8(vtstq_u8(vqtbl1q_u8(v, idx), bit), 7), 128 * h + 16 * g);
            }
        }
    } else if constexpr (std::is_same_v<F, ternary_base3>) {
        // state s of byte j: trit k (column 64k + j) = [s ≥ 86] + [s ≥ 171], then s ← 3s mod 256
        const uint8x16_t t86 = vdupq_n_u8(86), t171 = vdupq_n_u8(171), zero = vdupq_n_u8(0);
        #pragma GCC unroll 8
        for (int h = 0; h < 4; ++h) {
            uint8x16_t s = vld1q_u8(p + 16 * h);
            #pragma GCC unroll 8
            for (int k = 0; k < 5; ++k) {
                fn(vsubq_u8(vsubq_u8(zero, vcgeq_u8(s, t86)), vcgeq_u8(s, t171)), 64 * k + 16 * h);
                s = vaddq_u8(s, vaddq_u8(s, s));
            }
        }
    } else {
        static_assert(dependent_false<F>, "lowbit: neon: unknown packed format tag");
    }
}

/// NEON int4_half_dots (contract of scalar_kernels::int4_half_dots, exact), baseline ASIMD
/// (`mla_widen`, every AArch64 CPU): one accumulator per nibble half, `addv` per half.
inline void int4_half_dots(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks, Eigen::Index stride,
                           std::int32_t* out) {
    const uint8x16_t m15 = vdupq_n_u8(15);
    for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 256) {
        int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
        for (int h = 0; h < 8; ++h) {
            const uint8x16_t w = vld1q_u8(p + 16 * h);
            lo = mla_widen::step(lo, vandq_u8(w, m15), vld1q_s8(x + 16 * h));
            hi = mla_widen::step(hi, vshrq_n_u8(w, 4), vld1q_s8(x + 128 + 16 * h));
        }
        out[2 * b] = vaddvq_s32(lo);
        out[2 * b + 1] = vaddvq_s32(hi);
    }
}

/// NT tokens at once: r[t] = Σ_j u_j·x[t·ldx + j] over one packed row whose blocks start at p and
/// are `stride` bytes apart; each block is decoded once for the NT tokens (two accumulators per
/// token, alternating, to hide the multiply-accumulate latency).
template <class F, class Mla, int NT>
inline void digit_dot_row(const std::uint8_t* p, Eigen::Index stride, const std::int8_t* x, Eigen::Index ldx,
                          Eigen::Index nblocks, std::int32_t* r) {
    constexpr int bw = pack_format<F>::block_weights;
    int32x4_t acc[NT][2];
    for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = vdupq_n_s32(0);
    for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += bw) {
        int parity = 0;
        for_each_digit_vector<F>(p, [&](uint8x16_t d, int o) {
            for (int t = 0; t < NT; ++t) acc[t][parity] = Mla::step(acc[t][parity], d, vld1q_s8(x + t * ldx + o));
            parity ^= 1;
        });
    }
    for (int t = 0; t < NT; ++t) r[t] = vaddvq_s32(vaddq_s32(acc[t][0], acc[t][1]));
}

/// `dot_rows` (contract of arch/generic.hpp) with the multiply-accumulate step Mla: rows in tiles of
/// gemm_row_tile, groups of four tokens share each decoded block, the remaining tokens one by one.
template <class Mla, PackedWeights M>
inline void dot_rows_with(const M& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x, Eigen::Index ldx,
                          const std::int32_t* qsum, Eigen::Index ntok, std::int32_t* out, Eigen::Index ldo) {
    using F = typename M::format;
    using T = pack_format<F>;
    const Eigen::Index nb = w.blocks_per_row(), stride = w.block_stride();
    for (Eigen::Index i0 = r0; i0 < r1; i0 += gemm_row_tile) {
        const Eigen::Index i1 = i0 + gemm_row_tile < r1 ? i0 + gemm_row_tile : r1;
        Eigen::Index k = 0;
        for (; k + 4 <= ntok; k += 4)
            for (Eigen::Index i = i0; i < i1; ++i) {
                std::int32_t r[4];
                digit_dot_row<F, Mla, 4>(w.block_data(i, 0), stride, x + k * ldx, ldx, nb, r);
                for (int t = 0; t < 4; ++t) out[(k + t) * ldo + (i - r0)] = T::digit_mul * r[t] - T::digit_offset * qsum[k + t];
            }
        for (; k < ntok; ++k)
            for (Eigen::Index i = i0; i < i1; ++i) {
                std::int32_t r;
                digit_dot_row<F, Mla, 1>(w.block_data(i, 0), stride, x + k * ldx, ldx, nb, &r);
                out[k * ldo + (i - r0)] = T::digit_mul * r - T::digit_offset * qsum[k];
            }
    }
}

/// Baseline ASIMD `dot_rows` (smull/smlal2/sadalp); runs on every AArch64 CPU.
template <PackedWeights M>
LOWBIT_NEON_FLATTEN inline void dot_rows_asimd(const M& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x,
                                               Eigen::Index ldx, const std::int32_t* qsum, Eigen::Index ntok,
                                               std::int32_t* out, Eigen::Index ldo) {
    dot_rows_with<mla_widen>(w, r0, r1, x, ldx, qsum, ntok, out, ldo);
}

#if LOWBIT_HAVE_NEON_SDOT
#if LOWBIT_HAVE_NEON_I8MM
/// Two rows × two tokens: r = {row0·tok0, row0·tok1, row1·tok0, row1·tok1} (Σ_j u_j·x_j) for the
/// rows whose blocks start at p0, p1 (`stride` bytes apart) and tokens x, x + ldx. Per 16 digits of
/// each row: zip the 8-byte halves of the two rows and of the two tokens' activations, two `smmla`.
template <class F>
LOWBIT_NEON_I8MM_TARGET inline void digit_dot_2x2(const std::uint8_t* p0, const std::uint8_t* p1, Eigen::Index stride,
                                                  const std::int8_t* x, Eigen::Index ldx, Eigen::Index nblocks,
                                                  std::int32_t* r) {
    constexpr int bw = pack_format<F>::block_weights, nvec = bw / 16;
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
    for (Eigen::Index b = 0; b < nblocks; ++b, p0 += stride, p1 += stride, x += bw) {
        uint8x16_t d1[nvec];
        int n = 0;
        for_each_digit_vector<F>(p1, [&](uint8x16_t d, int) { d1[n++] = d; });
        n = 0;
        for_each_digit_vector<F>(p0, [&](uint8x16_t d, int o) LOWBIT_NEON_I8MM_TARGET {
            const uint64x2_t a = vreinterpretq_u64_u8(d), e = vreinterpretq_u64_u8(d1[n++]);
            const uint64x2_t xa = vreinterpretq_u64_s8(vld1q_s8(x + o)), xb = vreinterpretq_u64_s8(vld1q_s8(x + ldx + o));
            acc0 = vmmlaq_s32(acc0, vreinterpretq_s8_u64(vzip1q_u64(a, e)), vreinterpretq_s8_u64(vzip1q_u64(xa, xb)));
            acc1 = vmmlaq_s32(acc1, vreinterpretq_s8_u64(vzip2q_u64(a, e)), vreinterpretq_s8_u64(vzip2q_u64(xa, xb)));
        });
    }
    vst1q_s32(r, vaddq_s32(acc0, acc1));
}

/// Int8 matrix-multiply `dot_rows` (`smmla` on pairs of rows × pairs of tokens, `sdot` for an odd
/// last row or token); call only when host_cpu_features().neon_i8mm.
template <PackedWeights M>
LOWBIT_NEON_FLATTEN LOWBIT_NEON_I8MM_TARGET inline void dot_rows_i8mm(const M& w, Eigen::Index r0, Eigen::Index r1,
                                                                      const std::int8_t* x, Eigen::Index ldx,
                                                                      const std::int32_t* qsum, Eigen::Index ntok,
                                                                      std::int32_t* out, Eigen::Index ldo) {
    using F = typename M::format;
    using T = pack_format<F>;
    const Eigen::Index nb = w.blocks_per_row(), stride = w.block_stride();
    auto put = [&](Eigen::Index k, Eigen::Index i, std::int32_t d) {
        out[k * ldo + (i - r0)] = T::digit_mul * d - T::digit_offset * qsum[k];
    };
    for (Eigen::Index i0 = r0; i0 < r1; i0 += gemm_row_tile) {
        const Eigen::Index i1 = i0 + gemm_row_tile < r1 ? i0 + gemm_row_tile : r1;
        Eigen::Index k = 0;
        for (; k + 2 <= ntok; k += 2) {
            Eigen::Index i = i0;
            for (; i + 2 <= i1; i += 2) {
                std::int32_t r[4];
                digit_dot_2x2<F>(w.block_data(i, 0), w.block_data(i + 1, 0), stride, x + k * ldx, ldx, nb, r);
                put(k, i, r[0]);
                put(k + 1, i, r[1]);
                put(k, i + 1, r[2]);
                put(k + 1, i + 1, r[3]);
            }
            if (i < i1) {
                std::int32_t r[2];
                digit_dot_row<F, mla_sdot, 2>(w.block_data(i, 0), stride, x + k * ldx, ldx, nb, r);
                put(k, i, r[0]);
                put(k + 1, i, r[1]);
            }
        }
        if (k < ntok)
            for (Eigen::Index i = i0; i < i1; ++i) {
                std::int32_t r;
                digit_dot_row<F, mla_sdot, 1>(w.block_data(i, 0), stride, x + k * ldx, ldx, nb, &r);
                put(k, i, r);
            }
    }
}
#endif

/// Dot-product `dot_rows` (`sdot`); call only when host_cpu_features().neon_dotprod.
template <PackedWeights M>
LOWBIT_NEON_FLATTEN LOWBIT_NEON_DOTPROD_TARGET inline void dot_rows_dotprod(const M& w, Eigen::Index r0, Eigen::Index r1,
                                                                            const std::int8_t* x, Eigen::Index ldx,
                                                                            const std::int32_t* qsum, Eigen::Index ntok,
                                                                            std::int32_t* out, Eigen::Index ldo) {
    dot_rows_with<mla_sdot>(w, r0, r1, x, ldx, qsum, ntok, out, ldo);
}
#endif

/// NEON `dot_rows` (contract of arch/generic.hpp) for packed_matrix and interleaved_matrix: with two
/// or more tokens the `smmla` path when compiled and the CPU has FEAT_I8MM, else the `sdot` path when
/// compiled (LOWBIT_HAVE_NEON_SDOT) and the CPU has the dot-product extension, else baseline ASIMD.
template <PackedWeights M>
inline void dot_rows(const M& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x, Eigen::Index ldx,
                     const std::int32_t* qsum, Eigen::Index ntok, std::int32_t* out, Eigen::Index ldo) {
#if LOWBIT_HAVE_NEON_I8MM
    if (ntok >= 2 && host_cpu_features().neon_i8mm) {
        dot_rows_i8mm(w, r0, r1, x, ldx, qsum, ntok, out, ldo);
        return;
    }
#endif
#if LOWBIT_HAVE_NEON_SDOT
    if (host_cpu_features().neon_dotprod) {
        dot_rows_dotprod(w, r0, r1, x, ldx, qsum, ntok, out, ldo);
        return;
    }
#endif
    dot_rows_asimd(w, r0, r1, x, ldx, qsum, ntok, out, ldo);
}

} // namespace detail::neon_kernels
LOWBIT_END_NAMESPACE

#endif // LOWBIT_HAVE_NEON_KERNELS
