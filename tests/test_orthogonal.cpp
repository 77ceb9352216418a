// Tests for lowbit/orthogonal.hpp. Oracles: central finite differences for the Cayley gradient; a brute-force
// angle/reflection search (n = 2) and random/perturbed orthogonal competitors for Procrustes; the dense
// Givens matrix; exact invariance x Wᵀ = (xQ)(WQ)ᵀ and X Wᵀ = (X/s)(W s)ᵀ recomputed in double.
#include <lowbit/hadamard.hpp>
#include <lowbit/kronecker.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/orthogonal_fit.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"

#include <cmath>
#include <limits>
#include <random>

namespace {

using lowbit_test::gaussian_d;

} // namespace

TEST_CASE("random_orthogonal is orthogonal, deterministic per seed, and differs across seeds") {
    for (Eigen::Index n : {1, 2, 7, 64, 107}) {
        const auto a = lowbit::random_orthogonal(n, 11), b = lowbit::random_orthogonal(n, 11), c = lowbit::random_orthogonal(n, 12);
        CHECK(lowbit::orthogonality_error(a) < 1e-12);
        CHECK(a == b);
        CHECK((a - c).cwiseAbs().maxCoeff() > 1e-3);
    }
    // Haar sign fix: the mean of Q_00 over many seeds is ≈ 0 (no bias toward +1 as without the fix)
    double mean = 0;
    for (unsigned s = 0; s < 400; ++s) mean += lowbit::random_orthogonal(3, s)(0, 0);
    CHECK(std::abs(mean / 400) < 0.1);
}

TEST_CASE("Cayley map: orthogonal, identity at zero") {
    const lowbit::matrix_d z = lowbit::matrix_d::Zero(5, 5);
    CHECK((lowbit::cayley(z) - lowbit::matrix_d::Identity(5, 5)).norm() == 0.0);
    for (unsigned seed : {1u, 2u, 3u}) {
        const auto q = lowbit::cayley(gaussian_d(9, 9, seed) * 3.0);
        CHECK(lowbit::orthogonality_error(q) < 1e-12);
        CHECK(q.determinant() == doctest::Approx(1.0).epsilon(1e-9)); // Cayley reaches SO(n) only
    }
}

TEST_CASE("Cayley gradient matches central finite differences") {
    const Eigen::Index n = 6;
    const auto c = gaussian_d(n, n, 4), d = gaussian_d(n, n, 5);
    // L(Q) = <C, Q> + <D, Q>²: G = C + 2<D, Q> D
    auto loss = [&](const lowbit::matrix_d& p) {
        const auto q = lowbit::cayley(p);
        const double t = (d.array() * q.array()).sum();
        return (c.array() * q.array()).sum() + t * t;
    };
    const lowbit::matrix_d p = gaussian_d(n, n, 6) * 0.5;
    const auto q = lowbit::cayley(p);
    const lowbit::matrix_d g = c + 2.0 * (d.array() * q.array()).sum() * d;
    const auto grad = lowbit::cayley_gradient(p, q, g);
    const double h = 1e-6;
    for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index j = 0; j < n; ++j) {
            lowbit::matrix_d pp = p, pm = p;
            pp(i, j) += h;
            pm(i, j) -= h;
            const double fd = (loss(pp) - loss(pm)) / (2 * h);
            CHECK(grad(i, j) == doctest::Approx(fd).epsilon(1e-6).scale(1.0));
        }
}

TEST_CASE("orthogonal Procrustes: recovers a rotation and beats every competitor") {
    const auto a = gaussian_d(40, 5, 7);
    const auto q0 = lowbit::random_orthogonal(5, 8);
    CHECK((lowbit::orthogonal_procrustes(a, a * q0) - q0).cwiseAbs().maxCoeff() < 1e-10);
    const auto b = gaussian_d(40, 5, 9);
    const auto q = lowbit::orthogonal_procrustes(a, b);
    CHECK(lowbit::orthogonality_error(q) < 1e-12);
    const double best = (a * q - b).norm();
    for (unsigned s = 0; s < 200; ++s) {
        CHECK(best <= (a * lowbit::random_orthogonal(5, s) - b).norm() + 1e-12);
        const lowbit::matrix_d near = q * lowbit::cayley(gaussian_d(5, 5, 1000 + s) * 1e-3); // local perturbations
        CHECK(best <= (a * near - b).norm() + 1e-12);
    }
    // n = 2 brute force over rotations and reflections on a fine angle grid
    const auto a2 = gaussian_d(10, 2, 10), b2 = gaussian_d(10, 2, 11);
    const double got = (a2 * lowbit::orthogonal_procrustes(a2, b2) - b2).norm();
    double brute = std::numeric_limits<double>::infinity();
    for (int k = 0; k < 20000; ++k) {
        const double t = 2 * M_PI * k / 20000;
        lowbit::matrix_d r(2, 2);
        r << std::cos(t), -std::sin(t), std::sin(t), std::cos(t);
        lowbit::matrix_d f(2, 2);
        f << std::cos(t), std::sin(t), std::sin(t), -std::cos(t);
        brute = std::min({brute, (a2 * r - b2).norm(), (a2 * f - b2).norm()});
    }
    CHECK(got <= brute + 1e-12);
    CHECK(got >= brute - 1e-3);
}

TEST_CASE("Givens rotation: apply equals the dense matrix; zeroing zeros") {
    const auto g = lowbit::givens_rotation::from_angle(5, 1, 3, 0.7);
    CHECK(lowbit::orthogonality_error(g.matrix()) < 1e-15);
    const lowbit::matrix_f x = gaussian_d(3, 5, 12).cast<float>();
    lowbit::matrix_f y = x;
    g.apply_rows(y);
    CHECK((y.cast<double>() - x.cast<double>() * g.matrix()).cwiseAbs().maxCoeff() < 1e-6);
    const auto z = lowbit::givens_rotation::zeroing(5, 0, 4, x(0, 0), x(0, 4));
    lowbit::matrix_f w = x;
    z.apply_rows(w);
    CHECK(std::abs(w(0, 4)) < 1e-6);
    CHECK(w(0, 0) == doctest::Approx(std::hypot(x(0, 0), x(0, 4))).epsilon(1e-6));
    CHECK_THROWS_AS((void)lowbit::givens_rotation::from_angle(5, 2, 2, 0.1), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::givens_rotation::from_angle(5, 0, 5, 0.1), lowbit::invalid_argument);
    lowbit::matrix_f bad = lowbit::matrix_f::Zero(2, 4);
    CHECK_THROWS_AS(g.apply_rows(bad), lowbit::shape_error);
}

TEST_CASE("KLT basis diagonalises the second moment in descending order") {
    // correlated data: X = G · diag(5,3,2,1,0.5) · R
    const auto r = lowbit::random_orthogonal(5, 3);
    Eigen::VectorXd sd(5);
    sd << 5, 3, 2, 1, 0.5;
    const lowbit::matrix_f x = (gaussian_d(4000, 5, 13) * sd.asDiagonal() * r).cast<float>();
    const auto q = lowbit::klt_basis(x);
    CHECK(lowbit::orthogonality_error(q) < 1e-12);
    const Eigen::MatrixXd xd = x.cast<double>();
    const Eigen::MatrixXd s = q.transpose() * (xd.transpose() * xd / 4000.0) * q;
    for (Eigen::Index i = 0; i < 5; ++i)
        for (Eigen::Index j = 0; j < 5; ++j)
            if (i != j) CHECK(std::abs(s(i, j)) < 1e-9 * s.trace());
    for (Eigen::Index i = 0; i + 1 < 5; ++i) CHECK(s(i, i) >= s(i + 1, i + 1));
    // leading eigenvector ≈ the first row of R (up to sign, fixed positive on its largest entry)
    CHECK(std::abs(q.col(0).dot(r.row(0).transpose())) > 0.99);
}

TEST_CASE("SmoothQuant: hand-worked scales, invariance, balanced maxima") {
    lowbit::matrix_f x(2, 2), w(2, 2);
    x << 16, 1, -4, 0.5;
    w << 1, 4, -0.25, 2;
    const auto s = lowbit::smoothquant_scales(x, w, 0.5f); // s0 = √16/√1 = 4; s1 = √1/√4 = 0.5
    CHECK(s(0) == doctest::Approx(4.0));
    CHECK(s(1) == doctest::Approx(0.5));
    const lowbit::matrix_f xs = lowbit::smooth_activations(x, s), ws = lowbit::smooth_weights(w, s);
    for (int j = 0; j < 2; ++j) CHECK(xs.col(j).cwiseAbs().maxCoeff() == doctest::Approx(ws.col(j).cwiseAbs().maxCoeff()));
    const auto xb = gaussian_d(7, 33, 14).cast<float>().eval();
    const auto wb = gaussian_d(5, 33, 15).cast<float>().eval();
    const auto sb = lowbit::smoothquant_scales(xb, wb, 0.8f);
    const Eigen::MatrixXd y = xb.cast<double>() * wb.cast<double>().transpose();
    const Eigen::MatrixXd y2 =
        lowbit::smooth_activations(xb, sb).cast<double>() * lowbit::smooth_weights(wb, sb).cast<double>().transpose();
    CHECK((y - y2).cwiseAbs().maxCoeff() < 1e-5 * y.cwiseAbs().maxCoeff());
    // zero channel → s = 1
    lowbit::matrix_f x0 = xb;
    x0.col(3).setZero();
    CHECK(lowbit::smoothquant_scales(x0, wb)(3) == 1.0f);
}

TEST_CASE("fusing helpers keep y = x Wᵀ = (xQ)(WQ)ᵀ for every transform policy") {
    const Eigen::Index n = 96; // 96 = 12·8 (Paley I block) = 8·12 (Kronecker)
    const lowbit::matrix_f x = gaussian_d(6, n, 16).cast<float>(), w = gaussian_d(10, n, 17).cast<float>();
    const Eigen::MatrixXd y = x.cast<double>() * w.cast<double>().transpose();
    auto check = [&](const auto& t) {
        const lowbit::matrix_f xq = lowbit::rotate_activations(x, t);
        const lowbit::matrix_f wq = lowbit::rotate_weights(w, t);
        const Eigen::MatrixXd y2 = xq.cast<double>() * wq.cast<double>().transpose();
        CHECK((y - y2).cwiseAbs().maxCoeff() < 2e-5 * y.cwiseAbs().maxCoeff());
    };
    check(lowbit::dense_rotation{lowbit::random_orthogonal(n, 1).cast<float>()});
    check(lowbit::hadamard_transform(n, {.randomized = true, .seed = 2}));
    check(lowbit::givens_rotation::from_angle(n, 3, 50, 1.1));
    check(lowbit::kronecker_rotation{lowbit::random_orthogonal(8, 3).cast<float>(), lowbit::random_orthogonal(12, 4).cast<float>()});
}

TEST_CASE("bad input is refused with lowbit errors") {
    const lowbit::matrix_d rect = lowbit::matrix_d::Zero(2, 3);
    CHECK_THROWS_AS((void)lowbit::cayley(rect), lowbit::shape_error);
    lowbit::matrix_d nan = lowbit::matrix_d::Zero(2, 2);
    nan(0, 1) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::cayley(nan), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::random_orthogonal(0, 1), lowbit::invalid_argument);
    const lowbit::matrix_d sq = lowbit::matrix_d::Identity(3, 3);
    CHECK_THROWS_AS((void)lowbit::cayley_gradient(sq, sq, rect), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::orthogonal_procrustes(sq, rect), lowbit::shape_error);
    const lowbit::matrix_f empty(0, 3);
    CHECK_THROWS_AS((void)lowbit::klt_basis(empty), lowbit::shape_error);
    lowbit::matrix_f xf = lowbit::matrix_f::Ones(2, 3), wf = lowbit::matrix_f::Ones(2, 4);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales(xf, wf), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales(xf, xf, 1.5f), lowbit::invalid_argument);
    lowbit::vector_f s = lowbit::vector_f::Ones(3);
    s(1) = 0.0f;
    CHECK_THROWS_AS((void)lowbit::smooth_activations(xf, s), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::smooth_weights(wf, s), lowbit::shape_error);
    const lowbit::dense_rotation d{lowbit::matrix_f::Identity(4, 4)};
    CHECK_THROWS_AS((void)lowbit::rotate_weights(xf, d), lowbit::shape_error);
    xf(0, 0) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::rotate_activations(xf, lowbit::dense_rotation{lowbit::matrix_f::Identity(3, 3)}),
                    lowbit::numeric_error);
}
