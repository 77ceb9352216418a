#pragma once
/// \file okt.hpp
/// OKT — Orthogonal-Kronecker Transformation of BWLA (sources.md §3.2). **A reconstruction**: BWLA's
/// code is not released; this follows the documented facts (R₁ ⊗ R₂, identity init, alternating updates,
/// "EM minimisation" toward symmetric bimodal rows) by analogy with KOTMS, its released ternary twin.
///
/// Model: rows of W_rot = W (R₁ᵀ ⊗ R₂) (each row's l×r view M ↦ R₁·M·R₂), centred per row, fitted by the fixed
/// bimodal mixture p(x) = ½N(−c_o, σ²) + ½N(+c_o, σ²), c_o = mean|x| of the centred row (constant),
/// σ = ρ·c_o (ρ = 0.25 by analogy with KOTMS).
/// EM: the E-step computes the posterior responsibilities γ±; the M-step takes `m_steps` Adam steps on the
/// Cayley parameters of one factor (the other frozen) minimising the expected complete-data NLL
/// −mean Σ± γ± log(½N±) (+ an optional balance term toward ½/½); the factors alternate R₁, R₂, R₁, ...
/// Factor sizes: the KOTMS rule. Complexity per M-step O(m·n·(l + r) + l³ + r³).
///
/// Compile time: `learn_okt` and `okt_loss` are function templates with one defaulted, unused parameter
/// (`template <class = void>`; call them as ordinary functions), so their Eigen decompositions and solvers
/// are compiled only in a translation unit that calls them (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/kotms.hpp>
#include <lowbit/kronecker.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/orthogonal_fit.hpp>
#include <lowbit/types.hpp>

#include <optional>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// OKT settings (reconstructed defaults, see the file comment).
struct okt_options {
    int rounds = 25;          ///< EM rounds; each round updates R₁ then R₂
    int m_steps = 2;          ///< Adam steps per M-step
    double lr_left = 1e-2;    ///< learning rate of R₁'s Cayley parameters
    double lr_right = 1e-2;   ///< learning rate of R₂'s Cayley parameters
    double rho = 0.25;        ///< σ / c_o
    double lambda_bal = 0.0;  ///< optional responsibility-balance weight (target ½, ½)
    std::optional<kronecker_factor_sizes> sizes{}; ///< (l, r); default `kotms_factor_sizes(m, n)`

    void validate(const char* where) const {
        detail::require(rounds >= 0 && m_steps >= 1, where, "rounds must be >= 0 and m_steps >= 1");
        detail::require(lr_left >= 0 && lr_right >= 0, where, "learning rates must be >= 0");
        detail::require(rho > 0, where, "rho must be > 0");
        detail::require(lambda_bal >= 0, where, "lambda_bal must be >= 0");
    }
};

/// The bimodal negative log-likelihood (+ balance) of W rotated by rows ↦ C·M·B (the quantity OKT's EM
/// decreases). Throws as `learn_okt`.
template <class = void>
[[nodiscard]] double okt_loss(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& left,
                              const Eigen::Ref<const matrix_d>& right, const okt_options& opt = {}) {
    constexpr const char* where = "okt_loss";
    opt.validate(where);
    detail::require_square(left.rows(), left.cols(), where, "left");
    detail::require_square(right.rows(), right.cols(), where, "right");
    detail::check_factor_shapes(w, left.rows(), right.rows(), where);
    const detail::mixture_spec spec{{-1.0, 1.0}, {opt.rho, opt.rho}, opt.lambda_bal};
    const auto ev = detail::mixture_shaping_loss(
        detail::kronecker_rotate_rows(w.cast<double>(), matrix_d(left), matrix_d(right)), spec, nullptr, nullptr, false);
    return ev.nll + ev.balance;
}

/// Learns OKT factors for W [m x n] by alternating EM (see the file comment). `loss_history` holds the
/// bimodal loss at every E-step and at the end. Throws `shape_error` (empty w, sizes not dividing n),
/// `numeric_error` (NaN/Inf), `invalid_argument` (options). Deterministic.
template <class = void>
[[nodiscard]] rotation_learning_result learn_okt(const cref_matrix_f& w, const okt_options& opt = {}) {
    constexpr const char* where = "learn_okt";
    opt.validate(where);
    detail::require_nonempty(w, where, "w");
    const kronecker_factor_sizes s = opt.sizes.value_or(kotms_factor_sizes(w.rows(), w.cols()));
    detail::check_factor_shapes(w, s.l, s.r, where);
    const matrix_d wd = w.cast<double>();
    const detail::mixture_spec spec{{-1.0, 1.0}, {opt.rho, opt.rho}, opt.lambda_bal};
    matrix_d pl = matrix_d::Zero(s.l, s.l), pr = matrix_d::Zero(s.r, s.r);
    detail::adam_state al, ar;
    rotation_learning_result res;
    for (int round = 0; round < opt.rounds; ++round)
        for (int side = 0; side < 2; ++side) {
            if ((side == 0 && s.l == 1) || (side == 1 && s.r == 1)) continue;
            // E-step at the current rotation
            auto e = detail::mixture_shaping_loss(detail::kronecker_rotate_rows(wd, cayley(pl), cayley(pr)), spec, nullptr,
                                                  nullptr, true);
            res.loss_history.push_back(e.nll + e.balance);
            const std::vector<double> resp = std::move(e.resp);
            // M-step on one factor with the responsibilities frozen
            for (int step = 0; step < opt.m_steps; ++step) {
                const matrix_d c = cayley(pl), b = cayley(pr);
                const auto ev = detail::mixture_shaping_loss(detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, &resp, false);
                matrix_d gc, gb;
                detail::kronecker_factor_gradients(wd, c, b, ev.grad, gc, gb);
                if (side == 0)
                    al.step(pl, cayley_gradient(pl, c, gc), opt.lr_left);
                else
                    ar.step(pr, cayley_gradient(pr, b, gb), opt.lr_right);
            }
        }
    const matrix_d c = cayley(pl), b = cayley(pr);
    const auto fin = detail::mixture_shaping_loss(detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, false);
    res.loss_history.push_back(fin.nll + fin.balance);
    res.rotation = {c.cast<float>(), b.cast<float>()};
    return res;
}

LOWBIT_END_NAMESPACE
