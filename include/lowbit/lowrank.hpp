#pragma once
/// \file lowrank.hpp
/// Low-rank approximation of weight matrices: truncated SVD (exact or randomized), whitened SVD
/// minimising the output error, SAES-SVD's cumulative-error-aware closed form with its ACES search,
/// BWLA's proximal SVD projection (PSP) around any fake quantizer, and joint SVD across MoE experts
/// with a shared basis (MoBiE CEJD, KBVQ-MoE IDRE).
///
/// Layout: weights `W` are row-major `[m x n]` (`[out x in]`), calibration activations `X` are
/// `[tokens x n]`; the input Gram is `S = XᵀX` (`[n x n]`, double). A rank-r approximation is returned
/// as two thin factors `W' = a·b` with `a` `[m x r]` and `b` `[r x n]` (balanced: `a = U_r Σ_r^{1/2}`,
/// `b = Σ_r^{1/2} V_rᵀ`, un-whitened where a whitening applies).
///
/// SVD method policies: `exact_svd` (Eigen BDCSVD in double) and `randomized_svd` (Halko–Martinsson–
/// Tropp range finder with power iterations, double, seeded `std::mt19937_64`).
///
/// Reconstructions (sources.md marks them as reconstructions): SAES-SVD's closed form and ACES ratio (§7.2),
/// PSP readings (a) and (b) (§3.2), CEJD (§4.2), KLT-guided IDRE (§5.2). See docs/lowrank.md.

#include <lowbit/config.hpp>
#include <lowbit/detail/low_rank_factors.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// SVD policy: the exact SVD (Eigen `BDCSVD`, double precision). O(m·n·min(m,n)).
struct exact_svd {};

/// SVD policy: randomized truncated SVD (Halko et al. 2011, Alg. 4.4 + 5.1): Gaussian test matrix
/// with `rank + oversample` columns, `power_iterations` QR-stabilised subspace iterations, then an
/// exact SVD of the small projected matrix. O((2q+2)·m·n·(r+p)). Deterministic for a fixed `seed`.
struct randomized_svd {
    Eigen::Index oversample = 10; ///< extra test vectors p ≥ 0
    int power_iterations = 2;     ///< subspace iterations q ≥ 0
    std::uint64_t seed = 0;       ///< seed of the std::mt19937_64 drawing the test matrix
};

namespace detail {

/// Top-r singular triplets of a double matrix (U `[m x r]`, s `(r)`, V `[n x r]`).
struct svd_triplets {
    Eigen::MatrixXd u;
    Eigen::VectorXd s;
    Eigen::MatrixXd v;
};

/// Orthonormal basis of the columns of `y` (thin Householder QR). A template (M = Eigen::MatrixXd) so that
/// the QR is compiled only in translation units that call an SVD.
template <class M>
inline M orthonormal_columns(const M& y) {
    Eigen::HouseholderQR<M> qr(y);
    return qr.householderQ() * M::Identity(y.rows(), y.cols());
}

/// Top-r singular triplets by `Method` (`exact_svd`: BDCSVD; `randomized_svd`: Halko et al.). A function
/// template: BDCSVD is by far the most expensive part of lowbit to compile (~20 s at -O2), and it is
/// instantiated only where an SVD is actually called, not in every user of lowrank.hpp.
template <class Method>
inline svd_triplets top_svd(const Eigen::MatrixXd& m, Eigen::Index r, const Method& p) {
    if constexpr (std::is_same_v<Method, exact_svd>) {
        Eigen::BDCSVD<Eigen::MatrixXd> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
        return {svd.matrixU().leftCols(r), svd.singularValues().head(r), svd.matrixV().leftCols(r)};
    } else if constexpr (std::is_same_v<Method, randomized_svd>) {
        const Eigen::Index k = std::min<Eigen::Index>(r + p.oversample, std::min(m.rows(), m.cols()));
        std::mt19937_64 rng(p.seed);
        std::normal_distribution<double> g(0.0, 1.0);
        Eigen::MatrixXd omega(m.cols(), k);
        for (Eigen::Index j = 0; j < k; ++j)
            for (Eigen::Index i = 0; i < m.cols(); ++i) omega(i, j) = g(rng);
        Eigen::MatrixXd q = orthonormal_columns<Eigen::MatrixXd>(m * omega);
        for (int it = 0; it < p.power_iterations; ++it) {
            const Eigen::MatrixXd z = orthonormal_columns<Eigen::MatrixXd>(m.transpose() * q);
            q = orthonormal_columns<Eigen::MatrixXd>(m * z);
        }
        const Eigen::MatrixXd small = q.transpose() * m; // [k x n]
        Eigen::BDCSVD<Eigen::MatrixXd> svd(small, Eigen::ComputeThinU | Eigen::ComputeThinV);
        return {q * svd.matrixU().leftCols(r), svd.singularValues().head(r), svd.matrixV().leftCols(r)};
    } else {
        static_assert(dependent_false<Method>, "lowbit: unknown SVD method (use exact_svd or randomized_svd)");
        return {};
    }
}

inline void check_rank(Eigen::Index rank, Eigen::Index rows, Eigen::Index cols, const char* where) {
    require(rank >= 1, where, "argument 'rank' must be at least 1, got " + std::to_string(rank));
    require(rank <= std::min(rows, cols), where,
            "argument 'rank' (" + std::to_string(rank) + ") is larger than min(rows, cols) = " +
                std::to_string(std::min(rows, cols)));
}

template <class Method>
inline void check_method(const Method& m, const char* where) {
    if constexpr (std::is_same_v<Method, randomized_svd>) {
        require(m.oversample >= 0, where, "randomized_svd.oversample must be >= 0");
        require(m.power_iterations >= 0, where, "randomized_svd.power_iterations must be >= 0");
    }
}

/// Lower Cholesky factor L of `gram + damping·mean(diag)·I` (gram = L Lᵀ).
struct whitening {
    Eigen::MatrixXd l; ///< lower-triangular [n x n]

    /// M·L.
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] Eigen::MatrixXd whiten(const Eigen::MatrixXd& m) const {
        return m * l.triangularView<Eigen::Lower>();
    }
    /// B·L⁻¹ (B [r x n]).
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] Eigen::MatrixXd unwhiten(const Eigen::MatrixXd& b) const {
        // (B L⁻¹)ᵀ = L⁻ᵀ Bᵀ
        return l.transpose().triangularView<Eigen::Upper>().solve(b.transpose()).transpose();
    }
};

template <class = void>
whitening make_whitening(const Eigen::Ref<const matrix_d>& gram, double damping, Eigen::Index n,
                         const char* where) {
    require_dim(gram.rows(), n, where, "gram rows (must equal the weight's column count)");
    require_dim(gram.cols(), n, where, "gram cols (must equal the weight's column count)");
    require_finite(gram, where, "gram");
    require(damping >= 0.0 && std::isfinite(damping), where, "argument 'damping' must be finite and >= 0");
    Eigen::MatrixXd s = 0.5 * (gram + gram.transpose());
    const double mean_diag = s.diagonal().mean();
    require<numeric_error>(mean_diag > 0.0, where, "argument 'gram' has a non-positive mean diagonal");
    s.diagonal().array() += damping * mean_diag;
    Eigen::LLT<Eigen::MatrixXd> llt(s);
    bool ok = llt.info() == Eigen::Success;
    Eigen::MatrixXd l;
    if (ok) {
        l = llt.matrixL();
        const double dmax = l.diagonal().cwiseAbs().maxCoeff();
        const double dmin = l.diagonal().cwiseAbs().minCoeff();
        ok = dmin > 1e-7 * dmax; // condition number of the Gram below ~1e14
    }
    require<numeric_error>(ok, where,
                           "argument 'gram' (XᵀX) is singular or not positive definite; pass damping > 0");
    return {std::move(l)};
}

template <class = void> // compiled only where called (docs/compile_time.md)
low_rank factors_from(const svd_triplets& t, double total_energy) {
    low_rank out;
    const Eigen::VectorXd root = t.s.cwiseSqrt();
    out.a = (t.u * root.asDiagonal()).cast<float>();
    out.b = (root.asDiagonal() * t.v.transpose()).cast<float>();
    out.singular_values = t.s;
    out.discarded_energy = std::max(0.0, total_energy - t.s.squaredNorm());
    return out;
}

inline Eigen::MatrixXd to_double(const cref_matrix_f& w) { return w.cast<double>(); }

/// A non-empty list of finite experts of one shape.
inline void check_experts(std::span<const matrix_f> experts, const char* where) {
    require(!experts.empty(), where, "argument 'experts' is an empty expert list");
    const Eigen::Index m = experts[0].rows(), n = experts[0].cols();
    for (const auto& e : experts) {
        require_nonempty(e, where, "experts[e]");
        require_dim(e.rows(), m, where, "experts[e] rows (must equal experts[0] rows)");
        require_dim(e.cols(), n, where, "experts[e] cols (must equal experts[0] cols)");
        require_finite(e, where, "experts[e]");
    }
}

} // namespace detail

/// Truncated SVD: the best rank-`rank` approximation of `w` in Frobenius norm (Eckart–Young).
///
/// \param w       `[m x n]`, finite, non-empty.
/// \param rank    1 ≤ rank ≤ min(m, n).
/// \param method  `exact_svd{}` or `randomized_svd{...}`.
/// \returns factors with `‖w − a·b‖_F² = discarded_energy` (exact for `exact_svd`; the randomized
///          method's error is within a small factor of it for decaying spectra).
/// \throws shape_error (empty), numeric_error (NaN/Inf), invalid_argument (rank out of range).
template <class Method = exact_svd>
[[nodiscard]] low_rank truncated_svd(const cref_matrix_f& w, Eigen::Index rank, const Method& method = Method{}) {
    constexpr const char* where = "truncated_svd";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::check_rank(rank, w.rows(), w.cols(), where);
    detail::check_method(method, where);
    const Eigen::MatrixXd m = detail::to_double(w);
    return detail::factors_from(detail::top_svd(m, rank, method), m.squaredNorm());
}

/// Whitened SVD (SVD-LLM): the rank-`rank` W' minimising the output error ‖(W − W')Xᵀ‖_F given
/// the input Gram `gram = XᵀX` (`[n x n]`). With `S + λ·mean(diag S)·I = L Lᵀ`,
/// `W' = SVD_r(W L)·L⁻¹`, and `‖(W − W')L‖_F² = discarded_energy = Σ_{k>r} σ_k(W L)²`.
///
/// \param damping  λ ≥ 0 (relative to the mean diagonal). With λ = 0 a singular Gram throws.
/// \throws numeric_error if the (damped) Gram is not positive definite; shape_error on sizes.
/// Complexity: O(n³) Cholesky + O(m n²) whitening + the SVD method.
template <class Method = exact_svd>
[[nodiscard]] low_rank whitened_svd(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& gram,
                                    Eigen::Index rank, double damping = 0.0, const Method& method = Method{}) {
    constexpr const char* where = "whitened_svd";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::check_rank(rank, w.rows(), w.cols(), where);
    detail::check_method(method, where);
    const auto wh = detail::make_whitening(gram, damping, w.cols(), where);
    const Eigen::MatrixXd wl = wh.whiten(detail::to_double(w));
    const detail::svd_triplets t = detail::top_svd(wl, rank, method);
    low_rank out = detail::factors_from(t, wl.squaredNorm());
    out.b = wh.unwhiten(out.b.cast<double>()).cast<float>();
    return out;
}

/// Second-order statistics for SAES-SVD (RECON of §7.2). With `x` the full-precision inputs and
/// `x_hat` the inputs seen by the compressed model (both `[tokens x n]`):
/// `h_hat = x_hatᵀ x_hat`, `cross = xᵀ x_hat`.
struct saes_statistics {
    matrix_d h_hat; ///< (n, n) Gram of the compressed-model inputs
    matrix_d cross; ///< (n, n) cross moment Xᵀ X̂

    /// Accumulates one batch of matching rows of `x` and `x_hat` (`[tokens x n]`). O(tokens·n²).
    /// \throws shape_error if the shapes differ or n does not match earlier batches.
    template <class = void> // compiled only where called (docs/compile_time.md)
    void accumulate(const cref_matrix_f& x, const cref_matrix_f& x_hat) {
        constexpr const char* where = "saes_statistics::accumulate";
        detail::require_dim(x_hat.rows(), x.rows(), where, "x_hat rows (must equal x rows)");
        detail::require_dim(x_hat.cols(), x.cols(), where, "x_hat cols (must equal x cols)");
        detail::require_finite(x, where, "x");
        detail::require_finite(x_hat, where, "x_hat");
        if (h_hat.size() == 0) {
            h_hat = matrix_d::Zero(x.cols(), x.cols());
            cross = matrix_d::Zero(x.cols(), x.cols());
        }
        detail::require_dim(x.cols(), h_hat.cols(), where, "x cols (must match earlier batches)");
        const Eigen::MatrixXd xd = x.cast<double>(), xh = x_hat.cast<double>();
        h_hat.noalias() += xh.transpose() * xh;
        cross.noalias() += xd.transpose() * xh;
    }
};

namespace detail {
/// W*(γ) = W[(1−γ)I + γ C Ĥ⁻¹] computed with the damped factor (Ĥ ≈ L Lᵀ).
template <class = void> // compiled only where called (docs/compile_time.md)
Eigen::MatrixXd saes_target(const Eigen::MatrixXd& w, const saes_statistics& st, const whitening& wh,
                                   double gamma) {
    if (gamma == 0.0) return w;
    // C Ĥ⁻¹ = C L⁻ᵀ L⁻¹  → W C Ĥ⁻¹ = ((W C) L⁻ᵀ) L⁻¹
    const Eigen::MatrixXd wc = w * st.cross;
    const Eigen::MatrixXd t1 = wh.l.triangularView<Eigen::Lower>().solve(wc.transpose()).transpose(); // wc L⁻ᵀ
    const Eigen::MatrixXd wchinv = wh.unwhiten(t1);
    return (1.0 - gamma) * w + gamma * wchinv;
}
inline void check_saes(const cref_matrix_f& w, const saes_statistics& st, const char* where) {
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require_nonempty(st.h_hat, where, "stats.h_hat");
    detail::require_dim(st.cross.rows(), w.cols(), where, "stats.cross rows");
    detail::require_dim(st.cross.cols(), w.cols(), where, "stats.cross cols");
    detail::require_finite(st.cross, where, "stats.cross");
}
} // namespace detail

/// SAES-SVD closed form (RECON, sources.md §7.2): minimises
/// `‖(W − W')X̂ᵀ‖² + λ‖W Xᵀ − W' X̂ᵀ‖²` over rank-r W', with γ = λ/(1+λ) ∈ [0, 1):
/// `W' = SVD_r(W* L)·L⁻¹`, `W* = W[(1−γ)I + γ C Ĥ⁻¹]`, `Ĥ + damping·mean(diag)·I = L Lᵀ`.
/// At γ = 0 it is `whitened_svd(w, stats.h_hat, rank, damping)`.
/// \throws invalid_argument for γ outside [0, 1) or a bad rank; numeric_error for a singular Ĥ.
template <class Method = exact_svd>
[[nodiscard]] low_rank saes_svd(const cref_matrix_f& w, const saes_statistics& stats, Eigen::Index rank,
                                double gamma, double damping = 0.0, const Method& method = Method{}) {
    constexpr const char* where = "saes_svd";
    detail::check_saes(w, stats, where);
    detail::check_rank(rank, w.rows(), w.cols(), where);
    detail::check_method(method, where);
    detail::require(gamma >= 0.0 && gamma < 1.0, where, "argument 'gamma' must lie in [0, 1)");
    const auto wh = detail::make_whitening(stats.h_hat, damping, w.cols(), where);
    const Eigen::MatrixXd wl = wh.whiten(detail::saes_target(detail::to_double(w), stats, wh, gamma));
    low_rank out = detail::factors_from(detail::top_svd(wl, rank, method), wl.squaredNorm());
    out.b = wh.unwhiten(out.b.cast<double>()).cast<float>();
    return out;
}

/// Result of the ACES search.
struct aces_result {
    double gamma = 0;   ///< the chosen γ
    double ratio = 0;   ///< ρ(γ) = ‖SVD_r(W* L)‖_F² / ‖W* L‖_F² at the chosen γ
    std::vector<double> grid;   ///< the γ values tried
    std::vector<double> ratios; ///< ρ at each grid value
    low_rank factors;   ///< saes_svd at the chosen γ
};

/// ACES (RECON, §7.2): evaluates ρ(γ) on the grid γ_k = k/points·γ_max, k = 0..points−1, and keeps
/// the γ with the largest captured-energy ratio (ties: smallest γ). O(points · SVD).
/// \throws invalid_argument if points < 1 or γ_max outside (0, 1).
template <class Method = exact_svd>
[[nodiscard]] aces_result aces_search(const cref_matrix_f& w, const saes_statistics& stats, Eigen::Index rank,
                                      int points = 20, double gamma_max = 0.95, double damping = 0.0,
                                      const Method& method = Method{}) {
    constexpr const char* where = "aces_search";
    detail::check_saes(w, stats, where);
    detail::check_rank(rank, w.rows(), w.cols(), where);
    detail::check_method(method, where);
    detail::require(points >= 1, where, "argument 'points' must be >= 1");
    detail::require(gamma_max > 0.0 && gamma_max < 1.0, where, "argument 'gamma_max' must lie in (0, 1)");
    const auto wh = detail::make_whitening(stats.h_hat, damping, w.cols(), where);
    const Eigen::MatrixXd wd = detail::to_double(w);
    aces_result res;
    res.ratio = -1.0;
    for (int k = 0; k < points; ++k) {
        const double g = gamma_max * static_cast<double>(k) / static_cast<double>(points);
        const Eigen::MatrixXd wl = wh.whiten(detail::saes_target(wd, stats, wh, g));
        const detail::svd_triplets t = detail::top_svd(wl, rank, method);
        const double total = wl.squaredNorm();
        const double rho = total > 0 ? t.s.squaredNorm() / total : 1.0;
        res.grid.push_back(g);
        res.ratios.push_back(rho);
        if (rho > res.ratio) {
            res.ratio = rho;
            res.gamma = g;
            res.factors = detail::factors_from(t, total);
        }
    }
    res.factors.b = wh.unwhiten(res.factors.b.cast<double>()).cast<float>();
    return res;
}

/// A fake quantizer PSP can wrap: maps a `[m x n]` float matrix to its dequantized quantization.
template <class F>
concept MatrixFakeQuantizer = requires(const F& f, const cref_matrix_f& w) {
    { f(w) } -> std::convertible_to<matrix_f>;
};

/// Result of PSP.
struct psp_result {
    matrix_f quantized;             ///< Q(W − L) at the best iterate (dequantized)
    low_rank correction;            ///< L = a·b, rank r
    std::vector<double> objective;  ///< objective after each iteration; [0] = without correction
    /// Ŵ = quantized + correction.
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] matrix_f reconstruct() const { return quantized + correction.reconstruct(); }
};

/// PSP — proximal SVD projection around a quantizer (RECON of BWLA, sources.md §3.2 reading (a)).
/// Minimises `f(L) = ‖(W − L − Q(W − L))·L_S‖_F²` over rank-r L by alternation:
/// `B_k = Q(W − L_k)`, `L_{k+1} = argmin_rank r ‖(W − B_k − L)·L_S‖` (whitened SVD, or plain SVD
/// when `gram` is empty: L_S = I). A new code set B is kept only if it does not increase f (otherwise
/// the previous one is retained and the loop stops), so `objective` is non-increasing, and
/// `objective[1] < objective[0]` unless W − Q(W) is already zero.
///
/// \param quantizer   any MatrixFakeQuantizer (e.g. a binarizer returning its dequantized matrix).
/// \param gram        `[n x n]` input Gram XᵀX, or an empty matrix for the plain Frobenius metric.
/// \param iterations  ≥ 1 alternations.
/// Complexity: iterations · (quantizer + SVD of `[m x n]`).
template <MatrixFakeQuantizer Q, class Method = exact_svd>
[[nodiscard]] psp_result psp_refine(const cref_matrix_f& w, const Q& quantizer, Eigen::Index rank, int iterations,
                                    const Eigen::Ref<const matrix_d>& gram = matrix_d(), double damping = 0.0,
                                    const Method& method = Method{}) {
    constexpr const char* where = "psp_refine";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::check_rank(rank, w.rows(), w.cols(), where);
    detail::check_method(method, where);
    detail::require(iterations >= 1, where, "argument 'iterations' must be >= 1");
    const bool weighted = gram.size() != 0;
    detail::whitening wh;
    if (weighted) wh = detail::make_whitening(gram, damping, w.cols(), where);
    const Eigen::MatrixXd wd = detail::to_double(w);
    auto metric = [&](const Eigen::MatrixXd& r) { return weighted ? wh.whiten(r).squaredNorm() : r.squaredNorm(); };
    auto run_quantizer = [&](const Eigen::MatrixXd& m) {
        matrix_f in = m.cast<float>();
        matrix_f q = quantizer(in);
        detail::require_dim(q.rows(), w.rows(), where, "quantizer output rows");
        detail::require_dim(q.cols(), w.cols(), where, "quantizer output cols");
        return Eigen::MatrixXd(q.cast<double>());
    };
    psp_result res;
    Eigen::MatrixXd lmat = Eigen::MatrixXd::Zero(w.rows(), w.cols());
    Eigen::MatrixXd b = run_quantizer(wd);
    double f = metric(wd - b);
    res.objective.push_back(f);
    res.correction.a = matrix_f::Zero(w.rows(), rank);
    res.correction.b = matrix_f::Zero(rank, w.cols());
    for (int it = 0; it < iterations; ++it) {
        // L-step: best rank-r fit of the residual W − B in the metric.
        const Eigen::MatrixXd resid = wd - b;
        low_rank lr;
        if (weighted) {
            const Eigen::MatrixXd rl = wh.whiten(resid);
            lr = detail::factors_from(detail::top_svd(rl, rank, method), rl.squaredNorm());
            lr.b = wh.unwhiten(lr.b.cast<double>()).cast<float>();
        } else {
            lr = detail::factors_from(detail::top_svd(resid, rank, method), resid.squaredNorm());
        }
        const Eigen::MatrixXd lnew = lr.a.cast<double>() * lr.b.cast<double>();
        const double f_l = metric(wd - b - lnew);
        if (f_l <= f) {
            lmat = lnew;
            res.correction = lr;
            f = f_l;
        }
        // B-step: re-quantize W − L; keep only if it does not increase f.
        const Eigen::MatrixXd bnew = run_quantizer(wd - lmat);
        const double f_b = metric(wd - bnew - lmat);
        const bool improved = f_b < f;
        if (f_b <= f) {
            b = bnew;
            f = f_b;
        }
        res.objective.push_back(f);
        if (!improved && res.objective.size() >= 2 &&
            res.objective[res.objective.size() - 2] - f <= 1e-12 * res.objective.front())
            break;
    }
    res.quantized = b.cast<float>();
    return res;
}

/// PSP reading (b) (RECON of BWLA, sources.md §3.2): the gradient form of the paper's figure. L = A·B
/// with LoRA's initialisation (A ~ N(0, 1/r) entries from `std::mt19937_64(seed)`, B = 0, so L = 0 at
/// the start); each of `steps` steps takes one gradient step on A, then one on B, on
/// `f(A, B) = ‖(W − AB − Q(W − AB))·L_S‖_F²` = tr(R S Rᵀ) (S = the damped `gram`, or I when `gram` is
/// empty; R the residual), with the quantizer straight-through in the sense that its output is
/// re-evaluated at every half step but held constant inside the gradient (∂R/∂L = −I), and then
/// re-projects (A, B) onto balanced rank-r factors by a thin QR of A and an SVD of the r×n matrix R_A·B
/// (the proximal step onto the rank-r set; L itself already has rank ≤ r). Step sizes are not tuned:
/// each gradient step is the exact line search of the quadratic it takes with Q(·) held, e.g. for B,
/// D = AᵀRS, t = tr(A D S Rᵀ) / tr(A D S Dᵀ Aᵀ) (a zero direction is skipped). With Q ≡ 0 this is
/// alternating exact line-search descent of ‖(W − AB)L_S‖², whose minimum over rank r is the whitened
/// truncated SVD (tested).
///
/// `objective[k]` is f after step k (`objective[0]`: L = 0); unlike reading (a) it need not decrease
/// monotonically (Q(W − L) jumps); the result is the iterate with the smallest f (L = 0 included, so
/// `quantized + correction` is never worse than Q(W) alone in the metric). `correction.singular_values`
/// and `discarded_energy` are not filled (zeros / 0).
///
/// \param steps ≥ 1.  \throws as `psp_refine`. Complexity: steps · (2 quantizer calls + O(m·n² + m·n·r))
/// with a Gram (the n×n products R·S), O(m·n·r) per step without. Deterministic for a fixed seed.
template <MatrixFakeQuantizer Q>
[[nodiscard]] psp_result psp_refine_gradient(const cref_matrix_f& w, const Q& quantizer, Eigen::Index rank, int steps,
                                             const Eigen::Ref<const matrix_d>& gram = matrix_d(), double damping = 0.0,
                                             std::uint64_t seed = 0) {
    constexpr const char* where = "psp_refine_gradient";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::check_rank(rank, w.rows(), w.cols(), where);
    detail::require(steps >= 1, where, "argument 'steps' must be >= 1");
    const bool weighted = gram.size() != 0;
    const Eigen::Index m = w.rows(), n = w.cols();
    Eigen::MatrixXd sm; // the damped, symmetrised S (weighted only)
    if (weighted) {
        (void)detail::make_whitening(gram, damping, n, where); // validates and refuses an indefinite S
        sm = 0.5 * (gram + gram.transpose());
        sm.diagonal().array() += damping * sm.diagonal().mean();
    }
    auto times_s = [&](const Eigen::MatrixXd& x) -> Eigen::MatrixXd { return weighted ? Eigen::MatrixXd(x * sm) : x; };
    const Eigen::MatrixXd wd = detail::to_double(w);
    auto run_quantizer = [&](const Eigen::MatrixXd& x) {
        const matrix_f in = x.cast<float>();
        const matrix_f q = quantizer(in);
        detail::require_dim(q.rows(), m, where, "quantizer output rows");
        detail::require_dim(q.cols(), n, where, "quantizer output cols");
        return Eigen::MatrixXd(q.cast<double>());
    };
    auto objective = [&](const Eigen::MatrixXd& r) { return (times_s(r).array() * r.array()).sum(); };
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0 / std::sqrt(static_cast<double>(rank)));
    Eigen::MatrixXd a(m, rank), b = Eigen::MatrixXd::Zero(rank, n);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = nd(rng);
    // exact line search of ‖(R0 − t·E)L_S‖² along E (E = A·D or D·B, the change of L): t = ⟨E S, R⟩ / ⟨E S, E⟩
    auto step = [&](const Eigen::MatrixXd& e, const Eigen::MatrixXd& r) {
        const Eigen::MatrixXd es = times_s(e);
        const double den = (es.array() * e.array()).sum(), num = (es.array() * r.array()).sum();
        return den > 0 && std::isfinite(num / den) ? num / den : 0.0;
    };
    Eigen::MatrixXd bq = run_quantizer(wd);
    Eigen::MatrixXd resid = wd - bq;
    psp_result res;
    double best = objective(resid);
    res.objective.push_back(best);
    res.quantized = bq.cast<float>();
    res.correction.a = matrix_f::Zero(m, rank);
    res.correction.b = matrix_f::Zero(rank, n);
    for (int k = 0; k < steps; ++k) {
        // A-step: −½∂f/∂A = R S Bᵀ, L moves by D·B
        const Eigen::MatrixXd da = times_s(resid) * b.transpose();
        const double ta = step(da * b, resid);
        a += ta * da;
        Eigen::MatrixXd l = a * b;
        bq = run_quantizer(wd - l);
        resid = wd - l - bq;
        // B-step: −½∂f/∂B = Aᵀ R S, L moves by A·D
        const Eigen::MatrixXd db = a.transpose() * times_s(resid);
        const double tb = step(a * db, resid);
        b += tb * db;
        // re-projection onto balanced rank-r factors: A = Q_A R_A, R_A·B = U Σ Vᵀ
        const Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
        const Eigen::MatrixXd qa = qr.householderQ() * Eigen::MatrixXd::Identity(m, rank);
        const Eigen::MatrixXd ra = qr.matrixQR().topRows(rank).triangularView<Eigen::Upper>();
        Eigen::BDCSVD<Eigen::MatrixXd> svd(ra * b, Eigen::ComputeThinU | Eigen::ComputeThinV);
        const Eigen::VectorXd sq = svd.singularValues().cwiseSqrt();
        a = qa * svd.matrixU() * sq.asDiagonal();
        b = sq.asDiagonal() * svd.matrixV().transpose();
        l = a * b;
        bq = run_quantizer(wd - l);
        resid = wd - l - bq;
        const double f = objective(resid);
        res.objective.push_back(f);
        if (f < best) {
            best = f;
            res.quantized = bq.cast<float>();
            res.correction.a = a.cast<float>();
            res.correction.b = b.cast<float>();
        }
    }
    res.correction.singular_values = vector_d::Zero(rank);
    return res;
}

/// CEJD result: `W_e ≈ basis · factors[e]` with one shared basis.
struct joint_left_basis {
    matrix_f basis;               ///< (m, k) shared backbone G = U_k Σ_k
    std::vector<matrix_f> factors; ///< per expert (k, n): V_eᵀ (the expert-specific part)
    double discarded_energy = 0;  ///< Σ_{j>k} σ_j(W_cat)² = Σ_e ‖W_e − G V_eᵀ‖_F²
};

/// MoBiE CEJD (RECON, §4.2): SVD of the column-stacked experts `W_cat = [W_1, …, W_E]`
/// (`[m x E·n]`) = U Σ [V_1ᵀ … V_Eᵀ]; shared G = U_k Σ_k, expert factor V_eᵀ (`[k x n]`).
/// k = m is lossless. Optimal (Eckart–Young) among all factorisations with a shared left basis.
/// \throws invalid_argument for an empty expert list or k outside [1, min(m, E·n)];
///         shape_error if the experts' shapes differ.
template <class Method = exact_svd>
[[nodiscard]] joint_left_basis joint_svd_shared_left(std::span<const matrix_f> experts, Eigen::Index k,
                                                     const Method& method = Method{}) {
    constexpr const char* where = "joint_svd_shared_left";
    detail::check_experts(experts, where);
    const Eigen::Index m = experts[0].rows(), n = experts[0].cols();
    const Eigen::Index ne = static_cast<Eigen::Index>(experts.size());
    detail::check_rank(k, m, ne * n, where);
    detail::check_method(method, where);
    Eigen::MatrixXd cat(m, ne * n);
    for (Eigen::Index e = 0; e < ne; ++e) cat.middleCols(e * n, n) = experts[static_cast<std::size_t>(e)].cast<double>();
    const detail::svd_triplets t = detail::top_svd(cat, k, method);
    joint_left_basis out;
    out.basis = (t.u * t.s.asDiagonal()).cast<float>();
    for (Eigen::Index e = 0; e < ne; ++e) out.factors.push_back(t.v.middleRows(e * n, n).transpose().cast<float>());
    out.discarded_energy = std::max(0.0, cat.squaredNorm() - t.s.squaredNorm());
    return out;
}

/// IDRE result: `W_e ≈ coefficients[e] · basis + residual_e` with one shared input-side basis.
struct joint_input_basis {
    matrix_f basis;                     ///< (r, n) shared Bₛ = V_rᵀ Σ^{−1/2}
    std::vector<matrix_f> coefficients; ///< per expert (m, r): C_e = W_e Σ^{1/2} V_r
    double discarded_energy = 0;        ///< Σ_e ‖(W_e − C_e Bₛ) Σ^{1/2}‖_F² = Σ_{j>r} σ_j(M)²

    /// R_e = W_e − C_e Bₛ, the expert-specific residual that KBVQ quantizes.
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] matrix_f residual(const cref_matrix_f& w, std::size_t e) const {
        return w - coefficients.at(e) * basis;
    }
};

/// KBVQ-MoE IDRE (RECON, §5.2): KLT-guided joint SVD. Σ = covariance (`[n x n]`, e.g. XᵀX/T) with
/// eigen-decomposition U Λ Uᵀ (damped: Λ + damping·mean(Λ)); M = [W_1; …; W_E]·Σ^{1/2} (row-stacked,
/// `[E·m x n]`) = P D Vᵀ; Bₛ = V_rᵀ Σ^{−1/2}, C_e = W_e Σ^{1/2} V_r. Optimal in the Σ-weighted metric
/// among factorisations with a shared r-dimensional input basis.
/// \throws invalid_argument (empty list, bad rank), shape_error, numeric_error (singular Σ, no damping).
template <class Method = exact_svd>
[[nodiscard]] joint_input_basis joint_svd_klt(std::span<const matrix_f> experts, const Eigen::Ref<const matrix_d>& covariance,
                                              Eigen::Index rank, double damping = 0.0, const Method& method = Method{}) {
    constexpr const char* where = "joint_svd_klt";
    detail::check_experts(experts, where);
    const Eigen::Index m = experts[0].rows(), n = experts[0].cols();
    const Eigen::Index ne = static_cast<Eigen::Index>(experts.size());
    detail::check_rank(rank, ne * m, n, where);
    detail::check_method(method, where);
    detail::require_dim(covariance.rows(), n, where, "covariance rows (must equal the experts' column count)");
    detail::require_dim(covariance.cols(), n, where, "covariance cols (must equal the experts' column count)");
    detail::require_finite(covariance, where, "covariance");
    detail::require(damping >= 0.0 && std::isfinite(damping), where, "argument 'damping' must be finite and >= 0");
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(Eigen::MatrixXd(0.5 * (covariance + covariance.transpose())));
    Eigen::VectorXd lam = es.eigenvalues();
    const double mean = lam.mean();
    detail::require<numeric_error>(mean > 0.0, where, "argument 'covariance' has a non-positive trace");
    lam.array() += damping * mean;
    detail::require<numeric_error>(lam.minCoeff() > 1e-12 * lam.maxCoeff(), where,
                                   "argument 'covariance' is singular; pass damping > 0");
    const Eigen::MatrixXd& ux = es.eigenvectors();
    const Eigen::MatrixXd half = ux * lam.cwiseSqrt().asDiagonal() * ux.transpose();
    const Eigen::MatrixXd inv_half = ux * lam.cwiseSqrt().cwiseInverse().asDiagonal() * ux.transpose();
    Eigen::MatrixXd stacked(ne * m, n);
    for (Eigen::Index e = 0; e < ne; ++e)
        stacked.middleRows(e * m, m) = experts[static_cast<std::size_t>(e)].cast<double>() * half;
    const detail::svd_triplets t = detail::top_svd(stacked, rank, method);
    joint_input_basis out;
    out.basis = (t.v.transpose() * inv_half).cast<float>();
    for (Eigen::Index e = 0; e < ne; ++e)
        out.coefficients.push_back((stacked.middleRows(e * m, m) * t.v).cast<float>());
    out.discarded_energy = std::max(0.0, stacked.squaredNorm() - t.s.squaredNorm());
    return out;
}

LOWBIT_END_NAMESPACE
