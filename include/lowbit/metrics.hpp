#pragma once
/// \file metrics.hpp
/// Reconstruction metrics of a quantized matrix Ŵ against the original W (both `[rows x cols]`),
/// accumulated in double: MSE, relative Frobenius error, SQNR, max |error| and the layer output
/// error tr(Δ S Δᵀ) with Δ = W − Ŵ and S = XᵀX the input Gram matrix (`[cols x cols]`), which
/// equals ‖Δ Xᵀ‖²_F = Σ_t ‖Δ x_t‖² for calibration activations X `[tokens x cols]`.
/// Every function throws `shape_error` on mismatched or empty shapes and `numeric_error` on NaN/Inf.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

LOWBIT_BEGIN_NAMESPACE

namespace detail {
inline void require_same_shape(const cref_matrix_f& w, const cref_matrix_f& w_hat, const char* where) {
    require_nonempty(w, where, "w");
    require_dim(w_hat.rows(), w.rows(), where, "rows of 'w_hat'");
    require_dim(w_hat.cols(), w.cols(), where, "columns of 'w_hat'");
    require_finite(w, where, "w");
    require_finite(w_hat, where, "w_hat");
}
inline double squared_error_sum(const cref_matrix_f& w, const cref_matrix_f& w_hat) {
    double s = 0.0;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            const double d = static_cast<double>(w(i, j)) - static_cast<double>(w_hat(i, j));
            s += d * d;
        }
    return s;
}
inline double squared_sum(const cref_matrix_f& w) {
    double s = 0.0;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) s += static_cast<double>(w(i, j)) * static_cast<double>(w(i, j));
    return s;
}
} // namespace detail

/// Mean squared error Σ (W − Ŵ)² / size. O(size).
[[nodiscard]] inline double mse(const cref_matrix_f& w, const cref_matrix_f& w_hat) {
    detail::require_same_shape(w, w_hat, "mse");
    return detail::squared_error_sum(w, w_hat) / static_cast<double>(w.size());
}

/// Relative Frobenius error ‖W − Ŵ‖_F / ‖W‖_F (0 when both are zero, +inf when only W is). O(size).
[[nodiscard]] inline double relative_error(const cref_matrix_f& w, const cref_matrix_f& w_hat) {
    detail::require_same_shape(w, w_hat, "relative_error");
    const double e = detail::squared_error_sum(w, w_hat), n = detail::squared_sum(w);
    if (n == 0.0) return e == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    return std::sqrt(e / n);
}

/// Signal-to-quantization-noise ratio 10·log10(‖W‖² / ‖W − Ŵ‖²) in dB (+inf for an exact Ŵ). O(size).
[[nodiscard]] inline double sqnr_db(const cref_matrix_f& w, const cref_matrix_f& w_hat) {
    detail::require_same_shape(w, w_hat, "sqnr_db");
    const double e = detail::squared_error_sum(w, w_hat);
    if (e == 0.0) return std::numeric_limits<double>::infinity();
    return 10.0 * std::log10(detail::squared_sum(w) / e);
}

/// max |W − Ŵ|. O(size).
[[nodiscard]] inline double max_abs_error(const cref_matrix_f& w, const cref_matrix_f& w_hat) {
    detail::require_same_shape(w, w_hat, "max_abs_error");
    double m = 0.0;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j)
            m = std::max(m, std::fabs(static_cast<double>(w(i, j)) - static_cast<double>(w_hat(i, j))));
    return m;
}

/// Output error tr(Δ S Δᵀ) = Σ_i Δ_i S Δ_iᵀ, Δ = W − Ŵ, S `[cols x cols]` (usually XᵀX, symmetric
/// positive semi-definite; not checked). O(rows·cols²).
[[nodiscard]] inline double output_error(const cref_matrix_f& w, const cref_matrix_f& w_hat,
                                         const Eigen::Ref<const matrix_d>& s) {
    detail::require_same_shape(w, w_hat, "output_error");
    detail::require_dim(s.rows(), w.cols(), "output_error", "rows of 'S'");
    detail::require_dim(s.cols(), w.cols(), "output_error", "columns of 'S'");
    detail::require_finite(s, "output_error", "S");
    double total = 0.0;
    vector_d d(w.cols());
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        for (Eigen::Index j = 0; j < w.cols(); ++j)
            d(j) = static_cast<double>(w(i, j)) - static_cast<double>(w_hat(i, j));
        total += d.dot(s * d);
    }
    return total;
}

LOWBIT_END_NAMESPACE
