#pragma once
// Random integer codes in a packed format's code set (tests and benchmarks of pack.hpp / gemm.hpp).
#include <lowbit/pack.hpp>

#include <cstdint>
#include <random>

namespace lowbit_test {

/// `[rows x cols]` codes drawn uniformly from pack_format<F>'s range (binary: ±1), seeded; with
/// `extreme`, codes alternate between the range's ends (saturation checks).
template <class F>
lowbit::matrix_i8 random_codes(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, bool extreme = false) {
    using T = lowbit::pack_format<F>;
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> d(T::code_min, T::code_max);
    lowbit::matrix_i8 c(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) {
            int v = extreme ? ((i + j) % 2 ? T::code_max : T::code_min) : d(rng);
            if (T::digit_mul == 2 && v == 0) v = 1; // binary has no zero
            c(i, j) = static_cast<std::int8_t>(v);
        }
    return c;
}

} // namespace lowbit_test
