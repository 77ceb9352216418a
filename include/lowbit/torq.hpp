#pragma once
/// \file torq.hpp
/// TORQ — two-level orthogonal rotation for MXFP4 activations (sources.md §6). **A reconstruction**:
/// only the abstract is public; this implements the closed forms of §6.2.
///
/// Level 1 (inter-block variance equalisation, Schur–Horn): with Σ = XᵀX/T of calibration activations,
///   - `torq_level1::eigen_hadamard`: Q₁ = U_Σ · Π · D_s H_d (eigenvectors; a seeded permutation Π
///     and signs D_s; the normalised Hadamard of width d from hadamard.hpp). Since |(Π D_s H_d)_ij| = 1/√d,
///     diag(Q₁ᵀΣQ₁) = tr(Σ)/d · 1 exactly (for a Hadamard H_d): every coordinate, hence every 32-block,
///     carries the same energy.
///   - `torq_level1::zigzag_block_hadamard`: sort channels by variance, deal them into blocks in zigzag
///     order (a permutation P), then mix across blocks with (H_(n_b) ⊗ I_32): Q₁ = P (H_(n_b) ⊗ I_32).
///   - `torq_level1::zigzag`: the dealing P alone; `torq_level1::none`: Q₁ = I.
///   - `torq_level1::select` (default): all four, scored together with every R (below).
/// Level 2 (intra-block): Q₂ = I_(n_b) ⊗ R with one R (32×32) chosen among the candidates identity, H_32,
///   DCT-II, and `random_candidates` seeded random orthogonals.
/// Selection (`torq_criterion`): §6.2 picks R by the maximum entropy of the E2M1 code histogram of
///   MXFP4(X Q₁ (I ⊗ R)) (`max_entropy`). Measured on outlier-channel activations, that entropy does not
///   track the MXFP4 error (full mixing gives Gaussian-like blocks with near-maximal entropy, while the
///   lowest-error pair — zigzag dealing + H_(n_b) ⊗ I_32, then R = H_32, which flattens each block's outlier
///   share — has lower entropy), so the default `min_token_error` picks the (level 1, R) pair with the lowest
///   mean per-token relative MXFP4 error ‖x − MXFP4(x)‖/‖x‖ on the calibration tokens, over every level-1
///   construction when `level1 = select` (the default). Per-token, not the Frobenius ratio over all tokens: with
///   heavy tails the latter is decided by a handful of tokens and did not carry over to held-out data.
/// Deployment: x ↦ x Q₁ Q₂ and W ↦ W Q₁ Q₂ (`rotate_activations` / `rotate_weights`; `torq_rotation` is a
/// `RowTransform`). Width d must be a multiple of 32. Cost: O(T d² + d³) to learn, O(d² + 32 d) per row.
///
/// Compile time: `learn_torq`, `e2m1_code_entropy` and their helpers are function templates with one
/// defaulted, unused parameter (`template <class = void>`; call them as ordinary functions), so their Eigen
/// decompositions and solvers are compiled only in a translation unit that calls them
/// (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/kronecker.hpp>
#include <lowbit/mxfp.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/orthogonal_fit.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Level-1 construction of TORQ (see the file comment).
enum class torq_level1 {
    eigen_hadamard,        ///< Q₁ = U_Σ Π D_s H_d (Schur–Horn: every coordinate gets tr(Σ)/d)
    zigzag_block_hadamard, ///< Q₁ = P_zigzag (H_(n_b) ⊗ I_32)
    zigzag,                ///< Q₁ = P_zigzag (balanced block energies by dealing; no cross-block mixing)
    none,                  ///< Q₁ = I
    select                 ///< every construction above; the selection criterion picks the (level 1, R) pair
};

/// How TORQ picks among its candidates on the calibration set.
enum class torq_criterion {
    min_token_error, ///< lowest mean per-token relative MXFP4 error (default; see the file comment)
    max_entropy      ///< highest entropy of the E2M1 code histogram (§6.2 as reconstructed)
};

/// TORQ settings.
struct torq_options {
    torq_level1 level1 = torq_level1::select;          ///< level-1 construction
    torq_criterion criterion = torq_criterion::min_token_error; ///< how the candidate is chosen
    int random_candidates = 4;                        ///< seeded random orthogonal R candidates (≥ 0)
    std::uint64_t seed = 0;                           ///< seed of the random candidates (seed, seed + 1, ...)
};

/// Score of one level-2 candidate on the calibration set.
struct torq_candidate {
    std::string name;       ///< "<level 1>/<R>": level 1 "eigen_hadamard", "zigzag_block_hadamard", "zigzag", "none";
                            ///< R "identity", "hadamard32", "dct32", "random<seed>"
    double entropy = 0;     ///< entropy of the E2M1 code histogram, bits (≤ 4)
    double mx_error = 0;    ///< ‖X₂ − MXFP4(X₂)‖_F / ‖X‖_F
    double token_error = 0; ///< mean over tokens of ‖x₂ − MXFP4(x₂)‖ / ‖x₂‖ (zero tokens count 0)
};

/// Entropy (bits) of the histogram of E2M1 codes of MXFP4(x) (OCP floor scale); the two zero codes are
/// merged. x: [rows x cols], cols a multiple of 32. Throws as `quantize_mx`. O(rows·cols).
template <class = void>
[[nodiscard]] double e2m1_code_entropy(const cref_matrix_f& x) {
    const auto q = quantize_mx<mxfp4>(x);
    std::array<double, 16> hist{};
    for (Eigen::Index i = 0; i < q.codes.size(); ++i) {
        const std::uint8_t c = q.codes.data()[i];
        hist[fp4_e2m1::decode(c) == 0.0f ? 0 : (c & 0xF)] += 1;
    }
    double h = 0;
    const double total = static_cast<double>(q.codes.size());
    for (double v : hist)
        if (v > 0) h -= v / total * std::log2(v / total);
    return h;
}

/// A learned TORQ rotation Q = Q₁ (I ⊗ R). A `RowTransform` (x ↦ x Q). O(d² + 32 d) per row.
struct torq_rotation {
    matrix_f level1;                       ///< Q₁, (d, d)
    matrix_f level2;                       ///< R, (32, 32)
    std::string level2_name;               ///< the chosen candidate's name ("<level 1>/<R>")
    std::vector<torq_candidate> candidates; ///< every candidate's score, in evaluation order

    [[nodiscard]] Eigen::Index dim() const { return level1.rows(); }

    /// x ↦ x Q₁ (I ⊗ R) on every row. Throws `shape_error` if `m.cols() != d`.
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply_rows(Eigen::Ref<matrix_f> m) const {
        detail::require_dim(m.cols(), dim(), "torq_rotation::apply_rows", "columns of 'm'");
        const Eigen::Index g = level2.rows(), nb = dim() / g;
        const matrix_f y = m * level1;
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            for (Eigen::Index b = 0; b < nb; ++b) m.row(i).segment(b * g, g).noalias() = y.row(i).segment(b * g, g) * level2;
    }
    /// The dense d×d matrix Q₁ (I ⊗ R) (double). O(d³).
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] matrix_d matrix() const {
        const Eigen::Index g = level2.rows(), nb = dim() / g;
        return level1.cast<double>() * kronecker_product(matrix_d::Identity(nb, nb), level2.cast<double>());
    }
};

namespace detail {

/// Orthonormal DCT-II as a right-multiplication matrix: (x R)_k = Σ_j x_j C_kj.
template <class = void>
matrix_d dct2_matrix(Eigen::Index g) {
    constexpr double pi = 3.14159265358979323846;
    matrix_d r(g, g);
    for (Eigen::Index k = 0; k < g; ++k)
        for (Eigen::Index j = 0; j < g; ++j)
            r(j, k) = std::sqrt((k == 0 ? 1.0 : 2.0) / static_cast<double>(g)) *
                      std::cos(pi * (static_cast<double>(j) + 0.5) * static_cast<double>(k) / static_cast<double>(g));
    return r;
}

/// The zigzag dealing permutation of §6.2 as a right-multiplication matrix P (x P moves channel j to its slot).
template <class = void>
matrix_d zigzag_permutation(const Eigen::VectorXd& var, Eigen::Index g) {
    const Eigen::Index d = var.size(), nb = d / g;
    std::vector<Eigen::Index> order(static_cast<std::size_t>(d));
    std::iota(order.begin(), order.end(), Eigen::Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Eigen::Index a, Eigen::Index b) { return var(a) > var(b); });
    matrix_d p = matrix_d::Zero(d, d);
    for (Eigen::Index k = 0; k < d; ++k) {
        const Eigen::Index sweep = k / nb, pos = k % nb;
        const Eigen::Index block = (sweep % 2 == 0) ? pos : nb - 1 - pos;
        p(order[static_cast<std::size_t>(k)], block * g + sweep) = 1.0;
    }
    return p;
}

} // namespace detail

namespace detail {

/// Q₁ of one level-1 construction (not `select`). x: calibration activations [T x d], d a multiple of g.
template <class = void>
matrix_d torq_level1_matrix(const cref_matrix_f& x, torq_level1 kind, std::uint64_t seed, Eigen::Index g) {
    const Eigen::Index d = x.cols(), nb = d / g;
    switch (kind) {
    case torq_level1::eigen_hadamard: {
        // U_Σ, then a seeded permutation and signs before H_d: |entries| stay 1/√d (exact Schur–Horn), and the
        // leading eigen-directions do not land on the structured first Sylvester rows (measured: a plain
        // U_Σ·H_d gives ~7% higher MXFP4 error on outlier-channel activations).
        std::vector<Eigen::Index> perm(static_cast<std::size_t>(d));
        std::iota(perm.begin(), perm.end(), Eigen::Index{0});
        std::mt19937_64 rng(seed ^ 0x70a9ULL);
        for (Eigen::Index i = d - 1; i > 0; --i) // Fisher–Yates with raw bits (portable)
            std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(rng() % static_cast<std::uint64_t>(i + 1))]);
        matrix_d p = matrix_d::Zero(d, d);
        for (Eigen::Index i = 0; i < d; ++i) p(i, perm[static_cast<std::size_t>(i)]) = 1.0;
        return klt_basis(x) * p * hadamard_transform(d, {.randomized = true, .seed = seed}).matrix();
    }
    case torq_level1::zigzag_block_hadamard: {
        const Eigen::VectorXd var = x.cast<double>().colwise().squaredNorm().transpose() / static_cast<double>(x.rows());
        return zigzag_permutation(var, g) * kronecker_product(hadamard_transform(nb).matrix(), matrix_d::Identity(g, g));
    }
    case torq_level1::zigzag: {
        const Eigen::VectorXd var = x.cast<double>().colwise().squaredNorm().transpose() / static_cast<double>(x.rows());
        return zigzag_permutation(var, g);
    }
    case torq_level1::none:
    case torq_level1::select: break;
    }
    return matrix_d::Identity(d, d);
}

inline const char* torq_level1_name(torq_level1 kind) {
    switch (kind) {
    case torq_level1::eigen_hadamard: return "eigen_hadamard";
    case torq_level1::zigzag_block_hadamard: return "zigzag_block_hadamard";
    case torq_level1::zigzag: return "zigzag";
    case torq_level1::none: return "none";
    case torq_level1::select: return "select";
    }
    return "";
}

/// Mean over rows of ‖x − q‖/‖x‖ (rows with ‖x‖ = 0 count 0).
template <class = void>
double mean_token_relative_error(const matrix_f& x, const matrix_f& q) {
    if (x.rows() == 0) return 0.0;
    double s = 0;
    for (Eigen::Index i = 0; i < x.rows(); ++i) {
        const double n = static_cast<double>(x.row(i).norm());
        if (n > 0) s += static_cast<double>((x.row(i) - q.row(i)).norm()) / n;
    }
    return s / static_cast<double>(x.rows());
}

} // namespace detail

/// Learns a TORQ rotation from calibration activations X [tokens x d] (d a multiple of 32): every (level 1, R)
/// candidate pair is scored on X and the best by `opt.criterion` wins (see the file comment). Evaluate on
/// held-out tokens. Throws `shape_error` (empty X, d not a multiple of 32), `numeric_error` (NaN/Inf),
/// `invalid_argument` (random_candidates < 0). Deterministic per seed. O(L·(T d² + d³)) for L level-1 constructions.
template <class = void>
[[nodiscard]] torq_rotation learn_torq(const cref_matrix_f& x, const torq_options& opt = {}) {
    constexpr const char* where = "learn_torq";
    constexpr Eigen::Index g = 32;
    detail::require_nonempty(x, where, "x");
    detail::require_finite(x, where, "x");
    detail::require<shape_error>(x.cols() % g == 0, where,
                                 "columns of 'x' must be a multiple of the MX block 32, got " + std::to_string(x.cols()));
    detail::require(opt.random_candidates >= 0, where, "random_candidates must be >= 0");
    const Eigen::Index d = x.cols(), nb = d / g;
    std::vector<torq_level1> level1s;
    if (opt.level1 == torq_level1::select)
        level1s = {torq_level1::eigen_hadamard, torq_level1::zigzag_block_hadamard, torq_level1::zigzag, torq_level1::none};
    else
        level1s = {opt.level1};
    std::vector<std::pair<std::string, matrix_d>> cands;
    cands.emplace_back("identity", matrix_d::Identity(g, g));
    cands.emplace_back("hadamard32", hadamard_transform(g).matrix());
    cands.emplace_back("dct32", detail::dct2_matrix(g));
    for (int k = 0; k < opt.random_candidates; ++k)
        cands.emplace_back("random" + std::to_string(opt.seed + static_cast<std::uint64_t>(k)),
                           random_orthogonal(g, opt.seed + static_cast<std::uint64_t>(k)));
    const double xnorm = static_cast<double>(x.norm());
    torq_rotation out;
    double best = 0;
    bool have = false;
    for (const torq_level1 kind : level1s) {
        const matrix_f q1 = detail::torq_level1_matrix(x, kind, opt.seed, g).cast<float>();
        const matrix_f x1 = x * q1;
        for (auto& [name, r] : cands) {
            const matrix_f rf = r.template cast<float>(); // `template`: r is a structured binding inside a template
            matrix_f x2(x1.rows(), d);
            for (Eigen::Index b = 0; b < nb; ++b) x2.middleCols(b * g, g).noalias() = x1.middleCols(b * g, g) * rf;
            const matrix_f deq = mx_fake_quantize<mxfp4>(x2);
            torq_candidate c{std::string(detail::torq_level1_name(kind)) + "/" + name, e2m1_code_entropy(x2),
                             xnorm > 0 ? static_cast<double>((x2 - deq).norm()) / xnorm : 0.0,
                             detail::mean_token_relative_error(x2, deq)};
            const double score = opt.criterion == torq_criterion::max_entropy ? -c.entropy : c.token_error;
            if (!have || score < best) { // first wins on ties
                have = true;
                best = score;
                out.level1 = q1;
                out.level2 = rf;
                out.level2_name = c.name;
            }
            out.candidates.push_back(std::move(c));
        }
    }
    return out;
}

LOWBIT_END_NAMESPACE
