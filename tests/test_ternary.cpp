// Tests for lowbit/ternary.hpp. Oracles: exhaustive search over {-1,0,1}^n (with the closed-form
// least-squares scale) for optimal_threshold; the published rules worked in double for absmean/TWN.
#include <lowbit/ternary.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace {

double row_error(const float* w, const std::int8_t* t, float alpha, int n) {
    double e = 0;
    for (int j = 0; j < n; ++j) {
        const double d = static_cast<double>(w[j]) - static_cast<double>(alpha) * t[j];
        e += d * d;
    }
    return e;
}

// Brute force: every t in {-1,0,1}^n, alpha = <t,w>/<t,t> clipped at 0.
double brute_force_min_error(const float* w, int n) {
    int total = 1;
    for (int j = 0; j < n; ++j) total *= 3;
    double best = std::numeric_limits<double>::infinity();
    for (int code = 0; code < total; ++code) {
        int c = code;
        double tw = 0, tt = 0, ww = 0;
        for (int j = 0; j < n; ++j) {
            const int t = c % 3 - 1;
            c /= 3;
            tw += t * static_cast<double>(w[j]);
            tt += t * t;
            ww += static_cast<double>(w[j]) * w[j];
        }
        const double alpha = tt > 0 ? std::max(0.0, tw / tt) : 0.0;
        best = std::min(best, ww - 2 * alpha * tw + alpha * alpha * tt);
    }
    return best;
}

} // namespace

TEST_CASE("optimal_threshold equals exhaustive search on small rows") {
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (int n = 1; n <= 8; ++n) {
        for (int trial = 0; trial < 20; ++trial) {
            lowbit::matrix_f w(1, n);
            for (int j = 0; j < n; ++j) w(0, j) = g(rng) * (trial % 3 == 0 ? 10.0f : 1.0f);
            const auto q = lowbit::quantize_ternary(w, lowbit::optimal_threshold{});
            const double got = row_error(w.data(), q.codes.data(), q.scale(0), n);
            const double want = brute_force_min_error(w.data(), n);
            CHECK(got == doctest::Approx(want).epsilon(1e-5).scale(1.0));
        }
    }
}

TEST_CASE("optimal_threshold is never worse than absmean or TWN") {
    std::mt19937 rng(11);
    std::student_t_distribution<float> heavy(3.0f);
    lowbit::matrix_f w(16, 257);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = heavy(rng);
    const auto opt = lowbit::quantize_ternary(w, lowbit::optimal_threshold{}).dequantize();
    const auto am = lowbit::quantize_ternary(w, lowbit::absmean{}).dequantize();
    const auto tw = lowbit::quantize_ternary(w, lowbit::twn{}).dequantize();
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        const double eo = (w.row(i) - opt.row(i)).squaredNorm();
        CHECK(eo <= (w.row(i) - am.row(i)).squaredNorm() * (1 + 1e-6));
        CHECK(eo <= (w.row(i) - tw.row(i)).squaredNorm() * (1 + 1e-6));
    }
}

TEST_CASE("absmean follows BitNet b1.58 worked by hand") {
    lowbit::matrix_f w(1, 4);
    w << 0.9f, -0.3f, 0.1f, -2.0f; // mean|w| = 0.825
    const auto q = lowbit::quantize_ternary(w, lowbit::absmean{});
    CHECK(q.scale(0) == doctest::Approx(0.825));
    // 0.9/0.825 = 1.09 -> 1; -0.3/0.825 = -0.36 -> 0; 0.1 -> 0; -2/0.825 = -2.4 -> -1
    CHECK(q.codes(0, 0) == 1);
    CHECK(q.codes(0, 1) == 0);
    CHECK(q.codes(0, 2) == 0);
    CHECK(q.codes(0, 3) == -1);
}

TEST_CASE("twn threshold and scale worked by hand") {
    lowbit::matrix_f w(1, 5);
    w << 1.0f, -0.2f, 0.3f, -0.8f, 0.05f; // mean|w| = 0.47, delta = 0.329
    const auto q = lowbit::quantize_ternary(w, lowbit::twn{});
    CHECK(q.codes(0, 0) == 1);
    CHECK(q.codes(0, 1) == 0);
    CHECK(q.codes(0, 2) == 0);
    CHECK(q.codes(0, 3) == -1);
    CHECK(q.codes(0, 4) == 0);
    CHECK(q.scale(0) == doctest::Approx(0.9)); // mean of 1.0 and 0.8
}

TEST_CASE("zero rows give zero scale and zero codes") {
    lowbit::matrix_f w = lowbit::matrix_f::Zero(2, 3);
    for (auto q : {lowbit::quantize_ternary(w, lowbit::absmean{}), lowbit::quantize_ternary(w, lowbit::twn{}),
                   lowbit::quantize_ternary(w, lowbit::optimal_threshold{})}) {
        CHECK(q.scale.isZero());
        CHECK(q.codes.cast<int>().isZero());
        CHECK(q.dequantize().isZero());
    }
}

TEST_CASE("bad input is refused with lowbit errors") {
    lowbit::matrix_f empty(0, 4);
    CHECK_THROWS_AS((void)lowbit::quantize_ternary(empty, lowbit::absmean{}), lowbit::shape_error);
    lowbit::matrix_f w = lowbit::matrix_f::Ones(2, 2);
    w(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::quantize_ternary(w, lowbit::optimal_threshold{}), lowbit::numeric_error);
    w(1, 1) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::quantize_ternary(w, lowbit::twn{}), lowbit::numeric_error);
    w(1, 1) = 1.0f;
    CHECK_THROWS_AS((void)lowbit::quantize_ternary(w, lowbit::twn{1.5f}), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::quantize_ternary(empty, lowbit::absmean{}),
                      doctest::Contains("argument 'w' is empty"));
}

TEST_CASE("per_group ternary equals quantizing each column slice") {
    std::mt19937 rng(13);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f w(4, 24);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
    const auto t = lowbit::quantize_ternary(w, lowbit::optimal_threshold{}, lowbit::per_group{8});
    REQUIRE(t.scale.cols() == 3);
    CHECK(t.group_size == 8);
    for (int k = 0; k < 3; ++k) {
        const lowbit::matrix_f slice = w.middleCols(8 * k, 8);
        const auto u = lowbit::quantize_ternary(slice, lowbit::optimal_threshold{});
        CHECK(u.scale.col(0) == t.scale.col(k));
        CHECK(u.codes == t.codes.middleCols(8 * k, 8));
        CHECK(u.dequantize() == t.dequantize().middleCols(8 * k, 8));
    }
}

TEST_CASE("tail policies of per_group ternary worked by hand") {
    lowbit::matrix_f w(1, 5);
    w << 1, 2, 3, 4, 5;
    // zero_pad: last group [5, 0, 0, 0], mean|w| = 1.25; smaller_last: last group [5], mean 5
    const auto zp = lowbit::quantize_ternary(w, lowbit::absmean{}, lowbit::per_group{4, lowbit::tail_policy::zero_pad});
    const auto sl = lowbit::quantize_ternary(w, lowbit::absmean{}, lowbit::per_group{4, lowbit::tail_policy::smaller_last});
    CHECK(zp.scale(0, 0) == doctest::Approx(2.5));
    CHECK(zp.scale(0, 1) == doctest::Approx(1.25));
    CHECK(sl.scale(0, 1) == doctest::Approx(5.0));
    CHECK(zp.codes(0, 4) == 1);
    CHECK(zp.codes(0, 0) == 0); // 1 / 2.5 = 0.4 -> 0
    CHECK(zp.dequantize()(0, 4) == doctest::Approx(1.25));
    CHECK_THROWS_AS((void)lowbit::quantize_ternary(w, lowbit::absmean{}, lowbit::per_group{4}), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::quantize_ternary(w, lowbit::twn{}, lowbit::per_group{0}), lowbit::invalid_argument);
}

TEST_CASE("ternary_quantizer models GroupQuantizer") {
    static_assert(lowbit::GroupQuantizer<lowbit::ternary_quantizer<lowbit::twn>>);
    static_assert(lowbit::GroupQuantizer<lowbit::ternary_quantizer<lowbit::optimal_threshold>>);
    std::mt19937 rng(17);
    std::student_t_distribution<float> heavy(3.0f);
    lowbit::matrix_f w(6, 40);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = heavy(rng);
    lowbit::vector_f out(6);
    auto same_as_quantize = [&](auto rule) {
        const lowbit::ternary_quantizer<decltype(rule)> q{rule};
        const auto p = q.fit(w);
        const auto wh = lowbit::quantize_ternary(w, rule).dequantize();
        for (Eigen::Index c = 0; c < w.cols(); ++c) {
            q.round_column(p, w.col(c), out);
            CHECK(out == wh.col(c));
        }
    };
    same_as_quantize(lowbit::absmean{});
    same_as_quantize(lowbit::twn{});
    // optimal_threshold: round_column picks the nearest of {-α, 0, α}
    const lowbit::ternary_quantizer<lowbit::optimal_threshold> q;
    const auto p = q.fit(w);
    for (Eigen::Index c = 0; c < w.cols(); ++c) {
        q.round_column(p, w.col(c), out);
        for (Eigen::Index i = 0; i < 6; ++i) {
            const float a = p.scale(i);
            const float best = std::min({std::abs(w(i, c)), std::abs(w(i, c) - a), std::abs(w(i, c) + a)});
            CHECK(std::abs(w(i, c) - out(i)) == best);
        }
    }
}
