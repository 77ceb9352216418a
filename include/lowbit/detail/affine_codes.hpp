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

} // namespace detail
LOWBIT_END_NAMESPACE
