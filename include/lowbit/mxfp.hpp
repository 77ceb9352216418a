#pragma once
/// \file mxfp.hpp
/// Microscaling formats (OCP MX v1.0) — MXFP4 (E2M1), MXFP6 (E2M3, E3M2), MXFP8 (E4M3, E5M2),
/// MXINT8 — and NVFP4 (E2M1 elements, blocks of 16 with an E4M3 scale, plus one FP32 tensor scale).
///
/// **MX.** Blocks of k = 32 consecutive elements of a row (along the input dimension) share one
/// E8M0 scale X = 2^E. Elements are P_i = round(V_i / X) in the element format, rounded to nearest
/// (ties to even by default) and saturated to ±max_elem; the value is X · P_i. The shared exponent
/// E comes from a *scale rule* (a policy type):
///
/// | rule              | E for a block with amax = max_i abs(V_i) > 0                        |
/// |-------------------|---------------------------------------------------------------------|
/// | `e8m0_floor`      | ⌊log2 amax⌋ − emax_elem (OCP spec §6.3; the top element may clip)     |
/// | `e8m0_ceil`       | ⌈log2(amax / max_elem)⌉: the smallest X with amax/X ≤ max_elem        |
/// | `e8m0_round_even` | ⌊log2 r(amax)⌋ − emax_elem, r = amax with its significand rounded to   |
/// |                   | the element's mantissa width (half up), torchao's "EVEN" mode         |
/// | `ggml_compatible` | ⌊log2f(amax)⌋ − emax_elem computed in float as ggml's                 |
/// |                   | `quantize_row_mxfp4_ref`; elements round ties toward zero (ggml's     |
/// |                   | first-wins `best_index_mxfp4` search)                                 |
///
/// A block of zeros gets E = −127 (E8M0 code 0) and zero codes under every rule. E is clamped to
/// [−127, 127] (codes 0…254); code 0xFF (NaN) is never produced but decodes to NaN.
///
/// Element formats (policy types with `bits`, `emax`, `max_value()`, `encode`, `decode`):
///
/// | type        | bits | emax | max      | notes                                        |
/// |-------------|------|------|----------|----------------------------------------------|
/// | `fp4_e2m1`  | 4    | 2    | 6        | {0, 0.5, 1, 1.5, 2, 3, 4, 6}, no Inf/NaN     |
/// | `fp6_e2m3`  | 6    | 2    | 7.5      | subnormal step 0.125, no Inf/NaN             |
/// | `fp6_e3m2`  | 6    | 4    | 28       | subnormal step 0.0625, no Inf/NaN            |
/// | `fp8_e4m3`  | 8    | 8    | 448      | S.1111.111 is NaN, no Inf                    |
/// | `fp8_e5m2`  | 8    | 15   | 57344    | IEEE-style Inf/NaN                           |
/// | `int8_mx`   | 8    | 0    | 127/64   | two's complement k/64, k ∈ [−127, 127]       |
///
/// Storage: codes are one byte per element (unpacked; packing is the kernels' job), row-major
/// `[rows x cols]`; E8M0 scale codes are `[rows x ceil(cols / 32)]`. Bits per element: bits + 8/32.
///
/// **Rows whose length is not a multiple of the block**: `tail_policy::error` (default) throws
/// `shape_error`; `smaller_last` and `zero_pad` both give the last block the remaining columns —
/// for an amax-based scale, zero padding does not change the fit, so the two are identical.
///
/// **NVFP4**: blocks of 16, per-tensor g = amax_tensor / (6 · 448) (1 for an all-zero tensor), block
/// scale s_b = E4M3(amax_b / (6 · g)) (round to nearest even, saturating), elements
/// E2M1(V_i / (s_b · g)); value = g · s_b · P_i (the NVIDIA/TensorRT two-level recipe).

#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/detail/float_formats.hpp>
#include <lowbit/error.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <concepts>
#include <limits>
#include <string>
#include <type_traits>

LOWBIT_BEGIN_NAMESPACE

// ---------------------------------------------------------------------------------------------
// Element formats
// ---------------------------------------------------------------------------------------------

/// FP4 E2M1 (OCP MX): magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}; bias 1; no Inf/NaN.
struct fp4_e2m1 : detail::minifloat_codec<2, 1, 1, detail::float_specials::none> {};
/// FP6 E2M3 (OCP MX): bias 1, max 7.5, smallest subnormal 0.125; no Inf/NaN.
struct fp6_e2m3 : detail::minifloat_codec<2, 3, 1, detail::float_specials::none> {};
/// FP6 E3M2 (OCP MX): bias 3, max 28, smallest subnormal 0.0625; no Inf/NaN.
struct fp6_e3m2 : detail::minifloat_codec<3, 2, 3, detail::float_specials::none> {};
/// FP8 E4M3 (OCP, "fn"): bias 7, max 448, S.1111.111 is NaN, no Inf.
struct fp8_e4m3 : detail::minifloat_codec<4, 3, 7, detail::float_specials::nan_all_ones> {};
/// FP8 E5M2 (OCP): bias 15, max 57344, IEEE-style Inf and NaN.
struct fp8_e5m2 : detail::minifloat_codec<5, 2, 15, detail::float_specials::ieee> {};

/// MXINT8 element: an 8-bit two's complement integer k with an implicit scale 2^−6, value k/64.
/// Encoding rounds k to nearest and saturates symmetrically to [−127, 127] (as microxcaling).
struct int8_mx {
    static constexpr int bits = 8;     ///< code width
    static constexpr int emax = 0;     ///< OCP emax_elem for MXINT8
    /// Largest magnitude, 127/64.
    [[nodiscard]] static constexpr float max_value() noexcept { return 127.0f / 64.0f; }
    /// Every code is finite (0x80 = −128 decodes to −2 but encoding never produces it).
    [[nodiscard]] static constexpr bool is_finite_code(std::uint8_t) noexcept { return true; }
    /// The value k/64 of the two's complement byte `code`.
    [[nodiscard]] static float decode(std::uint8_t code) noexcept {
        return static_cast<float>(static_cast<std::int8_t>(code)) / 64.0f;
    }
    /// Nearest code to the finite `v`, saturating to ±127/64.
    [[nodiscard]] static std::uint8_t encode(float v, element_rounding r = element_rounding::nearest_even) noexcept {
        const float q = v * 64.0f; // exact (power of two)
        float k;
        if (r == element_rounding::nearest_even) {
            k = std::nearbyint(q);
        } else {
            const float a = std::fabs(q), f = std::floor(a);
            k = std::copysign(a - f > 0.5f ? f + 1.0f : f, q);
        }
        k = std::clamp(k, -127.0f, 127.0f);
        return static_cast<std::uint8_t>(static_cast<std::int8_t>(k));
    }
};

/// True for the element formats of this header.
template <class T>
concept MxElement = requires(float v, std::uint8_t c) {
    { T::bits } -> std::convertible_to<int>;
    { T::emax } -> std::convertible_to<int>;
    { T::max_value() } -> std::same_as<float>;
    { T::decode(c) } -> std::same_as<float>;
    { T::encode(v, element_rounding::nearest_even) } -> std::same_as<std::uint8_t>;
};

// ---------------------------------------------------------------------------------------------
// Scale rules (E8M0 shared exponent)
// ---------------------------------------------------------------------------------------------

/// OCP MX v1.0 rule: E = ⌊log2 amax⌋ − emax_elem (exact, via ilogb). Elements ties to even.
struct e8m0_floor {
    static constexpr element_rounding rounding = element_rounding::nearest_even; ///< element ties
};
/// No-clipping rule: the smallest E with amax / 2^E ≤ max_elem. Elements ties to even.
struct e8m0_ceil {
    static constexpr element_rounding rounding = element_rounding::nearest_even; ///< element ties
};
/// torchao "EVEN" rule: round amax's significand to the element's mantissa width (half up), then
/// E = ⌊log2⌋ − emax_elem. Bumps E exactly when the top element would round above the largest
/// binade of the element format. Elements ties to even.
struct e8m0_round_even {
    static constexpr element_rounding rounding = element_rounding::nearest_even; ///< element ties
};
/// ggml's MXFP4 reference (`quantize_row_mxfp4_ref`): E = floorf(log2f(amax)) − emax_elem in single
/// precision (for amax just below a power of two, log2f may round up and E is one larger than
/// `e8m0_floor`'s), elements nearest with ties toward zero. ggml wraps E < −127 through a uint8 cast;
/// lowbit clamps instead.
struct ggml_compatible {
    static constexpr element_rounding rounding = element_rounding::nearest_toward_zero; ///< element ties
};

namespace detail {

template <class Elem>
inline int mantissa_bits_of() {
    if constexpr (requires { Elem::mantissa_bits; })
        return Elem::mantissa_bits;
    else
        return 6; // int8_mx: the top element k ∈ [64, 128) has 6 fractional bits after the leading one
}

/// Shared exponent E ∈ [−127, 127] of a block with max |value| `amax` (finite, ≥ 0).
template <class Elem, class Scale>
inline int mx_shared_exponent(float amax, const Scale&) {
    if (!(amax > 0.0f)) return -127;
    int e;
    if constexpr (std::is_same_v<Scale, e8m0_floor>) {
        e = std::ilogb(amax) - Elem::emax;
    } else if constexpr (std::is_same_v<Scale, e8m0_ceil>) {
        e = std::ilogb(amax) - Elem::emax;
        if (std::ldexp(amax, -e) > Elem::max_value()) ++e;
    } else if constexpr (std::is_same_v<Scale, e8m0_round_even>) {
        // amax = f · 2^k, f ∈ [1, 2): round f to m fractional bits, half up; a carry to 2 bumps k.
        const int k = std::ilogb(amax);
        const int m = mantissa_bits_of<Elem>();
        const float f = std::ldexp(amax, -k);
        const float fr = std::floor(std::ldexp(f, m) + 0.5f);
        e = k + (fr >= std::ldexp(2.0f, m) ? 1 : 0) - Elem::emax;
    } else if constexpr (std::is_same_v<Scale, ggml_compatible>) {
        e = static_cast<int>(std::floor(std::log2(amax))) - Elem::emax;
    } else {
        static_assert(dependent_false<Scale>,
                      "lowbit: unknown MX scale rule (use e8m0_floor, e8m0_ceil, e8m0_round_even or ggml_compatible)");
    }
    return std::clamp(e, -127, 127);
}

/// Rounds `v` with E8M0 scale code `sc` to an element code under the rule's tie policy.
template <class Elem, class Scale>
inline std::uint8_t mx_encode_element(float v, std::uint8_t sc) {
    // v / 2^E in double: exact; the cast back to float is exact for every value an element format
    // can resolve (tiny quotients round to float subnormals far below any element's half-step) and
    // may overflow to Inf only for a value far above its block's amax (a solver's updated column),
    // which encode saturates like any large value.
    return Elem::encode(static_cast<float>(static_cast<double>(v) * pow2d(127 - static_cast<int>(sc))), Scale::rounding);
}

inline void check_mx_shape(const cref_matrix_f& w, Eigen::Index block, tail_policy tail, const char* where) {
    require_nonempty(w, where, "w");
    require_finite(w, where, "w");
    check_granularity(per_group{block, tail}, w.cols(), where);
}

} // namespace detail

/// One MX format: an element type and a scale rule, blocks of 32 along the input dimension.
template <MxElement Elem, class Scale = e8m0_floor>
struct mx_format {
    using element = Elem;                           ///< element format
    using scale_rule = Scale;                       ///< shared-exponent rule
    static constexpr Eigen::Index block_size = 32;  ///< k of the OCP spec
};

using mxfp4 = mx_format<fp4_e2m1>;        ///< MXFP4 (OCP): E2M1 elements, E8M0 floor scale
using mxfp6_e2m3 = mx_format<fp6_e2m3>;   ///< MXFP6 with E2M3 elements
using mxfp6_e3m2 = mx_format<fp6_e3m2>;   ///< MXFP6 with E3M2 elements
using mxfp8_e4m3 = mx_format<fp8_e4m3>;   ///< MXFP8 with E4M3 elements
using mxfp8_e5m2 = mx_format<fp8_e5m2>;   ///< MXFP8 with E5M2 elements
using mxint8 = mx_format<int8_mx>;        ///< MXINT8

/// Byte matrix (row-major) holding element or scale codes.
using code_matrix_u8 = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// An MX-quantized matrix: element codes and one E8M0 scale code per (row, block of 32).
template <MxElement Elem>
struct mx_tensor {
    code_matrix_u8 codes;  ///< (rows, cols) element codes of `Elem`, one per byte
    code_matrix_u8 scales; ///< (rows, ceil(cols / 32)) E8M0 codes
    static constexpr Eigen::Index block_size = 32; ///< columns per scale

    /// The float matrix X_{i, j/32} · decode(code_ij). Exact (products of a power of two and an
    /// element value). O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f out(codes.rows(), codes.cols());
        for (Eigen::Index i = 0; i < codes.rows(); ++i)
            for (Eigen::Index j = 0; j < codes.cols(); ++j)
                out(i, j) = Elem::decode(codes(i, j)) * e8m0_decode(scales(i, j / block_size));
        return out;
    }
};

/// Quantizes `w` `[rows x cols]` to the MX format `Format` (e.g. `mxfp4`), blocks of 32 along each row.
///
/// \param w     finite, non-empty weights or activations.
/// \param tail  what to do when 32 does not divide `cols` (`error` throws; the others give the last
///              block the remaining columns — identical for MX, see the file comment).
/// \throws shape_error (empty, or cols not a multiple of 32 under `tail_policy::error`);
///         numeric_error (NaN/Inf).
/// Error bound (elements not saturated): |V − X·P| ≤ X · ulp_elem(P)/2. Complexity O(rows·cols).
template <class Format>
[[nodiscard]] mx_tensor<typename Format::element> quantize_mx(const cref_matrix_f& w,
                                                              tail_policy tail = tail_policy::error) {
    using Elem = typename Format::element;
    using Scale = typename Format::scale_rule;
    constexpr Eigen::Index k = Format::block_size;
    detail::check_mx_shape(w, k, tail, "quantize_mx");
    const Eigen::Index nb = (w.cols() + k - 1) / k;
    mx_tensor<Elem> out{code_matrix_u8(w.rows(), w.cols()), code_matrix_u8(w.rows(), nb)};
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        for (Eigen::Index b = 0; b < nb; ++b) {
            const Eigen::Index j0 = b * k, j1 = std::min(w.cols(), j0 + k);
            float amax = 0.0f;
            for (Eigen::Index j = j0; j < j1; ++j) amax = std::max(amax, std::fabs(w(i, j)));
            const std::uint8_t sc = e8m0_encode(detail::mx_shared_exponent<Elem>(amax, Scale{}));
            out.scales(i, b) = sc;
            for (Eigen::Index j = j0; j < j1; ++j) out.codes(i, j) = detail::mx_encode_element<Elem, Scale>(w(i, j), sc);
        }
    }
    return out;
}

/// `quantize_mx<Format>(w, tail).dequantize()` without storing the codes ("fake quantization",
/// e.g. for scoring a rotation under MXFP4). Same contract and throws as `quantize_mx`.
template <class Format>
[[nodiscard]] matrix_f mx_fake_quantize(const cref_matrix_f& w, tail_policy tail = tail_policy::error) {
    return quantize_mx<Format>(w, tail).dequantize();
}

/// Parameters of one MX column group for `mx_group_quantizer`: one E8M0 code per row.
struct mx_group_params {
    Eigen::Matrix<std::uint8_t, Eigen::Dynamic, 1> scale; ///< (rows) E8M0 codes
};

/// The MX format `Format` as a `GroupQuantizer` (concepts.hpp) for column-wise solvers (GPTQ):
/// `fit` takes a `[rows x g]` group (g = 32 for spec-conforming blocks; any g ≥ 1 is accepted) and
/// picks each row's shared exponent with the format's scale rule; `round_column` rounds one column
/// with those scales (same values as `quantize_mx` on the same group).
template <class Format>
struct mx_group_quantizer {
    using params = mx_group_params; ///< per-row E8M0 scale codes
    using element = typename Format::element; ///< element format
    static constexpr Eigen::Index group_size = Format::block_size; ///< the block a solver should use

    /// Per-row shared exponents of `block` `[rows x g]`. Precondition: finite (solvers check).
    [[nodiscard]] params fit(const cref_matrix_f& block) const {
        params p{Eigen::Matrix<std::uint8_t, Eigen::Dynamic, 1>(block.rows())};
        for (Eigen::Index i = 0; i < block.rows(); ++i) {
            const float amax = block.rows() && block.cols() ? block.row(i).cwiseAbs().maxCoeff() : 0.0f;
            p.scale(i) = e8m0_encode(detail::mx_shared_exponent<element>(amax, typename Format::scale_rule{}));
        }
        return p;
    }
    /// `out(i)` = the MX value of `col(i)` with row i's scale. Precondition: sizes equal p.scale's.
    void round_column(const params& p, const cref_vector_f& col, Eigen::Ref<vector_f> out) const {
        for (Eigen::Index i = 0; i < col.size(); ++i) {
            const std::uint8_t c = detail::mx_encode_element<element, typename Format::scale_rule>(col(i), p.scale(i));
            out(i) = element::decode(c) * e8m0_decode(p.scale(i));
        }
    }
};

// ---------------------------------------------------------------------------------------------
// NVFP4
// ---------------------------------------------------------------------------------------------

/// An NVFP4-quantized matrix: E2M1 codes, one E4M3 scale code per (row, block of 16), one FP32 scale.
struct nvfp4_tensor {
    code_matrix_u8 codes;    ///< (rows, cols) E2M1 codes, one per byte
    code_matrix_u8 scales;   ///< (rows, ceil(cols / 16)) E4M3 codes (non-negative)
    float tensor_scale = 1;  ///< g = amax / (6 · 448), 1 for an all-zero tensor
    static constexpr Eigen::Index block_size = 16; ///< columns per E4M3 scale

    /// The float matrix g · s_b · P_ij. O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f out(codes.rows(), codes.cols());
        for (Eigen::Index i = 0; i < codes.rows(); ++i)
            for (Eigen::Index j = 0; j < codes.cols(); ++j)
                out(i, j) = fp4_e2m1::decode(codes(i, j)) * (fp8_e4m3::decode(scales(i, j / block_size)) * tensor_scale);
        return out;
    }
};

/// Quantizes `w` to NVFP4 (see the file comment): blocks of 16 along each row.
/// \throws shape_error (empty, or cols not a multiple of 16 under `tail_policy::error`);
///         numeric_error (NaN/Inf). Complexity O(rows·cols).
[[nodiscard]] inline nvfp4_tensor quantize_nvfp4(const cref_matrix_f& w, tail_policy tail = tail_policy::error) {
    constexpr Eigen::Index k = nvfp4_tensor::block_size;
    detail::check_mx_shape(w, k, tail, "quantize_nvfp4");
    const Eigen::Index nb = (w.cols() + k - 1) / k;
    nvfp4_tensor out{code_matrix_u8(w.rows(), w.cols()), code_matrix_u8(w.rows(), nb), 1.0f};
    const float amax_t = w.cwiseAbs().maxCoeff();
    float g = amax_t / (6.0f * 448.0f);
    if (!(g > 0.0f)) g = 1.0f; // all-zero tensor (or amax so small that g underflows)
    out.tensor_scale = g;
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        for (Eigen::Index b = 0; b < nb; ++b) {
            const Eigen::Index j0 = b * k, j1 = std::min(w.cols(), j0 + k);
            float amax = 0.0f;
            for (Eigen::Index j = j0; j < j1; ++j) amax = std::max(amax, std::fabs(w(i, j)));
            const std::uint8_t sc = fp8_e4m3::encode(amax / (6.0f * g));
            out.scales(i, b) = sc;
            const float d = fp8_e4m3::decode(sc) * g;
            for (Eigen::Index j = j0; j < j1; ++j)
                out.codes(i, j) = d > 0.0f ? fp4_e2m1::encode(w(i, j) / d) : std::uint8_t{0};
        }
    }
    return out;
}

LOWBIT_END_NAMESPACE
