#pragma once
/// \file arch/generic.hpp
/// Portable kernels for packed weights × int8 activations: the scalar reference (the oracle every
/// SIMD path is tested against, bit-exact) and an xsimd path (whatever xsimd's default architecture
/// is in the consumer's translation unit — SSE2 in a build without `-march`).
///
/// Contract shared by every `dot_rows` of arch/: for rows i in [r0, r1) and tokens k in [0, ntok),
///     out[k·ldo + (i − r0)] = Σ_j t_ij · x[k·ldx + j]        (exact int32)
/// where x holds int8 activations zero-padded to at least W.padded_cols() columns and
/// qsum[k] = Σ_j x[k·ldx + j]. Preconditions (checked by gemm.hpp, not here): |Σ| < 2^31.

#include <lowbit/config.hpp>
#include <lowbit/detail/xsimd_compat.hpp>
#include <lowbit/pack.hpp>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <xsimd/xsimd.hpp>

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// 64-column planes of the last block of `w` that hold real columns (the rest is padding; the SIMD
/// kernels skip the planes past them, whose activations are zero).
template <class M>
inline int last_block_planes(const M& w) noexcept {
    constexpr Eigen::Index bw = pack_format<typename M::format>::block_weights;
    return static_cast<int>((w.cols() - (w.blocks_per_row() - 1) * bw + 63) / 64);
}

/// Runs f(std::integral_constant<int, NT>{}, k) over the tokens [0, tokens) in groups of NT = 4 from
/// k = 0, then one group of the remaining 1–3: the token grouping of the fp32 kernels, whose NT
/// tokens share each decoded weight vector.
template <class F>
inline void for_token_groups(Eigen::Index tokens, F&& f) {
    Eigen::Index k = 0;
    for (; k + 4 <= tokens; k += 4) f(std::integral_constant<int, 4>{}, k);
    switch (tokens - k) {
    case 3: f(std::integral_constant<int, 3>{}, k); break;
    case 2: f(std::integral_constant<int, 2>{}, k); break;
    case 1: f(std::integral_constant<int, 1>{}, k); break;
    default: break;
    }
}

/// Rows per tile when several tokens share a weight tile (the tile stays in L1/L2 across tokens).
inline constexpr Eigen::Index gemm_row_tile = 16;

namespace scalar_kernels {

/// Scalar reference: unpack each block with `unpack_block` and accumulate Σ u·x in int32.
/// `M` is packed_matrix<F> or interleaved_matrix<F> (blocks reached through block_data).
template <PackedWeights M>
inline void dot_rows(const M& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x, Eigen::Index ldx,
                     const std::int32_t* qsum, Eigen::Index ntok, std::int32_t* out, Eigen::Index ldo) {
    using F = typename M::format;
    using T = pack_format<F>;
    std::uint8_t u[T::block_weights];
    for (Eigen::Index k = 0; k < ntok; ++k)
        for (Eigen::Index i = r0; i < r1; ++i) {
            const std::int8_t* xk = x + k * ldx;
            std::int32_t acc = 0;
            for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
                unpack_block<F>(w.block_data(i, b), u);
                for (int j = 0; j < T::block_weights; ++j) acc += static_cast<std::int32_t>(u[j]) * xk[b * T::block_weights + j];
            }
            out[k * ldo + (i - r0)] = T::digit_mul * acc - T::digit_offset * qsum[k];
        }
}

/// Scalar reference of the grouped int4 kernels: for one int4 row of `nblocks` blocks (first block at
/// p, blocks `stride` bytes apart) and activations x (padded), out[2b + h] = Σ_{j<128} u_{b,128h+j}·x_{256b+128h+j}
/// — the digit sum of the low (h = 0) and high (h = 1) nibble half of block b, exact int32.
inline void int4_half_dots(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks, Eigen::Index stride,
                           std::int32_t* out) {
    std::uint8_t u[256];
    for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 256) {
        unpack_block<int4>(p, u);
        for (int h = 0; h < 2; ++h) {
            std::int32_t acc = 0;
            for (int j = 0; j < 128; ++j) acc += static_cast<std::int32_t>(u[128 * h + j]) * x[128 * h + j];
            out[2 * b + h] = acc;
        }
    }
}

/// Scalar reference for binary × binary: out[i − r0] = cols − 2·popcount(w_i xor a)
/// (`M` = packed_matrix<binary1> or interleaved_matrix<binary1>).
template <PackedWeights M>
inline void xnor_rows(const M& w, Eigen::Index r0, Eigen::Index r1, const std::uint8_t* a, std::int32_t* out) {
    static_assert(std::is_same_v<typename M::format, binary1>, "lowbit: xnor_rows needs binary1 weights");
    for (Eigen::Index i = r0; i < r1; ++i) {
        std::int32_t pc = 0;
        for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
            const std::uint8_t* p = w.block_data(i, b);
            for (Eigen::Index j = 0; j < 32; ++j) pc += std::popcount(static_cast<unsigned>(p[j] ^ a[32 * b + j]));
        }
        out[i - r0] = static_cast<std::int32_t>(w.cols()) - 2 * pc;
    }
}

/// Scalar reference for fp32 activations: out[i − r0] = Σ_j t_ij·x_j accumulated in float, in order
/// (x zero-padded to padded_cols).
template <PackedWeights M>
inline void dot_rows_f32(const M& w, Eigen::Index r0, Eigen::Index r1, const float* x, float* out) {
    using F = typename M::format;
    using T = pack_format<F>;
    std::uint8_t u[T::block_weights];
    for (Eigen::Index i = r0; i < r1; ++i) {
        float acc = 0.0f;
        for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
            unpack_block<F>(w.block_data(i, b), u);
            for (int j = 0; j < T::block_weights; ++j)
                acc += static_cast<float>(T::digit_mul * u[j] - T::digit_offset) * x[b * T::block_weights + j];
        }
        out[i - r0] = acc;
    }
}

/// Scalar reference for MXFP4 × int8: out[i − r0] = Σ_b 2^(E_ib − 127)·S_ib in float, blocks in
/// order, where S_ib = Σ_{j in block b} e2m1_doubled(c_ij)·x_j is exact (|S| ≤ 32·12·127).
template <class L>
inline void mxfp4_rows(const packed_mxfp4<L>& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x, float* out) {
    for (Eigen::Index i = r0; i < r1; ++i) {
        const std::uint8_t* p = w.row_data(i);
        float acc = 0.0f;
        for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b, p += 17) {
            std::int32_t sb = 0;
            for (int j = 0; j < 32; ++j) {
                int byte = 0, shift = 0;
                mxfp4_position<L>(j, byte, shift);
                sb += e2m1_doubled[(p[byte] >> shift) & 15] * x[b * 32 + j];
            }
            acc += e8m0_value(p[0]) * static_cast<float>(sb);
        }
        out[i - r0] = acc;
    }
}

} // namespace scalar_kernels

namespace generic_kernels {

/// xsimd path: unpack a block to int32 digits, multiply-add with the widened activations in
/// `batch<int32_t>` lanes (exact: integer arithmetic, any order).
template <PackedWeights M>
inline void dot_rows(const M& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x, Eigen::Index ldx,
                     const std::int32_t* qsum, Eigen::Index ntok, std::int32_t* out, Eigen::Index ldo) {
    using F = typename M::format;
    using T = pack_format<F>;
    using batch = xsimd::batch<std::int32_t>;
    constexpr int n = T::block_weights;
    static_assert(n % batch::size == 0, "lowbit: block size must be a multiple of the int32 lane count");
    alignas(64) std::uint8_t u[n];
    alignas(64) std::int32_t ui[n];
    alignas(64) std::int32_t xi[n];
    for (Eigen::Index i0 = r0; i0 < r1; i0 += gemm_row_tile) {
        const Eigen::Index i1 = std::min(r1, i0 + gemm_row_tile);
        for (Eigen::Index k = 0; k < ntok; ++k)
            for (Eigen::Index i = i0; i < i1; ++i) {
                const std::int8_t* xk = x + k * ldx;
                batch acc(0);
                for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
                    unpack_block<F>(w.block_data(i, b), u);
                    for (int j = 0; j < n; ++j) {
                        ui[j] = u[j];
                        xi[j] = xk[b * n + j];
                    }
                    for (int j = 0; j < n; j += static_cast<int>(batch::size))
                        acc += batch::load_aligned(ui + j) * batch::load_aligned(xi + j);
                }
                out[k * ldo + (i - r0)] = T::digit_mul * detail::lane_sum(acc) - T::digit_offset * qsum[k];
            }
    }
}

/// xsimd path of scalar_kernels::int4_half_dots (same contract, exact): digits and activations
/// widened to int32 lanes, one accumulator per nibble half.
inline void int4_half_dots(const std::uint8_t* p, const std::int8_t* x, Eigen::Index nblocks, Eigen::Index stride,
                           std::int32_t* out) {
    using batch = xsimd::batch<std::int32_t>;
    static_assert(128 % batch::size == 0, "lowbit: 128 must be a multiple of the int32 lane count");
    alignas(64) std::int32_t ui[256];
    alignas(64) std::int32_t xi[256];
    for (Eigen::Index b = 0; b < nblocks; ++b, p += stride, x += 256) {
        for (int j = 0; j < 128; ++j) {
            ui[j] = p[j] & 15;
            ui[128 + j] = p[j] >> 4;
        }
        for (int j = 0; j < 256; ++j) xi[j] = x[j];
        for (int h = 0; h < 2; ++h) {
            batch acc(0);
            for (int j = 128 * h; j < 128 * h + 128; j += static_cast<int>(batch::size))
                acc += batch::load_aligned(ui + j) * batch::load_aligned(xi + j);
            out[2 * b + h] = detail::lane_sum(acc);
        }
    }
}

/// xsimd path for fp32 activations: unpack a block to float codes and accumulate with batch FMA
/// (different summation order from the scalar reference; see gemm.hpp for the bound).
template <PackedWeights M>
inline void dot_rows_f32(const M& w, Eigen::Index r0, Eigen::Index r1, const float* x, float* out) {
    using F = typename M::format;
    using T = pack_format<F>;
    using batch = xsimd::batch<float>;
    constexpr int n = T::block_weights;
    static_assert(n % batch::size == 0, "lowbit: block size must be a multiple of the float lane count");
    alignas(64) std::uint8_t u[n];
    alignas(64) float tf[n];
    for (Eigen::Index i = r0; i < r1; ++i) {
        batch acc(0.0f);
        for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
            unpack_block<F>(w.block_data(i, b), u);
            for (int j = 0; j < n; ++j) tf[j] = static_cast<float>(T::digit_mul * u[j] - T::digit_offset);
            for (int j = 0; j < n; j += static_cast<int>(batch::size))
                acc = xsimd::fma(batch::load_aligned(tf + j), batch::load_unaligned(x + b * n + j), acc);
        }
        out[i - r0] = detail::lane_sum(acc);
    }
}

/// Portable binary × binary: 64-bit words, std::popcount (either weight layout).
template <PackedWeights M>
inline void xnor_rows(const M& w, Eigen::Index r0, Eigen::Index r1, const std::uint8_t* a, std::int32_t* out) {
    static_assert(std::is_same_v<typename M::format, binary1>, "lowbit: xnor_rows needs binary1 weights");
    for (Eigen::Index i = r0; i < r1; ++i) {
        std::int32_t pc = 0;
        for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b)
            for (Eigen::Index j = 0; j < 4; ++j) {
                std::uint64_t pw, aw;
                std::memcpy(&pw, w.block_data(i, b) + 8 * j, 8);
                std::memcpy(&aw, a + 32 * b + 8 * j, 8);
                pc += std::popcount(pw ^ aw);
            }
        out[i - r0] = static_cast<std::int32_t>(w.cols()) - 2 * pc;
    }
}

} // namespace generic_kernels
} // namespace detail
LOWBIT_END_NAMESPACE
