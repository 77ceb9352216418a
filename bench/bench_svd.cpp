// Low-rank factorisation time on one 4096×4096 weight matrix (rank 128). Baseline measured in the
// same run: one Eigen FP64 GEMM of the same size (W·L, the whitening product every whitened SVD
// pays), so results read as "cost in GEMMs". The exact BDCSVD of a 4096² matrix takes minutes on one
// core and is timed at 1024 only (with its own GEMM baseline).
// Run: bench_svd --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/lowrank.hpp>

#include <benchmark/benchmark.h>

#include <random>

namespace {

constexpr Eigen::Index rank = 128;

const lowbit::matrix_f& weights(Eigen::Index n) {
    static std::vector<std::pair<Eigen::Index, lowbit::matrix_f>> cache;
    for (const auto& [k, m] : cache)
        if (k == n) return m;
    std::mt19937_64 rng(1);
    std::normal_distribution<float> g(0.0f, 0.02f);
    lowbit::matrix_f m(n, n);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    cache.emplace_back(n, std::move(m));
    return cache.back().second;
}

// Gram of 2n tokens with unequal channel energies (well conditioned).
const lowbit::matrix_d& gram(Eigen::Index n) {
    static std::vector<std::pair<Eigen::Index, lowbit::matrix_d>> cache;
    for (const auto& [k, m] : cache)
        if (k == n) return m;
    std::mt19937_64 rng(2);
    std::normal_distribution<double> g(0.0, 1.0);
    Eigen::MatrixXd x(2 * n, n);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = g(rng) * (1.0 + static_cast<double>(i % n) / n);
    cache.emplace_back(n, lowbit::matrix_d(x.transpose() * x));
    return cache.back().second;
}

void BM_gemm_f64_baseline(benchmark::State& state) {
    const Eigen::Index n = state.range(0);
    const Eigen::MatrixXd a = weights(n).cast<double>();
    const Eigen::MatrixXd b = gram(n);
    Eigen::MatrixXd c(n, n);
    for (auto _ : state) {
        c.noalias() = a * b;
        benchmark::DoNotOptimize(c.data());
    }
}
void BM_randomized_svd(benchmark::State& state) {
    const Eigen::Index n = state.range(0);
    for (auto _ : state) {
        auto lr = lowbit::truncated_svd(weights(n), rank, lowbit::randomized_svd{10, 2, 0});
        benchmark::DoNotOptimize(lr.a.data());
    }
}
void BM_whitened_svd_randomized(benchmark::State& state) {
    const Eigen::Index n = state.range(0);
    for (auto _ : state) {
        auto lr = lowbit::whitened_svd(weights(n), gram(n), rank, 0.01, lowbit::randomized_svd{10, 2, 0});
        benchmark::DoNotOptimize(lr.a.data());
    }
}
void BM_whitened_svd_exact(benchmark::State& state) {
    const Eigen::Index n = state.range(0);
    for (auto _ : state) {
        auto lr = lowbit::whitened_svd(weights(n), gram(n), rank, 0.01, lowbit::exact_svd{});
        benchmark::DoNotOptimize(lr.a.data());
    }
}

} // namespace

BENCHMARK(BM_gemm_f64_baseline)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_randomized_svd)->Arg(4096)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_whitened_svd_randomized)->Arg(4096)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_whitened_svd_exact)->Arg(1024)->Unit(benchmark::kMillisecond)->Iterations(1);
