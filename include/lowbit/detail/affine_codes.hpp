#pragma once
/// \file detail/affine_codes.hpp
/// Least-squares scales and offset for fixed codes, optionally weighted by an input Gram matrix S:
/// for one row w (length n), a group mask m ∈ {0,1}ⁿ and P code planes t_p (zero outside the mask),
///   minimise  e S eᵀ,  e = w⊙m − μ m − Σ_p α_p t_p      over (μ, α_1 … α_P)
/// (S = I when no S is given). The normal equations are the (P+1)×(P+1) system G x = b with
/// G = [m; t_1; …] S [m; t_1; …]ᵀ and b = [m; t_1; …] S (w⊙m)ᵀ, solved in double by a complete
/// orthogonal decomposition (the minimum-norm solution when a plane is empty or planes coincide).
/// Used by binary.hpp (ARB, ARB-X) and asym_ternary.hpp (E2M-ATQ stage 2). The solver and the
/// objective are templates with one defaulted, unused parameter, as are their callers up to the
/// public API: the decomposition is compiled only where a fit is called (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Dense>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// A matrix quantized per row and column group as μ + α₀c₀ (+ α₁c₁) with integer code planes c_p
/// (binary: ±1, ternary: −1/0/+1). `binary_tensor` (binary.hpp) and `asym_ternary_tensor`
/// (asym_ternary.hpp) are this type. Column j uses parameter column j / group_size.
struct code_plane_tensor {
    int order = 1;                  ///< planes used (1 or 2)
    std::array<matrix_i8, 2> codes; ///< (rows, cols) codes; codes[1] unused when order = 1
    matrix_f mean;                  ///< (rows, groups) μ
    std::array<matrix_f, 2> alpha;  ///< (rows, groups) α₀, α₁; alpha[1] unused when order = 1
    Eigen::Index group_size = 1;    ///< columns per parameter column

    /// μ + Σ_{p < order} α_p c_p per element. O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f out(codes[0].rows(), codes[0].cols());
        for (Eigen::Index r = 0; r < out.rows(); ++r)
            for (Eigen::Index c = 0; c < out.cols(); ++c) {
                const Eigen::Index g = c / group_size;
                float v = mean(r, g) + alpha[0](r, g) * static_cast<float>(codes[0](r, c));
                if (order == 2) v += alpha[1](r, g) * static_cast<float>(codes[1](r, c));
                out(r, c) = v;
            }
        return out;
    }

    /// Allocates `rows x cols` codes and `rows x groups` parameters for `order` planes.
    static code_plane_tensor allocate(int order, Eigen::Index rows, Eigen::Index cols, Eigen::Index groups,
                                      Eigen::Index group_size) {
        code_plane_tensor t;
        t.order = order;
        t.group_size = group_size;
        t.mean.resize(rows, groups);
        for (std::size_t p = 0; p < static_cast<std::size_t>(order); ++p) {
            t.codes[p].resize(rows, cols);
            t.alpha[p].resize(rows, groups);
        }
        return t;
    }
};

namespace detail {

/// One row's data for `affine_codes_solve`: w (n floats), mask (n bools, nullptr = all ones),
/// `planes` pointers to P int8 code rows (values in {−1, 0, 1}).
struct affine_codes_row {
    const float* w = nullptr;
    const bool* mask = nullptr;
    std::vector<const std::int8_t*> planes;
    Eigen::Index n = 0;
};

/// Builds the (P+1) basis vectors [m, t_1, …] and the masked target as double columns.
inline void affine_codes_basis(const affine_codes_row& r, matrix_d& basis, vector_d& target) {
    const auto k = static_cast<Eigen::Index>(r.planes.size()) + 1;
    basis.resize(k, r.n);
    target.resize(r.n);
    for (Eigen::Index j = 0; j < r.n; ++j) {
        const double m = r.mask ? (r.mask[j] ? 1.0 : 0.0) : 1.0;
        basis(0, j) = m;
        target(j) = m * static_cast<double>(r.w[j]);
        for (Eigen::Index p = 1; p < k; ++p) basis(p, j) = static_cast<double>(r.planes[static_cast<std::size_t>(p - 1)][j]);
    }
}

/// Solution x = (μ, α_1 … α_P) of the normal equations; `s` nullptr means S = I. With
/// `fit_mean == false`, μ is fixed at 0 (x(0) = 0). O(n²·(P+1)) with S, O(n·(P+1)²) without.
template <class = void>
vector_d affine_codes_solve(const affine_codes_row& r, const matrix_d* s, bool fit_mean = true) {
    matrix_d basis;
    vector_d target;
    affine_codes_basis(r, basis, target);
    const Eigen::Index k = basis.rows();
    matrix_d sb = s ? matrix_d(basis * (*s)) : basis; // [k x n] rows are S·basis_p (S symmetric)
    matrix_d g = sb * basis.transpose();
    vector_d b = sb * target;
    vector_d x = vector_d::Zero(k);
    if (fit_mean) {
        x = g.completeOrthogonalDecomposition().solve(b);
    } else if (k > 1) {
        x.tail(k - 1) = g.bottomRightCorner(k - 1, k - 1).completeOrthogonalDecomposition().solve(b.tail(k - 1));
    }
    return x;
}

/// e S eᵀ for the row with parameters x (as returned by `affine_codes_solve`).
template <class = void>
double affine_codes_objective(const affine_codes_row& r, const matrix_d* s, const vector_d& x) {
    matrix_d basis;
    vector_d target;
    affine_codes_basis(r, basis, target);
    const vector_d e = target - basis.transpose() * x;
    return s ? e.dot((*s) * e) : e.squaredNorm();
}

/// Per-row refit of (μ_i, α_i) for fixed integer codes t_i (row i of `codes`), all rows at once:
/// minimise e S eᵀ, e = w_i − μ_i·1 − α_i·t_i, S `[n x n]` symmetric PSD. Normal equations
/// [tStᵀ  tS1; tS1  1S1]·(α, μ) = (tSwᵀ, 1Swᵀ) in double from one GEMM S·Tᵀ. `mean`/`alpha` hold the
/// starting values and change only where the solution lowers e S eᵀ (compared without the w S wᵀ term,
/// which cancels). Singular systems (det ≤ 1e-12·tStᵀ·1S1: codes all zero or constant) fit μ alone.
/// \throws shape_error, numeric_error (NaN/Inf in w or s). O(rows·n²).
template <class = void>
void refit_affine_rows(const cref_matrix_f& w, const Eigen::Ref<const matrix_i8>& codes,
                       const Eigen::Ref<const matrix_d>& s, Eigen::Ref<vector_f> mean, Eigen::Ref<vector_f> alpha,
                       const char* where) {
    require_nonempty(w, where, "w");
    require_finite(w, where, "w");
    const Eigen::Index m = w.rows(), n = w.cols();
    require_dim(codes.rows(), m, where, "rows of 'codes'");
    require_dim(codes.cols(), n, where, "columns of 'codes'");
    require_dim(s.rows(), n, where, "rows of 'S'");
    require_dim(s.cols(), n, where, "columns of 'S'");
    require_finite(s, where, "S");
    require_dim(mean.size(), m, where, "size of 'mean'");
    require_dim(alpha.size(), m, where, "size of 'alpha'");
    const Eigen::MatrixXd tt = codes.transpose().cast<double>(); // n x m
    const Eigen::MatrixXd st = s * tt;                             // n x m: S·t_iᵀ
    const Eigen::VectorXd s1 = s * Eigen::VectorXd::Ones(n);      // S·1
    const double c = s1.sum();                                     // 1 S 1
    for (Eigen::Index i = 0; i < m; ++i) {
        const Eigen::VectorXd wi = w.row(i).transpose().cast<double>();
        const double a = tt.col(i).dot(st.col(i)), b = tt.col(i).dot(s1);
        const double ra = wi.dot(st.col(i)), rm = wi.dot(s1);
        auto f = [&](double mu, double al) { // e S eᵀ − w S wᵀ
            return -2 * mu * rm - 2 * al * ra + mu * mu * c + 2 * mu * al * b + al * al * a;
        };
        const double mu0 = mean(i), al0 = alpha(i);
        double mu = mu0, al = al0;
        const double det = a * c - b * b;
        if (a > 0 && c > 0 && det > 1e-12 * a * c) {
            al = (ra * c - rm * b) / det;
            mu = (rm * a - ra * b) / det;
        } else if (c > 0) {
            mu = (rm - al * b) / c;
        }
        if (std::isfinite(mu) && std::isfinite(al) && f(mu, al) < f(mu0, al0)) {
            mean(i) = static_cast<float>(mu);
            alpha(i) = static_cast<float>(al);
        }
    }
}

} // namespace detail
LOWBIT_END_NAMESPACE
