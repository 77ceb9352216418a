#pragma once
// Seeded random test matrices (std::mt19937_64), shared by the tests: Gaussian (float, double),
// Student-t (heavy-tailed, weight-like) and Grams of activations with unequal channel energies.
// Every matrix is filled row by row (= storage order of lowbit's row-major types).
#include <lowbit/types.hpp>

#include <cstdint>
#include <random>

namespace lowbit_test {

/// `[rows x cols]` with i.i.d. N(0, sd²) entries, filled row by row from `std::mt19937_64(seed)`.
inline lowbit::matrix_f gaussian(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, float sd = 1.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, sd);
    lowbit::matrix_f m(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = g(rng);
    return m;
}

/// Double-precision `gaussian`: i.i.d. N(0, sd²), row by row from `std::mt19937_64(seed)`.
inline lowbit::matrix_d gaussian_d(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, double sd = 1.0) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> g(0.0, sd);
    lowbit::matrix_d m(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = g(rng);
    return m;
}

/// `[rows x cols]` with entries scale·t + shift, t i.i.d. Student-t with `dof` degrees of freedom
/// (heavy tails like LLM weights), row by row from `std::mt19937_64(seed)`.
inline lowbit::matrix_f student_t(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, float dof, float scale = 1.0f,
                                  float shift = 0.0f) {
    std::mt19937_64 rng(seed);
    std::student_t_distribution<float> t(dof);
    lowbit::matrix_f m(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = t(rng) * scale + shift;
    return m;
}

/// Gram XᵀX (`[n x n]`) of 3n Gaussian tokens whose channel j has standard deviation 1 + j/spread.
inline lowbit::matrix_d graded_gram(Eigen::Index n, std::uint64_t seed, double spread) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> g;
    lowbit::matrix_d x(3 * n, n);
    for (Eigen::Index i = 0; i < x.rows(); ++i)
        for (Eigen::Index j = 0; j < n; ++j) x(i, j) = g(rng) * (1.0 + static_cast<double>(j) / spread);
    return x.transpose() * x;
}

} // namespace lowbit_test
