// Quantize throughput of every element quantizer on one 4096×4096 weight matrix (items = weights,
// so items_per_second is weights/s). Baselines measured in the same run over the same matrix:
//   BM_copy_baseline     a plain copy into a preallocated matrix (memory roof: read + write)
//   BM_abssum_baseline   Eigen's cwiseAbs().rowwise().sum() (read-only reduction roof)
// Run: bench_quantize --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/asym_ternary.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/ternary.hpp>

#include <benchmark/benchmark.h>

#include <random>

namespace {

constexpr Eigen::Index n = 4096;

const lowbit::matrix_f& weights() {
    static const lowbit::matrix_f w = [] {
        std::mt19937_64 rng(1);
        std::normal_distribution<float> g(0.0f, 0.02f);
        lowbit::matrix_f m(n, n);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
        return m;
    }();
    return w;
}

template <class F>
void run(benchmark::State& state, F&& f) {
    const auto& w = weights();
    for (auto _ : state) {
        auto q = f(w);
        benchmark::DoNotOptimize(q);
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * w.size());
}

void BM_copy_baseline(benchmark::State& state) {
    const auto& w = weights();
    lowbit::matrix_f out(n, n);
    for (auto _ : state) {
        out = w;
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * w.size());
}
void BM_abssum_baseline(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::vector_f(w.cwiseAbs().rowwise().sum()); });
}
void BM_rtn4_per_row(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_rtn(w, {4}); });
}
void BM_rtn4_group128(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_rtn(w, {4}, lowbit::per_group{128}); });
}
void BM_rtn4_per_row_clip20(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) {
        return lowbit::quantize_rtn(w, {4, lowbit::int_mode::asymmetric, 20});
    });
}
void BM_per_token_a8(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_per_token(w, {8}); });
}
void BM_ternary_absmean(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_ternary(w, lowbit::absmean{}); });
}
void BM_ternary_twn(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_ternary(w, lowbit::twn{}); });
}
void BM_ternary_optimal(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_ternary(w, lowbit::optimal_threshold{}); });
}
void BM_binary_sign(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::binarize(w, lowbit::sign_scale{true}); });
}
void BM_binary_arb(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::binarize(w, lowbit::arb{}); });
}
void BM_binary_residual(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::binarize(w, lowbit::residual_binary{}); });
}
void BM_e2m_atq_order1(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_e2m_atq(w); });
}
void BM_e2m_atq_order2(benchmark::State& state) {
    lowbit::e2m_atq cfg;
    cfg.order = 2;
    run(state, [&](const lowbit::matrix_f& w) { return lowbit::quantize_e2m_atq(w, cfg); });
}

} // namespace

BENCHMARK(BM_copy_baseline)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_abssum_baseline)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rtn4_per_row)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rtn4_group128)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rtn4_per_row_clip20)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_per_token_a8)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ternary_absmean)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ternary_twn)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ternary_optimal)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_binary_sign)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_binary_arb)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_binary_residual)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_e2m_atq_order1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_e2m_atq_order2)->Unit(benchmark::kMillisecond);
