// NLI benchmarks: vectorised evaluation of SiLU and exp over 1M floats against the std:: reference loop
// measured in the same run, and the DP fit time for N = 1024, M = 64.
//
//   build-*/bench/bench_nli --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Each evaluation benchmark reports `max_rel` (max relative error against the double-precision function on
// its 1M inputs) so that speed and accuracy are read from the same line.
#include <lowbit/activations.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <type_traits>
#include <vector>

namespace {

constexpr std::size_t n_items = std::size_t(1) << 20;

std::vector<float> inputs(float lo, float hi, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> x(n_items);
    for (auto& v : x) v = u(rng);
    return x;
}

template <class F>
double max_rel(const std::vector<float>& x, const std::vector<float>& y, F f, double floor) {
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double want = f(static_cast<double>(x[i]));
        worst = std::max(worst, std::abs(y[i] - want) / std::max(std::abs(want), floor));
    }
    return worst;
}

// Largest relative difference between the vectorised output and the scalar evaluator (same table); 0 unless
// the compiler contracted a multiply-add differently in the two paths (-march=native allows FMA).
template <class F>
double vs_scalar(const std::vector<float>& x, const std::vector<float>& y, F scalar) {
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double s = scalar(x[i]);
        if (s != 0) worst = std::max(worst, std::abs(y[i] - s) / std::abs(s));
    }
    return worst;
}

double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }
double exp_ref(double x) { return std::exp(x); }

template <class Body>
void run(benchmark::State& state, const std::vector<float>& x, std::vector<float>& y, Body body) {
    for (auto _ : state) {
        body();
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(x.size()));
}

// Times `apply(x, y)` on 1M inputs uniform in [lo, hi]; reports max_rel against `ref` (double) and, when
// `scalar` is given, vs_scalar (the vectorised path against the scalar evaluator of the same table).
template <class Apply, class Scalar>
void map_1m(benchmark::State& state, float lo, float hi, std::uint64_t seed, double (*ref)(double), Apply apply,
            Scalar scalar) {
    const auto x = inputs(lo, hi, seed);
    std::vector<float> y(x.size());
    run(state, x, y, [&] { apply(x, y); });
    state.counters["max_rel"] = max_rel(x, y, ref, 1e-30);
    if constexpr (!std::is_same_v<Scalar, std::nullptr_t>) state.counters["vs_scalar"] = vs_scalar(x, y, scalar);
}

const lowbit::pwl_table& exp_table() { return lowbit::preset_table<lowbit::exp2_fraction_function>(); }

void silu_std_loop(benchmark::State& state) {
    map_1m(state, -10.0f, 10.0f, 1, silu_ref, [](const auto& x, auto& y) {
        for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
    }, nullptr);
}

void silu_nli_exp_pwl(benchmark::State& state) {
    map_1m(state, -10.0f, 10.0f, 1, silu_ref, [](const auto& x, auto& y) { lowbit::silu_exp_pwl(exp_table(), x, y); },
           [](float v) { return lowbit::silu_exp_pwl(exp_table(), v); });
}

void silu_nli_direct_table(benchmark::State& state) {
    const auto& t = lowbit::preset_table<lowbit::silu_function>();
    map_1m(state, -10.0f, 10.0f, 1, silu_ref, [&](const auto& x, auto& y) { t.evaluate(x, y); }, [&](float v) { return t(v); });
}

void exp_std_loop(benchmark::State& state) {
    map_1m(state, -80.0f, 80.0f, 2, exp_ref, [](const auto& x, auto& y) {
        for (std::size_t i = 0; i < x.size(); ++i) y[i] = std::exp(x[i]);
    }, nullptr);
}

void exp_nli_pwl(benchmark::State& state) {
    map_1m(state, -80.0f, 80.0f, 2, exp_ref, [](const auto& x, auto& y) { lowbit::exp_pwl(exp_table(), x, y); },
           [](float v) { return lowbit::exp_pwl(exp_table(), v); });
}

// DP fit, N = 1024 candidates, M = 64 segments, evaluation set = the grid.
void fit_relative_n1024_m64(benchmark::State& state) {
    const auto grid = lowbit::uniform_grid(-8.0, 8.0, 1024);
    for (auto _ : state) {
        auto r = lowbit::fit_pwl([](double x) { return silu_ref(x); }, grid, grid, {64, false}, lowbit::relative_error{1e-3});
        benchmark::DoNotOptimize(r.objective);
    }
}

void fit_squared_prefix_n1024_m64(benchmark::State& state) {
    const auto grid = lowbit::uniform_grid(-8.0, 8.0, 1024);
    for (auto _ : state) {
        auto r = lowbit::fit_pwl([](double x) { return silu_ref(x); }, grid, grid, {64, false}, lowbit::squared_error{});
        benchmark::DoNotOptimize(r.objective);
    }
}

} // namespace

BENCHMARK(silu_std_loop)->Unit(benchmark::kMillisecond);
BENCHMARK(silu_nli_exp_pwl)->Unit(benchmark::kMillisecond);
BENCHMARK(silu_nli_direct_table)->Unit(benchmark::kMillisecond);
BENCHMARK(exp_std_loop)->Unit(benchmark::kMillisecond);
BENCHMARK(exp_nli_pwl)->Unit(benchmark::kMillisecond);
BENCHMARK(fit_relative_n1024_m64)->Unit(benchmark::kMillisecond);
BENCHMARK(fit_squared_prefix_n1024_m64)->Unit(benchmark::kMillisecond);
