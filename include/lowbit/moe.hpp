#pragma once
/// \file moe.hpp
/// Tools for quantizing Mixture-of-Experts layers:
/// - MoEQuant EBSS (sources.md §11.1): expert-usage balance σ and the beam score used to pick
///   self-generated calibration sequences (the beam search itself drives a model and is the caller's).
/// - MoEQuant AGQ (§11.2): the gate-affinity-weighted GPTQ Hessian of a routed expert, accumulated
///   with `gptq_hessian` (gptq.hpp) over the tokens routed to it; feed it to `gptq_quantize`.
/// - MoBiE NGES (§4.2, RECON): the projector onto the approximate null space of an expert's inputs,
///   and the equivalent Hessian penalty.
/// - MoBiE GLAS (§4.2, RECON): global-gradient-weighted saliency.
///
/// Shapes: inputs `x` `[tokens x n]`, weights/gradients `[m x n]`, Grams/Hessians `[n x n]` (double).
///
/// Compile time: `agq_hessian`, the NGES projector and penalised Hessian, `project_update` and
/// `glas_saliency` are function templates with one defaulted, unused parameter (`template <class = void>`;
/// call them as ordinary functions), so their Eigen decompositions and solvers are compiled only in a
/// translation unit that calls them (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Fraction of routed (token, slot) assignments that went to each expert: `usage[e] = #{ids == e} / #ids`.
/// \param expert_ids  the expert chosen for every routed slot (top-k routing: k entries per token).
/// \throws invalid_argument if num_experts < 1, the list is empty, or an id is outside [0, num_experts).
[[nodiscard]] inline std::vector<double> expert_usage(std::span<const int> expert_ids, int num_experts) {
    constexpr const char* where = "expert_usage";
    detail::require(num_experts >= 1, where, "argument 'num_experts' must be >= 1");
    detail::require(!expert_ids.empty(), where, "argument 'expert_ids' is empty");
    std::vector<double> u(static_cast<std::size_t>(num_experts), 0.0);
    for (int e : expert_ids) {
        detail::require(e >= 0 && e < num_experts, where, "expert id " + std::to_string(e) + " is outside [0, num_experts)");
        u[static_cast<std::size_t>(e)] += 1.0;
    }
    for (double& v : u) v /= static_cast<double>(expert_ids.size());
    return u;
}

/// EBSS imbalance: the sample standard deviation of expert usage,
/// `σ = sqrt(Σ_e (u_e − ū)² / (E − 1))` (= sqrt(E/(E−1)·mean((u−ū)²))). 0 for perfectly balanced routing.
/// \throws invalid_argument for fewer than 2 experts (an empty expert list included); numeric_error for NaN/Inf.
[[nodiscard]] inline double expert_balance_std(std::span<const double> usage) {
    constexpr const char* where = "expert_balance_std";
    detail::require(!usage.empty(), where, "argument 'usage' is an empty expert list");
    detail::require(usage.size() >= 2, where, "argument 'usage' needs at least 2 experts");
    for (double v : usage) detail::require<numeric_error>(std::isfinite(v), where, "argument 'usage' contains NaN or Inf");
    const double mean = std::accumulate(usage.begin(), usage.end(), 0.0) / static_cast<double>(usage.size());
    double ss = 0;
    for (double v : usage) ss += (v - mean) * (v - mean);
    return std::sqrt(ss / static_cast<double>(usage.size() - 1));
}

/// EBSS candidate score (lower is better): `−log_prob/length + σ(usage)/τ` — length-normalised negative
/// log-likelihood of the sequence under the model plus the routing imbalance over temperature τ.
/// \throws invalid_argument (length < 1, τ ≤ 0, fewer than 2 experts), numeric_error (NaN/Inf).
[[nodiscard]] inline double ebss_score(double log_prob, int length, std::span<const double> usage, double tau) {
    constexpr const char* where = "ebss_score";
    detail::require(length >= 1, where, "argument 'length' must be >= 1");
    detail::require(tau > 0 && std::isfinite(tau), where, "argument 'tau' must be finite and > 0");
    detail::require<numeric_error>(std::isfinite(log_prob), where, "argument 'log_prob' is NaN or Inf");
    return -log_prob / static_cast<double>(length) + expert_balance_std(usage) / tau;
}

/// Indices of the `width` lowest scores (the beam kept by EBSS), ascending by score, ties by index.
/// \throws invalid_argument if width < 1 or scores is empty; numeric_error for NaN scores.
[[nodiscard]] inline std::vector<std::size_t> ebss_select(std::span<const double> scores, std::size_t width) {
    constexpr const char* where = "ebss_select";
    detail::require(!scores.empty(), where, "argument 'scores' is empty");
    detail::require(width >= 1, where, "argument 'width' must be >= 1");
    for (double s : scores) detail::require<numeric_error>(!std::isnan(s), where, "argument 'scores' contains NaN");
    std::vector<std::size_t> idx(scores.size());
    std::iota(idx.begin(), idx.end(), std::size_t{0});
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
    idx.resize(std::min(width, idx.size()));
    return idx;
}

/// AGQ: the affinity-guided GPTQ Hessian of one routed expert, `H_E = (2/N_E) Σ_{t→E} c_t x_t x_tᵀ`
/// over the tokens routed to it (gate c_t > 0; N_E = their count), accumulated with `gptq_hessian`'s
/// per-token weights. Pass `result.matrix()` to `gptq_quantize`. Call `add` again on the returned
/// accumulator for further batches (with `agq_routed` to select the routed rows).
/// \param x    `[tokens x n]` inputs reaching the MoE layer; \param gate (tokens) the expert's gate
///             probability per token, 0 for tokens not routed to it.
/// \throws shape_error (sizes, empty x, no token routed), numeric_error (NaN/Inf), invalid_argument (gate < 0).
template <class = void>
[[nodiscard]] gptq_hessian agq_hessian(const cref_matrix_f& x, const cref_vector_f& gate);

/// The routed rows of `x` (gate > 0) and their gates, for `gptq_hessian::add(rows, gates)`.
struct agq_routed {
    matrix_f rows;  ///< (routed, n)
    vector_f gates; ///< (routed) c_t > 0

    /// Selects the rows of `x` with `gate > 0`. \throws as `agq_hessian`.
    agq_routed(const cref_matrix_f& x, const cref_vector_f& gate) {
        constexpr const char* where = "agq_routed";
        detail::require_nonempty(x, where, "x");
        detail::require_dim(gate.size(), x.rows(), where, "gate size (must equal x rows / tokens)");
        detail::require_finite(gate, where, "gate");
        detail::require(gate.minCoeff() >= 0.0f, where, "argument 'gate' must be non-negative");
        Eigen::Index routed = 0;
        for (Eigen::Index t = 0; t < gate.size(); ++t) routed += gate(t) > 0 ? 1 : 0;
        rows.resize(routed, x.cols());
        gates.resize(routed);
        for (Eigen::Index t = 0, r = 0; t < gate.size(); ++t)
            if (gate(t) > 0) {
                rows.row(r) = x.row(t);
                gates(r++) = gate(t);
            }
    }
};

template <class>
gptq_hessian agq_hessian(const cref_matrix_f& x, const cref_vector_f& gate) {
    const agq_routed sel(x, gate);
    detail::require<shape_error>(sel.rows.rows() > 0, "agq_hessian", "no token is routed to the expert (all gates 0)");
    gptq_hessian h(x.cols());
    h.add(sel.rows, sel.gates);
    return h;
}

/// NGES (RECON): `P_⊥ = I − Q_k Q_kᵀ`, Q_k the top-k eigenvectors of the input Gram XᵀX (`[n x n]`).
/// A weight update δ replaced by δ·P_⊥ leaves the output unchanged for every input in span(Q_k)
/// (the typical inputs), so the router of the next layer sees (almost) no shift.
/// \throws invalid_argument unless 0 ≤ k ≤ n; shape_error (non-square, empty), numeric_error (NaN/Inf).
/// Complexity O(n³) (symmetric eigensolver).
template <class = void>
[[nodiscard]] matrix_d input_null_space_projector(const Eigen::Ref<const matrix_d>& gram, Eigen::Index k) {
    constexpr const char* where = "input_null_space_projector";
    detail::require_nonempty(gram, where, "gram");
    detail::require_dim(gram.cols(), gram.rows(), where, "gram cols (must be square)");
    detail::require_finite(gram, where, "gram");
    const Eigen::Index n = gram.rows();
    detail::require(k >= 0 && k <= n, where, "argument 'k' must lie in [0, n]");
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(Eigen::MatrixXd(0.5 * (gram + gram.transpose())));
    const Eigen::MatrixXd q = es.eigenvectors().rightCols(k); // eigenvalues ascending: top-k on the right
    matrix_d p = matrix_d::Identity(n, n);
    p.noalias() -= q * q.transpose();
    return p;
}

/// δ·P_⊥ for a weight update δ `[m x n]` and a projector from `input_null_space_projector`.
/// \throws shape_error if δ's columns do not match P.
template <class = void>
[[nodiscard]] matrix_f project_update(const cref_matrix_f& delta, const Eigen::Ref<const matrix_d>& projector) {
    constexpr const char* where = "project_update";
    detail::require_nonempty(delta, where, "delta");
    detail::require_dim(projector.rows(), delta.cols(), where, "projector rows (must equal delta cols)");
    detail::require_dim(projector.cols(), delta.cols(), where, "projector cols (must equal delta cols)");
    detail::require_finite(delta, where, "delta");
    return (delta.cast<double>() * projector).cast<float>();
}

/// NGES as a penalty: `H + η·mean(diag H)·Q_k Q_kᵀ` (Q_k from `gram`), i.e. the GPTQ Hessian of the
/// objective plus η‖ΔW Q_k‖² (scaled to H). Feed the result to a GPTQ solver instead of H.
/// \throws shape_error (sizes), invalid_argument (η < 0, bad k), numeric_error (NaN/Inf).
template <class = void>
[[nodiscard]] matrix_d nges_penalized_hessian(const Eigen::Ref<const matrix_d>& hessian,
                                              const Eigen::Ref<const matrix_d>& gram, Eigen::Index k, double eta) {
    constexpr const char* where = "nges_penalized_hessian";
    detail::require_nonempty(hessian, where, "hessian");
    detail::require_dim(hessian.cols(), hessian.rows(), where, "hessian cols (must be square)");
    detail::require_dim(gram.rows(), hessian.rows(), where, "gram rows (must equal hessian rows)");
    detail::require_finite(hessian, where, "hessian");
    detail::require(eta >= 0 && std::isfinite(eta), where, "argument 'eta' must be finite and >= 0");
    const matrix_d p = input_null_space_projector(gram, k);
    const Eigen::Index n = hessian.rows();
    const double scale = eta * hessian.diagonal().mean();
    return hessian + scale * (matrix_d::Identity(n, n) - p);
}

namespace detail {
/// The argument checks shared by `glas_saliency` and the GLAS error weights of model/mobie.hpp.
template <class Grad>
inline void check_glas_arguments(const cref_matrix_f& w, const cref_vector_f& u_diag, const Grad& grad, double kappa,
                                 const char* where) {
    require_nonempty(w, where, "w");
    require_dim(u_diag.size(), w.cols(), where, "u_diag size (must equal w cols)");
    require_dim(grad.rows(), w.rows(), where, "grad rows");
    require_dim(grad.cols(), w.cols(), where, "grad cols");
    require_finite(w, where, "w");
    require_finite(u_diag, where, "u_diag");
    require_finite(grad, where, "grad");
    require(u_diag.minCoeff() > 0.0f, where, "argument 'u_diag' must be positive");
    require(kappa >= 0 && std::isfinite(kappa), where, "argument 'kappa' must be finite and >= 0");
}
} // namespace detail

/// GLAS saliency (RECON): `s_ij = (w_ij² / u_j²) · (1 + κ·|g_ij w_ij| / mean|g w|)` — the BiLLM/OBS
/// local term w²/[U]_jj² (u_j: diagonal of the upper Cholesky factor of H⁻¹) times a first-order
/// Taylor importance from the global loss gradient g. κ = 0, or g = 0, gives the local term.
/// \throws shape_error (sizes), numeric_error (NaN/Inf), invalid_argument (u_j ≤ 0, κ < 0).
template <class = void>
[[nodiscard]] matrix_f glas_saliency(const cref_matrix_f& w, const cref_vector_f& u_diag, const cref_matrix_f& grad,
                                     double kappa = 1.0) {
    detail::check_glas_arguments(w, u_diag, grad, kappa, "glas_saliency");
    double mean_gw = 0;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) mean_gw += std::fabs(static_cast<double>(grad(i, j)) * w(i, j));
    mean_gw /= static_cast<double>(w.size());
    matrix_f s(w.rows(), w.cols());
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            const double wij = w(i, j), u = u_diag(j);
            const double global = mean_gw > 0 ? kappa * std::fabs(static_cast<double>(grad(i, j)) * wij) / mean_gw : 0.0;
            s(i, j) = static_cast<float>(wij * wij / (u * u) * (1.0 + global));
        }
    return s;
}

LOWBIT_END_NAMESPACE
