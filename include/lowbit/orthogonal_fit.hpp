#pragma once
/// \file orthogonal_fit.hpp
/// Fitting and learning orthogonal matrices (the solver side of orthogonal.hpp): the Cayley map of a
/// skew-symmetric matrix and its gradient (the parameterisation rotation learners such as KOTMS/OKT
/// optimise, kotms.hpp, okt.hpp), orthogonal Procrustes (the rotation best aligning two point sets) and
/// the Karhunen–Loève basis of activations (used by TORQ, torq.hpp). These need Eigen's LU, SVD and
/// symmetric eigen solver, which are the expensive part of compiling rotations; an engine that only
/// applies a rotation includes orthogonal.hpp or hadamard.hpp and does not pay for them.
///
/// Same conventions as orthogonal.hpp: transforms act on rows from the right (x ↦ x·Q), dense matrices
/// are double precision (`matrix_d`). Every function here is a template with one defaulted, unused
/// parameter (`template <class = void>`; call them as ordinary functions): Eigen's LU, SVD and eigen
/// solver are then compiled only in a translation unit that calls them (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/LU>
#include <Eigen/SVD>

LOWBIT_BEGIN_NAMESPACE

/// Cayley map of the skew part of a free square matrix P: A = P − Pᵀ, Q = (I + A)⁻¹(I − A).
/// Q is orthogonal for every P (I + A is invertible for skew A); P = 0 gives Q = I. O(n³).
/// Throws `shape_error` for a non-square or empty P, `numeric_error` for NaN/Inf.
template <class = void>
[[nodiscard]] matrix_d cayley(const Eigen::Ref<const matrix_d>& p) {
    detail::require_square(p.rows(), p.cols(), "cayley", "p");
    detail::require_finite(p, "cayley", "p");
    const Eigen::Index n = p.rows();
    const matrix_d a = p - p.transpose();
    const matrix_d id = matrix_d::Identity(n, n);
    return (id + a).partialPivLu().solve(id - a);
}

/// Gradient of L(Q(P)) with respect to the free matrix P, given Q = cayley(P) and G = ∂L/∂Q:
/// with M = I + A, ∂L/∂A = −M⁻ᵀ G (I + Q)ᵀ and ∂L/∂P = ∂L/∂A − (∂L/∂A)ᵀ. Because I + Q = 2M⁻¹, the
/// inverse is read off Q: ∂L/∂A = −½ (I + Q)ᵀ G (I + Q)ᵀ, two n×n products and no solve, so Q must be
/// cayley(P) (to rounding; the gradient is taken at the caller's Q). O(n³).
template <class = void>
[[nodiscard]] matrix_d cayley_gradient(const Eigen::Ref<const matrix_d>& p, const Eigen::Ref<const matrix_d>& q,
                                       const Eigen::Ref<const matrix_d>& g) {
    detail::require_square(p.rows(), p.cols(), "cayley_gradient", "p");
    detail::require_dim(q.rows(), p.rows(), "cayley_gradient", "rows of 'q'");
    detail::require_dim(q.cols(), p.cols(), "cayley_gradient", "columns of 'q'");
    detail::require_dim(g.rows(), p.rows(), "cayley_gradient", "rows of 'g'");
    detail::require_dim(g.cols(), p.cols(), "cayley_gradient", "columns of 'g'");
    matrix_d iqt = q.transpose();
    iqt.diagonal().array() += 1.0; // (I + Q)ᵀ = 2M⁻ᵀ
    const matrix_d rhs = g * iqt;
    matrix_d ga = iqt * rhs;
    ga *= -0.5;
    return ga - ga.transpose();
}

namespace detail {
/// The orthogonal Q maximising tr(Qᵀ M): U Vᵀ from the SVD M = U Σ Vᵀ (the polar factor of M; the core
/// of orthogonal Procrustes, and OKT's exact M-step). BDCSVD: Jacobi below 16×16, divide and conquer
/// above (OKT's 512×512 factor). O(k³) for M k×k.
template <class = void>
[[nodiscard]] matrix_d polar_orthogonal(const Eigen::Ref<const matrix_d>& m) {
    const Eigen::MatrixXd md = m;
    Eigen::BDCSVD<Eigen::MatrixXd> svd(md, Eigen::ComputeFullU | Eigen::ComputeFullV);
    return svd.matrixU() * svd.matrixV().transpose();
}

/// `polar_orthogonal` in single precision (float BDCSVD), returned in double: about twice as fast at
/// k = 512; the result is orthogonal to about 1e-6 (3e-6 measured at 512×512) instead of 1e-15. The
/// learners use it for factors of order ≥ `polar_float_min_order`, whose products run in float anyway
/// and whose stored factors are rounded to fp16. O(k³).
inline constexpr Eigen::Index polar_float_min_order = 128;
template <class = void>
[[nodiscard]] matrix_d polar_orthogonal_f(const Eigen::Ref<const matrix_d>& m) {
    const Eigen::MatrixXf mf = m.cast<float>();
    Eigen::BDCSVD<Eigen::MatrixXf> svd(mf, Eigen::ComputeFullU | Eigen::ComputeFullV);
    const Eigen::MatrixXf q = svd.matrixU() * svd.matrixV().transpose();
    return q.cast<double>();
}
} // namespace detail

/// Orthogonal Procrustes: the orthogonal Q minimising ‖A Q − B‖_F, Q = U Vᵀ from the SVD AᵀB = U Σ Vᵀ
/// (Schönemann 1966). A, B: [k x n] with equal shapes. O(k n² + n³).
template <class = void>
[[nodiscard]] matrix_d orthogonal_procrustes(const Eigen::Ref<const matrix_d>& a, const Eigen::Ref<const matrix_d>& b) {
    detail::require_nonempty(a, "orthogonal_procrustes", "a");
    detail::require_dim(b.rows(), a.rows(), "orthogonal_procrustes", "rows of 'b'");
    detail::require_dim(b.cols(), a.cols(), "orthogonal_procrustes", "columns of 'b'");
    detail::require_finite(a, "orthogonal_procrustes", "a");
    detail::require_finite(b, "orthogonal_procrustes", "b");
    return detail::polar_orthogonal(a.transpose() * b);
}

/// Karhunen–Loève basis of activations X [tokens x n]: the eigenvectors of the second moment
/// Σ = XᵀX / tokens as columns, by decreasing eigenvalue, each column's largest-|entry| made positive.
/// x·Q gives the decorrelated KLT coefficients (QᵀΣQ diagonal, descending). O(tokens n² + n³).
template <class = void>
[[nodiscard]] matrix_d klt_basis(const cref_matrix_f& x) {
    detail::require_nonempty(x, "klt_basis", "x");
    detail::require_finite(x, "klt_basis", "x");
    const Eigen::MatrixXd xd = x.cast<double>();
    const Eigen::MatrixXd sigma = xd.transpose() * xd / static_cast<double>(x.rows());
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(sigma);
    const Eigen::Index n = sigma.rows();
    matrix_d q(n, n);
    for (Eigen::Index k = 0; k < n; ++k) { // Eigen sorts ascending
        Eigen::VectorXd v = es.eigenvectors().col(n - 1 - k);
        Eigen::Index arg = 0;
        v.cwiseAbs().maxCoeff(&arg);
        if (v(arg) < 0) v = -v;
        q.col(k) = v;
    }
    return q;
}

LOWBIT_END_NAMESPACE
