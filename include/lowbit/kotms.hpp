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
/// Alternative optimiser (`kotms_method::procrustes_em`, opt-in): OKT's alternating EM with exact
/// orthogonal-Procrustes M-steps (okt.hpp), valid here because ρ₀ = ρ₁ gives the three components one
/// width; it ignores the balance term while optimising.
/// Complexity per iteration: O(m_s·n·(l + r)) + O(l³ + r³) on m_s ≤ m sampled rows (`sample_entries`);
/// the Kronecker structure is used throughout, no n×n matrix is formed. The factors and the reference
/// loss (`kotms_loss`) are double; in the learners the two O(m_s·n·r) products per step and the mixture
/// run in float (Eigen GEMM and vectorised exp/log), the per-row sums are accumulated in double.
/// Measured (bench/bench_rotation_learning, one core): docs/transforms.md.
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

#include <algorithm>
#include <array>
#include <cstdint>
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
    matrix_d grad;           ///< ∂(nll + balance)/∂W_rot, c_o (and a fixed row mean) held constant
    vector_d row_scale;      ///< c_o per row
    vector_d row_mean;       ///< the row mean subtracted (computed, or the fixed one)
    std::vector<double> resp; ///< responsibilities when requested: row o's γ_k in resp[(o·K + k)·n, +n)
};

/// Scratch arrays of `mixture_row` (T = double) and `mixture_row_f` (T = float) for rows of width n
/// and K components.
template <class T>
struct basic_mixture_row_work {
    using array2 = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic>;
    using array1 = Eigen::Array<T, Eigen::Dynamic, 1>;
    array2 lg, e;                   ///< (n, K): log(π_k N_k(x)), then γ_k(x)
    array1 x, mx, s, g, h;          ///< (n): the centred row, max_k, Σ_k exp(lg − max), two gradients
    std::vector<T> mu, is2;         ///< per component: centre μ_k = means_k·c, 1/σ_k²
    void resize(Eigen::Index n, Eigen::Index K) {
        lg.resize(n, K);
        e.resize(n, K);
        x.resize(n);
        mx.resize(n);
        s.resize(n);
        g.resize(n);
        h.resize(n);
        mu.resize(static_cast<std::size_t>(K));
        is2.resize(static_cast<std::size_t>(K));
    }
};
using mixture_row_work = basic_mixture_row_work<double>;

/// The mixture terms of one centred row `w.x` with row scale c: fills w.lg, w.e = γ_k, w.mu, w.is2 and
/// returns Σ_j log p(x_j). K exp + 1 log per entry, whole-row Eigen array expressions (vectorised).
template <class = void>
double mixture_row(mixture_row_work& w, const mixture_spec& spec, double c) {
    const auto K = static_cast<Eigen::Index>(spec.means.size());
    const double log_pi = -std::log(static_cast<double>(K));
    constexpr double half_log_2pi = 0.91893853320467274178;
    c = std::max(c, 1e-30);
    for (Eigen::Index k = 0; k < K; ++k) {
        const auto ku = static_cast<std::size_t>(k);
        const double sig = spec.rhos[ku] * c;
        w.mu[ku] = spec.means[ku] * c;
        w.is2[ku] = 1.0 / (sig * sig);
        w.lg.col(k) = (log_pi - std::log(sig) - half_log_2pi) - 0.5 * w.is2[ku] * (w.x - w.mu[ku]).square();
    }
    w.mx = w.lg.col(0);
    for (Eigen::Index k = 1; k < K; ++k) w.mx = w.mx.max(w.lg.col(k));
    for (Eigen::Index k = 0; k < K; ++k) w.e.col(k) = (w.lg.col(k) - w.mx).exp();
    w.s = w.e.col(0);
    for (Eigen::Index k = 1; k < K; ++k) w.s += w.e.col(k);
    const Eigen::ArrayXd inv = w.s.inverse();
    for (Eigen::Index k = 0; k < K; ++k) w.e.col(k) *= inv; // γ_k
    return (w.mx + w.s.log()).sum();
}

using mixture_row_work_f = basic_mixture_row_work<float>;

/// `mixture_row` in single precision (16 lanes with AVX-512): the learners' hot path. Per-component
/// constants are formed in double and rounded once; the row's Σ_j log p(x_j) is accumulated by Eigen's
/// vectorised reduction in float and returned as double (tested through `kronecker_stack::kotms_eval`
/// against the double `mixture_shaping_loss`: loss to 1e-5 relative, gradient to 1e-4 of its largest
/// entry, test_kotms.cpp). K exp + 1 log per entry. The scale is floored at
/// `mixture_min_scale_f` (1e-15, so that 1/σ² stays a finite float; only a constant rotated row, e.g. a
/// zero row, has a smaller c_o).
inline constexpr double mixture_min_scale_f = 1e-15;

template <class = void>
double mixture_row_f(mixture_row_work_f& w, const mixture_spec& spec, double c) {
    const auto K = static_cast<Eigen::Index>(spec.means.size());
    const double log_pi = -std::log(static_cast<double>(K));
    constexpr double half_log_2pi = 0.91893853320467274178;
    c = std::max(c, mixture_min_scale_f);
    for (Eigen::Index k = 0; k < K; ++k) {
        const auto ku = static_cast<std::size_t>(k);
        const double sig = spec.rhos[ku] * c;
        w.mu[ku] = static_cast<float>(spec.means[ku] * c);
        w.is2[ku] = static_cast<float>(1.0 / (sig * sig));
        const auto k0 = static_cast<float>(log_pi - std::log(sig) - half_log_2pi);
        w.lg.col(k) = k0 - (0.5f * w.is2[ku]) * (w.x - w.mu[ku]).square();
    }
    w.mx = w.lg.col(0);
    for (Eigen::Index k = 1; k < K; ++k) w.mx = w.mx.max(w.lg.col(k));
    for (Eigen::Index k = 0; k < K; ++k) w.e.col(k) = (w.lg.col(k) - w.mx).exp();
    w.s = w.e.col(0);
    for (Eigen::Index k = 1; k < K; ++k) w.s += w.e.col(k);
    w.g = w.s.inverse();
    for (Eigen::Index k = 0; k < K; ++k) w.e.col(k) *= w.g; // γ_k
    return static_cast<double>((w.mx + w.s.log()).sum());
}

/// Evaluates the mixture-shaping loss (see kotms.hpp's file comment); the double-precision reference the
/// tests and `kotms_loss`/`okt_loss` use. `fixed_scale`: use these c_o instead of computing them.
/// `frozen`: EM M-step — the NLL part becomes −mean Σ_k γ_k^old log(π_k N_k) with the given
/// responsibilities. `fixed_mean`: subtract these row means instead of the rows' own (the centring is then
/// a constant and the gradient is not projected). The balance term's gradient needs the global mean
/// responsibilities, so with λ_bal > 0 the responsibilities are kept (O(m·n·K) memory) and a second,
/// transcendental-free pass adds it. O(m·n·K).
template <class = void>
mixture_eval mixture_shaping_loss(const matrix_d& wrot, const mixture_spec& spec, const vector_d* fixed_scale,
                                  const std::vector<double>* frozen, bool want_resp, const vector_d* fixed_mean = nullptr) {
    using arr = Eigen::ArrayXd;
    const Eigen::Index m = wrot.rows(), n = wrot.cols();
    const auto K = static_cast<Eigen::Index>(spec.means.size());
    const double N = static_cast<double>(m) * static_cast<double>(n);
    const bool balance = spec.lambda_bal != 0.0;
    const bool keep = want_resp || balance;
    mixture_eval out;
    out.grad.resize(m, n);
    out.row_scale.resize(m);
    out.row_mean.resize(m);
    if (keep) out.resp.resize(static_cast<std::size_t>(m * n * K));
    std::vector<double> rbar(static_cast<std::size_t>(K), 0.0);
    mixture_row_work w;
    w.resize(n, K);
    double nll = 0;
    for (Eigen::Index o = 0; o < m; ++o) {
        const double mean = fixed_mean ? (*fixed_mean)(o) : wrot.row(o).mean();
        out.row_mean(o) = mean;
        w.x = wrot.row(o).transpose().array() - mean;
        out.row_scale(o) = fixed_scale ? (*fixed_scale)(o) : w.x.abs().mean();
        const double ll = mixture_row(w, spec, out.row_scale(o));
        w.g.setZero();
        if (frozen) {
            const Eigen::Map<const Eigen::ArrayXXd> fr(frozen->data() + o * n * K, n, K);
            for (Eigen::Index k = 0; k < K; ++k) {
                nll -= (fr.col(k) * w.lg.col(k)).sum();
                w.g += fr.col(k) * w.is2[static_cast<std::size_t>(k)] * (w.x - w.mu[static_cast<std::size_t>(k)]);
            }
        } else {
            nll -= ll;
            for (Eigen::Index k = 0; k < K; ++k)
                w.g += w.e.col(k) * w.is2[static_cast<std::size_t>(k)] * (w.x - w.mu[static_cast<std::size_t>(k)]);
        }
        for (Eigen::Index k = 0; k < K; ++k) rbar[static_cast<std::size_t>(k)] += w.e.col(k).sum();
        if (keep) Eigen::Map<Eigen::ArrayXXd>(out.resp.data() + o * n * K, n, K) = w.e;
        out.grad.row(o) = (w.g / N).transpose().matrix();
    }
    out.nll = nll / N;
    double bal = 0;
    for (auto& rk : rbar) {
        rk /= N;
        bal += (rk - 1.0 / static_cast<double>(K)) * (rk - 1.0 / static_cast<double>(K));
    }
    out.balance = spec.lambda_bal * bal;
    if (balance) { // + Σ_k a_k γ_k (s_k − s̄), a_k = 2λ(r̄_k − 1/K), s_k = −(x − μ_k)/σ_k², s̄ = Σ_j γ_j s_j
        arr sk(n), sbar(n), ag(n);
        for (Eigen::Index o = 0; o < m; ++o) {
            w.x = wrot.row(o).transpose().array() - out.row_mean(o);
            const double c = std::max(out.row_scale(o), 1e-30);
            const Eigen::Map<const Eigen::ArrayXXd> gam(out.resp.data() + o * n * K, n, K);
            sbar.setZero();
            ag.setZero();
            w.g.setZero();
            for (Eigen::Index k = 0; k < K; ++k) {
                const auto ku = static_cast<std::size_t>(k);
                const double sig = spec.rhos[ku] * c, ak = 2.0 * spec.lambda_bal * (rbar[ku] - 1.0 / static_cast<double>(K));
                sk = -(w.x - spec.means[ku] * c) / (sig * sig);
                sbar += gam.col(k) * sk;
                w.g += ak * gam.col(k) * sk;
                ag += ak * gam.col(k);
            }
            w.g -= ag * sbar;
            out.grad.row(o) += (w.g / N).transpose().matrix();
        }
        if (!want_resp) std::vector<double>().swap(out.resp);
    }
    if (!fixed_mean)
        for (Eigen::Index o = 0; o < m; ++o) // centring Jacobian (symmetric projection)
            out.grad.row(o).array() -= out.grad.row(o).mean();
    return out;
}

/// Rows of w (m × l·r) as l×r matrices M_o, mapped to C·M_o·B (double; the oracle the tests use).
/// O(m·n·(l + r)).
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

/// ∂L/∂C and ∂L/∂B from G = ∂L/∂W_rot for W_rot rows = C M_o B (double; the oracle the tests use).
/// O(m·n·(l + r)).
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

/// The rows the learners fit: all of w when `max_entries` ≤ 0 or m·n ≤ max_entries, else
/// m_s = max(1, ⌊max_entries / n⌋) evenly spaced rows (sample row i is row ⌊i·m / m_s⌋). Deterministic.
template <class = void>
matrix_f sample_rows(const cref_matrix_f& w, std::int64_t max_entries) {
    const Eigen::Index m = w.rows(), n = w.cols();
    if (max_entries <= 0 || static_cast<std::int64_t>(m) * n <= max_entries) return w;
    const Eigen::Index ms = std::max<Eigen::Index>(1, static_cast<Eigen::Index>(max_entries / n));
    matrix_f out(ms, n);
    for (Eigen::Index i = 0; i < ms; ++i) out.row(i) = w.row(static_cast<Eigen::Index>((static_cast<std::int64_t>(i) * m) / ms));
    return out;
}

/// Mini-batches of a fit over `rows` rows of n weights with at most `batch_entries` weights a batch:
/// min(rows, ⌈rows·n / batch_entries⌉); 1 when `batch_entries` ≤ 0 or everything fits.
inline Eigen::Index minibatch_count(Eigen::Index rows, Eigen::Index n, std::int64_t batch_entries) {
    const std::int64_t total = static_cast<std::int64_t>(rows) * n;
    if (batch_entries <= 0 || total <= batch_entries) return 1;
    return static_cast<Eigen::Index>(std::min<std::int64_t>(rows, (total + batch_entries - 1) / batch_entries));
}

/// Rows j, j + count, j + 2·count, … of w (mini-batch j of `count`), 0 ≤ j < count ≤ rows.
template <class = void>
matrix_f strided_rows(const matrix_f& w, Eigen::Index j, Eigen::Index count) {
    const Eigen::Index k = (w.rows() - j + count - 1) / count;
    matrix_f out(k, w.cols());
    for (Eigen::Index i = 0; i < k; ++i) out.row(i) = w.row(j + i * count);
    return out;
}

/// The learners' working set: the (sampled) weight rows as stacked l×r views M_o, `(rows·l, r)`, and
/// Z = M_o·B for the current B. The O(rows·n·r) products (Z, and the r-side contraction) run in float
/// through Eigen's GEMM; the l-side ones are O(rows·n·l). The fused evaluations (`kotms_eval`,
/// `em_targets`) rotate one row at a time (W_rot row = C·Z_o), evaluate the mixture on it in float
/// (`mixture_row_f`; the double `mixture_shaping_loss` is the tests' reference) and leave the per-entry
/// result in the float buffer `g`, so no rows×n double matrix is formed.
/// (A template with one defaulted, unused parameter so that its GEMMs are compiled only where a learner is
/// called, docs/compile_time.md; write `kronecker_stack<>` or let CTAD deduce it.)
template <class = void>
struct kronecker_stack {
    Eigen::Index rows = 0, l = 1, r = 1;
    matrix_f m; ///< (rows·l, r): M_o stacked
    matrix_f z; ///< (rows·l, r): M_o·B stacked, after `set_right`
    matrix_f g; ///< (rows·l, r): ∂L/∂W_rot (`kotms_eval`) or the Procrustes targets (`em_targets`)
    std::vector<float> u; ///< (rows, K−1, n): γ_k(s_k − s̄), kept by `kotms_eval` for the balance term
    vector_d row_weight;  ///< (rows): c_o⁻² of the last `em_targets`
    matrix_f v; ///< (rows·l, r) scratch: C·M_o stacked
    mixture_row_work_f work;

    kronecker_stack(const matrix_f& w, kronecker_factor_sizes s)
        : rows(w.rows()), l(s.l), r(s.r), m(Eigen::Map<const matrix_f>(w.data(), w.rows() * s.l, s.r)) {}

    /// Z ← M·B. O(rows·n·r).
    void set_right(const matrix_d& b) { z.noalias() = m * b.cast<float>(); }

    /// W_rot rows C·Z_o, `(rows, n)`, double. O(rows·n·l).
    [[nodiscard]] matrix_d rotated(const matrix_d& c) const {
        const matrix_f cf = c.cast<float>();
        matrix_f y(rows, l * r);
        for (Eigen::Index o = 0; o < rows; ++o)
            Eigen::Map<matrix_f>(y.data() + o * l * r, l, r).noalias() = cf * z.middleRows(o * l, l);
        return y.cast<double>();
    }

    /// Σ_o G_o Z_oᵀ (l×l) for G `(rows·l, r)` (row o's l×r block G_o): ∂L/∂C when G = ∂L/∂W_rot.
    /// O(rows·n·l).
    [[nodiscard]] matrix_d left_contract(const matrix_f& gs) const {
        matrix_d acc = matrix_d::Zero(l, l);
        matrix_f part(l, l);
        for (Eigen::Index o = 0; o < rows; ++o) {
            part.noalias() = gs.middleRows(o * l, l) * z.middleRows(o * l, l).transpose();
            acc += part.cast<double>();
        }
        return acc;
    }
    [[nodiscard]] matrix_d left_contract(const matrix_d& gd) const {
        const matrix_f gf = gd.cast<float>();
        return left_contract(matrix_f(Eigen::Map<const matrix_f>(gf.data(), rows * l, r)));
    }

    /// Σ_o (C M_o)ᵀ G_o (r×r) for G `(rows·l, r)`: ∂L/∂B when G = ∂L/∂W_rot. O(rows·n·(l + r)).
    [[nodiscard]] matrix_d right_contract(const matrix_d& c, const matrix_f& gs) {
        const matrix_f cf = c.cast<float>();
        v.resize(rows * l, r);
        for (Eigen::Index o = 0; o < rows; ++o) v.middleRows(o * l, l).noalias() = cf * m.middleRows(o * l, l);
        const matrix_f out = v.transpose() * gs;
        return out.cast<double>();
    }
    [[nodiscard]] matrix_d right_contract(const matrix_d& c, const matrix_d& gd) {
        const matrix_f gf = gd.cast<float>();
        return right_contract(c, matrix_f(Eigen::Map<const matrix_f>(gf.data(), rows * l, r)));
    }

    /// KOTMS (any `spec`): the loss (nll + balance, see kotms.hpp) of the rows rotated by (C, the current
    /// B) and, with `want_grad`, ∂L/∂W_rot (c_o held constant, centring projected) into `g`. One pass over
    /// the rows in float, O(rows·n·(l + K)); with λ_bal > 0 the per-entry terms γ_k(s_k − s̄), k < K − 1,
    /// are kept (rows·n·(K−1) floats) and a second, transcendental-free pass adds the balance gradient
    /// once the global mean responsibilities are known.
    double kotms_eval(const matrix_d& c, const mixture_spec& spec, bool want_grad) {
        const Eigen::Index n = l * r;
        const auto K = static_cast<Eigen::Index>(spec.means.size());
        const double N = static_cast<double>(rows) * static_cast<double>(n);
        const auto invN = static_cast<float>(1.0 / N);
        const bool balance = spec.lambda_bal != 0.0 && want_grad && K > 1;
        const matrix_f cf = c.cast<float>();
        matrix_f yo(l, r);
        work.resize(n, K);
        if (want_grad) g.resize(rows * l, r);
        if (balance) u.resize(static_cast<std::size_t>(rows * n * (K - 1)));
        std::vector<double> rbar(static_cast<std::size_t>(K), 0.0);
        double nll = 0;
        for (Eigen::Index o = 0; o < rows; ++o) {
            yo.noalias() = cf * z.middleRows(o * l, l);
            work.x = Eigen::Map<const Eigen::ArrayXf>(yo.data(), n);
            work.x -= work.x.mean();
            const double scale = static_cast<double>(work.x.abs().mean());
            nll -= mixture_row_f(work, spec, scale);
            for (Eigen::Index k = 0; k < K; ++k) rbar[static_cast<std::size_t>(k)] += static_cast<double>(work.e.col(k).sum());
            if (!want_grad) continue;
            work.g.setZero();
            for (Eigen::Index k = 0; k < K; ++k)
                work.g += work.e.col(k) * work.is2[static_cast<std::size_t>(k)] * (work.x - work.mu[static_cast<std::size_t>(k)]);
            work.g -= work.g.mean(); // centring Jacobian
            Eigen::Map<Eigen::ArrayXf>(g.data() + o * n, n) = work.g * invN;
            if (!balance) continue;
            // s_k = −(x − μ_k)/σ_k², s̄ = Σ_j γ_j s_j; keep γ_k (s_k − s̄) for k < K − 1 (they sum to 0 over k)
            work.h.setZero();
            for (Eigen::Index k = 0; k < K; ++k)
                work.h -= work.e.col(k) * work.is2[static_cast<std::size_t>(k)] * (work.x - work.mu[static_cast<std::size_t>(k)]);
            for (Eigen::Index k = 0; k + 1 < K; ++k) {
                const auto ku = static_cast<std::size_t>(k);
                Eigen::Map<Eigen::ArrayXf>(u.data() + (o * (K - 1) + k) * n, n) =
                    work.e.col(k) * (-(work.x - work.mu[ku]) * work.is2[ku] - work.h);
            }
        }
        double bal = 0;
        for (auto& rk : rbar) {
            rk /= N;
            bal += (rk - 1.0 / static_cast<double>(K)) * (rk - 1.0 / static_cast<double>(K));
        }
        if (balance) { // + Σ_k a_k γ_k (s_k − s̄) = Σ_{k<K−1} (a_k − a_{K−1}) γ_k (s_k − s̄), a_k = 2λ(r̄_k − 1/K)
            std::vector<float> da(static_cast<std::size_t>(K - 1));
            const double alast = 2.0 * spec.lambda_bal * (rbar[static_cast<std::size_t>(K - 1)] - 1.0 / static_cast<double>(K));
            for (Eigen::Index k = 0; k + 1 < K; ++k)
                da[static_cast<std::size_t>(k)] = static_cast<float>(
                    (2.0 * spec.lambda_bal * (rbar[static_cast<std::size_t>(k)] - 1.0 / static_cast<double>(K)) - alast) / N);
            for (Eigen::Index o = 0; o < rows; ++o) {
                work.h.setZero();
                for (Eigen::Index k = 0; k + 1 < K; ++k)
                    work.h += da[static_cast<std::size_t>(k)] * Eigen::Map<const Eigen::ArrayXf>(u.data() + (o * (K - 1) + k) * n, n);
                Eigen::Map<Eigen::ArrayXf>(g.data() + o * n, n) += work.h - work.h.mean();
            }
        }
        return nll / N + spec.lambda_bal * bal;
    }

    /// EM E-step for a mixture whose components share one width (`spec.rhos` all equal), at (C, the
    /// current B): returns the loss (statistics re-estimated: row means m_o, scales c_o, responsibilities
    /// γ_k) and leaves in `g` the weighted Procrustes targets c_o⁻²((1 − ω)·Y_o + ω·T_o), Y_o = C·Z_o the
    /// rotated row, T_o = m_o + c_o Σ_k means_k γ_k its posterior mean (ω = `relaxation`; ω = 1 is the
    /// plain EM target c_o⁻² T_o); `row_weight` ← c_o⁻². O(rows·n·(l + K)), float.
    double em_targets(const matrix_d& c, const mixture_spec& spec, double relaxation = 1.0) {
        const Eigen::Index n = l * r;
        const auto K = static_cast<Eigen::Index>(spec.means.size());
        const double N = static_cast<double>(rows) * static_cast<double>(n);
        const matrix_f cf = c.cast<float>();
        const auto om = static_cast<float>(relaxation);
        matrix_f yo(l, r);
        work.resize(n, K);
        g.resize(rows * l, r);
        row_weight.resize(rows);
        std::vector<double> rbar(static_cast<std::size_t>(K), 0.0);
        double nll = 0;
        for (Eigen::Index o = 0; o < rows; ++o) {
            yo.noalias() = cf * z.middleRows(o * l, l);
            work.x = Eigen::Map<const Eigen::ArrayXf>(yo.data(), n);
            const float mean = work.x.mean();
            work.x -= mean;
            const double co = std::max(static_cast<double>(work.x.abs().mean()), mixture_min_scale_f);
            nll -= mixture_row_f(work, spec, co);
            work.g.setZero(); // Σ_k μ_k γ_k
            for (Eigen::Index k = 0; k < K; ++k) {
                rbar[static_cast<std::size_t>(k)] += static_cast<double>(work.e.col(k).sum());
                work.g += work.mu[static_cast<std::size_t>(k)] * work.e.col(k);
            }
            row_weight(o) = 1.0 / (co * co);
            const auto wgt = static_cast<float>(row_weight(o));
            // (1 − ω)(x + m) + ω(m + Σ μγ) = m + x + ω(Σ μγ − x)
            Eigen::Map<Eigen::ArrayXf>(g.data() + o * n, n) = wgt * (mean + work.x + om * (work.g - work.x));
        }
        double bal = 0;
        for (auto& rk : rbar) {
            rk /= N;
            bal += (rk - 1.0 / static_cast<double>(K)) * (rk - 1.0 / static_cast<double>(K));
        }
        return nll / N + spec.lambda_bal * bal;
    }
};

/// The two M-steps of a Procrustes EM round on the targets the E-step `st.em_targets(c, spec, relaxation)`
/// left in `st.g` (row o's block G_o), the E-step's statistics (m_o, c_o, γ) fixed:
/// C ← polar(Σ_o G_o Z_oᵀ), then, at the new C, B ← polar(Σ_o (C M_o)ᵀ G_o) and Z ← M·B
/// (expectation-conditional maximisation: one E-step, both factors). With ω = `relaxation` = 1 each update
/// is the exact minimiser over its factor of the expected complete-data NLL
/// Q = Σ_o ‖C M_o B − T_o‖²/(2ρ²c_o²) + const (‖C M_o B‖ does not depend on an orthogonal factor), so Q,
/// and with it the NLL at the fixed statistics, never increases (EM's inequality; test_okt.cpp).
/// ω ∈ (1, 2) over-relaxes: the targets Y_o + ω(T_o − Y_o) are a gradient step on Q of ω times EM's step
/// length, projected back to the orthogonal factors (Salakhutdinov & Roweis 2003); no longer a guaranteed
/// descent (`procrustes_em` guards it). ω ∈ (0, 1) under-relaxes and keeps the guarantee. For B the targets are moved to the new C: + c_o⁻²(1 − ω)(C' − C)Z_o.
/// O(rows·n·(l + r) + l³ + r³): two l-side products, one O(rows·n·r) contraction and one O(rows·n·r)
/// update of Z (float GEMMs), SVDs of l×l and r×r (in float for orders ≥ `polar_float_min_order`,
/// `polar_orthogonal_f`; double below).
template <class = void>
void procrustes_m_steps(kronecker_stack<>& st, matrix_d& c, matrix_d& b, double relaxation) {
    const auto polar = [](const matrix_d& m) {
        return m.rows() >= polar_float_min_order ? polar_orthogonal_f(m) : polar_orthogonal(m);
    };
    matrix_d cn = c;
    if (st.l > 1) cn = polar(st.left_contract(st.g));
    if (st.r > 1) {
        if (relaxation != 1.0 && st.l > 1) {
            const matrix_f dc = (cn - c).cast<float>();
            const Eigen::Index l = st.l;
            matrix_f d(l, st.r);
            for (Eigen::Index o = 0; o < st.rows; ++o) {
                d.noalias() = dc * st.z.middleRows(o * l, l);
                st.g.middleRows(o * l, l) += static_cast<float>(st.row_weight(o) * (1.0 - relaxation)) * d;
            }
        }
        b = polar(st.right_contract(cn, st.g));
        st.set_right(b);
    }
    c = std::move(cn);
}

/// One Procrustes EM round: the E-step `st.em_targets(c, spec, relaxation)` at (C, B) (B in `st.z`), then
/// `procrustes_m_steps`. Requires equal component widths. Returns the E-step's loss.
template <class = void>
double procrustes_em_round(kronecker_stack<>& st, matrix_d& c, matrix_d& b, const mixture_spec& spec, double relaxation) {
    const double loss = st.em_targets(c, spec, relaxation);
    procrustes_m_steps(st, c, b, relaxation);
    return loss;
}

/// Alternating Procrustes EM (`procrustes_em_round`) for up to `rounds` rounds from (c, b) over the row
/// mini-batches `batches` (B = batches.size() ≥ 1; with B = 1, B must already be in its `z`): round t runs
/// on batch t mod B (stochastic EM: each round's E- and M-step see one batch; with B > 1 the batch's Z is
/// recomputed for the current B first). Returns the loss at every E-step (the loss of that round's batch)
/// and, if every round ran, at the end (rounds + 1 values; the last is the loss of the returned (c, b) on
/// batch `rounds` mod B). Safeguard of the over-relaxation: when the loss of a batch rises since that
/// batch's previous E-step after an over-relaxed round, ω drops to 1 for the rest of the run (this
/// round's targets are rescaled to ω = 1, no extra pass). `tolerance` > 0: stop when a round lowers its
/// batch's loss, against the same batch's previous E-step, by less than `tolerance` (nats per weight; the
/// loss is per weight and scale-free, and it crosses zero, so the change is absolute, not relative); 0:
/// run every round. Deterministic.
template <class = void>
std::vector<double> procrustes_em(std::vector<kronecker_stack<>>& batches, matrix_d& c, matrix_d& b,
                                  const mixture_spec& spec, int rounds, double relaxation, double tolerance) {
    std::vector<double> hist;
    const std::size_t nb = batches.size();
    std::vector<double> last(nb, std::numeric_limits<double>::quiet_NaN());
    double om = relaxation;
    for (int it = 0; it < rounds; ++it) {
        const std::size_t j = static_cast<std::size_t>(it) % nb;
        auto& st = batches[j];
        if (nb > 1) st.set_right(b);
        const double loss = st.em_targets(c, spec, om);
        const double before = last[j];
        last[j] = loss;
        if (!std::isnan(before)) {
            const double drop = before - loss;
            if (drop < 0 && om != 1.0) { // rescale this round's targets to ω = 1: G ← wY + (G − wY)/ω
                const matrix_f cf = c.cast<float>();
                const Eigen::Index l = st.l, r = st.r;
                matrix_f y(l, r);
                for (Eigen::Index o = 0; o < st.rows; ++o) {
                    y.noalias() = static_cast<float>(st.row_weight(o)) * (cf * st.z.middleRows(o * l, l));
                    st.g.middleRows(o * l, l) = y + (st.g.middleRows(o * l, l) - y) / static_cast<float>(om);
                }
                om = 1.0;
            } else if (tolerance > 0 && drop < tolerance) {
                hist.push_back(loss);
                return hist;
            }
        }
        hist.push_back(loss);
        procrustes_m_steps(st, c, b, om);
    }
    auto& st = batches[static_cast<std::size_t>(rounds > 0 ? rounds : 0) % nb];
    if (nb > 1) st.set_right(b);
    hist.push_back(st.kotms_eval(c, spec, false));
    return hist;
}

/// One kronecker_stack per mini-batch of the fitted rows `fit` (`minibatch_count` batches, batch j = rows
/// j, j + B, …; one stack of every row when B = 1).
template <class = void>
std::vector<kronecker_stack<>> minibatch_stacks(const matrix_f& fit, kronecker_factor_sizes s, std::int64_t batch_entries) {
    std::vector<kronecker_stack<>> batches;
    const Eigen::Index nb = minibatch_count(fit.rows(), fit.cols(), batch_entries);
    if (nb == 1) {
        batches.emplace_back(fit, s);
    } else {
        batches.reserve(static_cast<std::size_t>(nb));
        for (Eigen::Index j = 0; j < nb; ++j) batches.emplace_back(strided_rows(fit, j, nb), s);
    }
    return batches;
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

/// How `learn_kotms` minimises the KOTMS loss.
enum class kotms_method {
    /// The published optimiser: `iters` full-batch Adam steps on the factors' Cayley parameters.
    adam,
    /// Alternating Procrustes EM (`detail::procrustes_em`, as OKT): `iters` rounds of one E-step and an
    /// exact orthogonal-Procrustes update of C then B, over-relaxed by `relaxation`. Needs ρ₀ = ρ₁ (one
    /// width makes the M-step a Procrustes problem). It minimises the NLL only: the balance term is
    /// reported in the loss but not optimised. Each round costs about what an Adam step does; measured
    /// (docs/transforms.md "Learning time") it reaches Adam's 100-step loss in 70 rounds at 4096² and
    /// matches it (3e-4 worse) in 100 rounds at 512². Adam is the published optimiser and the default;
    /// `kotms_layer_options` picks this method, in row mini-batches, for layers above 2²¹ weights.
    procrustes_em,
};

/// KOTMS settings; defaults are the published CLI values (sources.md §2.2).
struct kotms_options {
    int iters = 100;           ///< Adam steps, or EM rounds with `kotms_method::procrustes_em` (≥ 0)
    double lr_left = 1e-2;     ///< learning rate of the l-factor's Cayley parameters (Adam)
    double lr_right = 1e-2;    ///< learning rate of the r-factor's Cayley parameters (Adam)
    double rho0 = 0.25;        ///< σ₀ / c_o of the zero component
    double rho1 = 0.25;        ///< σ₁ / c_o of the ±c_o components
    double lambda_bal = 0.1;   ///< weight of the responsibility-balance term
    bool alternating = false;  ///< Adam: update C on even steps and B on odd steps (paper figure) instead of both
    kotms_method method = kotms_method::adam; ///< the optimiser (see `kotms_method`)
    double relaxation = 1.8;   ///< `procrustes_em`: over-relaxation ω ∈ (0, 2) of the EM targets (1 = plain EM)
    double tolerance = 0.0;    ///< `procrustes_em`: stop when a round lowers the loss by less (nats/weight); 0 = never
    std::optional<kronecker_factor_sizes> sizes{}; ///< (l, r); default `kotms_factor_sizes(m, n)`
    /// Entries the loss is fitted on: a layer with more than this many weights is fitted on
    /// ⌊sample_entries / n⌋ evenly spaced rows; ≤ 0 (default) = every row, the published full batch.
    /// Sampling overfits the r×r factor (r(r−1)/2 free parameters against rows·l vectors of length r):
    /// at 4096² with 256 or 1024 rows the loss of the whole layer ends far above the full batch's
    /// (docs/transforms.md has the figures), so it is off unless asked for.
    std::int64_t sample_entries = 0;
    /// Mini-batches: when the fitted rows hold more than this many weights they are split into
    /// B = min(rows, ⌈rows·n / batch_entries⌉) strided batches (batch j = rows j, j + B, j + 2B, …) and
    /// step or round t fits batch t mod B only (Adam: stochastic mini-batch Adam; `procrustes_em`:
    /// stochastic EM, each round's E- and M-step on one batch). A step then costs about 1/B of a
    /// full-batch one and, unlike a fixed row sample (`sample_entries`), every row keeps being seen.
    /// ≤ 0 (default) = full batch, the published setting. `kotms_layer_options` sets it for large layers.
    std::int64_t batch_entries = 0;

    /// Throws `invalid_argument` naming `where` for an out-of-range option.
    void validate(const char* where) const {
        detail::require(iters >= 0, where, "iters must be >= 0");
        detail::require(lr_left >= 0 && lr_right >= 0, where, "learning rates must be >= 0");
        detail::require(rho0 > 0 && rho1 > 0, where, "rho0 and rho1 must be > 0");
        detail::require(lambda_bal >= 0, where, "lambda_bal must be >= 0");
        detail::require(method == kotms_method::adam || method == kotms_method::procrustes_em, where, "unknown method");
        detail::require(relaxation > 0 && relaxation < 2, where, "relaxation must be in (0, 2)");
        detail::require(tolerance >= 0, where, "tolerance must be >= 0");
        detail::require(method != kotms_method::procrustes_em || rho0 == rho1, where,
                        "method procrustes_em needs rho0 == rho1 (one width makes the M-step a Procrustes problem)");
    }
};

/// Weights up to which `kotms_layer_options` keeps the published full-batch Adam (2²¹: every layer of a
/// 512- or 1536-wide model).
inline constexpr std::int64_t kotms_full_batch_max_weights = std::int64_t{1} << 21;

/// The KOTMS settings the recipes use for a layer of m×n weights (factor sizes by the KOTMS rule).
/// Up to `kotms_full_batch_max_weights` weights: the published defaults (100 full-batch Adam steps).
/// Larger layers: stochastic Procrustes EM (`kotms_method::procrustes_em`, ω = 1.8) over row
/// mini-batches of at most 2²² weights (`batch_entries`), 24 rounds (6 passes over the rows of a 4096²
/// layer, which takes 4 batches of 1024 rows). Like every `procrustes_em` run it minimises the mixture
/// NLL and leaves the balance term unoptimised. Measured at 4096² (8, 512) on one core
/// (docs/transforms.md "Large layers"): 4.25 s and loss −0.70 against 43.9 s and −0.80 for the
/// published 100 full-batch Adam steps in the same run, −0.58 for 12 full-batch Adam steps (5.6 s),
/// −0.67 for 12 full-batch EM rounds (5.1 s). Throws `invalid_argument` for m < 1 or n < 1.
[[nodiscard]] inline kotms_options kotms_layer_options(Eigen::Index m, Eigen::Index n) {
    kotms_options o;
    o.sizes = kotms_factor_sizes(m, n);
    if (static_cast<std::int64_t>(m) * n > kotms_full_batch_max_weights) {
        o.method = kotms_method::procrustes_em;
        o.batch_entries = std::int64_t{1} << 22;
        o.iters = 24;
    }
    return o;
}

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
/// The loss is fitted on `detail::sample_rows(w, opt.sample_entries)` (every row by default);
/// `loss_history` is the loss of those rows (Adam: before each step and after the last, iters + 1 values;
/// `procrustes_em`: see `detail::procrustes_em`, fewer values when `tolerance` stops it). Each Adam step: Z = M·B for the sampled rows (float GEMM,
/// O(m_s·n·r)), W_rot = C·Z (O(m_s·n·l)), the mixture loss and its gradient (O(m_s·n), float, vectorised
/// exp/log, one pass plus a transcendental-free pass for the balance term),
/// ∂L/∂B = Σ (C M_o)ᵀ G_o (O(m_s·n·r)), ∂L/∂C = Σ G_o Z_oᵀ (O(m_s·n·l)), Cayley maps and their gradients
/// (O(l³ + r³)); never an n×n matrix. Total O(iters·(m_s·n·(l + r) + l³ + r³)), m_s the sampled rows;
/// a `procrustes_em` round has the same order (SVDs instead of Cayley maps).
/// Throws `shape_error` (empty w, sizes not dividing n), `numeric_error` (NaN/Inf), `invalid_argument`.
/// Deterministic.
template <class = void>
[[nodiscard]] rotation_learning_result learn_kotms(const cref_matrix_f& w, const kotms_options& opt = {}) {
    constexpr const char* where = "learn_kotms";
    opt.validate(where);
    detail::require_nonempty(w, where, "w");
    const kronecker_factor_sizes s = opt.sizes.value_or(kotms_factor_sizes(w.rows(), w.cols()));
    detail::check_factor_shapes(w, s.l, s.r, where);
    auto batches = detail::minibatch_stacks(detail::sample_rows(w, opt.sample_entries), s, opt.batch_entries);
    const std::size_t nb = batches.size();
    const detail::mixture_spec spec{{-1.0, 0.0, 1.0}, {opt.rho1, opt.rho0, opt.rho1}, opt.lambda_bal};
    matrix_d pl = matrix_d::Zero(s.l, s.l), pr = matrix_d::Zero(s.r, s.r);
    matrix_d c = matrix_d::Identity(s.l, s.l), b = matrix_d::Identity(s.r, s.r);
    detail::adam_state al, ar;
    rotation_learning_result res;
    if (nb == 1) batches.front().set_right(b); // with B > 1 batches, each sets Z when it is visited
    if (opt.method == kotms_method::procrustes_em) {
        res.loss_history = detail::procrustes_em(batches, c, b, spec, opt.iters, opt.relaxation, opt.tolerance);
        res.rotation = {c.cast<float>(), b.cast<float>()};
        return res;
    }
    for (int it = 0; it <= opt.iters; ++it) {
        auto& st = batches[static_cast<std::size_t>(it) % nb];
        if (nb > 1) st.set_right(b); // B moved since this batch was last used
        res.loss_history.push_back(st.kotms_eval(c, spec, it < opt.iters));
        if (it == opt.iters) break;
        const bool upd_l = (!opt.alternating || it % 2 == 0) && s.l > 1;
        const bool upd_r = (!opt.alternating || it % 2 == 1) && s.r > 1;
        if (upd_r) ar.step(pr, cayley_gradient(pr, b, st.right_contract(c, st.g)), opt.lr_right);
        if (upd_l) al.step(pl, cayley_gradient(pl, c, st.left_contract(st.g)), opt.lr_left);
        if (upd_l) c = cayley(pl);
        if (upd_r) {
            b = cayley(pr);
            if (nb == 1) st.set_right(b);
        }
    }
    res.rotation = {c.cast<float>(), b.cast<float>()};
    return res;
}

LOWBIT_END_NAMESPACE
