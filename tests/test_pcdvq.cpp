// Tests for lowbit/pcdvq.hpp. Oracles: the E8 theta series (240, 2160, 6720, 17520 points in the
// shells of squared norm 2, 4, 6, 8) and the 60° minimum angle of the E8 roots; brute-force pairwise
// angles of the greedy code; Max's (1960) Lloyd–Max table for the Gaussian (the half-normal is χ₁);
// scalar brute-force max-cosine / nearest-magnitude searches for encode.
#include <lowbit/pcdvq.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"

#include <cmath>
#include <numbers>
#include <random>

namespace {

using lowbit_test::gaussian;

double min_pairwise_angle(const lowbit::matrix_f& d) {
    double maxcos = -1;
    for (Eigen::Index i = 0; i < d.rows(); ++i)
        for (Eigen::Index j = i + 1; j < d.rows(); ++j)
            maxcos = std::max(maxcos, d.row(i).cast<double>().dot(d.row(j).cast<double>()));
    return std::acos(std::min(1.0, maxcos));
}

} // namespace

TEST_CASE("E8 directions follow the theta series and the roots are 60 degrees apart") {
    const auto roots = lowbit::e8_directions(2);
    CHECK(roots.rows() == 240);
    CHECK(lowbit::e8_directions(4).rows() == 240 + 2160);
    CHECK(lowbit::e8_directions(6).rows() == 240 + 2160 + 6720);
    // Shell 8 holds 17520 points, 240 of which are 2·(root): same directions.
    CHECK(lowbit::e8_directions(8).rows() == 240 + 2160 + 6720 + 17520 - 240);
    for (Eigen::Index i = 0; i < roots.rows(); ++i) CHECK(roots.row(i).norm() == doctest::Approx(1.0).epsilon(1e-6));
    // Inner products of unit roots lie in {±1, ±1/2, 0}.
    for (Eigen::Index i = 0; i < roots.rows(); i += 7)
        for (Eigen::Index j = 0; j < roots.rows(); ++j) {
            const double c = roots.row(i).cast<double>().dot(roots.row(j).cast<double>());
            const double r2 = std::round(2 * c);
            CHECK(std::fabs(2 * c - r2) < 1e-6);
        }
    CHECK(min_pairwise_angle(roots) == doctest::Approx(std::numbers::pi / 3).epsilon(1e-6));
}

TEST_CASE("greedy spherical code: stated size and minimum angle") {
    const auto cand = lowbit::e8_directions(6);
    for (Eigen::Index count : {2, 16, 64, 256}) {
        const auto code = lowbit::greedy_spherical_code(cand, count);
        CHECK(code.directions.rows() == count);
        CHECK(code.min_angle == doctest::Approx(min_pairwise_angle(code.directions)).epsilon(1e-9));
        for (Eigen::Index i = 0; i < count; ++i) CHECK(code.directions.row(i).norm() == doctest::Approx(1.0).epsilon(1e-6));
    }
    // The first two picks are antipodal; 16 picks from the E8 directions are pairwise ≥ 60° apart.
    CHECK(lowbit::greedy_spherical_code(cand, 2).min_angle == doctest::Approx(std::numbers::pi));
    CHECK(lowbit::greedy_spherical_code(cand, 16).min_angle >= std::numbers::pi / 3 - 1e-9);
    // Selecting all 240 roots from the roots: the 60° root spacing.
    CHECK(lowbit::greedy_spherical_code(lowbit::e8_directions(2), 240).min_angle == doctest::Approx(std::numbers::pi / 3));
    CHECK_THROWS_AS((void)lowbit::greedy_spherical_code(cand, 0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::greedy_spherical_code(cand, cand.rows() + 1), lowbit::invalid_argument);
}

TEST_CASE("chi Lloyd-Max matches Max's Gaussian table for one degree of freedom") {
    // Max (1960): optimum 4-level Gaussian quantizer outputs ±0.4528, ±1.510; 8-level ±0.2451,
    // ±0.7560, ±1.344, ±2.152. The half-normal (χ₁) optimum is the positive half.
    const auto q2 = lowbit::chi_lloyd_max(2, 1, 300);
    CHECK(q2(0) == doctest::Approx(0.4528).epsilon(2e-3));
    CHECK(q2(1) == doctest::Approx(1.510).epsilon(2e-3));
    const auto q4 = lowbit::chi_lloyd_max(4, 1, 500);
    const double want[4] = {0.2451, 0.7560, 1.344, 2.152};
    for (int k = 0; k < 4; ++k) CHECK(q4(k) == doctest::Approx(want[k]).epsilon(2e-3));
    // χ₈: ascending, inside the bulk of the distribution (mean ≈ 2.74).
    const auto q8 = lowbit::chi_lloyd_max(4, 8);
    for (int k = 1; k < 4; ++k) CHECK(q8(k) > q8(k - 1));
    CHECK(q8(0) > 1.0);
    CHECK(q8(3) < 5.0);
    CHECK_THROWS_AS((void)lowbit::chi_lloyd_max(0, 8), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::chi_lloyd_max(4, 0), lowbit::invalid_argument);
}

TEST_CASE("pcdvq encode/decode: max-cosine directions, nearest magnitudes, unit-norm directions") {
    const auto book = lowbit::make_pcdvq_codebook({8, 2, 6, 100});
    CHECK(book.directions.rows() == 256);
    CHECK(book.magnitudes.size() == 4);
    CHECK(book.min_angle == doctest::Approx(min_pairwise_angle(book.directions)).epsilon(1e-9));
    lowbit::matrix_f w = gaussian(6, 32, 7);
    w.row(2).setZero();
    const auto codes = lowbit::pcdvq_encode(w, book);
    const auto dec = lowbit::pcdvq_decode(codes, book);
    CHECK(codes.row_scale(2) == 0.0f);
    CHECK(dec.row(2).isZero());
    for (Eigen::Index i = 0; i < 6; ++i) {
        const double s = w.row(i).cast<double>().norm() / std::sqrt(32.0);
        CHECK(codes.row_scale(i) == doctest::Approx(s).epsilon(1e-6));
        if (s == 0) continue;
        for (Eigen::Index c = 0; c < 4; ++c) {
            const auto v = static_cast<std::size_t>(i * 4 + c);
            const Eigen::VectorXd x = w.row(i).segment(c * 8, 8).cast<double>().transpose() / s;
            const Eigen::VectorXd u = x.normalized();
            double best = -2;
            for (Eigen::Index k = 0; k < 256; ++k) best = std::max(best, book.directions.row(k).cast<double>().dot(u));
            CHECK(book.directions.row(codes.direction[v]).cast<double>().dot(u) >= best - 1e-9);
            const double r = x.norm();
            for (Eigen::Index k = 0; k < 4; ++k)
                CHECK(std::fabs(r - book.magnitudes(codes.magnitude[v])) <= std::fabs(r - book.magnitudes(k)) + 1e-9);
            // Decoded vector = s·r̂·(unit direction).
            const Eigen::VectorXd d = dec.row(i).segment(c * 8, 8).cast<double>().transpose();
            const double rhat = book.magnitudes(codes.magnitude[v]) * codes.row_scale(i);
            CHECK(d.norm() == doctest::Approx(rhat).epsilon(1e-5));
            CHECK((d / rhat).norm() == doctest::Approx(1.0).epsilon(1e-5));
        }
    }
    // Decoding is reproducible.
    CHECK(lowbit::pcdvq_decode(codes, book) == dec);
}

TEST_CASE("pcdvq: more direction bits lower the direction error on Gaussian data") {
    const auto w = gaussian(64, 64, 9);
    double prev = 1e30;
    for (int bd : {4, 6, 8}) {
        const auto book = lowbit::make_pcdvq_codebook({bd, 2, 6, 100});
        const auto dec = lowbit::pcdvq_decode(lowbit::pcdvq_encode(w, book), book);
        const double err = (w - dec).cast<double>().squaredNorm() / w.cast<double>().squaredNorm();
        CHECK(err < prev);
        prev = err;
    }
}

TEST_CASE("pcdvq bad input") {
    const auto book = lowbit::make_pcdvq_codebook({4, 1, 2, 10});
    CHECK_THROWS_AS((void)lowbit::pcdvq_encode(gaussian(2, 12, 1), book), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::pcdvq_encode(lowbit::matrix_f(0, 8), book), lowbit::shape_error);
    lowbit::matrix_f nan = gaussian(2, 8, 2);
    nan(1, 1) = INFINITY;
    CHECK_THROWS_AS((void)lowbit::pcdvq_encode(nan, book), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::make_pcdvq_codebook({9, 2, 2, 10}), lowbit::invalid_argument); // 512 > 240 roots
    CHECK_THROWS_WITH((void)lowbit::make_pcdvq_codebook({9, 2, 2, 10}), doctest::Contains("fewer than 2^direction_bits"));
    CHECK_THROWS_AS((void)lowbit::make_pcdvq_codebook({0, 2, 2, 10}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::e8_directions(1), lowbit::invalid_argument);
    auto codes = lowbit::pcdvq_encode(gaussian(2, 8, 3), book);
    codes.direction[0] = 60000;
    CHECK_THROWS_AS((void)lowbit::pcdvq_decode(codes, book), lowbit::invalid_argument);
    codes.direction.pop_back();
    CHECK_THROWS_AS((void)lowbit::pcdvq_decode(codes, book), lowbit::shape_error);
}
