#pragma once
/// \file activations.hpp
/// NLI approximants of the nonlinear operators of an LLM: SiLU, GELU (tanh and erf forms), sigmoid, tanh
/// as direct tables with asymptotes; exp (2^x split into integer and fractional part) and rsqrt
/// (mantissa/exponent split) by range reduction onto one small table; softmax built on the exp approximant;
/// SiLU and sigmoid also built on the exp approximant; presets fitted on first use.
///
/// Each function is described by a policy type (`silu_function`, ...) with its reference `value` (double),
/// fitting domain [lo, hi], asymptotes for x outside it, the relative-error floor used in fitting and the
/// preset's M. `fit_nli<Fn>(M, N)` runs the DP of pwl_fit.hpp on a uniform grid of N points with a dense
/// uniform evaluation set of 4 (N - 1) + 1 points and the summed relative error (mean relative error).

#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/error.hpp>
#include <lowbit/pwl.hpp>
#include <lowbit/pwl_fit.hpp>
#include <lowbit/types.hpp>

#include <xsimd/xsimd.hpp>

#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// A function NLI can tabulate: reference value, fitting domain, asymptotes, relative-error floor, preset M.
template <class Fn>
concept NliFunction = requires(double x) {
    { Fn::value(x) } -> std::convertible_to<double>;
    { Fn::lo } -> std::convertible_to<double>;
    { Fn::hi } -> std::convertible_to<double>;
    { Fn::left } -> std::convertible_to<pwl_line>;
    { Fn::right } -> std::convertible_to<pwl_line>;
    { Fn::relative_floor } -> std::convertible_to<double>;
    { Fn::preset_segments } -> std::convertible_to<std::size_t>;
};

/// SiLU(x) = x / (1 + e^-x) on [-8, 8]; asymptotes 0 (x < -8, |SiLU| < 2.7e-3) and x (x > 8).
struct silu_function {
    static double value(double x) { return x / (1.0 + std::exp(-x)); }
    static constexpr double lo = -8, hi = 8;
    static constexpr pwl_line left{0.0f, 0.0f}, right{1.0f, 0.0f};
    static constexpr double relative_floor = 1e-3;
    static constexpr std::size_t preset_segments = 64;
};

/// GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) on [-6, 6]; asymptotes 0 and x.
struct gelu_tanh_function {
    static double value(double x) {
        return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    }
    static constexpr double lo = -6, hi = 6;
    static constexpr pwl_line left{0.0f, 0.0f}, right{1.0f, 0.0f};
    static constexpr double relative_floor = 1e-3;
    static constexpr std::size_t preset_segments = 64;
};

/// GELU, erf form: 0.5 x (1 + erf(x / sqrt 2)) on [-6, 6]; asymptotes 0 and x.
struct gelu_erf_function {
    static double value(double x) { return 0.5 * x * (1.0 + std::erf(x * 0.7071067811865476)); }
    static constexpr double lo = -6, hi = 6;
    static constexpr pwl_line left{0.0f, 0.0f}, right{1.0f, 0.0f};
    static constexpr double relative_floor = 1e-3;
    static constexpr std::size_t preset_segments = 64;
};

/// Logistic sigmoid 1 / (1 + e^-x) on [-12, 12]; asymptotes 0 and 1 (error < 6.2e-6 outside).
struct sigmoid_function {
    static double value(double x) { return 1.0 / (1.0 + std::exp(-x)); }
    static constexpr double lo = -12, hi = 12;
    static constexpr pwl_line left{0.0f, 0.0f}, right{0.0f, 1.0f};
    static constexpr double relative_floor = 1e-3;
    static constexpr std::size_t preset_segments = 64;
};

/// tanh on [-8, 8]; asymptotes -1 and 1 (error < 2.3e-7 outside).
struct tanh_function {
    static double value(double x) { return std::tanh(x); }
    static constexpr double lo = -8, hi = 8;
    static constexpr pwl_line left{0.0f, -1.0f}, right{0.0f, 1.0f};
    static constexpr double relative_floor = 1e-3;
    static constexpr std::size_t preset_segments = 64;
};

/// 2^f on [0, 1]: the table behind `exp_pwl` (exp(x) = 2^n 2^f, t = x log2 e, n = floor t, f = t - n).
struct exp2_fraction_function {
    static double value(double x) { return std::exp2(x); }
    static constexpr double lo = 0, hi = 1;
    static constexpr pwl_line left{0.0f, 1.0f}, right{0.0f, 2.0f};
    static constexpr double relative_floor = 1e-30;
    static constexpr std::size_t preset_segments = 16;
};

/// 1/sqrt(m) on [1, 4]: the table behind `rsqrt_pwl` (x = m 4^k, rsqrt x = rsqrt(m) 2^-k).
struct rsqrt_mantissa_function {
    static double value(double x) { return 1.0 / std::sqrt(x); }
    static constexpr double lo = 1, hi = 4;
    static constexpr pwl_line left{0.0f, 1.0f}, right{0.0f, 0.5f};
    static constexpr double relative_floor = 1e-30;
    static constexpr std::size_t preset_segments = 32;
};

/// Optimal fit of `Fn` with M segments: DP over a uniform grid of N points on [Fn::lo, Fn::hi], evaluation set
/// the uniform grid of 4 (N - 1) + 1 points, metric relative_error{Fn::relative_floor}, summed (mean relative
/// error); `Agg` = max_of_errors gives the minimax fit instead. Errors: M < 1 or N < M + 1 (`invalid_argument`).
/// O(M N^2 + N^3).
template <NliFunction Fn, class Agg = sum_of_errors>
pwl_fit_result fit_nli(std::size_t segments, std::size_t grid_points = 257, Agg agg = {}) {
    detail::require(segments >= 1, "fit_nli", "argument 'segments' (M) must be >= 1");
    detail::require(grid_points >= segments + 1, "fit_nli", "need grid_points N >= M + 1");
    const auto grid = uniform_grid(Fn::lo, Fn::hi, grid_points);
    const auto eval = uniform_grid(Fn::lo, Fn::hi, 4 * (grid_points - 1) + 1);
    return fit_pwl([](double x) { return Fn::value(x); }, grid, eval, pwl_fit_options{segments, false},
                   relative_error{Fn::relative_floor}, agg);
}

/// The float table of a fit of `Fn`, with Fn's asymptotes.
template <NliFunction Fn>
pwl_table make_nli_table(const pwl_fit_result& fit) {
    return make_pwl_table(fit, Fn::left, Fn::right);
}

/// Preset table of `Fn`: M = Fn::preset_segments, N = 257, fitted once on first use (thread-safe
/// function-local static; about 10-30 ms). Documented errors in docs/nli.md.
template <NliFunction Fn>
const pwl_table& preset_table() {
    static const pwl_table t = make_nli_table<Fn>(fit_nli<Fn>(Fn::preset_segments, 257));
    return t;
}

namespace detail {

inline void require_exp2_table(const pwl_table& t, const char* where) {
    require(t.lo() == 0.0f && t.hi() == 1.0f, where, "argument 'exp2_fraction' must be a table of 2^f on [0, 1]");
}
inline void require_rsqrt_table(const pwl_table& t, const char* where) {
    require(t.lo() == 1.0f && t.hi() == 4.0f, where, "argument 'rsqrt_mantissa' must be a table of m^-1/2 on [1, 4]");
}

inline float bits_to_float(std::uint32_t u) noexcept {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline std::uint32_t float_to_bits(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

} // namespace detail

/// exp(x) from a table g of 2^f on [0, 1]: t = x log2(e) (float), n = floor(t), y = g(t - n) 2^n.
/// Relative error = the table's relative error + < 6e-6 from rounding t (|t| < 128).
/// Special values: NaN -> NaN; t >= 128 (x > ~88.72) -> +Inf; t < -126 (x < ~-87.34) -> 0 (results that
/// would be subnormal are flushed to zero); -Inf -> 0. The table is not checked here (hot path): pass a
/// table of 2^f on [0, 1] (`exp_pwl` on spans checks it).
inline float exp_pwl(const pwl_table& exp2_fraction, float x) noexcept {
    if (std::isnan(x)) return x;
    const float t = x * 1.44269504088896341f;
    if (t >= 128.0f) return std::numeric_limits<float>::infinity();
    if (t < -126.0f) return 0.0f;
    const float n = std::floor(t);
    const float g = exp2_fraction.interpolate(t - n);
    return g * detail::bits_to_float(static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23);
}

/// Batch form of `exp_pwl` (same operations, same results as the scalar form).
template <class A>
xsimd::batch<float, A> exp_pwl(const pwl_table& exp2_fraction, const xsimd::batch<float, A>& x) noexcept {
    using bf = xsimd::batch<float, A>;
    using bi = xsimd::batch<std::int32_t, A>;
    const bf t = x * bf(1.44269504088896341f);
    // tc = t on [-126, 128); NaN lanes become 0 first so the fraction stays in [0, 1) (replaced below).
    const bf tc = xsimd::min(xsimd::max(xsimd::select(t != t, bf(0.0f), t), bf(-126.0f)), bf(0x1.fffffep6f));
    const bf n = xsimd::floor(tc);
    const bf g = exp2_fraction.interpolate(tc - n);
    const bi e = (xsimd::batch_cast<std::int32_t>(n) + bi(127)) << 23;
    bf y = g * detail::bitwise_cast<float>(e);
    y = xsimd::select(t >= bf(128.0f), bf(std::numeric_limits<float>::infinity()), y);
    y = xsimd::select(t < bf(-126.0f), bf(0.0f), y);
    return xsimd::select(x != x, x, y);
}

/// out[i] = exp_pwl(in[i]) with xsimd batches; sizes must match (`shape_error`), the table must span [0, 1]
/// (`invalid_argument`). In place allowed. O(n).
inline void exp_pwl(const pwl_table& exp2_fraction, std::span<const float> in, std::span<float> out) {
    detail::require_exp2_table(exp2_fraction, "exp_pwl");
    detail::map_batched(in, out, "exp_pwl", [&exp2_fraction](const auto& v) { return exp_pwl(exp2_fraction, v); });
}

/// 1/sqrt(x) from a table g of m^-1/2 on [1, 4]: x = m 2^e with m in [1, 4), e even, y = g(m) 2^(-e/2).
/// Subnormal x are scaled by 2^24 first. Relative error = the table's relative error.
/// Special values: NaN -> NaN; x < 0 -> NaN; ±0 -> ±Inf; +Inf -> 0.
inline float rsqrt_pwl(const pwl_table& rsqrt_mantissa, float x) noexcept {
    if (std::isnan(x) || x < 0.0f) return std::numeric_limits<float>::quiet_NaN();
    if (x == 0.0f) return std::copysign(std::numeric_limits<float>::infinity(), x);
    if (std::isinf(x)) return 0.0f;
    std::int32_t adj = 0;
    if (x < std::numeric_limits<float>::min()) {
        x *= 16777216.0f; // 2^24
        adj = 24;
    }
    const std::uint32_t u = detail::float_to_bits(x);
    const std::int32_t e = static_cast<std::int32_t>(u >> 23) - 127;
    const std::int32_t odd = e & 1;
    const float m = detail::bits_to_float((u & 0x7fffffu) | (static_cast<std::uint32_t>(127 + odd) << 23));
    const std::int32_t half = (e - odd - adj) / 2; // exact: e - odd - adj is even
    return rsqrt_mantissa.interpolate(m) * detail::bits_to_float(static_cast<std::uint32_t>(127 - half) << 23);
}

/// Batch form of `rsqrt_pwl` (same results as the scalar form).
template <class A>
xsimd::batch<float, A> rsqrt_pwl(const pwl_table& rsqrt_mantissa, const xsimd::batch<float, A>& x) noexcept {
    using bf = xsimd::batch<float, A>;
    using bi = xsimd::batch<std::int32_t, A>;
    const auto sub = x < bf(std::numeric_limits<float>::min());
    const bf xs = xsimd::select(sub, x * bf(16777216.0f), x);
    const bi adj = xsimd::batch_cast<std::int32_t>(xsimd::select(sub, bf(24.0f), bf(0.0f)));
    const bi u = detail::bitwise_cast<std::int32_t>(xs);
    const bi e = ((u >> 23) & bi(0xff)) - bi(127);
    const bi odd = e & bi(1);
    const bf m = detail::bitwise_cast<float>((u & bi(0x7fffff)) | ((bi(127) + odd) << 23));
    const bi half = (e - odd - adj) >> 1; // even, so the arithmetic shift is exact
    bf y = rsqrt_mantissa.interpolate(m) * detail::bitwise_cast<float>((bi(127) - half) << 23);
    const bf inf(std::numeric_limits<float>::infinity());
    y = xsimd::select(x == bf(0.0f), xsimd::bitwise_or(inf, xsimd::bitwise_and(x, bf(-0.0f))), y);
    y = xsimd::select(x == inf, bf(0.0f), y);
    return xsimd::select(x < bf(0.0f) || x != x, bf(std::numeric_limits<float>::quiet_NaN()), y);
}

/// out[i] = rsqrt_pwl(in[i]) with xsimd batches; sizes must match (`shape_error`), the table must span
/// [1, 4] (`invalid_argument`). In place allowed. O(n).
inline void rsqrt_pwl(const pwl_table& rsqrt_mantissa, std::span<const float> in, std::span<float> out) {
    detail::require_rsqrt_table(rsqrt_mantissa, "rsqrt_pwl");
    detail::map_batched(in, out, "rsqrt_pwl", [&rsqrt_mantissa](const auto& v) { return rsqrt_pwl(rsqrt_mantissa, v); });
}

/// SiLU built on the exp approximant: x / (1 + exp_pwl(-x)). Relative error <= the exp table's relative
/// error (plus float rounding) for x >= -87 (|SiLU(x)| >= FLT_MIN); below x = -88.7, exp(-x) overflows and the
/// result is -0 (true |SiLU| < 4e-37). NaN -> NaN; -Inf -> -0; +Inf -> +Inf.
inline float silu_exp_pwl(const pwl_table& exp2_fraction, float x) noexcept {
    if (x == -std::numeric_limits<float>::infinity()) return -0.0f;
    return x / (1.0f + exp_pwl(exp2_fraction, -x));
}

/// Batch form of `silu_exp_pwl`.
template <class A>
xsimd::batch<float, A> silu_exp_pwl(const pwl_table& exp2_fraction, const xsimd::batch<float, A>& x) noexcept {
    using bf = xsimd::batch<float, A>;
    const bf y = x / (bf(1.0f) + exp_pwl(exp2_fraction, -x));
    return xsimd::select(x == bf(-std::numeric_limits<float>::infinity()), bf(-0.0f), y);
}

/// out[i] = silu_exp_pwl(in[i]) with xsimd batches; errors as `exp_pwl` on spans. O(n).
inline void silu_exp_pwl(const pwl_table& exp2_fraction, std::span<const float> in, std::span<float> out) {
    detail::require_exp2_table(exp2_fraction, "silu_exp_pwl");
    detail::map_batched(in, out, "silu_exp_pwl", [&exp2_fraction](const auto& v) { return silu_exp_pwl(exp2_fraction, v); });
}

/// Row-wise softmax of `x` [rows x cols] with the exp approximant: y_ij = e(x_ij - m_i) / sum_k e(x_ik - m_i),
/// m_i = max_k x_ik (so every exp argument is <= 0). Relative error per entry <= about twice the exp table's.
/// Errors: empty `x` (`shape_error`), a table not on [0, 1] (`invalid_argument`). A row holding NaN or +Inf,
/// or only -Inf, comes out all NaN (documented, not thrown). O(rows cols).
inline matrix_f softmax_pwl(const pwl_table& exp2_fraction, const cref_matrix_f& x) {
    detail::require_exp2_table(exp2_fraction, "softmax_pwl");
    detail::require_nonempty(x, "softmax_pwl", "x");
    matrix_f y(x.rows(), x.cols());
    const auto cols = static_cast<std::size_t>(x.cols());
    std::vector<float> shifted(cols);
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
        float m = -std::numeric_limits<float>::infinity();
        bool bad = false;
        for (Eigen::Index c = 0; c < x.cols(); ++c) {
            const float v = x(r, c);
            bad = bad || std::isnan(v) || v == std::numeric_limits<float>::infinity();
            m = std::max(m, v);
        }
        if (bad || m == -std::numeric_limits<float>::infinity()) {
            y.row(r).setConstant(std::numeric_limits<float>::quiet_NaN());
            continue;
        }
        for (std::size_t c = 0; c < cols; ++c) shifted[c] = x(r, static_cast<Eigen::Index>(c)) - m;
        float* out = y.data() + r * x.cols();
        exp_pwl(exp2_fraction, shifted, std::span<float>(out, cols));
        double sum = 0;
        for (std::size_t c = 0; c < cols; ++c) sum += out[c];
        const float inv = static_cast<float>(1.0 / sum); // sum >= g(0) = 1 > 0: the max entry gives 2^0
        for (std::size_t c = 0; c < cols; ++c) out[c] *= inv;
    }
    return y;
}

LOWBIT_END_NAMESPACE
