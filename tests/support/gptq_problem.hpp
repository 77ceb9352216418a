#pragma once
// GPTQ-style layer problems shared by the solver tests (test_gptq, test_billm): correlated calibration
// inputs, Gaussian weights, the Hessian of the inputs and the output error tr(Δ S Δᵀ) in double.
#include <lowbit/gptq.hpp>
#include <lowbit/types.hpp>

#include <cstdint>
#include <random>

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

/// `[m x n]` i.i.d. N(0, 1) weights from `std::mt19937_64(seed)` in storage order.
inline lowbit::matrix_f random_weights(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f w(m, n);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
    return w;
}

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

} // namespace lowbit_test
