#pragma once
/// \file kronecker.hpp
/// Kronecker-structured transforms Q = A ⊗ B applied to rows without forming Q (sources.md §1.2, §2.2).
///
/// A row x of width n = l·r is viewed as the row-major l×r matrix M; `kronecker_rotation{C, B}` maps
/// M ↦ C·M·B, which is x ↦ x·(Cᵀ ⊗ B) (the KOTMS convention: W_rot = W (Cᵀ ⊗ B)). Cost per row
/// O(n(l + r)) instead of O(n²) for the dense product. The result is orthogonal iff C and B are.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <string>

LOWBIT_BEGIN_NAMESPACE

/// Factor sizes (l, r) of a width n = l·r.
struct kronecker_factor_sizes {
    Eigen::Index l = 1; ///< left factor order (C is l×l)
    Eigen::Index r = 1; ///< right factor order (B is r×r)
};

/// The KOTMS factor-size (budget) rule for a weight [m x n]: r₀ = ⌊√(m·n/64)⌋ clipped to [1, n],
/// r = the largest divisor of n with r ≤ r₀, l = n/r. E.g. 4096×4096 → (8, 512), 4096×11008 → (16, 688),
/// 1024×4096 → (16, 256). Throws `invalid_argument` for m < 1 or n < 1. O(√(mn)).
[[nodiscard]] inline kronecker_factor_sizes kotms_factor_sizes(Eigen::Index m, Eigen::Index n) {
    detail::require(m >= 1 && n >= 1, "kotms_factor_sizes",
                    "arguments 'm' and 'n' must be >= 1, got " + std::to_string(m) + ", " + std::to_string(n));
    const long double prod = static_cast<long double>(m) * static_cast<long double>(n) / 64.0L;
    auto r0 = static_cast<Eigen::Index>(std::floor(std::sqrt(prod)));
    while (64 * (r0 + 1) * (r0 + 1) <= m * n) ++r0; // exact floor despite sqrt rounding
    while (r0 > 0 && r0 * r0 * 64 > m * n) --r0;
    r0 = std::clamp<Eigen::Index>(r0, 1, n);
    Eigen::Index r = r0;
    while (n % r != 0) --r;
    return {n / r, r};
}

/// Dense Kronecker product A ⊗ B (double), (A ⊗ B)_(i·p + k, j·q + l) = A_ij B_kl. O(size of result).
[[nodiscard]] inline matrix_d kronecker_product(const Eigen::Ref<const matrix_d>& a, const Eigen::Ref<const matrix_d>& b) {
    matrix_d out(a.rows() * b.rows(), a.cols() * b.cols());
    for (Eigen::Index i = 0; i < a.rows(); ++i)
        for (Eigen::Index j = 0; j < a.cols(); ++j)
            out.block(i * b.rows(), j * b.cols(), b.rows(), b.cols()) = a(i, j) * b;
    return out;
}

/// x ↦ x·(Cᵀ ⊗ B): every row, viewed as the row-major l×r matrix M, becomes C·M·B. A `RowTransform`.
/// `left` = C (l×l), `right` = B (r×r), both square. O(rows·n·(l + r)).
struct kronecker_rotation {
    matrix_f left;  ///< C, (l, l)
    matrix_f right; ///< B, (r, r)

    /// Identity factors for a width split (l, r).
    [[nodiscard]] static kronecker_rotation identity(kronecker_factor_sizes s) {
        return {matrix_f::Identity(s.l, s.l), matrix_f::Identity(s.r, s.r)};
    }
    [[nodiscard]] Eigen::Index dim() const { return left.rows() * right.rows(); }
    [[nodiscard]] kronecker_factor_sizes sizes() const { return {left.rows(), right.rows()}; }

    /// Applies to every row in place. Throws `shape_error` for non-square factors or `m.cols() != l·r`.
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply_rows(Eigen::Ref<matrix_f> m) const {
        detail::require_dim(left.cols(), left.rows(), "kronecker_rotation::apply_rows", "columns of 'left'");
        detail::require_dim(right.cols(), right.rows(), "kronecker_rotation::apply_rows", "columns of 'right'");
        detail::require_dim(m.cols(), dim(), "kronecker_rotation::apply_rows", "columns of 'm'");
        const Eigen::Index l = left.rows(), r = right.rows();
        using map_t = Eigen::Map<matrix_f, 0, Eigen::OuterStride<>>;
        if (m.rows() == 0) return;
        if (m.outerStride() == m.cols()) { // contiguous: one GEMM for all rows' M·B
            map_t all(m.data(), m.rows() * l, r, Eigen::OuterStride<>(r));
            const matrix_f mb = all * right;
            for (Eigen::Index i = 0; i < m.rows(); ++i)
                map_t(m.data() + i * m.cols(), l, r, Eigen::OuterStride<>(r)).noalias() = left * mb.middleRows(i * l, l);
        } else {
            matrix_f tmp(l, r);
            for (Eigen::Index i = 0; i < m.rows(); ++i) {
                map_t x(&m(i, 0), l, r, Eigen::OuterStride<>(r));
                tmp.noalias() = left * x * right;
                x = tmp;
            }
        }
    }

    /// The dense n×n matrix Cᵀ ⊗ B (double). O(n²).
    [[nodiscard]] matrix_d matrix() const {
        return kronecker_product(left.cast<double>().transpose(), right.cast<double>());
    }
};

LOWBIT_END_NAMESPACE
