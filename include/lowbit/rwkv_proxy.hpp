#pragma once
/// \file rwkv_proxy.hpp
/// RWKVQuant's coarse-to-fine uniformity proxy (sources.md §10.2, from the released code) that
/// chooses, per weight matrix, scalar quantization (near-uniform values) or vector quantization.
///
/// Sort the N values, take the gaps between neighbours, drop zero gaps, keep the distinct gap
/// values g (exact equality), normalise p = g/Σg, n = |p|:
/// - coarse: `P_c = log n + Σ p log p = log n − H(p) ≥ 0` (0 when all distinct gaps are equal);
/// - fine:   `P_f = n²/2·|mean((p−1/n)²)| + n³/6·|mean((p−1/n)³)| + n⁴/12·|mean((p−1/n)⁴)|`.
/// Rule: P_c < τ_c and P_f < τ_f ⇒ scalar, otherwise vector.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// The two proxies of a weight matrix.
struct uniformity_proxy {
    double coarse = 0; ///< P_c = log n − H(p) (entropy deficit of the gap distribution)
    double fine = 0;   ///< P_f (weighted central moments of p)
    Eigen::Index gaps = 0; ///< n, the number of distinct non-zero gaps
};

/// Computes the RWKVQuant proxies of all values of `w` (any shape). O(N log N).
/// With fewer than two distinct values there are no gaps and both proxies are 0.
/// \throws shape_error (empty), numeric_error (NaN/Inf).
[[nodiscard]] inline uniformity_proxy rwkv_uniformity_proxy(const cref_matrix_f& w) {
    constexpr const char* where = "rwkv_uniformity_proxy";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    std::vector<double> v;
    v.reserve(static_cast<std::size_t>(w.size()));
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) v.push_back(w(i, j));
    std::sort(v.begin(), v.end());
    std::vector<double> g;
    for (std::size_t i = 1; i < v.size(); ++i)
        if (v[i] - v[i - 1] != 0.0) g.push_back(v[i] - v[i - 1]);
    std::sort(g.begin(), g.end());
    g.erase(std::unique(g.begin(), g.end()), g.end());
    uniformity_proxy out;
    out.gaps = static_cast<Eigen::Index>(g.size());
    if (g.empty()) return out;
    double sum = 0;
    for (double x : g) sum += x;
    const double n = static_cast<double>(g.size());
    double h = 0, m2 = 0, m3 = 0, m4 = 0;
    for (double x : g) {
        const double p = x / sum;
        h -= p * std::log(p);
        const double d = p - 1.0 / n;
        m2 += d * d;
        m3 += d * d * d;
        m4 += d * d * d * d;
    }
    out.coarse = std::max(0.0, std::log(n) - h);
    out.fine = n * n / 2 * std::fabs(m2 / n) + n * n * n / 6 * std::fabs(m3 / n) + n * n * n * n / 12 * std::fabs(m4 / n);
    return out;
}

/// The quantization family chosen for a matrix.
enum class quantization_family { scalar, vector };

/// RWKVQuant rule: scalar when `p.coarse < tau_coarse` and `p.fine < tau_fine`, else vector.
/// \throws invalid_argument for negative or NaN thresholds.
[[nodiscard]] inline quantization_family choose_quantization_family(const uniformity_proxy& p, double tau_coarse,
                                                                   double tau_fine) {
    detail::require(tau_coarse >= 0 && tau_fine >= 0, "choose_quantization_family",
                    "thresholds 'tau_coarse' and 'tau_fine' must be >= 0");
    return (p.coarse < tau_coarse && p.fine < tau_fine) ? quantization_family::scalar : quantization_family::vector;
}

LOWBIT_END_NAMESPACE
