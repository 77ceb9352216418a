#pragma once
// GPTQ-style layer problems shared by the solver tests (test_gptq, test_billm): correlated calibration
// inputs, Gaussian weights, the Hessian of the inputs and the output error tr(Δ S Δᵀ) in double.
#include "gaussian_matrix.hpp"

#include <lowbit/gptq.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Cholesky>
#include <Eigen/LU>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace lowbit_test {

/// Correlated calibration inputs `[tokens x n]`: X = Z·A with a random mixing A and uneven channel scales.
inline lowbit::matrix_f correlated_inputs(Eigen::Index tokens, Eigen::Index n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f z(tokens, n), a(n, n);
    for (Eigen::Index i = 0; i < z.size(); ++i) z.data()[i] = g(rng);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g(rng) * 0.3f;
    a.diagonal().array() += 1.0f;
    lowbit::matrix_f x = z * a;
    for (Eigen::Index j = 0; j < n; ++j) x.col(j) *= 0.5f + static_cast<float>(j % 5);
    return x;
}

/// `[m x n]` i.i.d. N(0, 1) weights (`gaussian`).
inline lowbit::matrix_f random_weights(Eigen::Index m, Eigen::Index n, std::uint64_t seed) { return gaussian(m, n, seed); }

/// H = (2/N) XᵀX through `gptq_hessian`.
inline lowbit::matrix_d hessian_of(const lowbit::matrix_f& x) {
    lowbit::gptq_hessian h(x.cols());
    h.add(x);
    return h.matrix();
}

/// tr(Δ S Δᵀ) in double, Δ = w − q.
inline double output_error(const lowbit::matrix_f& w, const lowbit::matrix_f& q, const lowbit::matrix_d& s) {
    const Eigen::MatrixXd d = (w - q).cast<double>();
    return (d * s * d.transpose()).trace();
}

/// Ω of a first GPTQ block (it sees the original weights): W_ij²/U_jj² for the first `width` columns, U the
/// upper Cholesky factor of the damped H⁻¹ (damp relative to mean diag H) from an explicit inverse.
inline lowbit::matrix_f first_block_omega(const lowbit::matrix_f& w, const lowbit::matrix_d& h, double damp, Eigen::Index width) {
    lowbit::matrix_d hd = h;
    hd.diagonal().array() += damp * h.diagonal().mean();
    const Eigen::MatrixXd u = Eigen::MatrixXd(hd.inverse()).llt().matrixU();
    lowbit::matrix_f omega(w.rows(), width);
    for (Eigen::Index j = 0; j < width; ++j)
        for (Eigen::Index i = 0; i < w.rows(); ++i)
            omega(i, j) = static_cast<float>(static_cast<double>(w(i, j)) * w(i, j) / (u(j, j) * u(j, j)));
    return omega;
}

/// Columns of `omega` by Σ_i Ω_ij descending (stable: ties keep the lower index first).
inline std::vector<Eigen::Index> columns_by_score(const lowbit::matrix_f& omega) {
    std::vector<Eigen::Index> cols(static_cast<std::size_t>(omega.cols()));
    std::iota(cols.begin(), cols.end(), Eigen::Index{0});
    const Eigen::VectorXd score = omega.cast<double>().colwise().sum().transpose();
    std::stable_sort(cols.begin(), cols.end(), [&](Eigen::Index a, Eigen::Index b) { return score(a) > score(b); });
    return cols;
}

} // namespace lowbit_test
