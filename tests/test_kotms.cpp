// Tests for lowbit/kotms.hpp. Oracles: central finite differences of the loss (c_o held fixed, as the method
// detaches it) for the analytic gradients in C, B and through the Cayley parameters; the mixture density
// evaluated directly in double for the loss value; E2M-ATQ (asym_ternary.hpp) errors of W vs W·Q on the real
// checkpoint.
#include <lowbit/asym_ternary.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/kotms.hpp>

#include "gaussian_matrix.hpp"
#include "models.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

namespace {

lowbit::matrix_f heavy_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
    return lowbit_test::student_t(rows, cols, seed, 4.0f, 0.02f);
}

using lowbit_test::gaussian_d;

// −mean log p directly from the definition, rows rotated by C·M·B (double), c_o given.
double direct_nll(const lowbit::matrix_f& w, const lowbit::matrix_d& c, const lowbit::matrix_d& b, const lowbit::vector_d& scale,
                  double rho0, double rho1) {
    const Eigen::Index l = c.rows(), r = b.rows();
    double s = 0;
    for (Eigen::Index o = 0; o < w.rows(); ++o) {
        const Eigen::MatrixXd m = Eigen::Map<const lowbit::matrix_f>(w.row(o).data(), l, r).cast<double>();
        const Eigen::MatrixXd y = c * m * b;
        const double mean = y.mean();
        for (Eigen::Index i = 0; i < y.size(); ++i) {
            const double x = y.data()[i] - mean, co = scale(o);
            auto pdf = [](double v, double mu, double sd) { return std::exp(-0.5 * (v - mu) * (v - mu) / (sd * sd)) / (sd * std::sqrt(2 * M_PI)); };
            s -= std::log((pdf(x, -co, rho1 * co) + pdf(x, 0, rho0 * co) + pdf(x, co, rho1 * co)) / 3.0);
        }
    }
    return s / static_cast<double>(w.size());
}

} // namespace

TEST_CASE("KOTMS loss value equals the mixture density evaluated directly") {
    const auto w = heavy_matrix(5, 12, 1);
    const auto c = lowbit::random_orthogonal(3, 2), b = lowbit::random_orthogonal(4, 3);
    lowbit::kotms_options opt;
    opt.rho0 = 0.2;
    opt.rho1 = 0.35;
    opt.lambda_bal = 0.0;
    const auto v = lowbit::kotms_loss(w, c, b, opt);
    CHECK(v.nll == doctest::Approx(direct_nll(w, c, b, v.row_scale, 0.2, 0.35)).epsilon(1e-10));
    CHECK(v.total == doctest::Approx(v.nll));
}

TEST_CASE("KOTMS analytic gradients match finite differences (c_o fixed), with the balance term") {
    const auto w = heavy_matrix(6, 12, 4);
    const lowbit::matrix_d c = lowbit::random_orthogonal(3, 5) + 0.1 * gaussian_d(3, 3, 6); // need not be orthogonal
    const lowbit::matrix_d b = lowbit::random_orthogonal(4, 7) + 0.1 * gaussian_d(4, 4, 8);
    lowbit::kotms_options opt;
    opt.lambda_bal = 0.5;
    opt.rho0 = 0.3;
    const auto base = lowbit::kotms_loss(w, c, b, opt);
    const lowbit::vector_d scale = base.row_scale;
    const double h = 1e-6;
    for (Eigen::Index i = 0; i < 3; ++i)
        for (Eigen::Index j = 0; j < 3; ++j) {
            lowbit::matrix_d cp = c, cm = c;
            cp(i, j) += h;
            cm(i, j) -= h;
            const double fd = (lowbit::kotms_loss(w, cp, b, opt, &scale).total - lowbit::kotms_loss(w, cm, b, opt, &scale).total) / (2 * h);
            CHECK(base.grad_left(i, j) == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
        }
    for (Eigen::Index i = 0; i < 4; ++i)
        for (Eigen::Index j = 0; j < 4; ++j) {
            lowbit::matrix_d bp = b, bm = b;
            bp(i, j) += h;
            bm(i, j) -= h;
            const double fd = (lowbit::kotms_loss(w, c, bp, opt, &scale).total - lowbit::kotms_loss(w, c, bm, opt, &scale).total) / (2 * h);
            CHECK(base.grad_right(i, j) == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
        }
}

TEST_CASE("KOTMS gradient through the Cayley parameters matches finite differences") {
    const auto w = heavy_matrix(4, 16, 9);
    const lowbit::matrix_d pl = 0.3 * gaussian_d(4, 4, 10), pr = 0.3 * gaussian_d(4, 4, 11);
    const auto c = lowbit::cayley(pl), b = lowbit::cayley(pr);
    const auto base = lowbit::kotms_loss(w, c, b);
    const lowbit::vector_d scale = base.row_scale;
    const auto g = lowbit::cayley_gradient(pl, c, base.grad_left);
    const double h = 1e-6;
    for (Eigen::Index i = 0; i < 4; ++i)
        for (Eigen::Index j = 0; j < 4; ++j) {
            lowbit::matrix_d pp = pl, pm = pl;
            pp(i, j) += h;
            pm(i, j) -= h;
            const double fd = (lowbit::kotms_loss(w, lowbit::cayley(pp), b, {}, &scale).total -
                               lowbit::kotms_loss(w, lowbit::cayley(pm), b, {}, &scale).total) / (2 * h);
            CHECK(g(i, j) == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
        }
}

TEST_CASE("learn_kotms: loss decreases, factors orthogonal, invariance holds, deterministic") {
    const auto w = heavy_matrix(32, 64, 12);
    for (bool alternating : {false, true}) {
        lowbit::kotms_options opt;
        opt.iters = 60;
        opt.alternating = alternating;
        const auto r = lowbit::learn_kotms(w, opt);
        CHECK(r.loss_history.size() == 61);
        CHECK(r.loss_history.back() < r.loss_history.front() - 0.1);
        CHECK(r.rotation.sizes().l == 16);
        CHECK(r.rotation.sizes().r == 4);
        CHECK(lowbit::orthogonality_error(r.rotation.matrix()) <= 1e-5);
        const auto r2 = lowbit::learn_kotms(w, opt);
        CHECK(r2.rotation.left == r.rotation.left);
        const lowbit::matrix_f x = heavy_matrix(3, 64, 13) * 50.0f;
        const Eigen::MatrixXd y = x.cast<double>() * w.cast<double>().transpose();
        const Eigen::MatrixXd y2 = lowbit::rotate_activations(x, r.rotation).cast<double>() *
                                   lowbit::rotate_weights(w, r.rotation).cast<double>().transpose();
        CHECK((y - y2).cwiseAbs().maxCoeff() < 1e-5 * y.cwiseAbs().maxCoeff());
    }
    lowbit::kotms_options zero;
    zero.iters = 0;
    const auto id = lowbit::learn_kotms(w, zero);
    CHECK(id.rotation.left.isIdentity());
    CHECK(id.rotation.right.isIdentity());
}

TEST_CASE("KOTMS lowers the E2M-ATQ error of real-checkpoint weights (first layer's attention)") {
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    int better = 0, total = 0;
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        if (name != "layers.0.wq" && name != "layers.0.wk" && name != "layers.0.wv" && name != "layers.0.wo") continue;
        const auto r = lowbit::learn_kotms(*w);
        const lowbit::matrix_f wr = lowbit::rotate_weights(*w, r.rotation);
        const double e0 = (*w - lowbit::quantize_e2m_atq(*w).dequantize()).norm() / w->norm();
        const double e1 = (wr - lowbit::quantize_e2m_atq(wr).dequantize()).norm() / wr.norm();
        CAPTURE(name);
        better += e1 < e0;
        ++total;
    }
    CHECK(total == 4);
    CHECK(better >= 3); // "most": measured 4/4 (35/35 on the whole checkpoint)
}

TEST_CASE("KOTMS lowers E2M-ATQ error on most tensors of the whole checkpoint" * doctest::test_suite("long")) {
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    int better = 0, total = 0;
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        const lowbit::matrix_f wr = lowbit::rotate_weights(*w, lowbit::learn_kotms(*w).rotation);
        better += (wr - lowbit::quantize_e2m_atq(wr).dequantize()).norm() / wr.norm() <
                  (*w - lowbit::quantize_e2m_atq(*w).dequantize()).norm() / w->norm();
        ++total;
    }
    CHECK(better * 4 >= total * 3); // measured 35/35
}

TEST_CASE("bad input is refused with lowbit errors") {
    const auto w = heavy_matrix(4, 12, 14);
    const lowbit::matrix_d c = lowbit::matrix_d::Identity(3, 3), b = lowbit::matrix_d::Identity(4, 4),
                           b5 = lowbit::matrix_d::Identity(5, 5), rect = lowbit::matrix_d::Zero(3, 4);
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, c, b5), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, rect, b), lowbit::shape_error);
    lowbit::kotms_options bad;
    bad.rho0 = 0;
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, c, b, bad), lowbit::invalid_argument);
    bad = {};
    bad.iters = -1;
    CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::invalid_argument);
    bad = {};
    bad.sizes = lowbit::kronecker_factor_sizes{5, 3};
    CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::shape_error);
    lowbit::matrix_f nan = w;
    nan(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::learn_kotms(nan), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::learn_kotms(lowbit::matrix_f(0, 12)), lowbit::shape_error);
    const lowbit::vector_d short_scale = lowbit::vector_d::Ones(2);
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, c, b, {}, &short_scale), lowbit::shape_error);
}
