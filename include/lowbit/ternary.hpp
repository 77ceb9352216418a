#pragma once
/// \file ternary.hpp
/// Symmetric ternary quantization {−α, 0, +α} with one scale α per row (output channel), or per row
/// and group of G input columns (`per_group{G, tail}` of granularity.hpp).
///
/// Three threshold/scale rules, as policy tags:
/// - `absmean`            — BitNet b1.58: s = mean|w|, t = clamp(round(w/s), −1, 1), α = s.
/// - `twn`                — Ternary Weight Networks: Δ = ratio·mean|w| (ratio 0.7), t = sign(w)[|w| > Δ],
///                          α = mean of |w| over the kept entries (the least-squares α for that t).
/// - `optimal_threshold`  — the exact minimiser of ‖w − α t‖² over t ∈ {−1,0,1}ⁿ and α ≥ 0:
///                          keep the k largest |w| where k maximises S_k²/k (S_k = sum of the k largest
///                          |w|), α = S_k/k. Sort-based, O(n log n) per row.
///
/// Layout: `codes` is row-major `[rows x cols]` int8 in {−1, 0, +1}; `scale` is `[rows x groups]`
/// (`[rows x 1]` per row, so `scale(i)` is row i's scale), column j uses `scale(i, j / group_size)`.
/// Under `tail_policy::zero_pad` the padded zeros take part in the rule (e.g. in mean|w|).
///
/// `ternary_quantizer<Rule>` models `GroupQuantizer`: per-row scale and threshold of a block, then
/// t = sign(x)·[|x| > threshold] (threshold α/2 for absmean and optimal_threshold — the nearest level
/// —, Δ for twn).

#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/error.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Rule tag: BitNet b1.58 absmean ternarisation (α = mean|w| of the row).
struct absmean {};

/// Rule tag: TWN threshold Δ = ratio·mean|w|, α = mean|w| over |w| > Δ. `ratio` must lie in [0, 1).
struct twn {
    float ratio = 0.7f;
};

/// Rule tag: the exactly optimal threshold and scale for each row (minimum ‖w − α t‖²).
struct optimal_threshold {};

/// A symmetric ternary tensor: codes in {−1, 0, +1} and one non-negative scale per row and group.
struct ternary_tensor {
    matrix_i8 codes;             ///< (rows, cols) codes in {−1, 0, +1}
    matrix_f scale;              ///< (rows, groups) α ≥ 0
    Eigen::Index group_size = 1; ///< columns per scale column (cols when per row)

    /// Returns the float matrix α_{i, j / group_size} · t_ij. O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f out(codes.rows(), codes.cols());
        for (Eigen::Index i = 0; i < codes.rows(); ++i)
            for (Eigen::Index j = 0; j < codes.cols(); ++j)
                out(i, j) = static_cast<float>(codes(i, j)) * scale(i, j / group_size);
        return out;
    }
};

namespace detail {

template <class Rule>
inline void ternary_row(const Rule&, const float*, std::int8_t*, Eigen::Index, float&) {
    static_assert(dependent_false<Rule>,
                  "lowbit: no symmetric ternary rule for this tag (use absmean, twn or optimal_threshold)");
}

inline double mean_abs(const float* w, Eigen::Index n) {
    double s = 0.0;
    for (Eigen::Index j = 0; j < n; ++j) s += std::fabs(static_cast<double>(w[j]));
    return s / static_cast<double>(n);
}

inline void ternary_row(const absmean&, const float* w, std::int8_t* t, Eigen::Index n, float& alpha) {
    const double s = mean_abs(w, n);
    alpha = static_cast<float>(s);
    for (Eigen::Index j = 0; j < n; ++j) {
        if (s == 0.0) {
            t[j] = 0;
            continue;
        }
        // round half away from zero (torch.round rounds half to even; |w/s| = 0.5 exactly is measure-zero
        // in practice, and we document the choice): |w| >= s/2 maps to ±1.
        const double r = std::nearbyint(static_cast<double>(w[j]) / s);
        t[j] = static_cast<std::int8_t>(std::clamp(r, -1.0, 1.0));
    }
}

inline void ternary_row(const twn& rule, const float* w, std::int8_t* t, Eigen::Index n, float& alpha) {
    const double delta = static_cast<double>(rule.ratio) * mean_abs(w, n);
    double sum = 0.0;
    Eigen::Index kept = 0;
    for (Eigen::Index j = 0; j < n; ++j) {
        const double a = std::fabs(static_cast<double>(w[j]));
        if (a > delta) {
            t[j] = w[j] > 0 ? 1 : -1;
            sum += a;
            ++kept;
        } else {
            t[j] = 0;
        }
    }
    alpha = kept ? static_cast<float>(sum / static_cast<double>(kept)) : 0.0f;
}

inline void ternary_row(const optimal_threshold&, const float* w, std::int8_t* t, Eigen::Index n, float& alpha) {
    std::vector<Eigen::Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), Eigen::Index{0});
    // Descending |w|, ties by index: deterministic.
    std::sort(order.begin(), order.end(), [w](Eigen::Index a, Eigen::Index b) {
        const float fa = std::fabs(w[a]), fb = std::fabs(w[b]);
        return fa != fb ? fa > fb : a < b;
    });
    double prefix = 0.0, best = 0.0;
    Eigen::Index best_k = 0;
    double best_sum = 0.0;
    for (Eigen::Index k = 1; k <= n; ++k) {
        prefix += std::fabs(static_cast<double>(w[order[static_cast<std::size_t>(k - 1)]]));
        const double gain = prefix * prefix / static_cast<double>(k); // error reduction S_k^2 / k
        if (gain > best) {
            best = gain;
            best_k = k;
            best_sum = prefix;
        }
    }
    std::fill(t, t + n, std::int8_t{0});
    for (Eigen::Index k = 0; k < best_k; ++k) {
        const Eigen::Index j = order[static_cast<std::size_t>(k)];
        t[j] = w[j] > 0 ? 1 : -1;
    }
    alpha = best_k ? static_cast<float>(best_sum / static_cast<double>(best_k)) : 0.0f;
}

} // namespace detail

/// Quantizes every row of `w` (or every row and group of G columns) to {−α, 0, +α} with the rule
/// `Rule` (`absmean`, `twn`, `optimal_threshold`).
///
/// \param w     weights `[rows x cols]`, finite, non-empty.
/// \param rule  the rule tag (carries parameters where the rule has any).
/// \param gran  `per_row` (default) or `per_group{G, tail}`.
/// \throws shape_error if `w` is empty or G does not divide cols under tail_policy::error;
///         numeric_error if it holds NaN/Inf; invalid_argument for a TWN ratio outside [0, 1) or G < 1.
/// Complexity: O(rows·cols) for absmean/twn, O(rows·cols·log G) for optimal_threshold.
template <class Rule, class G = per_row>
[[nodiscard]] ternary_tensor quantize_ternary(const cref_matrix_f& w, const Rule& rule = Rule{}, const G& gran = G{}) {
    static_assert(detail::row_wise_granularity<G>, "lowbit: ternary supports per_row and per_group granularity");
    detail::require_nonempty(w, "quantize_ternary", "w");
    detail::require_finite(w, "quantize_ternary", "w");
    if constexpr (std::is_same_v<Rule, twn>)
        detail::require(rule.ratio >= 0.0f && rule.ratio < 1.0f, "quantize_ternary",
                        "twn ratio must lie in [0, 1)");
    const auto groups = column_groups(w.cols(), gran, "quantize_ternary");
    const auto ng = static_cast<Eigen::Index>(groups.size());
    ternary_tensor out{matrix_i8(w.rows(), w.cols()), matrix_f(w.rows(), ng), group_width(w.cols(), gran)};
    std::vector<std::int8_t> t;
    for (Eigen::Index gi = 0; gi < ng; ++gi) {
        const column_group& cg = groups[static_cast<std::size_t>(gi)];
        const matrix_f block = detail::padded_block(w, cg);
        t.resize(static_cast<std::size_t>(cg.padded_width));
        for (Eigen::Index i = 0; i < w.rows(); ++i) {
            detail::ternary_row(rule, block.row(i).data(), t.data(), cg.padded_width, out.scale(i, gi));
            for (Eigen::Index j = 0; j < cg.width; ++j) out.codes(i, cg.begin + j) = t[static_cast<std::size_t>(j)];
        }
    }
    return out;
}

/// `GroupQuantizer` model of symmetric ternary with `Rule`: `fit` applies the rule to each row of a
/// `[rows x g]` block; `round_column` gives sign(x)·α·[|x| > threshold].
template <class Rule>
struct ternary_quantizer {
    Rule rule{}; ///< the rule and its settings

    /// Per-row parameters of one column group.
    struct params {
        vector_f scale;     ///< (rows) α
        vector_f threshold; ///< (rows) |x| above it maps to ±α
    };

    /// Fits every row of `block` (non-empty, finite).
    [[nodiscard]] params fit(const cref_matrix_f& block) const {
        const ternary_tensor t = quantize_ternary(block, rule);
        params p{t.scale.col(0), vector_f(block.rows())};
        for (Eigen::Index i = 0; i < block.rows(); ++i) {
            if constexpr (std::is_same_v<Rule, twn>)
                p.threshold(i) = static_cast<float>(static_cast<double>(rule.ratio) *
                                                    detail::mean_abs(block.row(i).data(), block.cols()));
            else
                p.threshold(i) = 0.5f * p.scale(i);
        }
        return p;
    }

    /// Rounds one column with each row's scale and threshold.
    void round_column(const params& p, const cref_vector_f& col, Eigen::Ref<vector_f> out) const {
        for (Eigen::Index i = 0; i < col.size(); ++i)
            out(i) = std::fabs(col(i)) > p.threshold(i) ? (col(i) > 0 ? p.scale(i) : -p.scale(i)) : 0.0f;
    }
};

static_assert(GroupQuantizer<ternary_quantizer<absmean>>);

LOWBIT_END_NAMESPACE
