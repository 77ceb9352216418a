#pragma once
/// \file binary.hpp
/// Binarization of weights, per row or per column group: ŵ = μ + α₀ b₀ (+ α₁ b₁), b ∈ {−1, +1}
/// (sign(0) = +1), with four methods as policy values:
/// - `sign_scale{mean}` — b = sign(w − μ), α = mean|w − μ|, μ = mean(w) if `mean` else 0. For fixed
///   μ this (b, α) is the exact minimiser of ‖w − μ − α b‖² (XNOR-Net / BiLLM base).
/// - `arb{iters}`       — ARB-LLM alternating refinement (sources.md §1.4): init as
///   sign_scale{true}; `iters` times: r = w − ŵ, μ += mean(r), b = sign(w − μ), α = mean(b⊙(w − μ));
///   finally (μ, α) are re-solved by least squares for the final b (2×2 normal equations), so the
///   result is never worse than the last iterate.
/// - `residual_binary{}` — order 2 (BiLLM residual approximation): plane 0 as sign_scale{true},
///   plane 1 = sign_scale{false} of the residual; then (μ, α₀, α₁) re-solved by least squares for
///   the two code planes (3×3 normal equations).
/// - `arb_x{iters}`     — ARB-X: the same model, but (μ, α) minimise the output error
///   (w − ŵ) S (w − ŵ)ᵀ with S = XᵀX of the group's input columns. RECONSTRUCTION (the ARB-LLM
///   equations were not available): init with `arb`; `iters` times: (μ, α) ← S-weighted 2×2 solve for
///   the current b, then b ← sign(w − μ); the best (b, μ, α) by the S-weighted error is kept.
///
/// Layout: `codes[p]` `[rows x cols]` int8 in {−1, +1}; `mean`, `alpha[p]` `[rows x groups]`.

#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/affine_codes.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/error.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Binarization rule: sign and mean-|w| scale, optionally around the row mean.
struct sign_scale {
    bool mean = false; ///< subtract the (group) row mean first
};
/// Binarization rule: ARB-LLM alternating refinement of (μ, α, b).
struct arb {
    int iters = 15; ///< refinement rounds, ≥ 0
};
/// Binarization rule: order-2 residual binarization μ + α₀b₀ + α₁b₁.
struct residual_binary {};
/// Binarization rule: ARB-X, output-error (S-weighted) refinement (a reconstruction, see file comment).
struct arb_x {
    int iters = 15; ///< refinement rounds, ≥ 0
};

/// Number of code planes of a binarization rule (1, or 2 for `residual_binary`).
template <class Rule>
inline constexpr int binary_order = std::is_same_v<Rule, residual_binary> ? 2 : 1;

/// A binarized matrix: one or two sign planes (codes in {−1, +1}) plus μ and α per row and group
/// (detail/affine_codes.hpp); `codes[1]`/`alpha[1]` are empty when order = 1.
using binary_tensor = code_plane_tensor;

namespace detail {

/// Per-row binarization result.
struct binary_row_params {
    float mean = 0.0f;
    float alpha[2] = {0.0f, 0.0f};
};

inline std::int8_t sign_code(double x) { return x >= 0.0 ? std::int8_t{1} : std::int8_t{-1}; }

inline double row_mean(const float* w, Eigen::Index n) {
    double s = 0.0;
    for (Eigen::Index j = 0; j < n; ++j) s += static_cast<double>(w[j]);
    return s / static_cast<double>(n);
}

/// b = sign(w − μ), returns mean|w − μ|.
inline double sign_and_scale(const float* w, Eigen::Index n, double mu, std::int8_t* b) {
    double s = 0.0;
    for (Eigen::Index j = 0; j < n; ++j) {
        const double c = static_cast<double>(w[j]) - mu;
        b[j] = sign_code(c);
        s += std::fabs(c);
    }
    return s / static_cast<double>(n);
}

template <class Rule>
inline binary_row_params binary_row(const Rule&, const float*, Eigen::Index, const matrix_d*, std::int8_t*,
                                    std::int8_t*) {
    static_assert(dependent_false<Rule>,
                  "lowbit: no binarization rule for this tag (use sign_scale, arb, residual_binary or arb_x)");
    return {};
}

inline binary_row_params binary_row(const sign_scale& r, const float* w, Eigen::Index n, const matrix_d*,
                                    std::int8_t* b, std::int8_t*) {
    const double mu = r.mean ? row_mean(w, n) : 0.0;
    const double a = sign_and_scale(w, n, mu, b);
    return {static_cast<float>(mu), {static_cast<float>(a), 0.0f}};
}

/// Least-squares (μ, α…) for the given planes; S = nullptr is the identity.
template <class = void>
binary_row_params binary_refit(const float* w, Eigen::Index n, const matrix_d* s, const std::int8_t* b0,
                               const std::int8_t* b1) {
    affine_codes_row row{w, nullptr, {b0}, n};
    if (b1) row.planes.push_back(b1);
    const vector_d x = affine_codes_solve(row, s);
    binary_row_params p{static_cast<float>(x(0)), {static_cast<float>(x(1)), 0.0f}};
    if (b1) p.alpha[1] = static_cast<float>(x(2));
    return p;
}

template <class = void>
binary_row_params binary_row(const arb& r, const float* w, Eigen::Index n, const matrix_d*, std::int8_t* b,
                             std::int8_t*) {
    double mu = row_mean(w, n);
    double a = sign_and_scale(w, n, mu, b);
    for (int it = 0; it < r.iters; ++it) {
        double res = 0.0;
        for (Eigen::Index j = 0; j < n; ++j) res += static_cast<double>(w[j]) - (mu + a * b[j]);
        mu += res / static_cast<double>(n);
        a = sign_and_scale(w, n, mu, b); // mean(b ⊙ (w − μ)) with b = sign(w − μ)
    }
    return binary_refit(w, n, nullptr, b, nullptr);
}

template <class = void>
binary_row_params binary_row(const residual_binary&, const float* w, Eigen::Index n, const matrix_d*,
                             std::int8_t* b0, std::int8_t* b1) {
    const double mu = row_mean(w, n);
    const double a0 = sign_and_scale(w, n, mu, b0);
    for (Eigen::Index j = 0; j < n; ++j) b1[j] = sign_code(static_cast<double>(w[j]) - mu - a0 * b0[j]);
    return binary_refit(w, n, nullptr, b0, b1);
}

template <class = void>
binary_row_params binary_row(const arb_x& r, const float* w, Eigen::Index n, const matrix_d* s,
                             std::int8_t* b, std::int8_t*) {
    (void)binary_row(arb{r.iters}, w, n, nullptr, b, nullptr); // Euclidean start: codes b
    std::vector<std::int8_t> cur(b, b + n);
    binary_row_params best = binary_refit(w, n, s, b, nullptr);
    auto objective = [&](const std::int8_t* codes, const binary_row_params& p) {
        vector_d x(2);
        x << p.mean, p.alpha[0];
        return affine_codes_objective({w, nullptr, {codes}, n}, s, x);
    };
    double best_obj = objective(b, best);
    binary_row_params p = best;
    for (int it = 0; it < r.iters; ++it) {
        for (Eigen::Index j = 0; j < n; ++j) cur[static_cast<std::size_t>(j)] = sign_code(static_cast<double>(w[j]) - p.mean);
        p = binary_refit(w, n, s, cur.data(), nullptr);
        const double obj = objective(cur.data(), p);
        if (obj < best_obj) {
            best_obj = obj;
            best = p;
            std::copy(cur.begin(), cur.end(), b);
        }
    }
    return best;
}

/// ARB-X for every row of a group block at once (the same iteration as `binary_row(arb_x…)`, which stays
/// the per-row reference): the S-weighted 2×2 solves of all rows come from one GEMM B·S per iteration, the
/// error e S eᵀ from quadratic forms with w S wᵀ formed once. Writes codes `[rows x g]`, μ and α.
/// O(rows·g²·(iters + 2)) at GEMM speed.
template <class = void>
void arb_x_block(const matrix_f& block, const matrix_d& s, const arb_x& r, std::int8_t* codes, float* mu_out,
                 float* alpha_out) {
    const Eigen::Index m = block.rows(), g = block.cols();
    Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> best_b(m, g), cur(m, g);
    for (Eigen::Index i = 0; i < m; ++i) (void)binary_row(arb{r.iters}, block.row(i).data(), g, nullptr, best_b.row(i).data(), nullptr);
    const Eigen::MatrixXd wd = block.cast<double>();
    const Eigen::VectorXd s1 = s * Eigen::VectorXd::Ones(g);
    const double c = s1.sum();
    const Eigen::MatrixXd ws = wd * s; // rows w S
    const Eigen::VectorXd rm = wd * s1;
    const Eigen::VectorXd wsw = ws.cwiseProduct(wd).rowwise().sum();
    Eigen::VectorXf best_mu(m), best_al(m), mu(m), al(m);
    Eigen::VectorXd best_obj(m), obj(m);
    // (μ, α) = argmin e S eᵀ for the codes `b` of every row (min-norm on singular rows), and the error.
    auto refit = [&](const auto& b, Eigen::VectorXf& mu_o, Eigen::VectorXf& al_o, Eigen::VectorXd& obj_o) {
        const Eigen::MatrixXd bd = b.template cast<double>();
        const Eigen::MatrixXd bs = bd * s;
        for (Eigen::Index i = 0; i < m; ++i) {
            const double a = bs.row(i).dot(bd.row(i)), bb = bd.row(i).dot(s1), ra = ws.row(i).dot(bd.row(i));
            Eigen::Matrix2d gm;
            gm << c, bb, bb, a;
            const Eigen::Vector2d x = gm.completeOrthogonalDecomposition().solve(Eigen::Vector2d(rm(i), ra));
            mu_o(i) = static_cast<float>(x(0));
            al_o(i) = static_cast<float>(x(1));
            const double u = mu_o(i), v = al_o(i);
            obj_o(i) = wsw(i) - 2 * u * rm(i) - 2 * v * ra + u * u * c + 2 * u * v * bb + v * v * a;
        }
    };
    refit(best_b, best_mu, best_al, best_obj);
    mu = best_mu;
    for (int it = 0; it < r.iters; ++it) {
        for (Eigen::Index i = 0; i < m; ++i)
            for (Eigen::Index j = 0; j < g; ++j) cur(i, j) = sign_code(static_cast<double>(block(i, j)) - mu(i));
        refit(cur, mu, al, obj);
        for (Eigen::Index i = 0; i < m; ++i)
            if (obj(i) < best_obj(i)) {
                best_obj(i) = obj(i);
                best_mu(i) = mu(i);
                best_al(i) = al(i);
                best_b.row(i) = cur.row(i);
            }
    }
    for (Eigen::Index i = 0; i < m; ++i) {
        mu_out[i] = best_mu(i);
        alpha_out[i] = best_al(i);
        for (Eigen::Index j = 0; j < g; ++j) codes[i * g + j] = best_b(i, j);
    }
}

template <class Rule>
inline void check_binary_rule(const Rule& r, const char* where) {
    if constexpr (std::is_same_v<Rule, arb> || std::is_same_v<Rule, arb_x>)
        require(r.iters >= 0, where, "iters must be >= 0");
}

template <class Rule, class G>
inline binary_tensor binarize_impl(const cref_matrix_f& w, const Rule& rule, const G& gran, const matrix_d* s) {
    static_assert(row_wise_granularity<G>, "lowbit: binarization supports per_row and per_group granularity");
    constexpr const char* where = "binarize";
    check_binary_rule(rule, where);
    require_nonempty(w, where, "w");
    require_finite(w, where, "w");
    const auto groups = column_groups(w.cols(), gran, where);
    const auto ng = static_cast<Eigen::Index>(groups.size());
    constexpr int order = binary_order<Rule>;
    binary_tensor t = binary_tensor::allocate(order, w.rows(), w.cols(), ng, group_width(w.cols(), gran));
    for (Eigen::Index gi = 0; gi < ng; ++gi) {
        const column_group& cg = groups[static_cast<std::size_t>(gi)];
        const matrix_f block = padded_block(w, cg);
        const matrix_d sg = padded_gram_block(s, cg);
        std::vector<std::int8_t> b0(static_cast<std::size_t>(cg.padded_width)), b1(b0.size());
        if constexpr (std::is_same_v<Rule, arb_x>) {
            if (s) { // every row at once (GEMMs); binary_row(arb_x…) is the per-row reference
                std::vector<std::int8_t> codes(static_cast<std::size_t>(w.rows() * cg.padded_width));
                vector_f mu(w.rows()), al(w.rows());
                arb_x_block(block, sg, rule, codes.data(), mu.data(), al.data());
                for (Eigen::Index r = 0; r < w.rows(); ++r) {
                    t.mean(r, gi) = mu(r);
                    t.alpha[0](r, gi) = al(r);
                    for (Eigen::Index j = 0; j < cg.width; ++j)
                        t.codes[0](r, cg.begin + j) = codes[static_cast<std::size_t>(r * cg.padded_width + j)];
                }
                continue;
            }
        }
        for (Eigen::Index r = 0; r < w.rows(); ++r) {
            const auto p = binary_row(rule, block.row(r).data(), cg.padded_width, s ? &sg : nullptr, b0.data(),
                                      b1.data());
            t.mean(r, gi) = p.mean;
            for (int q = 0; q < order; ++q) t.alpha[static_cast<std::size_t>(q)](r, gi) = p.alpha[q];
            for (Eigen::Index j = 0; j < cg.width; ++j) {
                t.codes[0](r, cg.begin + j) = b0[static_cast<std::size_t>(j)];
                if (order == 2) t.codes[1](r, cg.begin + j) = b1[static_cast<std::size_t>(j)];
            }
        }
    }
    return t;
}

} // namespace detail

/// Binarizes `w` `[rows x cols]` with `rule` (sign_scale, arb, residual_binary) per row or per
/// group (`per_row`, `per_group{G, tail}`; zero-padded tails take part in the fit).
/// \throws shape_error (empty, G not dividing cols), numeric_error (NaN/Inf), invalid_argument
///         (iters < 0, G < 1). Complexity O(rows·cols·(iters + 1)).
template <class Rule, class G = per_row>
[[nodiscard]] binary_tensor binarize(const cref_matrix_f& w, const Rule& rule, const G& gran = {}) {
    static_assert(!std::is_same_v<Rule, arb_x>, "lowbit: arb_x needs S; call binarize(w, arb_x{}, gran, S)");
    return detail::binarize_impl(w, rule, gran, nullptr);
}

/// ARB-X binarization with the input Gram matrix `s` `[cols x cols]` (S = XᵀX, symmetric PSD, finite).
/// Each group uses the diagonal block of S for its columns (no cross-group terms).
/// \throws as above, plus shape_error for a wrong S shape and numeric_error for NaN/Inf in S.
/// Complexity O(rows·iters·(G² + cols)).
template <class G = per_row>
[[nodiscard]] binary_tensor binarize(const cref_matrix_f& w, const arb_x& rule, const G& gran,
                                     const Eigen::Ref<const matrix_d>& s) {
    detail::require_dim(s.rows(), w.cols(), "binarize", "rows of 'S'");
    detail::require_dim(s.cols(), w.cols(), "binarize", "columns of 'S'");
    detail::require_finite(s, "binarize", "S");
    const matrix_d sm = s;
    return detail::binarize_impl(w, rule, gran, &sm);
}

/// `GroupQuantizer` model for binarization with `Rule` (sign_scale, arb, residual_binary, arb_x):
/// `fit` binarizes each row of a `[rows x g]` block; `round_column` gives μ + α₀ sign(x − μ) (+ α₁
/// sign(x − μ − α₀ b₀) for order 2). With `arb_x` it is also a `GramAwareGroupQuantizer`:
/// `fit_with_gram(block, S)` runs ARB-X with the group's Gram matrix (GPTQ's `gram_fit` passes H/2), and
/// `fit(block)` (no S) falls back to `arb{iters}`, ARB-X's Euclidean start.
template <class Rule>
struct binary_quantizer {
    Rule rule{}; ///< the rule and its settings

    /// Per-row parameters of one column group.
    struct params {
        vector_f mean;   ///< (rows) μ
        vector_f alpha0; ///< (rows) α₀
        vector_f alpha1; ///< (rows) α₁ (zero for order 1)
    };

    /// Fits every row of `block` (non-empty, finite).
    [[nodiscard]] params fit(const cref_matrix_f& block) const {
        if constexpr (std::is_same_v<Rule, arb_x>) return from(binarize(block, arb{rule.iters}, per_row{}), block.rows());
        else return from(binarize(block, rule, per_row{}), block.rows());
    }

    /// ARB-X only: fits every row of `block` `[rows x g]` with the group's Gram matrix `gram` `[g x g]`.
    /// O(rows·iters·g²).
    [[nodiscard]] params fit_with_gram(const cref_matrix_f& block, const Eigen::Ref<const matrix_d>& gram) const
        requires std::is_same_v<Rule, arb_x>
    {
        return from(binarize(block, rule, per_row{}, gram), block.rows());
    }

    /// Rounds one column with each row's parameters.
    void round_column(const params& p, const cref_vector_f& col, Eigen::Ref<vector_f> out) const {
        for (Eigen::Index i = 0; i < col.size(); ++i) {
            const double c = static_cast<double>(col(i)) - p.mean(i);
            const std::int8_t b0 = detail::sign_code(c);
            float v = p.mean(i) + p.alpha0(i) * b0;
            if constexpr (binary_order<Rule> == 2)
                v += p.alpha1(i) * detail::sign_code(c - static_cast<double>(p.alpha0(i)) * b0);
            out(i) = v;
        }
    }

private:
    static params from(const binary_tensor& t, Eigen::Index rows) {
        params p{t.mean.col(0), t.alpha[0].col(0), vector_f::Zero(rows)};
        if (t.order == 2) p.alpha1 = t.alpha[1].col(0);
        return p;
    }
};

static_assert(GroupQuantizer<binary_quantizer<arb>>);
static_assert(!GramAwareGroupQuantizer<binary_quantizer<arb>>);
static_assert(GramAwareGroupQuantizer<binary_quantizer<arb_x>>);

LOWBIT_END_NAMESPACE
