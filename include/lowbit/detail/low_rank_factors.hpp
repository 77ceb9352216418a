#pragma once
/// \file detail/low_rank_factors.hpp
/// The `low_rank` result type of lowrank.hpp's solvers, on its own so that users of the factors
/// (quantized_linear.hpp, file formats) do not compile the SVD and Cholesky code. Include
/// <lowbit/lowrank.hpp> to compute factors.

#include <lowbit/config.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

LOWBIT_BEGIN_NAMESPACE

/// A rank-r factorisation `W' = a·b`, `a` `[m x r]`, `b` `[r x n]`.
struct low_rank {
    matrix_f a;                 ///< (m, r) left factor U_r Σ_r^{1/2}
    matrix_f b;                 ///< (r, n) right factor Σ_r^{1/2} V_rᵀ (times L⁻¹ when whitened)
    vector_d singular_values;   ///< (r) the kept singular values (of the whitened matrix when whitened)
    double discarded_energy = 0; ///< Σ_{k>r} σ_k², i.e. the truncation loss in the (whitened) metric

    /// The rank. O(1).
    [[nodiscard]] Eigen::Index rank() const { return a.cols(); }
    /// The dense `[m x n]` product a·b. O(m·n·r).
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] matrix_f reconstruct() const { return a * b; }
};

LOWBIT_END_NAMESPACE
