// Tests for lowbit/specquant.hpp. Oracles: a naive O(n²) real DFT in double written here (twiddles from
// an exact (f·j mod n) table), the energy ordering and a brute-force search over every K for the minimal
// K_i, a naive inverse DFT of the kept coefficients, Parseval's bound on the residual, and the SmoothQuant
// factors recomputed in double from their formula.
#include <lowbit/specquant.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"

#include <cmath>
#include <complex>
#include <limits>
#include <numbers>
#include <vector>

namespace {

using lowbit_test::gaussian;
using cd = std::complex<double>;

// X_f = Σ_j w_j e^{−2πi f j / n}, f = 0..n/2 (naive, double).
std::vector<cd> naive_dft(const Eigen::Ref<const Eigen::RowVectorXf>& w) {
    const Eigen::Index n = w.size();
    std::vector<cd> tw(static_cast<std::size_t>(n));
    for (Eigen::Index t = 0; t < n; ++t)
        tw[static_cast<std::size_t>(t)] = std::polar(1.0, -2.0 * std::numbers::pi * static_cast<double>(t) / static_cast<double>(n));
    std::vector<cd> x(static_cast<std::size_t>(n / 2 + 1));
    for (Eigen::Index f = 0; f <= n / 2; ++f) {
        cd s = 0.0;
        for (Eigen::Index j = 0; j < n; ++j) s += static_cast<double>(w(j)) * tw[static_cast<std::size_t>((f * j) % n)];
        x[static_cast<std::size_t>(f)] = s;
    }
    return x;
}

// Energy of frequency f (conjugate mirror included).
double energy(const std::vector<cd>& x, Eigen::Index f, Eigen::Index n) {
    const bool single = f == 0 || (n % 2 == 0 && f == n / 2);
    return (single ? 1.0 : 2.0) * std::norm(x[static_cast<std::size_t>(f)]);
}

// Cumulative energy of the K lowest frequencies, K = 0..n/2+1.
std::vector<double> cumulative(const std::vector<cd>& x, Eigen::Index n) {
    std::vector<double> c(x.size() + 1, 0.0);
    for (std::size_t f = 0; f < x.size(); ++f) c[f + 1] = c[f] + energy(x, static_cast<Eigen::Index>(f), n);
    return c;
}

// Naive inverse: w_j = (1/n)·Σ_{f<K} (single ? Re(c_f e^{…}) : 2 Re(c_f e^{…})).
std::vector<double> naive_inverse(const Eigen::VectorXcf& c, Eigen::Index n) {
    std::vector<double> w(static_cast<std::size_t>(n), 0.0);
    for (Eigen::Index j = 0; j < n; ++j) {
        double s = 0.0;
        for (Eigen::Index f = 0; f < c.size(); ++f) {
            const cd e = std::polar(1.0, 2.0 * std::numbers::pi * static_cast<double>((f * j) % n) / static_cast<double>(n));
            const cd cf(c(f).real(), c(f).imag());
            const bool single = f == 0 || (n % 2 == 0 && f == n / 2);
            s += single ? cf.real() * e.real() : 2.0 * (cf * e).real();
        }
        w[static_cast<std::size_t>(j)] = s / static_cast<double>(n);
    }
    return w;
}

// Rows with a decaying spectrum plus noise (weight-like), and one plain Gaussian row.
lowbit::matrix_f test_rows(Eigen::Index rows, Eigen::Index n, std::uint64_t seed) {
    lowbit::matrix_f w = gaussian(rows, n, seed, 0.05f);
    const lowbit::matrix_f amp = gaussian(rows, 8, seed + 1);
    for (Eigen::Index i = 0; i + 1 < rows; ++i)
        for (Eigen::Index j = 0; j < n; ++j)
            for (Eigen::Index f = 0; f < 8; ++f)
                w(i, j) += amp(i, f) / static_cast<float>(1 + f) *
                           static_cast<float>(std::cos(2.0 * std::numbers::pi * static_cast<double>(f * j % n) / static_cast<double>(n) + static_cast<double>(f)));
    return w;
}

void check_split(const lowbit::matrix_f& w, const lowbit::spectral_truncation& opt) {
    const Eigen::Index n = w.cols(), h = n / 2 + 1;
    const auto s = lowbit::spectral_truncate(w, opt);
    REQUIRE(s.low.rows() == w.rows());
    REQUIRE(s.low.cols() == n);
    REQUIRE(s.residual.rows() == w.rows());
    REQUIRE(s.kept.size() == static_cast<std::size_t>(w.rows()));
    constexpr double eps = std::numeric_limits<float>::epsilon(); // 2^-23
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        INFO("n = " << n << ", row " << i << ", eta = " << opt.eta);
        const auto x = naive_dft(w.row(i));
        const auto cum = cumulative(x, n);
        const double total = cum.back();
        const Eigen::Index k = s.kept[static_cast<std::size_t>(i)];
        REQUIRE(k >= 0);
        REQUIRE(k <= h);
        // Spectrum: the stored coefficients are the DFT, rounded to float.
        const auto& c = s.coefficients[static_cast<std::size_t>(i)];
        REQUIRE(c.size() == k);
        for (Eigen::Index f = 0; f < k; ++f) {
            const cd got(c(f).real(), c(f).imag());
            CHECK(std::abs(got - x[static_cast<std::size_t>(f)]) <= eps * std::abs(x[static_cast<std::size_t>(f)]) + 1e-9 * std::sqrt(total));
        }
        // K_i is the minimal count by brute force over every K (ties within 1e-9 of the target tolerated).
        if (opt.fixed_k == 0 && opt.k_max == 0) {
            Eigen::Index brute = 0;
            while (cum[static_cast<std::size_t>(brute)] < opt.eta * total) ++brute;
            if (k != brute) {
                const double target = opt.eta * total;
                CHECK(std::abs(cum[static_cast<std::size_t>(std::min(k, brute))] - target) <= 1e-9 * total);
                CHECK(std::abs(k - brute) == 1);
            }
            CHECK(s.energy_kept[static_cast<std::size_t>(i)] == doctest::Approx(total > 0 ? cum[static_cast<std::size_t>(k)] / total : 1.0).epsilon(1e-9));
            // Parseval: ‖R_i‖² = (1/n)·discarded energy ≤ (1 − η)·‖W'_i‖².
            const double r2 = s.residual.row(i).cast<double>().squaredNorm();
            const double w2 = w.row(i).cast<double>().squaredNorm();
            CHECK(r2 <= (1.0 - opt.eta) * w2 * (1.0 + 1e-4) + 1e-10 * w2);
            CHECK(r2 == doctest::Approx((total - cum[static_cast<std::size_t>(k)]) / static_cast<double>(n)).epsilon(1e-3).scale(1e-8 * w2));
        }
        // W_FFT = naive inverse DFT of the kept coefficients.
        const auto inv = naive_inverse(c, n);
        const double wmax = w.row(i).cwiseAbs().maxCoeff();
        for (Eigen::Index j = 0; j < n; ++j) CHECK(std::abs(s.low(i, j) - inv[static_cast<std::size_t>(j)]) <= 1e-5 * wmax + 1e-30);
        // Exact reconstruction W' = W_FFT + R within the stated float bound.
        for (Eigen::Index j = 0; j < n; ++j) {
            const double back = static_cast<double>(s.low(i, j) + s.residual(i, j));
            CHECK(std::abs(back - w(i, j)) <= eps * (std::abs(w(i, j)) + std::abs(s.low(i, j))));
        }
    }
    // The synthesis path a caller uses on stored coefficients gives the same W_FFT.
    CHECK(lowbit::spectral_synthesis(s.coefficients, n) == s.low);
    Eigen::Index reals = 0;
    for (Eigen::Index k : s.kept) reals += lowbit::spectral_stored_reals(k, n);
    CHECK(s.stored_reals() == reals);
}

} // namespace

TEST_CASE("spectral_truncate: spectrum, minimal K, reconstruction at 256, 768 = 2^8·3, 1024 and 2816 = 2^8·11") {
    for (Eigen::Index n : {256, 768, 1024, 2816})
        for (double eta : {0.5, 0.9, 0.995})
            check_split(test_rows(3, n, 10 + static_cast<std::uint64_t>(n)), {eta, 0, 0});
}

TEST_CASE("spectral_truncate: small and odd lengths (generic kissfft paths)") {
    for (Eigen::Index n : {1, 2, 3, 4, 5, 6, 7, 9, 10, 43}) {
        check_split(gaussian(3, n, 100 + static_cast<std::uint64_t>(n)), {0.9, 0, 0});
        check_split(gaussian(2, n, 200 + static_cast<std::uint64_t>(n)), {1.0, 0, 0});
    }
}

TEST_CASE("spectral_truncate: eta = 1 keeps everything, R ≈ 0") {
    for (Eigen::Index n : {256, 768, 1024}) {
        const lowbit::matrix_f w = gaussian(4, n, 7);
        const auto s = lowbit::spectral_truncate(w, {1.0, 0, 0});
        for (Eigen::Index k : s.kept) CHECK(k >= n / 2); // a Gaussian row has energy at (almost) every frequency
        CHECK(s.residual.cwiseAbs().maxCoeff() <= 1e-5f * w.cwiseAbs().maxCoeff());
        const auto all = lowbit::spectral_truncate(w, {1.0, 0, n});
        CHECK(all.stored_reals() == 4 * n); // every frequency: exactly n reals per row
        CHECK(all.residual.cwiseAbs().maxCoeff() <= 1e-5f * w.cwiseAbs().maxCoeff());
    }
}

TEST_CASE("spectral_truncate: a smooth row keeps few frequencies and leaves a tiny residual") {
    for (Eigen::Index n : {256, 768, 1024}) {
        lowbit::matrix_f w(2, n);
        for (Eigen::Index j = 0; j < n; ++j) {
            const double t = 2.0 * std::numbers::pi * static_cast<double>(j) / static_cast<double>(n);
            w(0, j) = static_cast<float>(0.2 + std::cos(3.0 * t) + 0.5 * std::sin(5.0 * t));
            w(1, j) = static_cast<float>(std::cos(t));
        }
        const auto s = lowbit::spectral_truncate(w);
        CHECK(s.kept[0] == 6); // frequencies 0, 3, 5
        CHECK(s.kept[1] == 2); // frequency 1
        CHECK(s.stored_reals() == 11 + 3);
        CHECK(s.residual.cwiseAbs().maxCoeff() <= 1e-5f);
        // A Gaussian row of the same width needs most of its spectrum.
        const auto g = lowbit::spectral_truncate(gaussian(1, n, 3));
        CHECK(g.kept[0] > n / 3);
    }
}

TEST_CASE("spectral_truncate: fixed-K mode and the k_max cap") {
    const lowbit::matrix_f w = test_rows(4, 768, 5);
    const auto fixed = lowbit::spectral_truncate(w, {0.995, 0, 10});
    for (Eigen::Index k : fixed.kept) CHECK(k == 10);
    CHECK(fixed.stored_reals() == 4 * 19);
    check_split(w, {0.995, 0, 10});
    const auto free = lowbit::spectral_truncate(w, {0.995, 0, 0});
    const auto capped = lowbit::spectral_truncate(w, {0.995, 3, 0});
    for (std::size_t i = 0; i < 4; ++i) CHECK(capped.kept[i] == std::min<Eigen::Index>(free.kept[i], 3));
    check_split(w, {0.995, 3, 0});
    const auto big = lowbit::spectral_truncate(w, {0.995, 0, 100000}); // clamped to n/2 + 1
    for (Eigen::Index k : big.kept) CHECK(k == 385);
    CHECK(big.stored_reals() == 4 * 768);
}

TEST_CASE("spectral_truncate: an all-zero row keeps nothing") {
    lowbit::matrix_f w = gaussian(2, 256, 9);
    w.row(1).setZero();
    const auto s = lowbit::spectral_truncate(w);
    CHECK(s.kept[1] == 0);
    CHECK(s.energy_kept[1] == 1.0);
    CHECK(s.low.row(1).isZero(0.0f));
    CHECK(s.residual.row(1).isZero(0.0f));
}

TEST_CASE("spectral_stored_reals: DC and Nyquist are real") {
    for (Eigen::Index n : {1, 2, 3, 4, 5, 8, 9, 256, 768}) {
        CHECK(lowbit::spectral_stored_reals(n / 2 + 1, n) == n);
        CHECK(lowbit::spectral_stored_reals(0, n) == 0);
        CHECK(lowbit::spectral_stored_reals(1, n) == 1);
    }
    CHECK(lowbit::spectral_stored_reals(2, 256) == 3);
    CHECK_THROWS_AS((void)lowbit::spectral_stored_reals(130, 256), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::spectral_stored_reals(-1, 256), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::spectral_stored_reals(0, 0), lowbit::invalid_argument);
}

TEST_CASE("smoothing: factors from absmax statistics by their formula, zero guards, X'·W'ᵀ = X·Wᵀ") {
    const Eigen::Index tokens = 32, n = 256, m = 48;
    lowbit::matrix_f x = gaussian(tokens, n, 21);
    for (Eigen::Index t = 0; t < tokens; ++t) x(t, 7) *= 100.0f, x(t, 200) *= 40.0f; // outlier channels
    lowbit::matrix_f w = gaussian(m, n, 22, 0.02f);
    x.col(11).setZero(); // dead activation channel
    w.col(12).setZero(); // unused weight column
    const lowbit::vector_f a = lowbit::activation_absmax(x);
    for (Eigen::Index j = 0; j < n; ++j) {
        double mx = 0.0;
        for (Eigen::Index t = 0; t < tokens; ++t) mx = std::max(mx, std::abs(static_cast<double>(x(t, j))));
        CHECK(a(j) == static_cast<float>(mx));
    }
    for (double alpha : {0.0, 0.25, 0.5, 0.75, 1.0}) { // exact in float: compared with smoothquant_scales
        INFO("alpha = " << alpha);
        const lowbit::vector_f l = lowbit::smoothquant_scales_from_absmax(a, w, alpha);
        for (Eigen::Index j = 0; j < n; ++j) {
            const double wm = w.col(j).cwiseAbs().maxCoeff();
            const double want = (a(j) == 0.0f || wm == 0.0) ? 1.0 : std::pow(a(j), alpha) / std::pow(wm, 1.0 - alpha);
            CHECK(l(j) == static_cast<float>(want));
        }
        CHECK(l(11) == 1.0f);
        CHECK(l(12) == 1.0f);
        CHECK(l == lowbit::smoothquant_scales(x, w, static_cast<float>(alpha))); // orthogonal.hpp, from X itself
        const lowbit::matrix_f xs = lowbit::smooth_activations(x, l);
        const lowbit::matrix_f ws = lowbit::smooth_weights(w, l);
        const Eigen::MatrixXd y = x.cast<double>() * w.cast<double>().transpose();
        const Eigen::MatrixXd ys = xs.cast<double>() * ws.cast<double>().transpose();
        const Eigen::MatrixXd bound = x.cast<double>().cwiseAbs() * w.cast<double>().cwiseAbs().transpose();
        // smooth_activations multiplies by the rounded 1/λ: three roundings per product term.
        constexpr double u = std::numeric_limits<float>::epsilon() / 2; // 2^-24
        CHECK(((ys - y).cwiseAbs() - 3.01 * u * bound).maxCoeff() <= 0.0);
        if (alpha == 0.5) {
            // SmoothQuant at α = 0.5 equalises the ranges: max|X'_j| = max|W'_j| = √(a_j·w_j).
            const lowbit::vector_f as = lowbit::activation_absmax(xs);
            for (Eigen::Index j = 0; j < n; ++j)
                if (j != 11 && j != 12) CHECK(as(j) == doctest::Approx(ws.col(j).cwiseAbs().maxCoeff()).epsilon(1e-6));
            CHECK(as.maxCoeff() < 0.25f * a.maxCoeff()); // the outlier channels are tamed
        }
    }
}

TEST_CASE("specquant: errors") {
    const lowbit::matrix_f w = gaussian(4, 256, 1);
    const lowbit::vector_f a = lowbit::vector_f::Ones(256);
    lowbit::matrix_f nan = w;
    nan(1, 2) = std::numeric_limits<float>::quiet_NaN();
    lowbit::matrix_f inf = w;
    inf(0, 0) = std::numeric_limits<float>::infinity();
    const lowbit::matrix_f empty(0, 256);
    // spectral_truncate
    CHECK_THROWS_AS((void)lowbit::spectral_truncate(empty), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::spectral_truncate(lowbit::matrix_f(4, 0)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::spectral_truncate(nan), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::spectral_truncate(inf), lowbit::numeric_error);
    for (double eta : {0.0, -0.1, 1.0000001, 2.0, std::numeric_limits<double>::quiet_NaN()})
        CHECK_THROWS_AS((void)lowbit::spectral_truncate(w, {eta, 0, 0}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::spectral_truncate(w, {0.9, -1, 0}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::spectral_truncate(w, {0.9, 0, -1}), lowbit::invalid_argument);
    // spectral_synthesis
    CHECK_THROWS_AS((void)lowbit::spectral_synthesis({}, 256), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::spectral_synthesis({Eigen::VectorXcf::Zero(130)}, 256), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::spectral_synthesis({Eigen::VectorXcf::Zero(3)}, 0), lowbit::invalid_argument);
    Eigen::VectorXcf bad = Eigen::VectorXcf::Zero(3);
    bad(1) = {0.0f, std::numeric_limits<float>::infinity()};
    CHECK_THROWS_AS((void)lowbit::spectral_synthesis({bad}, 256), lowbit::numeric_error);
    // smoothing
    CHECK_THROWS_AS((void)lowbit::activation_absmax(empty), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::activation_absmax(nan), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(a.head(255), w), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(a, empty), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(a, nan), lowbit::numeric_error);
    lowbit::vector_f a_bad = a;
    a_bad(3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(a_bad, w), lowbit::numeric_error);
    a_bad(3) = -1.0f;
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(a_bad, w), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(a, w, -0.1), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(a, w, 1.5), lowbit::invalid_argument);
    lowbit::vector_f huge = a;
    huge(0) = 3e38f;
    lowbit::matrix_f tiny = w;
    tiny.col(0).setConstant(1e-44f);
    CHECK_THROWS_AS((void)lowbit::smoothquant_scales_from_absmax(huge, tiny, 0.5), lowbit::numeric_error);
    // smooth_activations / smooth_weights (orthogonal.hpp) are tested in test_orthogonal.cpp.
}
