#pragma once
// Seeded Gaussian test matrices (std::mt19937_64), shared by the low-rank / VQ / MoE tests.
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

} // namespace lowbit_test
