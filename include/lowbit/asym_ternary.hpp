#pragma once
/// \file asym_ternary.hpp
/// E2M-ATQ, the asymmetric ternary quantizer of TWLA (sources.md §2.3):
/// order 1: ŵ_i = μ_i m + α_i t_i,  order 2: ŵ_i = μ_i m + α₀ᵢ t₀ᵢ + α₁ᵢ t₁ᵢ,  t ∈ {−1, 0, +1},
/// per row i, over the entries of a group mask m (entries outside the mask are ignored and get
/// code 0; the dequantized value there is 0).
///
/// Stage 1 (Euclidean warm start, K₁ = `stage1_iters` rounds, TWLA code):
///   μ = mean of the masked entries, c = w − μ, Δ = ratio·mean|c| (ratio 0.75), t = sign(c)[|c| > Δ],
///   α = Σ t c / (Σ|t| + 1e-8); then K₁ times μ += mean residual and Δ, t, α again.
///   Order 2: (t₀, α₀) as above, (t₁, α₁) the same rule on the residual c − α₀t₀; then K₁ times:
///   μ += mean residual, α₀ ← ⟨t₀, c − α₁t₁⟩/⟨t₀,t₀⟩, α₁ ← ⟨t₁, c − α₀t₀⟩/⟨t₁,t₁⟩, and every entry
///   re-assigned to the nearest of the 9 values s₀α₀ + s₁α₁ (first in the order s₀, s₁ = −1, 0, 1 on ties).
/// Stage 2 (manifold relocation): codes frozen, (μ, α…) minimise the output error
///   e S eᵀ, e = w⊙m − μm − Σ α_p t_p, with S = XᵀX of the group's input columns (S = I when none is
///   given). Default: the exact solution of the 2×2 (order 1) / 3×3 (order 2) normal equations in
///   double (the limit of the code's coordinate descent); `stage2_rounds > 0` instead runs that many
///   rounds of the TWLA code's exact coordinate descent μ → α₀ (→ α₁) with +1e-10 denominators.
///   The stage-1 parameters are kept if the relocation does not lower e S eᵀ (rounding guard), so
///   stage 2 never increases the output error.
/// Published defaults: K₁ = K₂ = 15, ratio 0.75.
///
/// Compile time: `fit_e2m_atq` (and `e2m_atq_quantizer::fit`) are function templates with one defaulted,
/// unused parameter (`template <class = void>`; call them as ordinary functions), so their Eigen
/// decompositions and solvers are compiled only in a translation unit that calls them
/// (docs/compile_time.md).

#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/affine_codes.hpp>
#include <lowbit/error.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Row-major bool matrix: which entries of each row belong to a group.
using group_mask = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// E2M-ATQ settings (published defaults).
struct e2m_atq {
    int order = 1;                 ///< 1 (μ + αt) or 2 (μ + α₀t₀ + α₁t₁)
    int stage1_iters = 15;         ///< K₁ ≥ 0
    int stage2_rounds = 0;         ///< 0: closed-form relocation; > 0: K₂ coordinate-descent rounds (code: 15)
    float threshold_ratio = 0.75f; ///< Δ = ratio·mean|w − μ|, in [0, 1)
    bool relocate = true;          ///< run stage 2

    /// Throws `invalid_argument` naming the bad field.
    void validate(const char* where) const {
        detail::require(order == 1 || order == 2, where, "order must be 1 or 2, got " + std::to_string(order));
        detail::require(stage1_iters >= 0, where, "stage1_iters must be >= 0");
        detail::require(stage2_rounds >= 0, where, "stage2_rounds must be >= 0");
        detail::require(threshold_ratio >= 0.0f && threshold_ratio < 1.0f, where,
                        "threshold_ratio must lie in [0, 1)");
    }
};

/// E2M-ATQ fit of some rows over a group mask: codes (0 outside the mask), μ and α per row.
struct asym_ternary_rows {
    int order = 1;                  ///< planes used
    std::array<matrix_i8, 2> codes; ///< (rows, n) in {−1, 0, +1}; codes[1] is zero for order 1
    vector_f mean;                  ///< (rows) μ
    std::array<vector_f, 2> alpha;  ///< (rows) α₀, α₁ (α₁ = 0 for order 1)
    group_mask mask;                ///< (rows, n) the group

    /// μ m + Σ α_p t_p: the group's contribution (0 outside the mask). O(rows·n).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f out = matrix_f::Zero(codes[0].rows(), codes[0].cols());
        for (Eigen::Index r = 0; r < out.rows(); ++r)
            for (Eigen::Index j = 0; j < out.cols(); ++j)
                if (mask(r, j))
                    out(r, j) = mean(r) + alpha[0](r) * static_cast<float>(codes[0](r, j)) +
                                alpha[1](r) * static_cast<float>(codes[1](r, j));
        return out;
    }
};

namespace detail {

/// Stage-1 threshold assignment on the masked entries of c: returns α = Σ t c / (Σ|t| + 1e-8).
inline double atq_threshold_fit(const std::vector<double>& c, const bool* m, double ratio, std::int8_t* t) {
    const auto n = c.size();
    double sa = 0.0, cnt = 0.0;
    for (std::size_t j = 0; j < n; ++j)
        if (m[j]) {
            sa += std::fabs(c[j]);
            cnt += 1.0;
        }
    const double delta = ratio * sa / cnt;
    double tc = 0.0, tt = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
        t[j] = !m[j] ? 0 : c[j] > delta ? 1 : c[j] < -delta ? -1 : 0;
        tc += t[j] * c[j];
        tt += std::abs(t[j]);
    }
    return tc / (tt + 1e-8);
}

/// One row of E2M-ATQ (stages 1 and 2). `s` nullptr means S = I.
template <class = void>
void atq_row(const float* w, const bool* m, Eigen::Index n, const matrix_d* s, const e2m_atq& cfg,
             std::int8_t* t0, std::int8_t* t1, float& mu_out, float& a0_out, float& a1_out) {
    const auto un = static_cast<std::size_t>(n);
    double cnt = 0.0, mu = 0.0;
    for (std::size_t j = 0; j < un; ++j)
        if (m[j]) {
            mu += static_cast<double>(w[j]);
            cnt += 1.0;
        }
    std::fill(t0, t0 + n, std::int8_t{0});
    std::fill(t1, t1 + n, std::int8_t{0});
    mu_out = a0_out = a1_out = 0.0f;
    if (cnt == 0.0) return;
    mu /= cnt;
    const double ratio = static_cast<double>(cfg.threshold_ratio);
    std::vector<double> c(un), r(un);
    auto centre = [&] {
        for (std::size_t j = 0; j < un; ++j) c[j] = m[j] ? static_cast<double>(w[j]) - mu : 0.0;
    };
    auto mean_residual = [&](double a0, double a1) {
        double s_ = 0.0;
        for (std::size_t j = 0; j < un; ++j)
            if (m[j]) s_ += static_cast<double>(w[j]) - mu - a0 * t0[j] - a1 * t1[j];
        return s_ / cnt;
    };
    double a0 = 0.0, a1 = 0.0;
    centre();
    a0 = atq_threshold_fit(c, m, ratio, t0);
    if (cfg.order == 1) {
        for (int it = 0; it < cfg.stage1_iters; ++it) {
            mu += mean_residual(a0, 0.0);
            centre();
            a0 = atq_threshold_fit(c, m, ratio, t0);
        }
    } else {
        for (std::size_t j = 0; j < un; ++j) r[j] = c[j] - a0 * t0[j];
        a1 = atq_threshold_fit(r, m, ratio, t1);
        for (int it = 0; it < cfg.stage1_iters; ++it) {
            mu += mean_residual(a0, a1);
            centre();
            double num = 0.0, den = 0.0;
            for (std::size_t j = 0; j < un; ++j) {
                num += t0[j] * (c[j] - a1 * t1[j]);
                den += t0[j] * t0[j];
            }
            a0 = num / (den + 1e-8);
            num = den = 0.0;
            for (std::size_t j = 0; j < un; ++j) {
                num += t1[j] * (c[j] - a0 * t0[j]);
                den += t1[j] * t1[j];
            }
            a1 = num / (den + 1e-8);
            for (std::size_t j = 0; j < un; ++j) {
                if (!m[j]) continue;
                double best = std::numeric_limits<double>::infinity();
                for (int s0 = -1; s0 <= 1; ++s0)
                    for (int s1 = -1; s1 <= 1; ++s1) {
                        const double d = std::fabs(c[j] - s0 * a0 - s1 * a1);
                        if (d < best) {
                            best = d;
                            t0[j] = static_cast<std::int8_t>(s0);
                            t1[j] = static_cast<std::int8_t>(s1);
                        }
                    }
            }
        }
    }
    if (cfg.relocate) {
        affine_codes_row row{w, m, {t0}, n};
        if (cfg.order == 2) row.planes.push_back(t1);
        vector_d x0(cfg.order + 1);
        x0(0) = mu;
        x0(1) = a0;
        if (cfg.order == 2) x0(2) = a1;
        vector_d x = x0;
        if (cfg.stage2_rounds == 0) {
            x = affine_codes_solve(row, s);
        } else { // TWLA code: exact coordinate descent μ → α₀ (→ α₁)
            matrix_d basis;
            vector_d target;
            affine_codes_basis(row, basis, target);
            const matrix_d sb = s ? matrix_d(basis * (*s)) : basis;
            const matrix_d g = sb * basis.transpose();
            const vector_d b = sb * target;
            for (int it = 0; it < cfg.stage2_rounds; ++it)
                for (Eigen::Index k = 0; k < x.size(); ++k)
                    x(k) = (b(k) - g.row(k).dot(x) + g(k, k) * x(k)) / (g(k, k) + 1e-10);
        }
        if (affine_codes_objective(row, s, x) < affine_codes_objective(row, s, x0)) {
            mu = x(0);
            a0 = x(1);
            if (cfg.order == 2) a1 = x(2);
        }
    }
    mu_out = static_cast<float>(mu);
    a0_out = static_cast<float>(a0);
    a1_out = static_cast<float>(a1);
}

template <class = void>
asym_ternary_rows fit_e2m_atq_impl(const cref_matrix_f& w, const group_mask& mask, const matrix_d* s,
                                   const e2m_atq& cfg) {
    asym_ternary_rows out;
    out.order = cfg.order;
    out.codes[0].resize(w.rows(), w.cols());
    out.codes[1].resize(w.rows(), w.cols());
    out.mean.resize(w.rows());
    out.alpha[0].resize(w.rows());
    out.alpha[1].resize(w.rows());
    out.mask = mask;
    const matrix_f wc = w;
    for (Eigen::Index r = 0; r < w.rows(); ++r)
        atq_row(wc.row(r).data(), out.mask.row(r).data(), w.cols(), s, cfg, out.codes[0].row(r).data(),
                out.codes[1].row(r).data(), out.mean(r), out.alpha[0](r), out.alpha[1](r));
    return out;
}

} // namespace detail

/// Fits E2M-ATQ to the rows of `w` `[rows x n]` restricted to `mask` `[rows x n]` (true = entry in the
/// group), with stage 2 weighted by `s` `[n x n]` (S = XᵀX over these n input columns; symmetric PSD,
/// finite). Entries outside the mask are ignored; rows with an empty mask get μ = α = 0.
/// This is the per-group call of TRA-GPTQ (sources.md §2.4e): disjoint masks, each fitted alone.
/// \throws shape_error (empty w, mask/S shape), numeric_error (NaN/Inf in w or S), invalid_argument (cfg).
/// Complexity O(rows·n·(K₁ + 1)) for stage 1, O(rows·n²) for stage 2.
template <class = void>
[[nodiscard]] asym_ternary_rows fit_e2m_atq(const cref_matrix_f& w, const Eigen::Ref<const group_mask>& mask,
                                            const Eigen::Ref<const matrix_d>& s, const e2m_atq& cfg = {}) {
    constexpr const char* where = "fit_e2m_atq";
    cfg.validate(where);
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require_dim(mask.rows(), w.rows(), where, "rows of 'mask'");
    detail::require_dim(mask.cols(), w.cols(), where, "columns of 'mask'");
    detail::require_dim(s.rows(), w.cols(), where, "rows of 'S'");
    detail::require_dim(s.cols(), w.cols(), where, "columns of 'S'");
    detail::require_finite(s, where, "S");
    const matrix_d sm = s;
    return detail::fit_e2m_atq_impl(w, mask, &sm, cfg);
}

/// Fits E2M-ATQ to every entry of every row of `w` with S = I (Euclidean stage 2).
/// \throws as above.
template <class = void>
[[nodiscard]] asym_ternary_rows fit_e2m_atq(const cref_matrix_f& w, const e2m_atq& cfg = {}) {
    constexpr const char* where = "fit_e2m_atq";
    cfg.validate(where);
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    return detail::fit_e2m_atq_impl(w, group_mask::Constant(w.rows(), w.cols(), true), nullptr, cfg);
}

/// E2M-ATQ's stage 2 for given order-1 codes, every row at once: for row i of `w` `[rows x n]` with codes
/// t_i (row i of `codes` `[rows x n]`, values in {−1, 0, +1}) the (μ_i, α_i) minimising
/// e S eᵀ, e = w_i − μ_i·1 − α_i·t_i, S = `s` `[n x n]` (symmetric PSD, finite; e.g. XᵀX/N of the layer's
/// inputs). Use it after a solver has fixed the codes (GPTQ with error feedback): the codes stay, only the
/// two affine parameters per row move. `mean` and `alpha` (rows) hold the starting values and are replaced
/// only where the solution lowers e S eᵀ (rounding guard, so the error never increases). Rows whose 2×2
/// system is singular (all codes zero or all equal) fit μ alone with α kept. Same solver as
/// `detail::refit_affine_rows` (detail/affine_codes.hpp), which takes any integer codes.
/// \throws shape_error (empty w; codes, s, mean, alpha shapes), numeric_error (NaN/Inf in w or s),
///         invalid_argument (a code outside {−1, 0, 1}).
/// Complexity O(rows·n²) (one double GEMM S·Tᵀ), O(rows·n) extra memory.
template <class = void>
void relocate_e2m_atq(const cref_matrix_f& w, const Eigen::Ref<const matrix_i8>& codes,
                      const Eigen::Ref<const matrix_d>& s, Eigen::Ref<vector_f> mean, Eigen::Ref<vector_f> alpha) {
    constexpr const char* where = "relocate_e2m_atq";
    detail::require_dim(codes.rows(), w.rows(), where, "rows of 'codes'");
    detail::require_dim(codes.cols(), w.cols(), where, "columns of 'codes'");
    detail::require((codes.array() >= -1).all() && (codes.array() <= 1).all(), where, "codes must lie in {-1, 0, 1}");
    detail::refit_affine_rows(w, codes, s, mean, alpha, where);
}

/// An E2M-ATQ-quantized matrix at a per_row / per_group granularity: code planes in {−1, 0, +1},
/// μ and α per row and group (detail/affine_codes.hpp).
using asym_ternary_tensor = code_plane_tensor;

namespace detail {
template <class G>
inline asym_ternary_tensor quantize_e2m_atq_impl(const cref_matrix_f& w, const e2m_atq& cfg, const G& gran,
                                                 const matrix_d* s) {
    static_assert(row_wise_granularity<G>, "lowbit: E2M-ATQ supports per_row and per_group granularity");
    constexpr const char* where = "quantize_e2m_atq";
    cfg.validate(where);
    require_nonempty(w, where, "w");
    require_finite(w, where, "w");
    const auto groups = column_groups(w.cols(), gran, where);
    const auto ng = static_cast<Eigen::Index>(groups.size());
    asym_ternary_tensor t = asym_ternary_tensor::allocate(cfg.order, w.rows(), w.cols(), ng, group_width(w.cols(), gran));
    for (Eigen::Index gi = 0; gi < ng; ++gi) {
        const column_group& cg = groups[static_cast<std::size_t>(gi)];
        const matrix_f block = padded_block(w, cg);
        const matrix_d sg = padded_gram_block(s, cg);
        const auto f =
            fit_e2m_atq_impl(block, group_mask::Constant(w.rows(), cg.padded_width, true), s ? &sg : nullptr, cfg);
        t.mean.col(gi) = f.mean;
        for (std::size_t p = 0; p < static_cast<std::size_t>(cfg.order); ++p) {
            t.alpha[p].col(gi) = f.alpha[p];
            t.codes[p].middleCols(cg.begin, cg.width) = f.codes[p].leftCols(cg.width);
        }
    }
    return t;
}
} // namespace detail

/// E2M-ATQ of `w` `[rows x cols]` per row or per group (`per_group{G, tail}`; zero-padded tails take
/// part in the fit), stage 2 with S = I.
/// \throws shape_error, numeric_error, invalid_argument (cfg, G < 1). Complexity O(rows·cols·K₁).
template <class G = per_row>
[[nodiscard]] asym_ternary_tensor quantize_e2m_atq(const cref_matrix_f& w, const e2m_atq& cfg = {}, const G& gran = {}) {
    return detail::quantize_e2m_atq_impl(w, cfg, gran, nullptr);
}

/// As above with stage 2 weighted by S `[cols x cols]` (each group uses its diagonal block of S).
/// Complexity adds O(rows·cols·G) (O(rows·cols²) per row).
template <class G>
[[nodiscard]] asym_ternary_tensor quantize_e2m_atq(const cref_matrix_f& w, const e2m_atq& cfg, const G& gran,
                                                   const Eigen::Ref<const matrix_d>& s) {
    detail::require_dim(s.rows(), w.cols(), "quantize_e2m_atq", "rows of 'S'");
    detail::require_dim(s.cols(), w.cols(), "quantize_e2m_atq", "columns of 'S'");
    detail::require_finite(s, "quantize_e2m_atq", "S");
    const matrix_d sm = s;
    return detail::quantize_e2m_atq_impl(w, cfg, gran, &sm);
}

/// `GroupQuantizer` model of E2M-ATQ (S = I): `fit` runs both stages on each row of a `[rows x g]`
/// block; `round_column` maps x to the nearest of the row's levels μ + s₀α₀ (+ s₁α₁), s ∈ {−1, 0, 1}
/// (first in the order s₀, s₁ = −1, 0, 1 on ties).
struct e2m_atq_quantizer {
    e2m_atq config{}; ///< settings

    /// Per-row parameters of one column group.
    struct params {
        vector_f mean;   ///< (rows) μ
        vector_f alpha0; ///< (rows) α₀
        vector_f alpha1; ///< (rows) α₁ (0 for order 1)
    };

    /// Fits every row of `block` (non-empty, finite). (A template only so that the fit is compiled
    /// where it is called, docs/compile_time.md; call it as `q.fit(block)`.)
    template <class = void>
    [[nodiscard]] params fit(const cref_matrix_f& block) const {
        const auto f = fit_e2m_atq(block, config);
        return {f.mean, f.alpha[0], f.alpha[1]};
    }

    /// Fits every row of `block` `[rows x g]` with stage 2 weighted by `gram` `[g x g]` (the group's input
    /// Gram matrix; makes this a `GramAwareGroupQuantizer`, so GPTQ with `gram_fit` passes its H/2).
    /// Order 1 with the closed-form stage 2: stage 1 per row, then `relocate_e2m_atq` for all rows (one
    /// GEMM, O(rows·g²)); otherwise `fit_e2m_atq(block, mask, gram)`.
    template <class = void>
    [[nodiscard]] params fit_with_gram(const cref_matrix_f& block, const Eigen::Ref<const matrix_d>& gram) const {
        if (config.order == 1 && config.relocate && config.stage2_rounds == 0) {
            e2m_atq stage1 = config;
            stage1.relocate = false;
            auto f = fit_e2m_atq(block, stage1);
            relocate_e2m_atq(block, f.codes[0], gram, f.mean, f.alpha[0]);
            return {f.mean, f.alpha[0], f.alpha[1]};
        }
        const auto f = fit_e2m_atq(block, group_mask::Constant(block.rows(), block.cols(), true), gram, config);
        return {f.mean, f.alpha[0], f.alpha[1]};
    }

    /// Rounds one column to the nearest level of each row.
    void round_column(const params& p, const cref_vector_f& col, Eigen::Ref<vector_f> out) const {
        const int s1max = config.order == 2 ? 1 : 0;
        for (Eigen::Index i = 0; i < col.size(); ++i) {
            float best_v = p.mean(i);
            float best_d = std::numeric_limits<float>::infinity();
            for (int s0 = -1; s0 <= 1; ++s0)
                for (int s1 = -s1max; s1 <= s1max; ++s1) {
                    const float v = p.mean(i) + p.alpha0(i) * static_cast<float>(s0) + p.alpha1(i) * static_cast<float>(s1);
                    const float d = std::fabs(col(i) - v);
                    if (d < best_d) {
                        best_d = d;
                        best_v = v;
                    }
                }
            out(i) = best_v;
        }
    }
};

static_assert(GramAwareGroupQuantizer<e2m_atq_quantizer>);

LOWBIT_END_NAMESPACE
