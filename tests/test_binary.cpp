// Tests for lowbit/binary.hpp. Oracles: exhaustive search over b ∈ {±1}ⁿ with least-squares scale
// (and mean) for small n; Cramer's rule in long double for the 2×2 / 3×3 normal equations; a
// hand-worked row.
#include <lowbit/binary.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace {

using ld = long double;

lowbit::matrix_f random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed) {
    return lowbit_test::student_t(r, c, seed, 3.0f, 1.0f, 0.3f);
}

lowbit::matrix_d random_gram(Eigen::Index n, unsigned seed) { return lowbit_test::graded_gram(n, seed, 2.0); }

ld det3(const ld a[3][3]) {
    return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
           a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
}

// Cramer's rule for the normal equations of min e S eᵀ, e = w − Σ_k x_k v_k, k ≤ 3.
std::vector<ld> cramer(const std::vector<std::vector<ld>>& basis, const std::vector<ld>& w,
                       const lowbit::matrix_d* s) {
    const std::size_t k = basis.size(), n = w.size();
    auto inner = [&](const std::vector<ld>& a, const std::vector<ld>& b) {
        ld t = 0;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j)
                t += a[i] * (s ? static_cast<ld>((*s)(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)))
                               : (i == j ? 1.0L : 0.0L)) *
                     b[j];
        return t;
    };
    ld g[3][3] = {}, rhs[3] = {};
    for (std::size_t a = 0; a < k; ++a) {
        rhs[a] = inner(basis[a], w);
        for (std::size_t b = 0; b < k; ++b) g[a][b] = inner(basis[a], basis[b]);
    }
    if (k == 2) {
        g[2][2] = 1;
    }
    const ld d = det3(g);
    std::vector<ld> x(k);
    for (std::size_t a = 0; a < k; ++a) {
        ld m[3][3];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) m[i][j] = static_cast<std::size_t>(j) == a ? (static_cast<std::size_t>(i) < k ? rhs[i] : 0) : g[i][j];
        x[a] = det3(m) / d;
    }
    return x;
}

ld row_error(const lowbit::matrix_f& w, const lowbit::matrix_f& wh, Eigen::Index r, const lowbit::matrix_d* s) {
    const Eigen::Index n = w.cols();
    ld e = 0;
    for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index j = 0; j < n; ++j)
            e += static_cast<ld>(w(r, i) - wh(r, i)) * (s ? static_cast<ld>((*s)(i, j)) : (i == j ? 1.0L : 0.0L)) *
                 static_cast<ld>(w(r, j) - wh(r, j));
    return e;
}

// min over b ∈ {±1}ⁿ and least-squares (μ, α) (with_mean) or α (without).
ld brute_force(const float* w, int n, bool with_mean) {
    ld best = std::numeric_limits<ld>::infinity();
    for (int code = 0; code < (1 << n); ++code) {
        std::vector<ld> b(static_cast<std::size_t>(n)), ones(static_cast<std::size_t>(n), 1), wv(b.size());
        bool all_same = true;
        for (int j = 0; j < n; ++j) {
            b[static_cast<std::size_t>(j)] = (code >> j) & 1 ? 1 : -1;
            wv[static_cast<std::size_t>(j)] = w[j];
            all_same = all_same && b[static_cast<std::size_t>(j)] == b[0];
        }
        std::vector<ld> x;
        std::vector<std::vector<ld>> basis;
        if (with_mean && !all_same) basis = {ones, b};
        else if (with_mean) basis = {ones};
        else basis = {b};
        if (basis.size() == 2) x = cramer(basis, wv, nullptr);
        else {
            ld num = 0;
            for (int j = 0; j < n; ++j) num += basis[0][static_cast<std::size_t>(j)] * wv[static_cast<std::size_t>(j)];
            x = {num / n};
        }
        ld e = 0;
        for (int j = 0; j < n; ++j) {
            ld v = wv[static_cast<std::size_t>(j)];
            for (std::size_t k = 0; k < basis.size(); ++k) v -= x[k] * basis[k][static_cast<std::size_t>(j)];
            e += v * v;
        }
        best = std::min(best, e);
    }
    return best;
}

} // namespace

TEST_CASE("sign_scale worked by hand") {
    lowbit::matrix_f w(1, 4);
    w << 1, 2, 3, 6; // μ = 3, c = [-2, -1, 0, 3], α = 1.5
    const auto t = lowbit::binarize(w, lowbit::sign_scale{true});
    CHECK(t.mean(0, 0) == 3.0f);
    CHECK(t.alpha[0](0, 0) == 1.5f);
    const int want[4] = {-1, -1, 1, 1};
    for (int j = 0; j < 4; ++j) CHECK(t.codes[0](0, j) == want[j]);
    const auto z = lowbit::binarize(w, lowbit::sign_scale{});
    CHECK(z.mean(0, 0) == 0.0f);
    CHECK(z.alpha[0](0, 0) == 3.0f);
}

TEST_CASE("sign_scale without mean is the exhaustive optimum; ARB lies between optimum and sign_scale") {
    for (int n = 2; n <= 10; ++n) {
        const auto w = random_matrix(4, n, static_cast<unsigned>(n));
        const auto s0 = lowbit::binarize(w, lowbit::sign_scale{}).dequantize();
        const auto s1 = lowbit::binarize(w, lowbit::sign_scale{true}).dequantize();
        const auto a = lowbit::binarize(w, lowbit::arb{}).dequantize();
        for (Eigen::Index r = 0; r < 4; ++r) {
            CHECK(static_cast<double>(row_error(w, s0, r, nullptr)) ==
                  doctest::Approx(static_cast<double>(brute_force(w.row(r).data(), n, false))).epsilon(1e-5));
            const ld opt = brute_force(w.row(r).data(), n, true);
            const ld ea = row_error(w, a, r, nullptr);
            CHECK(ea >= opt * (1 - 1e-5L) - 1e-9L);
            CHECK(ea <= row_error(w, s1, r, nullptr) * (1 + 1e-6L) + 1e-9L);
        }
    }
}

TEST_CASE("ARB and residual binarization give the least-squares mean and scales for their codes") {
    const auto w = random_matrix(6, 32, 21);
    const auto a = lowbit::binarize(w, lowbit::arb{});
    const auto r2 = lowbit::binarize(w, lowbit::residual_binary{});
    for (Eigen::Index r = 0; r < 6; ++r) {
        std::vector<ld> ones(32, 1), b0(32), b1(32), wv(32);
        for (int j = 0; j < 32; ++j) {
            wv[j] = w(r, j);
            b0[j] = a.codes[0](r, j);
        }
        const auto x = cramer({ones, b0}, wv, nullptr);
        CHECK(a.mean(r, 0) == doctest::Approx(static_cast<double>(x[0])).epsilon(1e-5));
        CHECK(a.alpha[0](r, 0) == doctest::Approx(static_cast<double>(x[1])).epsilon(1e-5));
        for (int j = 0; j < 32; ++j) {
            b0[j] = r2.codes[0](r, j);
            b1[j] = r2.codes[1](r, j);
        }
        const auto y = cramer({ones, b0, b1}, wv, nullptr);
        CHECK(r2.mean(r, 0) == doctest::Approx(static_cast<double>(y[0])).epsilon(1e-5));
        CHECK(r2.alpha[0](r, 0) == doctest::Approx(static_cast<double>(y[1])).epsilon(1e-5));
        CHECK(r2.alpha[1](r, 0) == doctest::Approx(static_cast<double>(y[2])).epsilon(1e-5));
    }
}

TEST_CASE("order-2 residual binarization beats order 1; ARB beats sign_scale") {
    const auto w = random_matrix(16, 128, 5);
    const double e_sign = (w - lowbit::binarize(w, lowbit::sign_scale{true}).dequantize()).squaredNorm();
    const double e_arb = (w - lowbit::binarize(w, lowbit::arb{}).dequantize()).squaredNorm();
    const double e_res = (w - lowbit::binarize(w, lowbit::residual_binary{}).dequantize()).squaredNorm();
    CHECK(e_arb <= e_sign);
    CHECK(e_res < 0.6 * e_arb);
}

TEST_CASE("ARB-X: S-weighted least-squares parameters, never worse than ARB in output error") {
    const auto w = random_matrix(8, 24, 9);
    const auto s = random_gram(24, 10);
    const auto ax = lowbit::binarize(w, lowbit::arb_x{}, lowbit::per_row{}, s);
    const auto a = lowbit::binarize(w, lowbit::arb{}).dequantize();
    const auto axd = ax.dequantize();
    for (Eigen::Index r = 0; r < 8; ++r) {
        CHECK(row_error(w, axd, r, &s) <= row_error(w, a, r, &s) * (1 + 1e-6L));
        std::vector<ld> ones(24, 1), b(24), wv(24);
        for (int j = 0; j < 24; ++j) {
            wv[j] = w(r, j);
            b[j] = ax.codes[0](r, j);
        }
        const auto x = cramer({ones, b}, wv, &s);
        CHECK(ax.mean(r, 0) == doctest::Approx(static_cast<double>(x[0])).epsilon(1e-4));
        CHECK(ax.alpha[0](r, 0) == doctest::Approx(static_cast<double>(x[1])).epsilon(1e-4));
    }
}

TEST_CASE("ARB-X over all rows at once (GEMMs) equals the per-row reference; binary_quantizer<arb_x> takes S") {
    const auto w = random_matrix(16, 40, 21);
    const auto s = random_gram(40, 22);
    for (int iters : {0, 3, 15}) {
        CAPTURE(iters);
        const auto ax = lowbit::binarize(w, lowbit::arb_x{iters}, lowbit::per_row{}, s);
        std::vector<std::int8_t> b(40);
        int same_codes = 0;
        for (Eigen::Index r = 0; r < 16; ++r) {
            const auto p = lowbit::detail::binary_row(lowbit::arb_x{iters}, w.row(r).data(), 40, &s, b.data(), nullptr);
            bool eq = true;
            for (Eigen::Index j = 0; j < 40; ++j) eq = eq && ax.codes[0](r, j) == b[static_cast<std::size_t>(j)];
            same_codes += eq;
            if (eq) {
                CHECK(ax.mean(r, 0) == doctest::Approx(p.mean).epsilon(1e-4));
                CHECK(ax.alpha[0](r, 0) == doctest::Approx(p.alpha[0]).epsilon(1e-4));
            } else { // a near-tie between iterations decided by rounding: the errors must agree
                const lowbit::matrix_f wr = w.row(r);
                lowbit::matrix_f ref_row(1, 40);
                for (Eigen::Index j = 0; j < 40; ++j) ref_row(0, j) = p.mean + p.alpha[0] * b[static_cast<std::size_t>(j)];
                CHECK(static_cast<double>(row_error(wr, ref_row, 0, &s)) ==
                      doctest::Approx(static_cast<double>(row_error(w, ax.dequantize(), r, &s))).epsilon(1e-6));
            }
        }
        CHECK(same_codes >= 15);
    }
    static_assert(lowbit::GramAwareGroupQuantizer<lowbit::binary_quantizer<lowbit::arb_x>>);
    static_assert(!lowbit::GramAwareGroupQuantizer<lowbit::binary_quantizer<lowbit::arb>>);
    const lowbit::binary_quantizer<lowbit::arb_x> q{};
    const auto pg = q.fit_with_gram(w, s);
    const auto ref = lowbit::binarize(w, lowbit::arb_x{}, lowbit::per_row{}, s);
    CHECK(pg.mean == ref.mean.col(0));
    CHECK(pg.alpha0 == ref.alpha[0].col(0));
    const auto pe = q.fit(w); // no S: ARB-X's Euclidean start, ARB
    CHECK(pe.mean == lowbit::binarize(w, lowbit::arb{}).mean.col(0));
}

TEST_CASE("per_group binarization equals binarizing each (zero-padded) slice") {
    const auto w = random_matrix(3, 10, 12);
    const auto t = lowbit::binarize(w, lowbit::arb{}, lowbit::per_group{4, lowbit::tail_policy::zero_pad});
    REQUIRE(t.mean.cols() == 3);
    for (int g = 0; g < 3; ++g) {
        lowbit::matrix_f slice = lowbit::matrix_f::Zero(3, 4);
        const int width = g < 2 ? 4 : 2;
        slice.leftCols(width) = w.middleCols(4 * g, width);
        const auto u = lowbit::binarize(slice, lowbit::arb{});
        CHECK(u.mean.col(0) == t.mean.col(g));
        CHECK(u.alpha[0].col(0) == t.alpha[0].col(g));
        CHECK(u.codes[0].leftCols(width) == t.codes[0].middleCols(4 * g, width));
    }
    const auto sm = lowbit::binarize(w, lowbit::sign_scale{true}, lowbit::per_group{4, lowbit::tail_policy::smaller_last});
    CHECK(sm.mean(0, 2) == doctest::Approx((w(0, 8) + w(0, 9)) / 2));
}

TEST_CASE("binary_quantizer models GroupQuantizer") {
    static_assert(lowbit::GroupQuantizer<lowbit::binary_quantizer<lowbit::sign_scale>>);
    static_assert(lowbit::GroupQuantizer<lowbit::binary_quantizer<lowbit::residual_binary>>);
    const auto w = random_matrix(5, 12, 13);
    const lowbit::binary_quantizer<lowbit::sign_scale> q{{true}};
    const auto p = q.fit(w);
    const auto wh = lowbit::binarize(w, lowbit::sign_scale{true}).dequantize();
    lowbit::vector_f out(5);
    for (Eigen::Index c = 0; c < 12; ++c) {
        q.round_column(p, w.col(c), out);
        CHECK(out == wh.col(c));
    }
    // order 2: round_column gives one of the four levels, the nearest when α₁ ≤ α₀
    const lowbit::binary_quantizer<lowbit::residual_binary> q2;
    const auto p2 = q2.fit(w);
    for (Eigen::Index c = 0; c < 12; ++c) {
        q2.round_column(p2, w.col(c), out);
        for (Eigen::Index i = 0; i < 5; ++i) {
            float best = std::numeric_limits<float>::infinity();
            for (int s0 : {-1, 1})
                for (int s1 : {-1, 1})
                    best = std::min(best, std::abs(w(i, c) - (p2.mean(i) + s0 * p2.alpha0(i) + s1 * p2.alpha1(i))));
            if (p2.alpha1(i) <= p2.alpha0(i) && p2.alpha1(i) >= 0) CHECK(std::abs(w(i, c) - out(i)) <= best + 1e-6f);
        }
    }
}

TEST_CASE("bad input is refused with lowbit errors") {
    const auto w = random_matrix(2, 6, 14);
    CHECK_THROWS_AS((void)lowbit::binarize(lowbit::matrix_f(0, 2), lowbit::arb{}), lowbit::shape_error);
    auto bad = w;
    bad(0, 0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::binarize(bad, lowbit::sign_scale{}), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::binarize(w, lowbit::arb{-1}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::binarize(w, lowbit::arb{}, lowbit::per_group{4}), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::binarize(w, lowbit::arb{}, lowbit::per_group{0}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::binarize(w, lowbit::arb_x{}, lowbit::per_row{}, lowbit::matrix_d::Identity(5, 5)),
                    lowbit::shape_error);
    lowbit::matrix_d s = lowbit::matrix_d::Identity(6, 6);
    s(2, 3) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::binarize(w, lowbit::arb_x{}, lowbit::per_row{}, s), lowbit::numeric_error);
    CHECK_THROWS_WITH((void)lowbit::binarize(w, lowbit::arb{-2}), doctest::Contains("iters must be >= 0"));
}
