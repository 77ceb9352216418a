// Tests for lowbit/pwl.hpp. Oracles: a hand-worked table; the chord formula evaluated in double;
// the scalar evaluator for the xsimd path (bit equality: tests build with -ffp-contract=off);
// round(g(q s_in) / s_out) in double for the int16 fixed-point form, over all 65536 inputs.
#include <lowbit/pwl.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

using bf = xsimd::batch<float>;

std::uint32_t bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits(a) == bits(b); }

// Random table: M segments with cutpoints on a uniform grid of `cells` cells over [lo, hi] (cells > 0),
// or arbitrary increasing cutpoints (cells == 0).
lowbit::pwl_table random_table(std::mt19937_64& rng, std::size_t m, std::size_t cells, float lo, float hi) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<float> c;
    if (cells > 0) {
        std::vector<std::size_t> idx{0, cells};
        while (idx.size() < m + 1) {
            const std::size_t k = 1 + static_cast<std::size_t>(u(rng) * static_cast<double>(cells - 1));
            if (std::find(idx.begin(), idx.end(), k) == idx.end()) idx.push_back(k);
        }
        std::sort(idx.begin(), idx.end());
        for (auto k : idx) c.push_back(static_cast<float>(lo + (double(hi) - lo) * double(k) / double(cells)));
    } else {
        std::vector<double> w(m);
        double tot = 0;
        for (auto& x : w) tot += (x = 0.1 + u(rng));
        double at = lo;
        c.push_back(lo);
        for (std::size_t k = 0; k + 1 < m; ++k) c.push_back(static_cast<float>(at += w[k] / tot * (double(hi) - lo)));
        c.push_back(hi);
    }
    std::vector<float> v(c.size());
    for (auto& y : v) y = static_cast<float>(4.0 * u(rng) - 2.0);
    return lowbit::pwl_table(c, v, {0.0f, v.front()}, {0.5f, v.back() - 0.5f * hi}, cells);
}

double chord_reference(const lowbit::pwl_table& t, double x) {
    const auto c = t.cutpoints();
    const auto v = t.values();
    std::size_t k = 0;
    while (k + 2 < c.size() && x >= c[k + 1]) ++k;
    return v[k] + (double(v[k + 1]) - v[k]) * (x - c[k]) / (double(c[k + 1]) - c[k]);
}

} // namespace

TEST_CASE("hand-worked table: chords, asymptotes, endpoints") {
    // cutpoints 0, 1, 3 with values 0, 2, 3: slopes 2 and 0.5, intercepts 0 and 1.5.
    const lowbit::pwl_table t({0.0f, 1.0f, 3.0f}, {0.0f, 2.0f, 3.0f}, {0.0f, -1.0f}, {1.0f, 0.0f});
    CHECK(t.segments() == 2);
    CHECK(t.slopes()[0] == 2.0f);
    CHECK(t.slopes()[1] == 0.5f);
    CHECK(t.intercepts()[1] == 1.5f);
    CHECK(t(0.5f) == 1.0f);
    CHECK(t(1.0f) == 2.0f);
    CHECK(t(2.0f) == 2.5f);
    CHECK(t(3.0f) == 3.0f);   // hi belongs to the last segment
    CHECK(t(-5.0f) == -1.0f); // left asymptote, slope 0
    CHECK(t(10.0f) == 10.0f); // right asymptote y = x
    CHECK(t(-std::numeric_limits<float>::infinity()) == -1.0f);
    CHECK(t(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
    CHECK(std::isnan(t(std::numeric_limits<float>::quiet_NaN())));
    // Same table with a cell index of 3 cells (cutpoints 0, 1, 3 are on the grid 0, 1, 2, 3).
    const lowbit::pwl_table tc({0.0f, 1.0f, 3.0f}, {0.0f, 2.0f, 3.0f}, {0.0f, -1.0f}, {1.0f, 0.0f}, 3);
    CHECK(tc.cells() == 3);
    CHECK(tc(0.5f) == 1.0f);
    CHECK(tc(2.0f) == 2.5f);
    CHECK(tc(2.5f) == 2.75f);
}

TEST_CASE("evaluation equals the chord formula in double (cell index and binary search)") {
    std::mt19937_64 rng(1);
    std::uniform_real_distribution<float> ux(-3.0f, 5.0f);
    for (std::size_t m : {1u, 2u, 3u, 5u, 8u, 17u, 64u}) {
        for (std::size_t cells : {std::size_t(0), std::size_t(4 * m + 3)}) {
            const auto t = random_table(rng, m, cells, -2.0f, 4.0f);
            for (int i = 0; i < 2000; ++i) {
                const float x = ux(rng);
                double want;
                if (x < t.lo()) want = t.left().intercept;
                else if (x > t.hi()) want = double(t.right().slope) * x + t.right().intercept;
                else want = chord_reference(t, x);
                CHECK(std::abs(t(x) - want) <= 2e-5 * (1 + std::abs(want)));
            }
        }
    }
}

TEST_CASE("xsimd evaluation returns the scalar evaluator's bits, special values included") {
    std::mt19937_64 rng(2);
    std::uniform_real_distribution<float> ux(-3.0f, 5.0f);
    const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(), -2.0f, 4.0f, 0.0f, -0.0f,
                              std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(), 1e-30f};
    for (std::size_t m : {1u, 2u, 3u, 7u, 16u, 64u}) {
        for (std::size_t cells : {std::size_t(0), std::size_t(2 * m + 1)}) {
            const auto t = random_table(rng, m, cells, -2.0f, 4.0f);
            std::vector<float> in(1003);
            for (auto& x : in) x = ux(rng);
            for (std::size_t k = 0; k < std::size(specials); ++k) in[7 * k + 3] = specials[k];
            for (std::size_t k = 0; k < m + 1; ++k) in[100 + k] = t.cutpoints()[k]; // exact boundaries
            std::vector<float> out(in.size());
            t.evaluate(in, out);
            for (std::size_t i = 0; i < in.size(); ++i) CHECK(same(out[i], t(in[i])));
            // One explicit batch call as well.
            const bf b = bf::load_unaligned(in.data() + 3);
            float tmp[bf::size];
            t(b).store_unaligned(tmp);
            for (std::size_t l = 0; l < bf::size; ++l) CHECK(same(tmp[l], t(in[3 + l])));
        }
    }
}

TEST_CASE("cell index and binary search agree up to rounding at boundaries") {
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<float> ux(-2.0f, 4.0f);
    const auto t = random_table(rng, 12, 40, -2.0f, 4.0f);
    const lowbit::pwl_table b(std::vector<float>(t.cutpoints().begin(), t.cutpoints().end()),
                              std::vector<float>(t.values().begin(), t.values().end()), t.left(), t.right(), 0);
    for (int i = 0; i < 5000; ++i) {
        const float x = ux(rng);
        CHECK(std::abs(t(x) - b(x)) <= 1e-5f);
    }
}

TEST_CASE("pwl_table rejects bad input") {
    using lowbit::pwl_table;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(pwl_table({0.0f}, {1.0f}, {}, {}), lowbit::invalid_argument);
    CHECK_THROWS_AS(pwl_table({0.0f, 1.0f}, {1.0f}, {}, {}), lowbit::shape_error);
    CHECK_THROWS_AS(pwl_table({0.0f, 1.0f, 1.0f}, {1.0f, 2.0f, 3.0f}, {}, {}), lowbit::invalid_argument);
    CHECK_THROWS_AS(pwl_table({1.0f, 0.0f}, {1.0f, 2.0f}, {}, {}), lowbit::invalid_argument);
    CHECK_THROWS_AS(pwl_table({0.0f, nan}, {1.0f, 2.0f}, {}, {}), lowbit::numeric_error);
    CHECK_THROWS_AS(pwl_table({0.0f, 1.0f}, {1.0f, nan}, {}, {}), lowbit::numeric_error);
    CHECK_THROWS_AS(pwl_table({0.0f, 1.0f}, {1.0f, 2.0f}, {nan, 0.0f}, {}), lowbit::numeric_error);
    // cutpoint 0.3 is not on a grid of 2 cells over [0, 1]; cells < M.
    CHECK_THROWS_AS(pwl_table({0.0f, 0.3f, 1.0f}, {1.0f, 2.0f, 3.0f}, {}, {}, 2), lowbit::invalid_argument);
    CHECK_THROWS_AS(pwl_table({0.0f, 0.5f, 1.0f}, {1.0f, 2.0f, 3.0f}, {}, {}, 1), lowbit::invalid_argument);
    const pwl_table t({0.0f, 1.0f}, {0.0f, 1.0f}, {}, {});
    std::vector<float> in(4), out(3);
    CHECK_THROWS_AS(t.evaluate(in, out), lowbit::shape_error);
    try {
        pwl_table({1.0f, 0.0f}, {1.0f, 2.0f}, {}, {});
    } catch (const lowbit::error& e) {
        CHECK(std::string(e.what()).find("strictly increasing") != std::string::npos);
    }
}

TEST_CASE("int16 fixed point: within 1 LSB of the float table over all 65536 inputs") {
    // A sigmoid-like table with non-uniform cutpoints and asymptotes 0 and 1.
    std::vector<float> c{-6.0f, -3.0f, -1.5f, -0.5f, 0.0f, 0.5f, 1.5f, 3.0f, 6.0f};
    std::vector<float> v;
    for (float x : c) v.push_back(static_cast<float>(1.0 / (1.0 + std::exp(-double(x)))));
    const lowbit::pwl_table t(c, v, {0.0f, 0.0f}, {0.0f, 1.0f});
    for (float s_in : {1.0f / 4096.0f, 1.0f / 1000.0f, 0.01f}) {
        const float s_out = 1.0f / 32767.0f;
        const lowbit::pwl_table_q16 q(t, s_in, s_out);
        CHECK(q.regions() == t.segments() + 2);
        int worst = 0;
        for (int code = -32768; code <= 32767; ++code) {
            const double x = double(code) * s_in;
            double g;
            if (x < t.lo()) g = t.left().intercept;
            else if (x > t.hi()) g = t.right().intercept;
            else g = chord_reference(t, x);
            const double want = std::clamp(std::round(g / s_out), -32768.0, 32767.0);
            const int got = q(static_cast<std::int16_t>(code));
            worst = std::max(worst, static_cast<int>(std::abs(got - want)));
        }
        CHECK(worst <= 1);
    }
    // Hand check: y = 2x on [0, 1], y = x + 1 beyond; s_in = 1/4, s_out = 1/8: q = 2 (x = 0.5) -> y = 1 -> 8.
    const lowbit::pwl_table lin({0.0f, 1.0f}, {0.0f, 2.0f}, {2.0f, 0.0f}, {1.0f, 1.0f});
    const lowbit::pwl_table_q16 q(lin, 0.25f, 0.125f);
    CHECK(q(2) == 8);
    CHECK(q(8) == 24);       // x = 2 -> y = 3 -> 24
    CHECK(q(-4) == -16);     // x = -1 -> y = -2 -> -16
    CHECK(q(32767) == 32767); // saturates
    std::vector<std::int16_t> in{2, 8}, out(2);
    q.evaluate(in, out);
    CHECK(out[1] == 24);
    std::vector<std::int16_t> out1(1);
    CHECK_THROWS_AS(q.evaluate(in, out1), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::pwl_table_q16(lin, 0.0f, 1.0f), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::pwl_table_q16(lin, 1.0f, std::numeric_limits<float>::quiet_NaN()), lowbit::invalid_argument);
}
