#pragma once
/// \file pwl.hpp
/// Piecewise-linear (PWL) tables: the evaluation side of NLI (non-uniform linear interpolation).
///
/// A `pwl_table` approximates f on a domain [lo, hi] by M chords between cutpoints
/// c_0 = lo < c_1 < ... < c_M = hi (values y_k, normally y_k = f(c_k)), and outside the domain by two
/// asymptote lines. Each segment is stored as slope s_k and intercept t_k, so evaluation is one
/// segment lookup and one multiply-add: g(x) = s_k x + t_k for c_k <= x < c_{k+1}.
///
/// Segment lookup:
/// - cell-indexed: when every cutpoint lies on a uniform grid of K cells over [lo, hi] (the case of
///   `fit_pwl` on a uniform candidate grid; K is reduced to the coarsest such grid), cell =
///   trunc((x - lo) * K / (hi - lo)) and per-cell copies of (s_k, t_k) give the segment with one gather,
///   or with one in-register permute when K <= 16 (AVX-512) / 8 (AVX2) (arch/register_lut.hpp);
/// - otherwise a branchless binary search over the interior cutpoints (ceil(log2 M) gathers).
/// Scalar and xsimd evaluation use the same float operations and return identical bits when the
/// compiler does not contract the multiply-add (tests build with -ffp-contract=off).
///
/// Special values: NaN propagates (g(NaN) = NaN); x < lo uses the left asymptote, x > hi the right one;
/// an asymptote with slope 0 returns its intercept exactly, so ±Inf inputs give finite limits
/// (SiLU(-Inf) = 0, tanh(±Inf) = ±1) and slope != 0 gives ±Inf.
///
/// `pwl_table_q16` is the fixed-point (int16 in, int16 out) form for hardware-style evaluation.

#include <lowbit/arch/register_lut.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/xsimd_compat.hpp>
#include <lowbit/error.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

namespace detail {

/// Float gather p[idx[l]] for each lane. xsimd 8.1's `batch<float>::gather` never reaches its AVX2/AVX-512
/// kernels (it passes the element type as an extra template argument and falls back to lane-by-lane
/// inserts, ~4x slower), so on 8.x the kernels are called directly (on 9+ `batch::gather` reaches them); other
/// architectures go through a stack buffer. Precondition: every index is valid for `p`.
template <class A>
inline xsimd::batch<float, A> gather_f32(const float* p, const xsimd::batch<std::int32_t, A>& idx) noexcept {
#if XSIMD_VERSION_MAJOR == 8
    if constexpr (std::is_base_of_v<xsimd::avx512f, A> || std::is_base_of_v<xsimd::avx2, A>) {
        return xsimd::kernel::gather<A>(p, idx, A{});
    } else
#else
    if constexpr (std::is_base_of_v<xsimd::avx512f, A> || std::is_base_of_v<xsimd::avx2, A>) {
        return xsimd::batch<float, A>::gather(p, idx);
    } else
#endif
    {
        using bf = xsimd::batch<float, A>;
        alignas(64) std::int32_t i[bf::size];
        alignas(64) float v[bf::size];
        idx.store_aligned(i);
        for (std::size_t l = 0; l < bf::size; ++l) v[l] = p[i[l]];
        return bf::load_aligned(v);
    }
}

/// out[i] = op(in[i]) over spans: full xsimd batches (default architecture) through `op(batch)`, the tail
/// through `op(float)`. Checks equal sizes (`shape_error`, naming `where`). In place allowed.
template <class Op>
inline void map_batched(std::span<const float> in, std::span<float> out, const char* where, Op op) {
    require<shape_error>(in.size() == out.size(), where, "'in' and 'out' must have the same size");
    using bf = xsimd::batch<float>;
    const std::size_t n = std::min(in.size(), out.size()); // equal; min() lets the optimiser see the bound
    const float* src = in.data();
    float* dst = out.data();
    const std::size_t full = n - n % bf::size;
    for (std::size_t i = 0; i < full; i += bf::size) op(bf::load_unaligned(src + i)).store_unaligned(dst + i);
    for (std::size_t i = full; i < n; ++i) dst[i] = op(src[i]);
}

} // namespace detail

/// A line y = slope * x + intercept (used for the out-of-domain asymptotes of a table).
struct pwl_line {
    float slope = 0.0f;     ///< dy/dx
    float intercept = 0.0f; ///< y at x = 0
};

/// A piecewise-linear approximant with M >= 1 segments on [lo, hi] plus left/right asymptotes.
///
/// Invariants (checked by the constructor, `invalid_argument`/`numeric_error` otherwise):
/// cutpoints strictly increasing and finite, values finite, cutpoints.size() == values.size() >= 2.
/// Memory: O(M + K) floats (K = number of lookup cells, 0 without a cell index).
class pwl_table {
public:
    /// Builds the table from M+1 cutpoints and values, and the two asymptotes.
    /// `cells` = K > 0 asks for the cell index on a uniform grid of K cells over [lo, hi]; every cutpoint
    /// must then lie on that grid (|c - grid point| <= 1e-3 cell widths), else `invalid_argument`.
    /// `cells` = 0 uses binary search. Slopes and intercepts are computed in double, stored as float.
    pwl_table(std::vector<float> cutpoints, std::vector<float> values, pwl_line left, pwl_line right,
              std::size_t cells = 0)
        : cut_(std::move(cutpoints)), val_(std::move(values)), left_(left), right_(right) {
        constexpr const char* where = "pwl_table";
        detail::require(cut_.size() >= 2, where, "argument 'cutpoints' needs at least 2 entries (M >= 1)");
        detail::require<shape_error>(val_.size() == cut_.size(), where,
                                     "'values' must have as many entries as 'cutpoints'");
        for (std::size_t k = 0; k < cut_.size(); ++k) {
            detail::require<numeric_error>(std::isfinite(cut_[k]) && std::isfinite(val_[k]), where,
                                           "cutpoints and values must be finite");
            if (k > 0)
                detail::require(cut_[k] > cut_[k - 1], where, "cutpoints must be strictly increasing");
        }
        detail::require<numeric_error>(std::isfinite(left.slope) && std::isfinite(left.intercept) &&
                                           std::isfinite(right.slope) && std::isfinite(right.intercept),
                                       where, "asymptotes must be finite");
        const std::size_t m = cut_.size() - 1;
        slope_.resize(m);
        icpt_.resize(m);
        for (std::size_t k = 0; k < m; ++k) {
            const double x0 = cut_[k], x1 = cut_[k + 1], y0 = val_[k], y1 = val_[k + 1];
            const double s = (y1 - y0) / (x1 - x0);
            slope_[k] = static_cast<float>(s);
            icpt_[k] = static_cast<float>(y0 - s * x0);
        }
        // Binary-search boundaries: interior cutpoints c_1..c_{M-1}, padded with +Inf to a power of two.
        std::size_t p = 1;
        while (p < m) p *= 2;
        bsearch_steps_ = p;
        bound_.assign(p + 1, std::numeric_limits<float>::infinity());
        for (std::size_t k = 1; k < m; ++k) bound_[k] = cut_[k];
        if (cells > 0) build_cells(cells);
    }

    /// Number of segments M.
    std::size_t segments() const noexcept { return slope_.size(); }
    /// Domain start c_0.
    float lo() const noexcept { return cut_.front(); }
    /// Domain end c_M.
    float hi() const noexcept { return cut_.back(); }
    /// The M+1 cutpoints.
    std::span<const float> cutpoints() const noexcept { return cut_; }
    /// The M+1 values at the cutpoints.
    std::span<const float> values() const noexcept { return val_; }
    /// Per-segment slopes s_k (M entries).
    std::span<const float> slopes() const noexcept { return slope_; }
    /// Per-segment intercepts t_k (M entries).
    std::span<const float> intercepts() const noexcept { return icpt_; }
    /// Asymptote used for x < lo.
    pwl_line left() const noexcept { return left_; }
    /// Asymptote used for x > hi.
    pwl_line right() const noexcept { return right_; }
    /// Number of lookup cells K (0: binary search): the coarsest uniform grid over [lo, hi] that holds
    /// every cutpoint, a divisor of the `cells` passed to the constructor.
    std::size_t cells() const noexcept { return cell_seg_.size(); }

    /// Segment index k in [0, M) used for an in-domain, non-NaN x (cell index or binary search).
    std::size_t segment_of(float x) const noexcept {
        if (!cell_slope_.empty()) return cell_seg_[cell_of(x)];
        std::size_t idx = 0;
        for (std::size_t step = bsearch_steps_ / 2; step >= 1; step /= 2)
            if (x >= bound_[idx + step]) idx += step;
        return idx;
    }

    /// Scalar evaluation g(x). O(1) with cells, O(log M) otherwise.
    float operator()(float x) const noexcept {
        if (std::isnan(x)) return x;
        if (x < lo()) return line(left_, x);
        if (x > hi()) return line(right_, x);
        return interpolate(x);
    }

    /// Chord part only, for callers that guarantee lo <= x <= hi and x not NaN (range-reduced functions):
    /// s_k x + t_k without the asymptote and NaN handling. Scalar form; same bits as the batch form.
    float interpolate(float x) const noexcept {
        if (!cell_slope_.empty()) {
            const std::size_t c = cell_of(x);
            return cell_slope_[c] * x + cell_icpt_[c];
        }
        const std::size_t k = segment_of(x);
        return slope_[k] * x + icpt_[k];
    }

    /// Batch form of `interpolate` (same precondition; out-of-domain or NaN lanes give unspecified values
    /// but never read out of bounds).
    template <class A>
    xsimd::batch<float, A> interpolate(const xsimd::batch<float, A>& x) const noexcept {
        using bf = xsimd::batch<float, A>;
        using bi = xsimd::batch<std::int32_t, A>;
        bf s, t;
        if (!cell_slope_.empty()) {
            bf u = (x - bf(lo())) * bf(cell_scale_);
            u = xsimd::min(xsimd::max(u, bf(0.0f)), bf(cell_max_));
            const bi c = xsimd::batch_cast<std::int32_t>(u);
            if constexpr (detail::register_lut_capacity<A> > 0) {
                if (cell_seg_.size() <= detail::register_lut_capacity<A>) {
                    // few cells: one in-register permute per array instead of a gather
                    return detail::register_lut_f32(cell_slope_.data(), c) * x + detail::register_lut_f32(cell_icpt_.data(), c);
                }
            }
            s = detail::gather_f32(cell_slope_.data(), c);
            t = detail::gather_f32(cell_icpt_.data(), c);
        } else {
            // Indices are kept as exact small floats (xsimd 8.1 has no batch_bool_cast).
            bf idx(0.0f);
            for (std::size_t step = bsearch_steps_ / 2; step >= 1; step /= 2) {
                const bf probe = idx + bf(static_cast<float>(step));
                const bf b = detail::gather_f32(bound_.data(), xsimd::batch_cast<std::int32_t>(probe));
                idx = xsimd::select(x >= b, probe, idx);
            }
            // x = +Inf (or NaN) would walk past the last segment: keep every read in bounds
            const bi k = xsimd::batch_cast<std::int32_t>(xsimd::min(idx, bf(static_cast<float>(segments() - 1))));
            s = detail::gather_f32(slope_.data(), k);
            t = detail::gather_f32(icpt_.data(), k);
        }
        return s * x + t;
    }

    /// xsimd evaluation of one batch (any xsimd architecture `A`); same results as the scalar path.
    template <class A>
    xsimd::batch<float, A> operator()(const xsimd::batch<float, A>& x) const noexcept {
        using bf = xsimd::batch<float, A>;
        const bf lo_b(lo()), hi_b(hi());
        const auto nan = x != x;
        const bf xs = xsimd::select(nan, lo_b, x);
        bf y = interpolate(xsimd::min(xsimd::max(xs, lo_b), hi_b));
        y = xsimd::select(xs < lo_b, line(left_, xs), y);
        y = xsimd::select(xs > hi_b, line(right_, xs), y);
        return xsimd::select(nan, x, y);
    }

    /// Evaluates g elementwise: out[i] = g(in[i]) with xsimd batches and a scalar tail.
    /// `in` and `out` may alias exactly (in-place); sizes must match (`shape_error`). O(n).
    void evaluate(std::span<const float> in, std::span<float> out) const {
        detail::map_batched(in, out, "pwl_table::evaluate", [this](const auto& v) { return (*this)(v); });
    }

private:
    static float line(pwl_line l, float x) noexcept { return l.slope == 0.0f ? l.intercept : l.slope * x + l.intercept; }
    template <class A>
    static xsimd::batch<float, A> line(pwl_line l, const xsimd::batch<float, A>& x) noexcept {
        using bf = xsimd::batch<float, A>;
        return l.slope == 0.0f ? bf(l.intercept) : bf(l.slope) * x + bf(l.intercept);
    }
    std::size_t cell_of(float x) const noexcept {
        float u = (x - lo()) * cell_scale_;
        u = std::min(std::max(u, 0.0f), cell_max_);
        return static_cast<std::size_t>(static_cast<std::int32_t>(u));
    }
    void build_cells(std::size_t k) {
        detail::require(k >= segments() && k <= (std::size_t(1) << 24), "pwl_table",
                        "argument 'cells' must be in [M, 2^24]");
        const double lo_d = lo(), width = (static_cast<double>(hi()) - lo_d) / static_cast<double>(k);
        std::vector<std::size_t> on_grid(cut_.size());
        for (std::size_t j = 0; j < cut_.size(); ++j) {
            const double pos = (cut_[j] - lo_d) / width;
            const double r = std::round(pos);
            detail::require(std::abs(pos - r) <= 1e-3, "pwl_table",
                            "cutpoint " + std::to_string(j) + " is not on the grid of 'cells' uniform cells");
            on_grid[j] = static_cast<std::size_t>(r);
        }
        // Coarsest uniform grid holding every cutpoint (e.g. 16 cells for 16 equal segments): fewer cells,
        // and tables of <= 16 cells are looked up in a register (arch/register_lut.hpp).
        std::size_t g = k;
        for (std::size_t j : on_grid) g = std::gcd(g, j);
        k /= g;
        for (std::size_t& j : on_grid) j /= g;
        cell_scale_ = static_cast<float>(static_cast<double>(k) / (static_cast<double>(hi()) - lo_d));
        cell_max_ = static_cast<float>(k - 1);
        cell_seg_.resize(k);
        // padded to 16 entries for the in-register lookup (padding repeats the last cell, never selected)
        cell_slope_.resize(std::max<std::size_t>(k, 16));
        cell_icpt_.resize(std::max<std::size_t>(k, 16));
        std::size_t seg = 0;
        for (std::size_t c = 0; c < k; ++c) {
            while (seg + 1 < segments() && on_grid[seg + 1] <= c) ++seg;
            cell_seg_[c] = seg;
            cell_slope_[c] = slope_[seg];
            cell_icpt_[c] = icpt_[seg];
        }
        for (std::size_t c = k; c < cell_slope_.size(); ++c) {
            cell_slope_[c] = slope_.back();
            cell_icpt_[c] = icpt_.back();
        }
    }

    std::vector<float> cut_, val_, slope_, icpt_;
    pwl_line left_, right_;
    std::vector<float> bound_;
    std::size_t bsearch_steps_ = 1;
    float cell_scale_ = 0.0f, cell_max_ = 0.0f;
    std::vector<std::size_t> cell_seg_;
    std::vector<float> cell_slope_, cell_icpt_;
};

/// Fixed-point form of a `pwl_table`: int16 input codes q (x = q * input_scale) to int16 output codes
/// (y = code * output_scale), as a hardware unit evaluates it.
///
/// The int16 line is split into M+2 regions (left asymptote, the M segments, right asymptote); region r
/// starts at code C_r = ceil(c_r / input_scale) (clamped to int16) and stores Y_r = round(g(C_r s_in) / s_out
/// * 2^16) and the slope S_r = round(s_r s_in / s_out * 2^16). Evaluation: r = last region with C_r <= q
/// (comparator tree / binary search over M+2 entries), y = sat16((Y_r + S_r (q - C_r) + 2^15) >> 16).
/// Error bound against round(g(q s_in) / s_out): at most 1 LSB (slope rounding contributes at most
/// 65535 * 2^-17 < 0.5 LSB, the final rounding 0.5 LSB), on top of the float table's own error.
class pwl_table_q16 {
public:
    /// Number of fractional bits of Y_r and S_r.
    static constexpr int frac_bits = 16;

    /// Quantizes `table` for the given scales (finite, > 0, else `invalid_argument`); throws
    /// `numeric_error` if a slope does not fit (|S_r| >= 2^46).
    pwl_table_q16(const pwl_table& table, float input_scale, float output_scale)
        : in_scale_(input_scale), out_scale_(output_scale) {
        constexpr const char* where = "pwl_table_q16";
        detail::require(std::isfinite(input_scale) && input_scale > 0, where,
                        "argument 'input_scale' must be finite and > 0");
        detail::require(std::isfinite(output_scale) && output_scale > 0, where,
                        "argument 'output_scale' must be finite and > 0");
        const double si = input_scale, so = output_scale, one = std::ldexp(1.0, frac_bits);
        const auto start_code = [&](double x) {
            const double c = std::ceil(x / si);
            return static_cast<std::int32_t>(std::clamp(c, -32768.0, 32768.0));
        };
        const auto add = [&](std::int32_t c, double slope, double icpt) {
            const double s = std::round(slope * si / so * one);
            detail::require<numeric_error>(std::abs(s) < std::ldexp(1.0, 46), where,
                                           "a slope does not fit the fixed-point format");
            const double y = (slope * (c * si) + icpt) / so;
            start_.push_back(c);
            slope_.push_back(static_cast<std::int64_t>(s));
            base_.push_back(static_cast<std::int64_t>(std::round(std::clamp(y, -1e6, 1e6) * one)));
        };
        const auto l = table.left(), r = table.right();
        add(-32768, l.slope, l.intercept);
        for (std::size_t k = 0; k < table.segments(); ++k)
            add(start_code(table.cutpoints()[k]), table.slopes()[k], table.intercepts()[k]);
        // Right asymptote starts at the first code strictly above hi.
        const double hi_code = std::floor(static_cast<double>(table.hi()) / si) + 1.0;
        add(static_cast<std::int32_t>(std::clamp(hi_code, -32768.0, 32768.0)), r.slope, r.intercept);
    }

    /// Input scale s_in (x = q * s_in).
    float input_scale() const noexcept { return in_scale_; }
    /// Output scale s_out (y = code * s_out).
    float output_scale() const noexcept { return out_scale_; }
    /// Number of regions (M + 2).
    std::size_t regions() const noexcept { return start_.size(); }

    /// Evaluates one int16 input code; saturates to [-32768, 32767]. Integer arithmetic only.
    std::int16_t operator()(std::int16_t q) const noexcept {
        // Last region whose start is <= q (region 0 starts at -32768, so r >= 0).
        std::size_t r = static_cast<std::size_t>(std::upper_bound(start_.begin(), start_.end(), std::int32_t(q)) -
                                                  start_.begin()) - 1;
        const std::int64_t acc = base_[r] + slope_[r] * (std::int64_t(q) - start_[r]) + (std::int64_t(1) << (frac_bits - 1));
        const std::int64_t y = acc >> frac_bits; // arithmetic shift = floor (C++20)
        return static_cast<std::int16_t>(std::clamp<std::int64_t>(y, -32768, 32767));
    }

    /// Elementwise evaluation; sizes must match (`shape_error`). O(n log M).
    void evaluate(std::span<const std::int16_t> in, std::span<std::int16_t> out) const {
        detail::require<shape_error>(in.size() == out.size(), "pwl_table_q16::evaluate",
                                     "'in' and 'out' must have the same size");
        for (std::size_t i = 0; i < in.size(); ++i) out[i] = (*this)(in[i]);
    }

private:
    float in_scale_, out_scale_;
    std::vector<std::int32_t> start_;
    std::vector<std::int64_t> slope_, base_;
};

LOWBIT_END_NAMESPACE
