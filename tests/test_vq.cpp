// Tests for lowbit/vq.hpp. Oracles: exhaustive enumeration of all partitions for the k-means optimum
// on tiny sets; a scalar double loop for the nearest-codeword search; the Lloyd fixed-point
// conditions re-checked from scratch; a QR least-squares fit of [ŷ 1] for BCOS.
#include <lowbit/vq.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"
#include <Eigen/QR>

#include <cmath>
#include <limits>
#include <random>

namespace {

using lowbit_test::gaussian;

lowbit::matrix_f positive(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(0.1f, 2.0f);
    lowbit::matrix_f m(r, c);
    for (Eigen::Index i = 0; i < r; ++i)
        for (Eigen::Index j = 0; j < c; ++j) m(i, j) = u(rng);
    return m;
}

double wdist(const lowbit::matrix_f& p, Eigen::Index i, const lowbit::matrix_f& c, Eigen::Index k,
             const lowbit::matrix_f& h) {
    double s = 0;
    for (Eigen::Index j = 0; j < p.cols(); ++j) {
        const double d = double(p(i, j)) - double(c(k, j));
        s += (h.size() ? double(h(i, j)) : 1.0) * d * d;
    }
    return s;
}

// Brute force: every assignment of N points to K labels, weighted-mean centroids, minimum SSE.
double brute_force_kmeans(const lowbit::matrix_f& p, const lowbit::matrix_f& h, int k) {
    const int n = static_cast<int>(p.rows()), d = static_cast<int>(p.cols());
    long long total = 1;
    for (int i = 0; i < n; ++i) total *= k;
    double best = std::numeric_limits<double>::infinity();
    for (long long code = 0; code < total; ++code) {
        std::vector<int> lab(static_cast<std::size_t>(n));
        long long c = code;
        for (int i = 0; i < n; ++i) {
            lab[static_cast<std::size_t>(i)] = static_cast<int>(c % k);
            c /= k;
        }
        double sse = 0;
        for (int q = 0; q < k; ++q)
            for (int j = 0; j < d; ++j) {
                double num = 0, den = 0;
                for (int i = 0; i < n; ++i)
                    if (lab[static_cast<std::size_t>(i)] == q) {
                        num += double(h(i, j)) * p(i, j);
                        den += h(i, j);
                    }
                if (den == 0) continue;
                const double mu = num / den;
                for (int i = 0; i < n; ++i)
                    if (lab[static_cast<std::size_t>(i)] == q) sse += double(h(i, j)) * (p(i, j) - mu) * (p(i, j) - mu);
            }
        best = std::min(best, sse);
    }
    return best;
}

} // namespace

TEST_CASE("weighted k-means: objective is monotone, deterministic, and a Lloyd fixed point") {
    const auto p = gaussian(400, 4, 1);
    const auto h = positive(400, 4, 2);
    for (bool weighted : {false, true}) {
        const lowbit::matrix_f hw = weighted ? h : lowbit::matrix_f();
        const auto r = lowbit::weighted_kmeans(p, hw, {16, 60, 5});
        REQUIRE(r.objective.size() >= 2);
        for (std::size_t k = 1; k < r.objective.size(); ++k)
            CHECK(r.objective[k] <= r.objective[k - 1] * (1 + 1e-12));
        CHECK(r.objective.back() < r.objective.front());
        CHECK(r.objective.back() == doctest::Approx(lowbit::vq_objective(p, r.centroids, r.codes, hw)));
        const auto again = lowbit::weighted_kmeans(p, hw, {16, 60, 5});
        CHECK(again.codes == r.codes);
        CHECK(again.centroids == r.centroids);
        // Fixed point (converged): every point's code is a nearest centroid, every centroid is the
        // weighted mean of its members.
        if (r.objective.size() < 62) {
            for (Eigen::Index i = 0; i < p.rows(); ++i) {
                const double own = wdist(p, i, r.centroids, r.codes[static_cast<std::size_t>(i)], hw);
                for (Eigen::Index k = 0; k < 16; ++k) CHECK(own <= wdist(p, i, r.centroids, k, hw) + 1e-9);
            }
            for (Eigen::Index k = 0; k < 16; ++k)
                for (Eigen::Index j = 0; j < 4; ++j) {
                    double num = 0, den = 0;
                    for (Eigen::Index i = 0; i < p.rows(); ++i)
                        if (r.codes[static_cast<std::size_t>(i)] == k) {
                            const double w = weighted ? h(i, j) : 1.0;
                            num += w * p(i, j);
                            den += w;
                        }
                    REQUIRE(den > 0);
                    CHECK(r.centroids(k, j) == doctest::Approx(num / den).epsilon(1e-5));
                }
        }
    }
}

TEST_CASE("weighted k-means reaches the brute-force optimum on small well-separated sets") {
    for (std::uint64_t seed = 0; seed < 6; ++seed) {
        // Three blobs of 3 points in 2-D, far apart.
        lowbit::matrix_f p = gaussian(9, 2, 10 + seed, 0.3f);
        for (Eigen::Index i = 0; i < 9; ++i) p(i, 0) += 10.0f * static_cast<float>(i / 3);
        const auto h = positive(9, 2, 20 + seed);
        const auto r = lowbit::weighted_kmeans(p, h, {3, 50, seed});
        const double opt = brute_force_kmeans(p, h, 3);
        CHECK(r.objective.back() == doctest::Approx(opt).epsilon(1e-5));
    }
    // Arbitrary small sets: never below the optimum; K = N gives zero error.
    const auto p = gaussian(7, 2, 30);
    const auto h = positive(7, 2, 31);
    const auto r = lowbit::weighted_kmeans(p, h, {2, 50, 1});
    CHECK(r.objective.back() >= brute_force_kmeans(p, h, 2) * (1 - 1e-9));
    CHECK(lowbit::weighted_kmeans(p, h, {7, 5, 1}).objective.back() == doctest::Approx(0.0));
}

TEST_CASE("vq_encode matches a scalar nearest-codeword search; decode and reshape round-trip") {
    const auto p = gaussian(3000, 8, 40);
    const auto c = gaussian(37, 8, 41);
    const auto h = positive(3000, 8, 42);
    for (bool weighted : {false, true}) {
        const lowbit::matrix_f hw = weighted ? h : lowbit::matrix_f();
        const auto codes = lowbit::vq_encode(p, c, hw);
        for (Eigen::Index i = 0; i < p.rows(); ++i) {
            Eigen::Index best = 0;
            for (Eigen::Index k = 1; k < c.rows(); ++k)
                if (wdist(p, i, c, k, hw) < wdist(p, i, c, best, hw)) best = k;
            CHECK(wdist(p, i, c, codes[static_cast<std::size_t>(i)], hw) <= wdist(p, i, c, best, hw) * (1 + 1e-12) + 1e-12);
        }
        const auto dec = lowbit::vq_decode(codes, c);
        for (Eigen::Index i = 0; i < p.rows(); i += 97) CHECK(dec.row(i) == c.row(codes[static_cast<std::size_t>(i)]));
    }
    // Ties go to the lowest index.
    lowbit::matrix_f dup(2, 8);
    dup.row(0) = c.row(3);
    dup.row(1) = c.row(3);
    CHECK(lowbit::vq_encode(c.row(3), dup)[0] == 0);

    const auto w = gaussian(5, 12, 43);
    const auto v = lowbit::to_vectors(w, 4);
    CHECK(v.rows() == 15);
    CHECK(v.row(4) == w.row(1).segment(4, 4));
    CHECK(lowbit::from_vectors(v, 5, 12) == w);
    lowbit::vector_f hd(12);
    for (int j = 0; j < 12; ++j) hd(j) = static_cast<float>(j);
    const auto hw = lowbit::column_importance_weights(hd, 5, 4);
    CHECK(hw.rows() == 15);
    CHECK(hw(4, 2) == 6.0f);
}

TEST_CASE("BCOS affine correction is the per-channel least-squares fit") {
    const auto y = gaussian(200, 6, 50);
    lowbit::matrix_f yh = y;
    const auto noise = gaussian(200, 6, 51, 0.2f);
    for (Eigen::Index k = 0; k < 6; ++k) yh.col(k) = y.col(k) * (0.8f + 0.1f * k) + noise.col(k) + lowbit::vector_f::Constant(200, 0.3f * k);
    const auto corr = lowbit::fit_affine_correction(y, yh);
    for (Eigen::Index k = 0; k < 6; ++k) {
        Eigen::MatrixXd a(200, 2);
        a.col(0) = yh.col(k).cast<double>();
        a.col(1).setOnes();
        const Eigen::VectorXd sol = a.colPivHouseholderQr().solve(y.col(k).cast<double>());
        CHECK(corr.gamma(k) == doctest::Approx(sol(0)).epsilon(1e-4));
        CHECK(corr.beta(k) == doctest::Approx(sol(1)).epsilon(1e-4).scale(1e-4));
    }
    const double e0 = (y - yh).cast<double>().squaredNorm();
    const double e_mean = (y - lowbit::fit_affine_correction(y, yh, true).apply(yh)).cast<double>().squaredNorm();
    const double e_aff = (y - corr.apply(yh)).cast<double>().squaredNorm();
    CHECK(e_mean < e0);
    CHECK(e_aff < e_mean);
    // A constant channel: γ = 1, β = mean difference.
    lowbit::matrix_f c1 = lowbit::matrix_f::Constant(4, 1, 2.0f), y1(4, 1);
    y1 << 1, 2, 3, 4;
    const auto cc = lowbit::fit_affine_correction(y1, c1);
    CHECK(cc.gamma(0) == 1.0f);
    CHECK(cc.beta(0) == doctest::Approx(0.5));
}

TEST_CASE("vq bad input") {
    const auto p = gaussian(10, 4, 60);
    CHECK_THROWS_AS((void)lowbit::weighted_kmeans(p, lowbit::matrix_f(), {11, 5, 0}), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::weighted_kmeans(p, lowbit::matrix_f(), {11, 5, 0}),
                      doctest::Contains("larger than the number of vectors"));
    CHECK_THROWS_AS((void)lowbit::weighted_kmeans(p, lowbit::matrix_f(), {0, 5, 0}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::weighted_kmeans(p, lowbit::matrix_f(), {2, -1, 0}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::weighted_kmeans(lowbit::matrix_f(0, 4), lowbit::matrix_f(), {1, 5, 0}), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::weighted_kmeans(p, positive(9, 4, 1), {2, 5, 0}), lowbit::shape_error);
    lowbit::matrix_f neg = positive(10, 4, 2);
    neg(3, 1) = -1.0f;
    CHECK_THROWS_AS((void)lowbit::weighted_kmeans(p, neg, {2, 5, 0}), lowbit::invalid_argument);
    lowbit::matrix_f nan = p;
    nan(0, 0) = std::nanf("");
    CHECK_THROWS_AS((void)lowbit::weighted_kmeans(nan, lowbit::matrix_f(), {2, 5, 0}), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::vq_encode(p, gaussian(3, 5, 3)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::vq_decode({0, 3}, gaussian(3, 4, 3)), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::to_vectors(gaussian(2, 10, 4), 4), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::to_vectors(gaussian(2, 8, 4), 0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::fit_affine_correction(gaussian(3, 2, 5), gaussian(3, 3, 6)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::fit_affine_correction(lowbit::matrix_f(0, 2), lowbit::matrix_f(0, 2)), lowbit::shape_error);
}
