#pragma once
/// \file rtn.hpp
/// Uniform integer quantization by round-to-nearest (RTN), k = 2..8 bits, for weights (any
/// granularity of granularity.hpp) and for activations (dynamic per token, sources.md §1.3).
///
/// Grid. Codes are unsigned integers q ∈ [0, 2^k − 1]; the value of a code is s·(q − z) with a
/// scale s > 0 and an integer-valued zero point z, one pair per parameter group:
/// - asymmetric (default): from a range [lo, hi] (lo < hi), s = (hi − lo)/(2^k − 1), z = round(−lo/s);
/// - symmetric:            from amax = max(|lo|, |hi|), s = amax/(2^{k−1} − 1), z = 2^{k−1} − 1
///                         (the grid −(2^{k−1} − 1)·s … 2^{k−1}·s of sources.md §1.3; the range
///                         maps to codes 0 … 2^k − 2).
/// Quantization: q(x) = clamp(round(x/s) + z, 0, 2^k − 1), round half to even. Inside the fitted
/// range |x − s·(q(x) − z)| ≤ s/2.
/// Degenerate ranges (a constant group) are represented exactly: value c ≠ 0 gets s = |c| and
/// z = −sign(c) (asymmetric) or s = |c|/(2^{k−1} − 1) (symmetric); an all-zero group gets s = 1, z
/// as above, and dequantizes to zeros.
///
/// Weights: the range of a group is [min, max] of its elements (asymmetric) or its max |w|
/// (symmetric). Optional MSE clipping search: candidates p ∈ linspace(1, clip_min, clip_grid) shrink
/// the range to [p·lo, p·hi]; the candidate with the smallest (importance-weighted) squared error
/// Σ_j imp_j (w_j − ŵ_j)² is kept (first one on ties, so p = 1 wins ties and the search is never
/// worse than no clipping).
///
/// Activations (`quantize_per_token`, sources.md §1.3, TWLA's code): per token, lo = c·min(x),
/// hi = c·max(x) with a clip ratio c ∈ (0, 1]; s is clamped to [1e-5, 1e4] and z to [−1e4, 1e4].

#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

LOWBIT_BEGIN_NAMESPACE

/// Row-major uint8 matrix (unsigned integer codes).
using matrix_u8 = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Symmetric (fixed zero point 2^{k−1} − 1) or asymmetric (fitted zero point) integer grid.
enum class int_mode { symmetric, asymmetric };

/// Scale and zero point of one integer grid: value(q) = scale·(q − zero).
struct int_grid {
    float scale = 1.0f; ///< s > 0
    float zero = 0.0f;  ///< z, integer-valued
};

namespace detail {

inline void require_bits(int bits, const char* where) {
    require(bits >= 2 && bits <= 8, where, "bits must lie in 2..8, got " + std::to_string(bits));
}

/// The grid for range [lo, hi] (lo ≤ hi) with `bits` bits (see the file comment).
inline int_grid int_grid_from_range(double lo, double hi, int bits, int_mode mode) {
    const double maxq = static_cast<double>((1 << bits) - 1);
    const double half = static_cast<double>((1 << (bits - 1)) - 1);
    if (mode == int_mode::symmetric) {
        const double amax = std::max(std::fabs(lo), std::fabs(hi));
        return {amax > 0 ? static_cast<float>(amax / half) : 1.0f, static_cast<float>(half)};
    }
    if (!(hi > lo)) {
        const double c = hi;
        if (c == 0.0) return {1.0f, 0.0f};
        return {static_cast<float>(std::fabs(c)), c > 0 ? -1.0f : 1.0f};
    }
    const double s = static_cast<double>(static_cast<float>((hi - lo) / maxq));
    return {static_cast<float>(s), static_cast<float>(std::nearbyint(-lo / s))};
}

/// The code of x on grid g: clamp(round(x/s) + z, 0, 2^bits − 1), round half to even.
inline std::uint8_t int_code(float x, const int_grid& g, int bits) {
    const double maxq = static_cast<double>((1 << bits) - 1);
    const double q = std::nearbyint(static_cast<double>(x) / static_cast<double>(g.scale)) + g.zero;
    return static_cast<std::uint8_t>(std::clamp(q, 0.0, maxq));
}

/// The value of code q on grid g.
inline float int_value(std::uint8_t q, const int_grid& g) {
    return g.scale * (static_cast<float>(q) - g.zero);
}

} // namespace detail

/// RTN integer quantizer for weights: configuration and `GroupQuantizer` model.
///
/// `fit(block)` gives one grid per row of a `[rows x g]` block; `round_column` rounds a column
/// with them. `quantize_rtn` applies it at any granularity.
struct rtn_quantizer {
    int bits = 4;                          ///< k ∈ 2..8
    int_mode mode = int_mode::asymmetric;  ///< grid kind
    int clip_grid = 0;                     ///< MSE clipping candidates (0: no search, 1: p = 1 only)
    float clip_min = 0.4f;                 ///< smallest shrink factor of the search, in (0, 1]

    /// Per-row grids of one column group.
    struct params {
        vector_f scale; ///< (rows) s
        vector_f zero;  ///< (rows) z
    };

    /// Checks the configuration; throws `invalid_argument` naming the field.
    void validate(const char* where) const {
        detail::require_bits(bits, where);
        detail::require(clip_grid >= 0, where, "clip_grid must be >= 0");
        detail::require(clip_min > 0.0f && clip_min <= 1.0f, where, "clip_min must lie in (0, 1]");
    }

    /// One grid for all elements of `v` (every row, every column), with the clipping search if
    /// enabled. `importance` (length v.cols(), non-negative) or nullptr weights the search error by
    /// column. `pad` extra zero columns take part in range and error (zero-padded tails).
    /// O(size · max(1, clip_grid)).
    [[nodiscard]] int_grid fit_grid(const cref_matrix_f& v, const float* importance = nullptr,
                                    Eigen::Index pad = 0) const {
        double lo = pad > 0 ? 0.0 : std::numeric_limits<double>::infinity();
        double hi = pad > 0 ? 0.0 : -std::numeric_limits<double>::infinity();
        for (Eigen::Index i = 0; i < v.rows(); ++i)
            for (Eigen::Index j = 0; j < v.cols(); ++j) {
                lo = std::min(lo, static_cast<double>(v(i, j)));
                hi = std::max(hi, static_cast<double>(v(i, j)));
            }
        if (v.size() == 0) lo = hi = 0.0;
        int_grid best = detail::int_grid_from_range(lo, hi, bits, mode);
        if (clip_grid <= 1) return best;
        double best_err = std::numeric_limits<double>::infinity();
        for (int k = 0; k < clip_grid; ++k) {
            const double p = 1.0 - (1.0 - static_cast<double>(clip_min)) * k / (clip_grid - 1);
            const int_grid g = detail::int_grid_from_range(p * lo, p * hi, bits, mode);
            double err = 0.0;
            for (Eigen::Index i = 0; i < v.rows(); ++i)
                for (Eigen::Index j = 0; j < v.cols(); ++j) {
                    const double d = static_cast<double>(v(i, j)) -
                                     static_cast<double>(detail::int_value(detail::int_code(v(i, j), g, bits), g));
                    err += (importance ? static_cast<double>(importance[j]) : 1.0) * d * d;
                }
            if (pad > 0 && !importance) { // zero columns (importance 0 when weighted)
                const double d = static_cast<double>(detail::int_value(detail::int_code(0.0f, g, bits), g));
                err += static_cast<double>(pad) * static_cast<double>(v.rows()) * d * d;
            }
            if (err < best_err) {
                best_err = err;
                best = g;
            }
        }
        return best;
    }

    /// Per-row grids of `block` `[rows x g]` (GroupQuantizer). Throws on bad configuration.
    [[nodiscard]] params fit(const cref_matrix_f& block) const { return fit_rows(block, nullptr); }

    /// Per-row grids of `block`, the clipping search weighted by `importance` (length block.cols(),
    /// finite, ≥ 0; e.g. diag(XᵀX) of the block's input channels).
    [[nodiscard]] params fit(const cref_matrix_f& block, const cref_vector_f& importance) const {
        detail::require_dim(importance.size(), block.cols(), "rtn_quantizer::fit", "importance length");
        detail::require_finite(importance, "rtn_quantizer::fit", "importance");
        detail::require(importance.minCoeff() >= 0.0f, "rtn_quantizer::fit", "importance must be >= 0");
        return fit_rows(block, importance.data());
    }

    /// out(i) = s_i·(q_i − z_i), q_i = clamp(round(col(i)/s_i) + z_i, 0, 2^k − 1) (GroupQuantizer).
    void round_column(const params& p, const cref_vector_f& col, Eigen::Ref<vector_f> out) const {
        for (Eigen::Index i = 0; i < col.size(); ++i) {
            const int_grid g{p.scale(i), p.zero(i)};
            out(i) = detail::int_value(detail::int_code(col(i), g, bits), g);
        }
    }

private:
    params fit_rows(const cref_matrix_f& block, const float* importance) const {
        validate("rtn_quantizer::fit");
        params p{vector_f(block.rows()), vector_f(block.rows())};
        for (Eigen::Index i = 0; i < block.rows(); ++i) {
            const int_grid g = fit_grid(block.row(i), importance);
            p.scale(i) = g.scale;
            p.zero(i) = g.zero;
        }
        return p;
    }
};

static_assert(GroupQuantizer<rtn_quantizer>);

/// An integer-quantized matrix: codes plus one grid per parameter group.
///
/// Parameter (i, j) of element (r, c) is `(scale.rows() == 1 ? 0 : r, c / group_size)`.
struct int_tensor {
    int bits = 4;                         ///< k
    int_mode mode = int_mode::asymmetric; ///< grid kind
    matrix_u8 codes;                      ///< (rows, cols) in [0, 2^k − 1]
    matrix_f scale;                       ///< (1 or rows, groups) s
    matrix_f zero;                        ///< (1 or rows, groups) z
    Eigen::Index group_size = 1;          ///< columns per parameter column

    /// The grid of element (r, c).
    [[nodiscard]] int_grid grid(Eigen::Index r, Eigen::Index c) const {
        const Eigen::Index pr = scale.rows() == 1 ? 0 : r, pc = c / group_size;
        return {scale(pr, pc), zero(pr, pc)};
    }

    /// The float matrix s·(q − z). O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f out(codes.rows(), codes.cols());
        for (Eigen::Index r = 0; r < codes.rows(); ++r)
            for (Eigen::Index c = 0; c < codes.cols(); ++c) out(r, c) = detail::int_value(codes(r, c), grid(r, c));
        return out;
    }
};

namespace detail {

template <Granularity G>
inline int_tensor quantize_rtn_impl(const cref_matrix_f& w, const rtn_quantizer& q, const G& gran,
                                    const float* importance) {
    constexpr const char* where = "quantize_rtn";
    q.validate(where);
    require_nonempty(w, where, "w");
    require_finite(w, where, "w");
    const auto groups = column_groups(w.cols(), gran, where);
    constexpr bool shared = granularity_traits<G>::shared_across_rows;
    const Eigen::Index prow = shared ? 1 : w.rows();
    const auto ng = static_cast<Eigen::Index>(groups.size());
    int_tensor t{q.bits, q.mode, matrix_u8(w.rows(), w.cols()), matrix_f(prow, ng), matrix_f(prow, ng),
                 group_width(w.cols(), gran)};
    for (Eigen::Index gi = 0; gi < ng; ++gi) {
        const column_group& cg = groups[static_cast<std::size_t>(gi)];
        const Eigen::Index pad = cg.padded_width - cg.width;
        const float* imp = importance ? importance + cg.begin : nullptr;
        for (Eigen::Index r = 0; r < prow; ++r) {
            const int_grid g = shared ? q.fit_grid(w.middleCols(cg.begin, cg.width), imp, pad)
                                      : q.fit_grid(w.row(r).segment(cg.begin, cg.width), imp, pad);
            t.scale(r, gi) = g.scale;
            t.zero(r, gi) = g.zero;
        }
    }
    for (Eigen::Index r = 0; r < w.rows(); ++r)
        for (const column_group& cg : groups) {
            const int_grid g = t.grid(r, cg.begin);
            for (Eigen::Index c = cg.begin; c < cg.begin + cg.width; ++c) t.codes(r, c) = int_code(w(r, c), g, q.bits);
        }
    return t;
}

} // namespace detail

/// Quantizes `w` `[rows x cols]` to k-bit integers at granularity `gran` (per_tensor, per_row,
/// per_group{G, tail}).
/// \throws shape_error (empty `w`, G not dividing cols under tail_policy::error), numeric_error
///         (NaN/Inf), invalid_argument (bits outside 2..8, G < 1, bad clip settings).
/// Complexity O(rows·cols·max(1, clip_grid)).
template <Granularity G = per_row>
[[nodiscard]] int_tensor quantize_rtn(const cref_matrix_f& w, const rtn_quantizer& q = {}, const G& gran = {}) {
    return detail::quantize_rtn_impl(w, q, gran, nullptr);
}

/// As above, with per-input-channel importance weights (length cols, finite, ≥ 0) weighting the
/// clipping search error. Under tail_policy::zero_pad, padded columns have importance 0 (they
/// still widen the range to include 0).
template <Granularity G>
[[nodiscard]] int_tensor quantize_rtn(const cref_matrix_f& w, const rtn_quantizer& q, const G& gran,
                                      const cref_vector_f& importance) {
    detail::require_dim(importance.size(), w.cols(), "quantize_rtn", "importance length");
    detail::require_finite(importance, "quantize_rtn", "importance");
    detail::require(importance.size() == 0 || importance.minCoeff() >= 0.0f, "quantize_rtn",
                    "importance must be >= 0");
    return detail::quantize_rtn_impl(w, q, gran, importance.data());
}

/// Dynamic per-token activation quantizer of sources.md §1.3 (TWLA, clip ratio "lac").
struct per_token_quantizer {
    int bits = 4;                         ///< k ∈ 2..8
    int_mode mode = int_mode::asymmetric; ///< grid kind
    float clip = 1.0f;                    ///< c ∈ (0, 1]: range [c·min, c·max]
};

/// Quantizes every row (token) of `x` `[tokens x in]` with its own grid (§1.3): lo = c·min(x),
/// hi = c·max(x); asymmetric s = (hi − lo)/(2^k − 1), z = round(−lo/s); symmetric
/// s = max(|lo|, |hi|)/(2^{k−1} − 1), z = 2^{k−1} − 1; s clamped to [1e-5, 1e4], z to [−1e4, 1e4].
/// Returns codes and grids (`scale`/`zero` are `[tokens x 1]`); `dequantize()` gives x̂.
/// \throws shape_error (empty), numeric_error (NaN/Inf), invalid_argument (bits, clip).
/// Complexity O(tokens·in).
[[nodiscard]] inline int_tensor quantize_per_token(const cref_matrix_f& x, const per_token_quantizer& q = {}) {
    constexpr const char* where = "quantize_per_token";
    detail::require_bits(q.bits, where);
    detail::require(q.clip > 0.0f && q.clip <= 1.0f, where, "clip must lie in (0, 1]");
    detail::require_nonempty(x, where, "x");
    detail::require_finite(x, where, "x");
    const double maxq = static_cast<double>((1 << q.bits) - 1);
    const double half = static_cast<double>((1 << (q.bits - 1)) - 1);
    int_tensor t{q.bits, q.mode, matrix_u8(x.rows(), x.cols()), matrix_f(x.rows(), 1), matrix_f(x.rows(), 1),
                 x.cols()};
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
        const double c = static_cast<double>(q.clip);
        const double lo = c * static_cast<double>(x.row(r).minCoeff());
        const double hi = c * static_cast<double>(x.row(r).maxCoeff());
        double s, z;
        if (q.mode == int_mode::asymmetric) {
            s = std::clamp((hi - lo) / maxq, 1e-5, 1e4);
            s = static_cast<double>(static_cast<float>(s));
            z = std::clamp(std::nearbyint(-lo / s), -1e4, 1e4);
        } else {
            s = std::clamp(std::max(std::fabs(lo), std::fabs(hi)) / half, 1e-5, 1e4);
            z = half;
        }
        t.scale(r, 0) = static_cast<float>(s);
        t.zero(r, 0) = static_cast<float>(z);
        for (Eigen::Index j = 0; j < x.cols(); ++j) t.codes(r, j) = detail::int_code(x(r, j), t.grid(r, j), q.bits);
    }
    return t;
}

LOWBIT_END_NAMESPACE
