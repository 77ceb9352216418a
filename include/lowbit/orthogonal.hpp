#pragma once
/// \file orthogonal.hpp
/// Orthogonal building blocks for computational invariance y = x Wᵀ = (x Q)(W Q)ᵀ: for an orthogonal Q
/// (QᵀQ = I) a linear layer gives the same output when its weights are rotated by Q and its input by the
/// same Q at run time, so a rotation that spreads outliers before quantization costs no accuracy by
/// itself (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al. 2024). This header has what applying
/// rotations needs: the `RowTransform` concept, seeded random orthogonal matrices, Givens rotations,
/// dense rotations, SmoothQuant diagonal smoothing and the fusing helpers `rotate_weights` /
/// `rotate_activations`. The parts that *learn* or *fit* a rotation (Cayley map and its gradient,
/// orthogonal Procrustes, the KLT basis), which need Eigen's LU, SVD and eigen solvers, are in
/// orthogonal_fit.hpp, so an engine that only applies rotations does not compile them.
///
/// Convention: a transform acts on the rows of a row-major matrix from the right, x ↦ x·Q. For an
/// orthogonal Q, weights and activations are rotated by the same map (W ↦ W Q, X ↦ X Q). Dense matrices
/// built here are double precision (`matrix_d`); `dense_rotation` stores float for application.

#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <random>
#include <string>

LOWBIT_BEGIN_NAMESPACE

namespace detail {

/// Standard normal sample from raw mt19937_64 bits (Box–Muller), identical on every standard library.
inline double gaussian(std::mt19937_64& rng) {
    constexpr double two_pi = 6.283185307179586476925286766559;
    const double u1 = (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53; // (0, 1]
    const double u2 = static_cast<double>(rng() >> 11) * 0x1.0p-53;         // [0, 1)
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * u2);
}

inline void require_square(Eigen::Index rows, Eigen::Index cols, const char* where, const char* name) {
    if (rows != cols || rows == 0)
        throw shape_error(std::string("lowbit: ") + where + ": argument '" + name + "' must be square and non-empty, got " +
                          std::to_string(rows) + "x" + std::to_string(cols));
}

} // namespace detail

/// Max-abs entry of QᵀQ − I (0 for an exactly orthogonal Q). Q square. O(n³).
template <class Derived>
[[nodiscard]] inline double orthogonality_error(const Eigen::MatrixBase<Derived>& q) {
    const Eigen::MatrixXd d = q.template cast<double>();
    return (d.transpose() * d - Eigen::MatrixXd::Identity(d.cols(), d.cols())).cwiseAbs().maxCoeff();
}

/// Haar-random orthogonal n×n matrix: QR of a Gaussian matrix with the sign fix Q·diag(sign R_ii)
/// (Mezzadri 2007), from `std::mt19937_64(seed)` and a portable Box–Muller. Deterministic per seed.
/// O(n³). Throws `invalid_argument` for n < 1. (A template with one defaulted, unused parameter, called as
/// an ordinary function: its QR is compiled only where it is called, docs/compile_time.md.)
template <class = void>
[[nodiscard]] matrix_d random_orthogonal(Eigen::Index n, std::uint64_t seed) {
    detail::require(n >= 1, "random_orthogonal", "argument 'n' must be >= 1, got " + std::to_string(n));
    std::mt19937_64 rng(seed);
    Eigen::MatrixXd g(n, n);
    for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index j = 0; j < n; ++j) g(i, j) = detail::gaussian(rng);
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
    Eigen::MatrixXd q = qr.householderQ();
    const Eigen::MatrixXd& r = qr.matrixQR();
    for (Eigen::Index j = 0; j < n; ++j)
        if (r(j, j) < 0) q.col(j) = -q.col(j);
    return q;
}

/// A plane (Givens) rotation G(i, j, θ) acting from the right on rows: (xG)_i = c x_i + s x_j,
/// (xG)_j = −s x_i + c x_j, c = cos θ, s = sin θ; other coordinates unchanged. O(rows) per application.
struct givens_rotation {
    Eigen::Index n = 0; ///< width of the rows it acts on
    Eigen::Index i = 0; ///< first coordinate (i ≠ j, both < n)
    Eigen::Index j = 1; ///< second coordinate
    double c = 1.0;     ///< cos θ
    double s = 0.0;     ///< sin θ

    /// The rotation of angle θ in the (i, j) plane of R^n. Throws `invalid_argument` for bad indices.
    [[nodiscard]] static givens_rotation from_angle(Eigen::Index n, Eigen::Index i, Eigen::Index j, double theta) {
        detail::require(i >= 0 && j >= 0 && i < n && j < n && i != j, "givens_rotation",
                        "indices i, j must be distinct and < n");
        return {n, i, j, std::cos(theta), std::sin(theta)};
    }
    /// The rotation that maps (a, b) in coordinates (i, j) to (r, 0), r = √(a² + b²) ≥ 0.
    [[nodiscard]] static givens_rotation zeroing(Eigen::Index n, Eigen::Index i, Eigen::Index j, double a, double b) {
        detail::require(i >= 0 && j >= 0 && i < n && j < n && i != j, "givens_rotation",
                        "indices i, j must be distinct and < n");
        const double r = std::hypot(a, b);
        if (r == 0.0) return {n, i, j, 1.0, 0.0};
        return {n, i, j, a / r, b / r};
    }
    [[nodiscard]] Eigen::Index dim() const { return n; }
    /// x ↦ x G on every row. Throws `shape_error` if `m.cols() != n`.
    void apply_rows(Eigen::Ref<matrix_f> m) const {
        detail::require_dim(m.cols(), n, "givens_rotation::apply_rows", "columns of 'm'");
        const float cf = static_cast<float>(c), sf = static_cast<float>(s);
        for (Eigen::Index r = 0; r < m.rows(); ++r) {
            const float xi = m(r, i), xj = m(r, j);
            m(r, i) = cf * xi + sf * xj;
            m(r, j) = -sf * xi + cf * xj;
        }
    }
    /// The dense n×n matrix G.
    [[nodiscard]] matrix_d matrix() const {
        matrix_d g = matrix_d::Identity(n, n);
        g(i, i) = c;
        g(j, j) = c;
        g(j, i) = s;
        g(i, j) = -s;
        return g;
    }
};

/// An explicit orthogonal (or any square) matrix applied as x ↦ x Q. O(n²) per row.
struct dense_rotation {
    matrix_f q; ///< (n, n)

    [[nodiscard]] Eigen::Index dim() const { return q.rows(); }
    /// x ↦ x Q on every row. Throws `shape_error` if `m.cols() != n`.
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply_rows(Eigen::Ref<matrix_f> m) const {
        detail::require_dim(m.cols(), q.rows(), "dense_rotation::apply_rows", "columns of 'm'");
        const matrix_f out = m * q;
        m = out;
    }
};

/// SmoothQuant per-channel smoothing factors s_j = max|X_:j|^α / max|W_:j|^(1−α) (Xiao et al. 2023),
/// for activations X [tokens x n] and weights W [out x n]; α ∈ [0, 1] (0.5 default). Channels where
/// either maximum is zero get s_j = 1. The pair (X diag(s)⁻¹, W diag(s)) keeps X Wᵀ unchanged.
[[nodiscard]] inline vector_f smoothquant_scales(const cref_matrix_f& x, const cref_matrix_f& w, float alpha = 0.5f) {
    detail::require_nonempty(x, "smoothquant_scales", "x");
    detail::require_nonempty(w, "smoothquant_scales", "w");
    detail::require_dim(w.cols(), x.cols(), "smoothquant_scales", "columns of 'w' (input features)");
    detail::require_finite(x, "smoothquant_scales", "x");
    detail::require_finite(w, "smoothquant_scales", "w");
    detail::require(alpha >= 0.0f && alpha <= 1.0f, "smoothquant_scales", "argument 'alpha' must lie in [0, 1]");
    vector_f s(x.cols());
    for (Eigen::Index j = 0; j < x.cols(); ++j) {
        const double ax = x.col(j).cwiseAbs().maxCoeff(), aw = w.col(j).cwiseAbs().maxCoeff();
        s(j) = (ax > 0 && aw > 0) ? static_cast<float>(std::pow(ax, alpha) / std::pow(aw, 1.0 - alpha)) : 1.0f;
    }
    return s;
}

/// X diag(s)⁻¹ (activations side of SmoothQuant). s: (n) positive. Throws on shape mismatch or s ≤ 0.
[[nodiscard]] inline matrix_f smooth_activations(const cref_matrix_f& x, const cref_vector_f& s) {
    detail::require_dim(s.size(), x.cols(), "smooth_activations", "length of 's'");
    detail::require((s.array() > 0.0f).all() && s.allFinite(), "smooth_activations", "argument 's' must be finite and > 0");
    return x * s.cwiseInverse().asDiagonal();
}

/// W diag(s) (weights side of SmoothQuant). s: (n) positive. Throws on shape mismatch or s ≤ 0.
[[nodiscard]] inline matrix_f smooth_weights(const cref_matrix_f& w, const cref_vector_f& s) {
    detail::require_dim(s.size(), w.cols(), "smooth_weights", "length of 's'");
    detail::require((s.array() > 0.0f).all() && s.allFinite(), "smooth_weights", "argument 's' must be finite and > 0");
    return w * s.asDiagonal();
}

/// Fuses an orthogonal transform into weights W [out x n]: returns W Q (so that (xQ)(WQ)ᵀ = x Wᵀ).
/// Throws `shape_error` if `w.cols() != t.dim()`, `numeric_error` on NaN/Inf.
template <RowTransform T>
[[nodiscard]] inline matrix_f rotate_weights(const cref_matrix_f& w, const T& t) {
    detail::require_dim(w.cols(), static_cast<Eigen::Index>(t.dim()), "rotate_weights", "columns of 'w'");
    detail::require_finite(w, "rotate_weights", "w");
    matrix_f out = w;
    t.apply_rows(out);
    return out;
}

/// Rotates activations X [tokens x n]: returns X Q (the online side of `rotate_weights`).
/// Throws `shape_error` if `x.cols() != t.dim()`, `numeric_error` on NaN/Inf.
template <RowTransform T>
[[nodiscard]] inline matrix_f rotate_activations(const cref_matrix_f& x, const T& t) {
    detail::require_dim(x.cols(), static_cast<Eigen::Index>(t.dim()), "rotate_activations", "columns of 'x'");
    detail::require_finite(x, "rotate_activations", "x");
    matrix_f out = x;
    t.apply_rows(out);
    return out;
}

LOWBIT_END_NAMESPACE
