#pragma once
/// \file okt.hpp
/// OKT — Orthogonal-Kronecker Transformation of BWLA (sources.md §3.2). **A reconstruction**: BWLA's
/// code is not released; this follows the documented facts (R₁ ⊗ R₂, identity init, alternating updates,
/// "EM minimisation" toward symmetric bimodal rows) by analogy with KOTMS, its released ternary twin.
///
/// Model: rows of W_rot = W (R₁ᵀ ⊗ R₂) (each row's l×r view M ↦ R₁·M·R₂), centred per row, fitted by the fixed
/// bimodal mixture p(x) = ½N(−c_o, σ²) + ½N(+c_o, σ²), c_o = mean|x| of the centred row (constant),
/// σ = ρ·c_o (ρ = 0.25 by analogy with KOTMS).
/// EM with fixed row statistics inside each step: the E-step computes, at the current rotation, every row's
/// mean m_o, scale c_o and the posterior responsibilities γ±; the M-step then holds (m_o, c_o, γ) fixed and
/// minimises the expected complete-data NLL  Q = −Σ Σ± γ± log(½N(y − m_o; ±c_o, σ²))  over one orthogonal
/// factor, the other frozen. With one σ for both components Q = Σ_o ‖C M_o B − T_o‖² / (2ρ²c_o²) + const,
/// T_o = m_o + c_o(γ₊ − γ₋) (the posterior means), and since ‖C M_o B‖ does not depend on an orthogonal
/// factor the exact minimiser is an orthogonal Procrustes solution: C = polar(Σ_o c_o⁻² T_o (M_o B)ᵀ) (l×l),
/// B = polar(Σ_o c_o⁻² (C M_o)ᵀ T_o) (r×r), polar(A) = U Vᵀ from the SVD A = U Σ Vᵀ. This is a true EM step:
/// the NLL at the E-step's (m_o, c_o) never increases (test_okt.cpp checks it, and checks the M-step against a
/// brute-force search). The next E-step re-estimates m_o and c_o by the moment rules above (row mean,
/// mean |x|), which are not the likelihood maximisers, so the recorded loss (statistics re-estimated) is
/// not guaranteed monotone; it decreases in practice. With `lambda_bal` > 0 the balance term makes Q non-
/// quadratic: the M-step is then `m_steps` Adam steps on the Cayley parameters of the factor, on Q with the
/// same fixed (m_o, c_o, γ) (a generalised EM step). The factors alternate R₁, R₂, R₁, ...
/// Rounds (λ_bal = 0, `detail::procrustes_em` in kotms.hpp): one E-step, then R₁ and, at the new R₁, R₂ with
/// the same statistics (expectation-conditional maximisation: Q still never increases); the targets are
/// over-relaxed, Y + ω(T − Y) with ω = `relaxation` (1.8; ω = 1 is the plain EM step above), which reaches
/// a given loss in fewer rounds; if the loss rises ω drops to 1; `tolerance` stops the run when a round
/// gains less than it. (Before issue 15 each factor had its own E-step and ω was 1.)
/// Factor sizes: the KOTMS rule. The fit uses `detail::sample_rows(w, sample_entries)` like KOTMS.
/// Complexity per EM round (both factors, λ_bal = 0): two O(m_s·n·r) float GEMMs, O(m_s·n·l) l-side products,
/// the E-step O(m_s·n) in float, SVDs of l×l and r×r (O(l³ + r³)); never an n×n matrix.
/// Measured: docs/transforms.md.
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

#include <Eigen/SVD>

#include <cstdint>
#include <optional>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// OKT settings (reconstructed defaults, see the file comment).
struct okt_options {
    /// At most this many EM rounds; each round updates R₁ then R₂ (λ_bal = 0: one E-step per round).
    /// 10 keeps a 4096² layer under 5 s on one core (docs/transforms.md "Learning time"); before issue 15
    /// the default was 25 rounds of plain EM.
    int rounds = 10;
    int m_steps = 2;          ///< Adam steps per M-step when lambda_bal > 0 (else the exact Procrustes M-step)
    /// Over-relaxation ω ∈ (0, 2) of the Procrustes targets (lambda_bal = 0): Y + ω(T − Y); 1 = plain EM
    /// (a guaranteed descent of the NLL at fixed statistics). ω > 1 reaches a given loss in fewer rounds
    /// (docs/transforms.md "Learning time"); if the loss rises, ω drops to 1 for the rest of the run.
    double relaxation = 1.8;
    /// Stop when a round lowers the loss by less than this (nats per weight, absolute: the loss is
    /// scale-free and crosses zero); 0 = run every round. Applies with lambda_bal = 0.
    double tolerance = 1e-3;
    double lr_left = 1e-2;    ///< learning rate of R₁'s Cayley parameters
    double lr_right = 1e-2;   ///< learning rate of R₂'s Cayley parameters
    double rho = 0.25;        ///< σ / c_o
    double lambda_bal = 0.0;  ///< optional responsibility-balance weight (target ½, ½)
    std::optional<kronecker_factor_sizes> sizes{}; ///< (l, r); default `kotms_factor_sizes(m, n)`
    std::int64_t sample_entries = 0; ///< fit on ⌊sample_entries / n⌋ evenly spaced rows when m·n exceeds it; ≤ 0 = every row
    /// Stochastic EM in row mini-batches of at most this many weights (`kotms_options::batch_entries`,
    /// `detail::procrustes_em`); ≤ 0 (default) = full batch. Applies with lambda_bal = 0.
    std::int64_t batch_entries = 0;

    /// Throws `invalid_argument` naming `where` for an out-of-range option.
    void validate(const char* where) const {
        detail::require(rounds >= 0 && m_steps >= 1, where, "rounds must be >= 0 and m_steps >= 1");
        detail::require(lr_left >= 0 && lr_right >= 0, where, "learning rates must be >= 0");
        detail::require(rho > 0, where, "rho must be > 0");
        detail::require(lambda_bal >= 0, where, "lambda_bal must be >= 0");
        detail::require(relaxation > 0 && relaxation < 2, where, "relaxation must be in (0, 2)");
        detail::require(tolerance >= 0, where, "tolerance must be >= 0");
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

namespace detail {

/// One OKT EM step (see okt.hpp's file comment) on the left factor (`side` 0, C) or the right one (1, B),
/// for the rows of `st` whose Z = M·B holds the current B: the E-step (`kronecker_stack::em_targets`, ω = 1) and
/// the exact M-step, an orthogonal Procrustes solution. Returns the new factor and the E-step's loss.
/// Requires equal component widths (`spec.rhos` all equal).
struct okt_em_step_result {
    matrix_d factor;
    double loss = 0;
};

template <class = void>
okt_em_step_result okt_em_step(kronecker_stack<>& st, const matrix_d& c, int side, const mixture_spec& spec) {
    okt_em_step_result out;
    out.loss = st.em_targets(c, spec, 1.0);
    out.factor = polar_orthogonal(side == 0 ? st.left_contract(st.g) : st.right_contract(c, st.g));
    return out;
}

} // namespace detail

/// Learns OKT factors for W [m x n] by alternating EM (see the file comment). `loss_history` holds the
/// bimodal loss (statistics re-estimated) of the fitted rows at every E-step and, unless `tolerance`
/// stopped the run (then the last E-step's loss is the final one), at the end: λ_bal = 0 gives at most
/// rounds + 1 values, one per round. O(rounds·(m_s·n·(l + r) + l³ + r³)).
/// Throws `shape_error` (empty w, sizes not dividing n), `numeric_error` (NaN/Inf), `invalid_argument`
/// (options). Deterministic.
template <class = void>
[[nodiscard]] rotation_learning_result learn_okt(const cref_matrix_f& w, const okt_options& opt = {}) {
    constexpr const char* where = "learn_okt";
    opt.validate(where);
    detail::require_nonempty(w, where, "w");
    const kronecker_factor_sizes s = opt.sizes.value_or(kotms_factor_sizes(w.rows(), w.cols()));
    detail::check_factor_shapes(w, s.l, s.r, where);
    const detail::mixture_spec spec{{-1.0, 1.0}, {opt.rho, opt.rho}, opt.lambda_bal};
    matrix_d c = matrix_d::Identity(s.l, s.l), b = matrix_d::Identity(s.r, s.r);
    matrix_d pl = matrix_d::Zero(s.l, s.l), pr = matrix_d::Zero(s.r, s.r); // Cayley parameters (λ_bal > 0)
    detail::adam_state al, ar;
    rotation_learning_result res;
    if (opt.lambda_bal == 0.0) { // exact (ω = 1) or over-relaxed Procrustes M-steps, one E-step per round
        auto batches = detail::minibatch_stacks(detail::sample_rows(w, opt.sample_entries), s, opt.batch_entries);
        batches.front().set_right(b);
        res.loss_history = detail::procrustes_em(batches, c, b, spec, opt.rounds, opt.relaxation, opt.tolerance);
        res.rotation = {c.cast<float>(), b.cast<float>()};
        return res;
    }
    detail::kronecker_stack<> st(detail::sample_rows(w, opt.sample_entries), s);
    st.set_right(b);
    for (int round = 0; round < opt.rounds; ++round)
        for (int side = 0; side < 2; ++side) {
            if ((side == 0 && s.l == 1) || (side == 1 && s.r == 1)) continue;
            // generalised M-step: Adam on Q with the E-step's (m_o, c_o, γ) fixed
            const auto e = detail::mixture_shaping_loss(st.rotated(c), spec, nullptr, nullptr, true);
            res.loss_history.push_back(e.nll + e.balance);
            for (int k = 0; k < opt.m_steps; ++k) {
                const auto ev = detail::mixture_shaping_loss(st.rotated(c), spec, &e.row_scale, &e.resp, false, &e.row_mean);
                if (side == 0) {
                    al.step(pl, cayley_gradient(pl, c, st.left_contract(ev.grad)), opt.lr_left);
                    c = cayley(pl);
                } else {
                    ar.step(pr, cayley_gradient(pr, b, st.right_contract(c, ev.grad)), opt.lr_right);
                    b = cayley(pr);
                    st.set_right(b);
                }
            }
        }
    const auto fin = detail::mixture_shaping_loss(st.rotated(c), spec, nullptr, nullptr, false);
    res.loss_history.push_back(fin.nll + fin.balance);
    res.rotation = {c.cast<float>(), b.cast<float>()};
    return res;
}

LOWBIT_END_NAMESPACE
