// Tests for lowbit/pwl_fit.hpp. Oracles: brute-force enumeration of every cutpoint subset on small grids
// with the objective recomputed pointwise in this file (own chord, own aggregation); the uniform-cutpoint
// baseline; hand-counted fp16/bf16 grids; pointwise errors of the resulting float table.
#include <lowbit/pwl_fit.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

namespace {

enum class metric { squared, absolute, relative };

double rho(metric m, double f, double g) {
    switch (m) {
    case metric::squared: return (f - g) * (f - g);
    case metric::absolute: return std::abs(f - g);
    default: return std::abs(f - g) / std::max(std::abs(f), 1e-30);
    }
}

// Objective of a cutpoint set computed point by point: for each x, find its segment, evaluate the chord.
double objective(const std::function<double(double)>& f, const std::vector<double>& grid,
                 const std::vector<double>& eval, const std::vector<std::size_t>& cuts, metric m, bool is_max) {
    double tot = 0;
    for (double x : eval) {
        std::size_t k = 0;
        while (k + 2 < cuts.size() && x >= grid[cuts[k + 1]]) ++k;
        const double x0 = grid[cuts[k]], x1 = grid[cuts[k + 1]];
        const double g = f(x0) + (f(x1) - f(x0)) * (x - x0) / (x1 - x0);
        const double r = rho(m, f(x), g);
        tot = is_max ? std::max(tot, r) : tot + r;
    }
    return tot;
}

// Minimum over all subsets of M-1 interior grid points (exactly M segments).
double brute_force(const std::function<double(double)>& f, const std::vector<double>& grid,
                   const std::vector<double>& eval, std::size_t m, metric me, bool is_max) {
    const std::size_t n = grid.size();
    double best = std::numeric_limits<double>::infinity();
    for (std::uint32_t mask = 0; mask < (1u << (n - 2)); ++mask) {
        if (static_cast<std::size_t>(__builtin_popcount(mask)) != m - 1) continue;
        std::vector<std::size_t> cuts{0};
        for (std::size_t k = 0; k + 2 < n; ++k)
            if (mask >> k & 1u) cuts.push_back(k + 1);
        cuts.push_back(n - 1);
        best = std::min(best, objective(f, grid, eval, cuts, me, is_max));
    }
    return best;
}

template <class Metric, class Agg>
lowbit::pwl_fit_result fit(const std::function<double(double)>& f, const std::vector<double>& grid,
                           const std::vector<double>& eval, std::size_t m, bool at_most = false) {
    return lowbit::fit_pwl(f, grid, eval, lowbit::pwl_fit_options{m, at_most}, Metric{}, Agg{});
}

lowbit::pwl_fit_result fit_any(metric me, bool is_max, const std::function<double(double)>& f,
                               const std::vector<double>& grid, const std::vector<double>& eval, std::size_t m,
                               bool at_most = false) {
    using namespace lowbit;
    if (me == metric::squared)
        return is_max ? fit<squared_error, max_of_errors>(f, grid, eval, m, at_most)
                      : fit<squared_error, sum_of_errors>(f, grid, eval, m, at_most);
    if (me == metric::absolute)
        return is_max ? fit<absolute_error, max_of_errors>(f, grid, eval, m, at_most)
                      : fit<absolute_error, sum_of_errors>(f, grid, eval, m, at_most);
    return is_max ? fit<relative_error, max_of_errors>(f, grid, eval, m, at_most)
                  : fit<relative_error, sum_of_errors>(f, grid, eval, m, at_most);
}

const std::function<double(double)> test_functions[] = {
    [](double x) { return std::exp(x); },
    [](double x) { return x / (1 + std::exp(-x)) + 0.5; },
    [](double x) { return std::sin(3 * x) + 2.5; },
    [](double x) { return 1.0 / std::sqrt(x + 2.5); },
};

} // namespace

TEST_CASE("DP equals brute-force enumeration on small grids (all metrics, sum and max)") {
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> u(-2.0, 2.0);
    for (const auto& f : test_functions) {
        for (std::size_t n : {4u, 7u, 10u}) {
            // Non-uniform grid and a random evaluation set that includes the grid ends.
            std::vector<double> grid{-2.0, 2.0};
            while (grid.size() < n) grid.push_back(u(rng));
            std::sort(grid.begin(), grid.end());
            std::vector<double> eval{-2.0, 2.0};
            for (int k = 0; k < 40; ++k) eval.push_back(u(rng));
            for (metric me : {metric::squared, metric::absolute, metric::relative}) {
                for (bool is_max : {false, true}) {
                    for (std::size_t m = 1; m + 1 <= n && m <= 5; ++m) {
                        const auto r = fit_any(me, is_max, f, grid, eval, m);
                        const double want = brute_force(f, grid, eval, m, me, is_max);
                        CHECK(r.segments() == m);
                        CHECK(r.objective == doctest::Approx(want).epsilon(1e-9).scale(1e-12));
                        // The reported cutpoints achieve the reported objective.
                        CHECK(objective(f, grid, eval, r.cut_index, me, is_max) ==
                              doctest::Approx(r.objective).epsilon(1e-9).scale(1e-12));
                    }
                }
            }
        }
    }
}

TEST_CASE("DP is never worse than uniform cutpoints with the same M") {
    const auto grid = lowbit::uniform_grid(-2.0, 2.0, 65);
    const auto eval = lowbit::uniform_grid(-2.0, 2.0, 193);
    for (const auto& f : test_functions) {
        for (metric me : {metric::squared, metric::absolute, metric::relative}) {
            for (bool is_max : {false, true}) {
                for (std::size_t m : {2u, 4u, 8u, 16u}) {
                    const auto r = fit_any(me, is_max, f, grid, eval, m);
                    const auto uni = lowbit::uniform_cut_indices(grid.size(), m);
                    const double base = objective(f, grid, eval, uni, me, is_max);
                    CHECK(r.objective <= base * (1 + 1e-9) + 1e-15);
                }
            }
        }
    }
}

TEST_CASE("optimal error does not increase with M") {
    const auto grid = lowbit::uniform_grid(0.0, 1.0, 65);
    const auto eval = lowbit::uniform_grid(0.0, 1.0, 257);
    // "at most M" is monotone for any f, including a non-convex one.
    const std::function<double(double)> wavy = [](double x) { return std::sin(9 * x) + 1.5; };
    for (bool is_max : {false, true}) {
        double prev = std::numeric_limits<double>::infinity();
        for (std::size_t m = 1; m <= 24; ++m) {
            const auto r = fit_any(metric::relative, is_max, wavy, grid, eval, m, true);
            CHECK(r.segments() <= m);
            CHECK(r.objective <= prev * (1 + 1e-12));
            prev = r.objective;
        }
    }
    // Exactly M segments is monotone too for a convex f (refining a chord of a convex f never hurts).
    const std::function<double(double)> convex = [](double x) { return std::exp(2 * x); };
    double prev = std::numeric_limits<double>::infinity();
    for (std::size_t m : {4u, 8u, 16u, 32u, 64u}) {
        const auto r = fit_any(metric::relative, false, convex, grid, eval, m);
        CHECK(r.segments() == m);
        CHECK(r.objective <= prev * (1 + 1e-12));
        prev = r.objective;
    }
}

TEST_CASE("squared error from prefix sums equals the pointwise sum; pwl_objective agrees") {
    const auto grid = lowbit::uniform_grid(-1.0, 3.0, 50);
    const auto eval = lowbit::uniform_grid(-1.0, 3.0, 301);
    const auto f = [](double x) { return std::tanh(x) * 3 + x * x; };
    const auto r = lowbit::fit_pwl(f, grid, eval, {7, false}, lowbit::squared_error{}, lowbit::sum_of_errors{});
    CHECK(r.objective == doctest::Approx(objective(f, grid, eval, r.cut_index, metric::squared, false)).epsilon(1e-8));
    CHECK(lowbit::pwl_objective(f, grid, eval, r.cut_index, lowbit::squared_error{}) ==
          doctest::Approx(r.objective).epsilon(1e-8));
    CHECK(r.mean == doctest::Approx(r.objective / 301.0));
    CHECK(r.grid_cells == 49);
}

TEST_CASE("minimax fit: the float table's pointwise maximum matches the objective") {
    const auto grid = lowbit::uniform_grid(0.0, 1.0, 129);
    const auto eval = lowbit::uniform_grid(0.0, 1.0, 385);
    const auto f = [](double x) { return std::exp2(x); };
    const auto r = lowbit::fit_pwl(f, grid, eval, {8, false}, lowbit::relative_error{}, lowbit::max_of_errors{});
    const auto t = lowbit::make_pwl_table(r, {}, {});
    CHECK(128 % t.cells() == 0); // coarsest cell grid holding the cutpoints
    CHECK(t.cells() >= 8);
    double worst = 0;
    for (double x : eval) worst = std::max(worst, std::abs(t(static_cast<float>(x)) - f(x)) / f(x));
    CHECK(worst == doctest::Approx(r.objective).epsilon(0.01)); // float rounding of the table only
    // A non-uniform grid gives a binary-search table.
    const auto g16 = lowbit::fp16_grid(1.0, 2.0);
    const auto r16 = lowbit::fit_pwl(f, std::vector<double>(g16.begin(), g16.begin() + 200),
                                     std::vector<double>(g16.begin(), g16.begin() + 200), {4, false});
    CHECK(r16.grid_cells == 199); // fp16 values in [1, 2) are uniform
    const auto gb = lowbit::bf16_grid(0.25, 2.0);
    const auto rb = lowbit::fit_pwl(f, gb, gb, {4, false});
    CHECK(rb.grid_cells == 0);
    CHECK(lowbit::make_pwl_table(rb, {}, {}).cells() == 0);
}

TEST_CASE("grids: uniform ends, fp16/bf16 counts worked by hand, uniform cut indices") {
    const auto g = lowbit::uniform_grid(-1.0, 1.0, 5);
    CHECK(g == std::vector<double>{-1.0, -0.5, 0.0, 0.5, 1.0});
    CHECK(lowbit::fp16_grid(1.0, 2.0).size() == 1025); // 2^10 mantissas + 2.0
    // [0, 1]: 0, 1023 subnormals, 14 binades * 1024 normals below 1, and 1.0 -> 15361; [-1, 1]: 2 * 15361 - 1.
    CHECK(lowbit::fp16_grid(0.0, 1.0).size() == 15361);
    CHECK(lowbit::fp16_grid(-1.0, 1.0).size() == 30721);
    CHECK(lowbit::fp16_grid(65504.0, 1e9).size() == 1); // largest finite fp16
    CHECK(lowbit::bf16_grid(1.0, 2.0).size() == 129);
    CHECK(lowbit::bf16_grid(1.0, 4.0).size() == 257);
    CHECK(lowbit::uniform_cut_indices(9, 4) == std::vector<std::size_t>{0, 2, 4, 6, 8});
    CHECK(lowbit::uniform_cut_indices(10, 3) == std::vector<std::size_t>{0, 3, 6, 9});
}

TEST_CASE("fit_pwl is deterministic") {
    const auto grid = lowbit::uniform_grid(-4.0, 4.0, 101);
    const auto f = [](double x) { return x / (1 + std::exp(-x)); };
    const auto a = lowbit::fit_pwl(f, grid, grid, {10, false}, lowbit::relative_error{1e-3});
    const auto b = lowbit::fit_pwl(f, grid, grid, {10, false}, lowbit::relative_error{1e-3});
    CHECK(a.cut_index == b.cut_index);
    CHECK(a.objective == b.objective);
}

TEST_CASE("bad input is rejected with a clear error") {
    const auto grid = lowbit::uniform_grid(0.0, 1.0, 5);
    const auto f = [](double x) { return x + 1; };
    using lowbit::fit_pwl;
    CHECK_THROWS_AS(fit_pwl(f, grid, grid, {0, false}), lowbit::invalid_argument);           // M < 1
    CHECK_THROWS_AS(fit_pwl(f, grid, grid, {5, false}), lowbit::invalid_argument);           // N < M + 1
    CHECK_NOTHROW(fit_pwl(f, grid, grid, {4, false}));                                       // N = M + 1
    CHECK_THROWS_AS(lowbit::uniform_grid(1.0, 1.0, 5), lowbit::invalid_argument);            // empty domain
    CHECK_THROWS_AS(lowbit::uniform_grid(1.0, 0.0, 5), lowbit::invalid_argument);            // inverted
    CHECK_THROWS_AS(lowbit::uniform_grid(0.0, INFINITY, 5), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::uniform_grid(0.0, 1.0, 1), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::fp16_grid(2.0, 1.0), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::bf16_grid(0.0, 0.0), lowbit::invalid_argument);
    const std::vector<double> unsorted{0.0, 0.5, 0.25, 1.0};
    CHECK_THROWS_AS(fit_pwl(f, unsorted, grid, {2, false}), lowbit::invalid_argument);
    const std::vector<double> with_nan{0.0, NAN, 1.0};
    CHECK_THROWS_AS(fit_pwl(f, with_nan, grid, {1, false}), lowbit::numeric_error);
    CHECK_THROWS_AS(fit_pwl(f, grid, std::vector<double>{}, {2, false}), lowbit::shape_error);
    CHECK_THROWS_AS(fit_pwl(f, grid, std::vector<double>{0.5, 1.5}, {2, false}), lowbit::invalid_argument);
    CHECK_THROWS_AS(fit_pwl(f, grid, std::vector<double>{0.5, NAN}, {2, false}), lowbit::numeric_error);
    CHECK_THROWS_AS(fit_pwl([](double x) { return std::log(x); }, grid, grid, {2, false}), lowbit::numeric_error);
    const auto big = lowbit::uniform_grid(0.0, 1.0, 4097);
    CHECK_THROWS_AS(fit_pwl(f, big, grid, {2, false}, lowbit::absolute_error{}), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::uniform_cut_indices(3, 3), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::uniform_cut_indices(3, 0), lowbit::invalid_argument);
    const std::vector<std::size_t> bad_cuts{0, 2, 2, 4};
    CHECK_THROWS_AS(lowbit::pwl_objective(f, grid, grid, bad_cuts), lowbit::invalid_argument);
    try {
        fit_pwl(f, grid, grid, {5, false});
    } catch (const lowbit::error& e) {
        CHECK(std::string(e.what()).find("N >= M + 1") != std::string::npos);
    }
}
