#pragma once
/// \file kotms.hpp
/// KOTMS — Kronecker Orthogonal Tri-Modal Shaping (TWLA, sources.md §2.2): learns orthogonal
/// Kronecker factors C (l×l), B (r×r) so that every weight row, viewed as the l×r matrix M and rotated
/// to C·M·B (W_rot = W (Cᵀ ⊗ B)), looks like three clusters {−c, 0, +c} + mean — ternary-friendly.
///
/// Loss: X_c = W_rot − rowmean(W_rot); c_o = mean_j |X_c[o, j]| (treated as a constant: no gradient);
/// fixed equal-weight mixture p(x) = ⅓N(−c_o, σ₁²) + ⅓N(0, σ₀²) + ⅓N(+c_o, σ₁²), σ₀ = ρ₀c_o, σ₁ = ρ₁c_o;
///   L = −mean log p(X_c) + λ_bal Σ_k (r̄_k − ⅓)²,  r̄_k = mean posterior responsibility of component k.
/// Gradients are analytic: ∂(−log p)/∂x = Σ_k γ_k (x − μ_k)/σ_k², ∂γ_k/∂x = γ_k (s_k − Σ_j γ_j s_j) with
/// s_k = −(x − μ_k)/σ_k²; the row centring projects the gradient (G − rowmean G); then
/// ∂L/∂C = Σ_o G_o (M_o B)ᵀ, ∂L/∂B = Σ_o (C M_o)ᵀ G_o; and through the Cayley map (orthogonal.hpp).
/// Optimiser: Cayley parameters zero-initialised (identity rotation), Adam with separate learning rates,
/// full batch; simultaneous updates (released code) or alternating (the paper's figure).
/// Published defaults (KOTMS.py CLI): 100 iterations, lr 1e-2 for both factors, ρ₀ = ρ₁ = 0.25, λ_bal = 0.1.
/// Complexity per iteration: O(m·n·(l + r)) + O(l³ + r³). All arithmetic in double.
///
/// Compile time: `learn_kotms`, `kotms_loss` and their helpers are function templates with one defaulted,
/// unused parameter (`template <class = void>`; call them as ordinary functions), so their Eigen
/// decompositions and solvers are compiled only in a translation unit that calls them
/// (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/kronecker.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/orthogonal_fit.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Dense>

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

namespace detail {

/// A fixed equal-weight Gaussian mixture on per-row centred values: component k has mean means[k]·c_o
/// and standard deviation rhos[k]·c_o; the balance term pulls the mean responsibilities toward 1/K.
struct mixture_spec {
    std::vector<double> means; ///< component centres in units of c_o
    std::vector<double> rhos;  ///< component widths in units of c_o
    double lambda_bal = 0.0;   ///< weight of the balance term
};

/// Value and gradient of the mixture-shaping loss at W_rot.
struct mixture_eval {
    double nll = 0;          ///< −mean log p (or, with frozen responsibilities, the EM Q-function)
    double balance = 0;      ///< λ Σ_k (r̄_k − 1/K)²
    matrix_d grad;           ///< ∂(nll + balance)/∂W_rot, c_o held constant
    vector_d row_scale;      ///< c_o per row
    std::vector<double> resp; ///< responsibilities (entry-major, K per entry) when requested
};

/// Evaluates the mixture-shaping loss (see kotms.hpp's file comment). `fixed_scale`: use these c_o instead
/// of computing them. `frozen`: EM M-step — the NLL part becomes −mean Σ_k γ_k^old log(π_k N_k) with the
/// given responsibilities. O(m·n·K).
template <class = void>
mixture_eval mixture_shaping_loss(const matrix_d& wrot, const mixture_spec& spec, const vector_d* fixed_scale,
                                  const std::vector<double>* frozen, bool want_resp) {
    const Eigen::Index m = wrot.rows(), n = wrot.cols();
    const std::size_t K = spec.means.size();
    const double N = static_cast<double>(m) * static_cast<double>(n);
    const double log_pi = -std::log(static_cast<double>(K));
    constexpr double half_log_2pi = 0.91893853320467274178;
    mixture_eval out;
    out.grad.resize(m, n);
    out.row_scale.resize(m);
    if (want_resp) out.resp.resize(static_cast<std::size_t>(m * n) * K);
    std::vector<double> rbar(K, 0.0);
    std::vector<double> mu(K), sig(K), logn(K), gam(K);
    vector_d row_mean(m);
    auto component_terms = [&](double x) {
        double mx = -std::numeric_limits<double>::infinity();
        for (std::size_t k = 0; k < K; ++k) {
            const double z = (x - mu[k]) / sig[k];
            logn[k] = log_pi - 0.5 * z * z - std::log(sig[k]) - half_log_2pi;
            mx = std::max(mx, logn[k]);
        }
        double s = 0;
        for (std::size_t k = 0; k < K; ++k) s += std::exp(logn[k] - mx);
        const double lse = mx + std::log(s);
        for (std::size_t k = 0; k < K; ++k) gam[k] = std::exp(logn[k] - lse);
        return lse;
    };
    auto set_row = [&](Eigen::Index o) {
        const double c = std::max(out.row_scale(o), 1e-30);
        for (std::size_t k = 0; k < K; ++k) {
            mu[k] = spec.means[k] * c;
            sig[k] = spec.rhos[k] * c;
        }
    };
    double nll = 0;
    for (Eigen::Index o = 0; o < m; ++o) {
        row_mean(o) = wrot.row(o).mean();
        out.row_scale(o) = fixed_scale ? (*fixed_scale)(o) : (wrot.row(o).array() - row_mean(o)).abs().mean();
        set_row(o);
        for (Eigen::Index j = 0; j < n; ++j) {
            const double x = wrot(o, j) - row_mean(o);
            const double lse = component_terms(x);
            const std::size_t e = static_cast<std::size_t>(o * n + j) * K;
            if (frozen) {
                for (std::size_t k = 0; k < K; ++k) nll -= (*frozen)[e + k] * logn[k];
            } else {
                nll -= lse;
            }
            for (std::size_t k = 0; k < K; ++k) {
                rbar[k] += gam[k];
                if (want_resp) out.resp[e + k] = gam[k];
            }
        }
    }
    out.nll = nll / N;
    double bal = 0;
    for (std::size_t k = 0; k < K; ++k) {
        rbar[k] /= N;
        bal += (rbar[k] - 1.0 / static_cast<double>(K)) * (rbar[k] - 1.0 / static_cast<double>(K));
    }
    out.balance = spec.lambda_bal * bal;
    for (Eigen::Index o = 0; o < m; ++o) {
        set_row(o);
        for (Eigen::Index j = 0; j < n; ++j) {
            const double x = wrot(o, j) - row_mean(o);
            component_terms(x);
            const std::size_t e = static_cast<std::size_t>(o * n + j) * K;
            double g = 0, sbar = 0;
            for (std::size_t k = 0; k < K; ++k) {
                const double sk = -(x - mu[k]) / (sig[k] * sig[k]);
                const double wk = frozen ? (*frozen)[e + k] : gam[k];
                g -= wk * sk;
                sbar += gam[k] * sk;
            }
            if (spec.lambda_bal != 0.0)
                for (std::size_t k = 0; k < K; ++k) {
                    const double sk = -(x - mu[k]) / (sig[k] * sig[k]);
                    g += 2.0 * spec.lambda_bal * (rbar[k] - 1.0 / static_cast<double>(K)) * gam[k] * (sk - sbar);
                }
            out.grad(o, j) = g / N;
        }
        out.grad.row(o).array() -= out.grad.row(o).mean(); // centring Jacobian (symmetric projection)
    }
    return out;
}

/// Rows of w (m × l·r) as l×r matrices M_o, mapped to C·M_o·B. O(m·n·(l + r)).
template <class = void>
matrix_d kronecker_rotate_rows(const matrix_d& w, const matrix_d& c, const matrix_d& b) {
    const Eigen::Index m = w.rows(), l = c.rows(), r = b.rows();
    using cmap = Eigen::Map<const matrix_d>;
    using map = Eigen::Map<matrix_d>;
    const matrix_d z = cmap(w.data(), m * l, r) * b;
    matrix_d out(m, l * r);
    for (Eigen::Index o = 0; o < m; ++o) map(out.data() + o * l * r, l, r).noalias() = c * z.middleRows(o * l, l);
    return out;
}

/// ∂L/∂C and ∂L/∂B from G = ∂L/∂W_rot for W_rot rows = C M_o B. O(m·n·(l + r)).
template <class = void>
void kronecker_factor_gradients(const matrix_d& w, const matrix_d& c, const matrix_d& b, const matrix_d& g,
                                matrix_d& gc, matrix_d& gb) {
    const Eigen::Index m = w.rows(), l = c.rows(), r = b.rows();
    using cmap = Eigen::Map<const matrix_d>;
    const matrix_d z = cmap(w.data(), m * l, r) * b; // M_o B stacked
    matrix_d v(m * l, r);                             // C M_o stacked
    for (Eigen::Index o = 0; o < m; ++o) v.middleRows(o * l, l).noalias() = c * cmap(w.data() + o * l * r, l, r);
    const cmap gs(g.data(), m * l, r);
    gb.noalias() = v.transpose() * gs;
    gc = matrix_d::Zero(l, l);
    for (Eigen::Index o = 0; o < m; ++o) gc.noalias() += gs.middleRows(o * l, l) * z.middleRows(o * l, l).transpose();
}

/// Adam (Kingma & Ba) on one parameter matrix.
struct adam_state {
    matrix_d m1, m2;
    int t = 0;
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    void step(matrix_d& p, const matrix_d& g, double lr) {
        if (m1.size() == 0) {
            m1 = matrix_d::Zero(p.rows(), p.cols());
            m2 = matrix_d::Zero(p.rows(), p.cols());
        }
        ++t;
        m1 = beta1 * m1 + (1 - beta1) * g;
        m2 = beta2 * m2 + (1 - beta2) * g.cwiseProduct(g);
        const double c1 = 1 - std::pow(beta1, t), c2 = 1 - std::pow(beta2, t);
        p.array() -= lr * (m1.array() / c1) / ((m2.array() / c2).sqrt() + eps);
    }
};

inline void check_factor_shapes(const cref_matrix_f& w, Eigen::Index l, Eigen::Index r, const char* where) {
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require<shape_error>(l >= 1 && r >= 1 && l * r == w.cols(), where,
                                 "factor sizes l·r = " + std::to_string(l) + "·" + std::to_string(r) +
                                     " must equal the columns of 'w' (" + std::to_string(w.cols()) + ")");
}

} // namespace detail

/// KOTMS settings; defaults are the published CLI values (sources.md §2.2).
struct kotms_options {
    int iters = 100;           ///< Adam steps (≥ 0)
    double lr_left = 1e-2;     ///< learning rate of the l-factor's Cayley parameters
    double lr_right = 1e-2;    ///< learning rate of the r-factor's Cayley parameters
    double rho0 = 0.25;        ///< σ₀ / c_o of the zero component
    double rho1 = 0.25;        ///< σ₁ / c_o of the ±c_o components
    double lambda_bal = 0.1;   ///< weight of the responsibility-balance term
    bool alternating = false;  ///< update C on even steps and B on odd steps (paper figure) instead of both
    std::optional<kronecker_factor_sizes> sizes{}; ///< (l, r); default `kotms_factor_sizes(m, n)`

    void validate(const char* where) const {
        detail::require(iters >= 0, where, "iters must be >= 0");
        detail::require(lr_left >= 0 && lr_right >= 0, where, "learning rates must be >= 0");
        detail::require(rho0 > 0 && rho1 > 0, where, "rho0 and rho1 must be > 0");
        detail::require(lambda_bal >= 0, where, "lambda_bal must be >= 0");
    }
};

/// KOTMS loss value and its analytic gradients with respect to the factors themselves.
struct kotms_loss_value {
    double total = 0;     ///< nll + balance
    double nll = 0;       ///< −mean log p(X_c)
    double balance = 0;   ///< λ_bal Σ_k (r̄_k − ⅓)²
    matrix_d grad_left;   ///< ∂L/∂C (l×l), c_o held constant
    matrix_d grad_right;  ///< ∂L/∂B (r×r), c_o held constant
    vector_d row_scale;   ///< the c_o used
};

/// Evaluates the KOTMS loss of W [m x l·r] rotated by rows ↦ C·M·B, with analytic gradients in C and B.
/// `row_scale`: the per-row c_o to hold fixed (default: computed from the rotated rows). C and B need not
/// be orthogonal here. Throws `shape_error` (sizes), `numeric_error` (NaN/Inf), `invalid_argument` (options).
template <class = void>
[[nodiscard]] kotms_loss_value kotms_loss(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& left,
                                          const Eigen::Ref<const matrix_d>& right, const kotms_options& opt = {},
                                          const vector_d* row_scale = nullptr) {
    constexpr const char* where = "kotms_loss";
    opt.validate(where);
    detail::require_square(left.rows(), left.cols(), where, "left");
    detail::require_square(right.rows(), right.cols(), where, "right");
    detail::check_factor_shapes(w, left.rows(), right.rows(), where);
    if (row_scale) detail::require_dim(row_scale->size(), w.rows(), where, "length of 'row_scale'");
    const matrix_d wd = w.cast<double>(), c = left, b = right;
    const detail::mixture_spec spec{{-1.0, 0.0, 1.0}, {opt.rho1, opt.rho0, opt.rho1}, opt.lambda_bal};
    auto ev = detail::mixture_shaping_loss(detail::kronecker_rotate_rows(wd, c, b), spec, row_scale, nullptr, false);
    kotms_loss_value out;
    out.nll = ev.nll;
    out.balance = ev.balance;
    out.total = ev.nll + ev.balance;
    detail::kronecker_factor_gradients(wd, c, b, ev.grad, out.grad_left, out.grad_right);
    out.row_scale = std::move(ev.row_scale);
    return out;
}

/// Result of a rotation-learning run.
struct rotation_learning_result {
    kronecker_rotation rotation;       ///< the learned factors (float), x ↦ x (Cᵀ ⊗ B)
    std::vector<double> loss_history;  ///< loss before each step and after the last (iters + 1 values)
};

/// Learns KOTMS factors for the weight W [m x n] (sources.md §2.2). The rotated weight is
/// `rotate_weights(w, result.rotation)`; activations take the same rotation online.
/// Throws `shape_error` (empty w, sizes not dividing n), `numeric_error` (NaN/Inf), `invalid_argument`.
/// Deterministic. Complexity O(iters·(m·n·(l + r) + l³ + r³)).
template <class = void>
[[nodiscard]] rotation_learning_result learn_kotms(const cref_matrix_f& w, const kotms_options& opt = {}) {
    constexpr const char* where = "learn_kotms";
    opt.validate(where);
    detail::require_nonempty(w, where, "w");
    const kronecker_factor_sizes s = opt.sizes.value_or(kotms_factor_sizes(w.rows(), w.cols()));
    detail::check_factor_shapes(w, s.l, s.r, where);
    const matrix_d wd = w.cast<double>();
    const detail::mixture_spec spec{{-1.0, 0.0, 1.0}, {opt.rho1, opt.rho0, opt.rho1}, opt.lambda_bal};
    matrix_d pl = matrix_d::Zero(s.l, s.l), pr = matrix_d::Zero(s.r, s.r);
    detail::adam_state al, ar;
    rotation_learning_result res;
    for (int it = 0; it <= opt.iters; ++it) {
        const matrix_d c = cayley(pl), b = cayley(pr);
        const auto ev = detail::mixture_shaping_loss(detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, false);
        res.loss_history.push_back(ev.nll + ev.balance);
        if (it == opt.iters) {
            res.rotation = {c.cast<float>(), b.cast<float>()};
            break;
        }
        matrix_d gc, gb;
        detail::kronecker_factor_gradients(wd, c, b, ev.grad, gc, gb);
        const bool upd_l = !opt.alternating || it % 2 == 0, upd_r = !opt.alternating || it % 2 == 1;
        if (upd_l && s.l > 1) al.step(pl, cayley_gradient(pl, c, gc), opt.lr_left);
        if (upd_r && s.r > 1) ar.step(pr, cayley_gradient(pr, b, gb), opt.lr_right);
    }
    if (opt.iters < 0 || res.rotation.left.size() == 0) res.rotation = kronecker_rotation::identity(s);
    return res;
}

LOWBIT_END_NAMESPACE
