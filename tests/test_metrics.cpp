// Tests for lowbit/metrics.hpp. Oracles: a 2×2 example worked by hand, and tr(ΔSΔᵀ) = ‖ΔXᵀ‖²_F
// computed directly from activations X.
#include <lowbit/metrics.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

TEST_CASE("metrics of a 2x2 example worked by hand") {
    lowbit::matrix_f w(2, 2), wh(2, 2);
    w << 1, 2, 3, 4;
    wh << 1, 2.5f, 2, 4; // Δ = [[0, -0.5], [1, 0]], ‖Δ‖² = 1.25, ‖W‖² = 30
    CHECK(lowbit::mse(w, wh) == doctest::Approx(0.3125));
    CHECK(lowbit::relative_error(w, wh) == doctest::Approx(std::sqrt(1.25 / 30)));
    CHECK(lowbit::sqnr_db(w, wh) == doctest::Approx(10 * std::log10(30 / 1.25)));
    CHECK(lowbit::max_abs_error(w, wh) == doctest::Approx(1.0));
    lowbit::matrix_d s(2, 2);
    s << 2, 1, 1, 3; // row 0: 3·0.25 = 0.75; row 1: 2·1 = 2
    CHECK(lowbit::output_error(w, wh, s) == doctest::Approx(2.75));
    CHECK(lowbit::sqnr_db(w, w) == std::numeric_limits<double>::infinity());
    CHECK(lowbit::relative_error(lowbit::matrix_f::Zero(2, 2), lowbit::matrix_f::Zero(2, 2)) == 0.0);
}

TEST_CASE("output_error equals the squared output difference over calibration tokens") {
    std::mt19937_64 rng(3);
    std::normal_distribution<float> g;
    lowbit::matrix_f w(5, 8), wh(5, 8), x(20, 8);
    for (Eigen::Index i = 0; i < w.size(); ++i) {
        w.data()[i] = g(rng);
        wh.data()[i] = w.data()[i] + 0.1f * g(rng);
    }
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = g(rng);
    const lowbit::matrix_d xd = x.cast<double>();
    const lowbit::matrix_d s = xd.transpose() * xd;
    const lowbit::matrix_d dy = xd * (w.cast<double>() - wh.cast<double>()).transpose(); // [tokens x out]
    CHECK(lowbit::output_error(w, wh, s) == doctest::Approx(dy.squaredNorm()).epsilon(1e-10));
    CHECK(lowbit::output_error(w, wh, lowbit::matrix_d::Identity(8, 8)) ==
          doctest::Approx(lowbit::mse(w, wh) * 40).epsilon(1e-12));
}

TEST_CASE("bad input is refused with lowbit errors") {
    lowbit::matrix_f w = lowbit::matrix_f::Ones(2, 3);
    CHECK_THROWS_AS((void)lowbit::mse(w, lowbit::matrix_f::Ones(3, 3)), lowbit::shape_error);
    CHECK_THROWS_WITH((void)lowbit::mse(w, lowbit::matrix_f::Ones(2, 2)), doctest::Contains("columns of 'w_hat'"));
    CHECK_THROWS_AS((void)lowbit::sqnr_db(lowbit::matrix_f(0, 0), lowbit::matrix_f(0, 0)), lowbit::shape_error);
    auto bad = w;
    bad(0, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::relative_error(w, bad), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::max_abs_error(bad, w), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::output_error(w, w, lowbit::matrix_d::Identity(2, 2)), lowbit::shape_error);
    lowbit::matrix_d s = lowbit::matrix_d::Identity(3, 3);
    s(1, 1) = std::numeric_limits<double>::infinity();
    CHECK_THROWS_AS((void)lowbit::output_error(w, w, s), lowbit::numeric_error);
}
