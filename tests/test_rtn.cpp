// Tests for lowbit/rtn.hpp. Oracles: hand-worked grids; the bound |x − q(x)| ≤ s/2 inside the range;
// a brute-force grid search written here in double for the MSE clipping search; an independent
// double-precision re-implementation of docs/sources.md §1.3 for the per-token activation quantizer.
#include <lowbit/rtn.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

namespace {

lowbit::matrix_f random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed, float scale = 1.0f) {
    std::mt19937_64 rng(seed);
    std::student_t_distribution<float> d(4.0f);
    lowbit::matrix_f w(r, c);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = scale * d(rng);
    return w;
}

// Independent oracle of one asymmetric/symmetric grid quantization in double.
struct oracle_grid {
    double s, z;
};
oracle_grid oracle_range(double lo, double hi, int bits, bool sym) {
    const double maxq = std::pow(2.0, bits) - 1, half = std::pow(2.0, bits - 1) - 1;
    if (sym) {
        const double a = std::max(std::abs(lo), std::abs(hi));
        return {a > 0 ? static_cast<double>(static_cast<float>(a / half)) : 1.0, half};
    }
    if (!(hi > lo)) return hi == 0 ? oracle_grid{1, 0} : oracle_grid{std::abs(hi), hi > 0 ? -1.0 : 1.0};
    const double s = static_cast<float>((hi - lo) / maxq);
    return {s, std::nearbyint(-lo / s)};
}
double oracle_q(double x, oracle_grid g, int bits) {
    const double maxq = std::pow(2.0, bits) - 1;
    const double q = std::min(std::max(std::nearbyint(x / g.s) + g.z, 0.0), maxq);
    return static_cast<float>(g.s) * static_cast<float>(q - g.z);
}

} // namespace

TEST_CASE("asymmetric 2-bit and symmetric 3-bit grids worked by hand") {
    lowbit::matrix_f w(1, 4);
    w << -1.0f, 0.0f, 0.5f, 2.0f; // lo −1, hi 2: s = 1, z = 1
    const auto q = lowbit::quantize_rtn(w, {2, lowbit::int_mode::asymmetric});
    CHECK(q.scale(0, 0) == 1.0f);
    CHECK(q.zero(0, 0) == 1.0f);
    CHECK(q.codes(0, 0) == 0);
    CHECK(q.codes(0, 1) == 1);
    CHECK(q.codes(0, 2) == 1); // 0.5 rounds half to even -> 0, +z
    CHECK(q.codes(0, 3) == 3);
    CHECK(q.dequantize()(0, 3) == 2.0f);

    lowbit::matrix_f v(1, 5);
    v << -3.0f, -0.5f, 1.5f, 2.5f, 3.0f; // amax 3: s = 3/3 = 1, z = 3
    const auto p = lowbit::quantize_rtn(v, {3, lowbit::int_mode::symmetric});
    CHECK(p.scale(0, 0) == 1.0f);
    CHECK(p.zero(0, 0) == 3.0f);
    const int want[5] = {0, 3, 5, 5, 6};
    for (int j = 0; j < 5; ++j) CHECK(p.codes(0, j) == want[j]);
}

TEST_CASE("error is at most s/2 inside the range, for every bit width, mode and granularity") {
    const auto w = random_matrix(6, 40, 1);
    for (int bits = 2; bits <= 8; ++bits)
        for (auto mode : {lowbit::int_mode::asymmetric, lowbit::int_mode::symmetric}) {
            const lowbit::rtn_quantizer rq{bits, mode};
            auto check = [&](const lowbit::int_tensor& t) {
                const auto wh = t.dequantize();
                for (Eigen::Index r = 0; r < w.rows(); ++r)
                    for (Eigen::Index c = 0; c < w.cols(); ++c)
                        CHECK(std::abs(w(r, c) - wh(r, c)) <= t.grid(r, c).scale * 0.5f * (1 + 1e-5f));
            };
            check(lowbit::quantize_rtn(w, rq, lowbit::per_row{}));
            check(lowbit::quantize_rtn(w, rq, lowbit::per_tensor{}));
            check(lowbit::quantize_rtn(w, rq, lowbit::per_group{8}));
            check(lowbit::quantize_rtn(w, rq, lowbit::per_group{7, lowbit::tail_policy::smaller_last}));
            check(lowbit::quantize_rtn(w, rq, lowbit::per_group{16, lowbit::tail_policy::zero_pad}));
        }
}

TEST_CASE("grids match the double-precision oracle and rounding is idempotent") {
    const auto w = random_matrix(5, 33, 2, 0.1f);
    for (int bits : {2, 4, 8})
        for (auto mode : {lowbit::int_mode::asymmetric, lowbit::int_mode::symmetric}) {
            const bool sym = mode == lowbit::int_mode::symmetric;
            const lowbit::rtn_quantizer rq{bits, mode};
            const auto t = lowbit::quantize_rtn(w, rq);
            const auto wh = t.dequantize();
            for (Eigen::Index r = 0; r < w.rows(); ++r) {
                const auto g = oracle_range(w.row(r).minCoeff(), w.row(r).maxCoeff(), bits, sym);
                CHECK(t.scale(r, 0) == doctest::Approx(g.s).epsilon(1e-7));
                CHECK(t.zero(r, 0) == g.z);
                for (Eigen::Index c = 0; c < w.cols(); ++c) CHECK(wh(r, c) == oracle_q(w(r, c), g, bits));
            }
            // q(q(x)) = q(x) with the same parameters
            const auto p = rq.fit(w.leftCols(3));
            lowbit::vector_f once(w.rows()), twice(w.rows());
            rq.round_column(p, w.col(0), once);
            rq.round_column(p, once, twice);
            CHECK(once == twice);
            // re-quantizing the dequantized matrix reproduces it
            const auto again = lowbit::quantize_rtn(wh, rq).dequantize();
            CHECK((again - wh).cwiseAbs().maxCoeff() <= 1e-6f * wh.cwiseAbs().maxCoeff());
        }
}

TEST_CASE("constant and zero rows are represented exactly") {
    lowbit::matrix_f w(3, 4);
    w.row(0).setConstant(0.75f);
    w.row(1).setConstant(-2.0f);
    w.row(2).setZero();
    for (auto mode : {lowbit::int_mode::asymmetric, lowbit::int_mode::symmetric})
        for (int bits : {2, 5}) {
            const auto wh = lowbit::quantize_rtn(w, {bits, mode}).dequantize();
            CHECK((wh - w).cwiseAbs().maxCoeff() <= 1e-6f);
        }
}

TEST_CASE("MSE clipping search equals a brute-force grid search and is never worse than none") {
    const auto w = random_matrix(8, 64, 3);
    lowbit::vector_f imp(64);
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<float> u(0.0f, 3.0f);
    for (auto& x : imp) x = u(rng);
    for (int bits : {2, 3, 4})
        for (auto mode : {lowbit::int_mode::asymmetric, lowbit::int_mode::symmetric})
            for (bool weighted : {false, true}) {
                const bool sym = mode == lowbit::int_mode::symmetric;
                const lowbit::rtn_quantizer plain{bits, mode}, clip{bits, mode, 50, 0.5f};
                const auto t0 = weighted ? lowbit::quantize_rtn(w, plain, lowbit::per_row{}, imp)
                                         : lowbit::quantize_rtn(w, plain);
                const auto t1 = weighted ? lowbit::quantize_rtn(w, clip, lowbit::per_row{}, imp)
                                         : lowbit::quantize_rtn(w, clip);
                const auto w0 = t0.dequantize(), w1 = t1.dequantize();
                // the GroupQuantizer entry point GPTQ calls (hessian_weighted_fit: importance = diag H)
                const auto fp = weighted ? clip.fit(w, imp) : clip.fit(w);
                CHECK(fp.scale == t1.scale.col(0));
                CHECK(fp.zero == t1.zero.col(0));
                for (Eigen::Index r = 0; r < w.rows(); ++r) {
                    auto err = [&](auto&& value) {
                        double e = 0;
                        for (Eigen::Index c = 0; c < w.cols(); ++c) {
                            const double d = static_cast<double>(w(r, c)) - value(c);
                            e += (weighted ? imp(c) : 1.0) * d * d;
                        }
                        return e;
                    };
                    double best = std::numeric_limits<double>::infinity();
                    for (int k = 0; k < 50; ++k) {
                        const double p = 1.0 - 0.5 * k / 49.0;
                        const auto g = oracle_range(p * w.row(r).minCoeff(), p * w.row(r).maxCoeff(), bits, sym);
                        best = std::min(best, err([&](Eigen::Index c) { return oracle_q(w(r, c), g, bits); }));
                    }
                    const double e1 = err([&](Eigen::Index c) { return static_cast<double>(w1(r, c)); });
                    const double e0 = err([&](Eigen::Index c) { return static_cast<double>(w0(r, c)); });
                    CHECK(e1 == doctest::Approx(best).epsilon(1e-9));
                    CHECK(e1 <= e0);
                }
            }
}

TEST_CASE("per_tensor shares one grid; zero_pad widens the tail range to include 0") {
    const auto w = random_matrix(4, 12, 4);
    const auto t = lowbit::quantize_rtn(w, {4}, lowbit::per_tensor{});
    REQUIRE(t.scale.rows() == 1);
    REQUIRE(t.scale.cols() == 1);
    CHECK(t.scale(0, 0) == doctest::Approx((w.maxCoeff() - w.minCoeff()) / 15.0).epsilon(1e-6));

    lowbit::matrix_f pos = lowbit::matrix_f::Constant(2, 10, 1.0f);
    pos(0, 9) = 2.0f;
    pos(1, 9) = 3.0f;
    const auto sm = lowbit::quantize_rtn(pos, {2}, lowbit::per_group{4, lowbit::tail_policy::smaller_last});
    const auto zp = lowbit::quantize_rtn(pos, {2}, lowbit::per_group{4, lowbit::tail_policy::zero_pad});
    REQUIRE(zp.scale.cols() == 3);
    CHECK(sm.scale(0, 2) == doctest::Approx(1.0 / 3.0)); // range [1, 2]
    CHECK(zp.scale(0, 2) == doctest::Approx(2.0 / 3.0)); // range [0, 2]
    CHECK(zp.scale(1, 2) == doctest::Approx(1.0));       // range [0, 3]
    CHECK(zp.zero(1, 2) == 0.0f);
}

TEST_CASE("rtn_quantizer models GroupQuantizer and agrees with quantize_rtn per row") {
    static_assert(lowbit::GroupQuantizer<lowbit::rtn_quantizer>);
    const auto w = random_matrix(7, 16, 6);
    const lowbit::rtn_quantizer rq{3, lowbit::int_mode::asymmetric, 20};
    const auto p = rq.fit(w);
    const auto wh = lowbit::quantize_rtn(w, rq).dequantize();
    lowbit::vector_f out(7);
    for (Eigen::Index c = 0; c < 16; ++c) {
        rq.round_column(p, w.col(c), out);
        CHECK(out == wh.col(c));
    }
}

TEST_CASE("per-token activation quantizer follows docs/sources.md §1.3") {
    const auto x = random_matrix(5, 24, 7, 3.0f);
    for (int bits : {2, 4, 8})
        for (float clip : {1.0f, 0.9f})
            for (bool sym : {false, true}) {
                const auto t = lowbit::quantize_per_token(
                    x, {bits, sym ? lowbit::int_mode::symmetric : lowbit::int_mode::asymmetric, clip});
                const auto xh = t.dequantize();
                const double maxq = std::pow(2.0, bits) - 1, half = std::pow(2.0, bits - 1) - 1;
                for (Eigen::Index r = 0; r < x.rows(); ++r) {
                    const double lo = static_cast<double>(clip) * x.row(r).minCoeff();
                    const double hi = static_cast<double>(clip) * x.row(r).maxCoeff();
                    double s = sym ? std::max(std::abs(lo), std::abs(hi)) / half : (hi - lo) / maxq;
                    s = std::min(std::max(s, 1e-5), 1e4);
                    s = static_cast<float>(s);
                    const double z = sym ? half : std::min(std::max(std::nearbyint(-lo / s), -1e4), 1e4);
                    CHECK(t.scale(r, 0) == static_cast<float>(s));
                    CHECK(t.zero(r, 0) == z);
                    for (Eigen::Index c = 0; c < x.cols(); ++c) {
                        const double q = std::min(std::max(std::nearbyint(x(r, c) / s) + z, 0.0), maxq);
                        CHECK(xh(r, c) == static_cast<float>(s) * static_cast<float>(q - z));
                    }
                }
            }
    // an all-zero token uses the clamped scale 1e-5 and dequantizes to 0
    const auto z = lowbit::quantize_per_token(lowbit::matrix_f::Zero(1, 4));
    CHECK(z.scale(0, 0) == 1e-5f);
    CHECK(z.dequantize().isZero());
}

TEST_CASE("bad input is refused with lowbit errors") {
    const auto w = random_matrix(2, 6, 8);
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {1}), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::quantize_rtn(w, {9}), doctest::Contains("bits must lie in 2..8, got 9"));
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(lowbit::matrix_f(0, 3)), lowbit::shape_error);
    auto bad = w;
    bad(1, 2) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(bad), lowbit::numeric_error);
    bad(1, 2) = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::quantize_per_token(bad), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {4}, lowbit::per_group{4}), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {4}, lowbit::per_group{0}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {4, lowbit::int_mode::asymmetric, -1}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {4, lowbit::int_mode::asymmetric, 10, 0.0f}),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {4}, lowbit::per_row{}, lowbit::vector_f::Ones(5)),
                    lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {4}, lowbit::per_row{}, -lowbit::vector_f::Ones(6)),
                    lowbit::invalid_argument);
    lowbit::vector_f nanimp = lowbit::vector_f::Ones(6);
    nanimp(0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::quantize_rtn(w, {4}, lowbit::per_row{}, nanimp), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::rtn_quantizer{4}.fit(w, lowbit::vector_f::Ones(3)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::rtn_quantizer{12}.fit(w), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_per_token(w, {4, lowbit::int_mode::asymmetric, 0.0f}),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_per_token(w, {4, lowbit::int_mode::asymmetric, 1.5f}),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_per_token(w, {1}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_per_token(lowbit::matrix_f(3, 0)), lowbit::shape_error);
}
