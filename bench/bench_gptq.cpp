// GPTQ solver time on one linear layer [n x n] (out = in = n), against plain rounding with the same
// element quantizer measured in the same run (the ratio GPTQ / plain is the cost of error feedback).
//   BM_plain_rtn4_g128 / BM_gptq_rtn4_g128        RTN 4-bit asymmetric, groups of 128
//   BM_plain_e2m_atq / BM_gptq_e2m_atq            ternary E2M-ATQ (order 1, S = I), groups of 128
//   BM_tra_gptq                                   TRA-GPTQ (TWLA defaults: B = 128, 64 candidates, 81 quantiles)
// The Hessian H = 2·(A Aᵀ/n + 0.1·I) with a random A is built once per size outside the timing
// (its cost is the calibration pass, not the solver). Args: n. Times are seconds per call.
// Run (small sizes): bench_gptq --benchmark_filter='/(512|1024)$' --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// Run (4096, long):  bench_gptq --benchmark_filter='(gptq|plain).*/4096$'
#include <lowbit/asym_ternary.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/rtn.hpp>

#include <benchmark/benchmark.h>

#include <map>
#include <random>

namespace {

struct layer {
    lowbit::matrix_f w;
    lowbit::matrix_d h;
};

const layer& get_layer(Eigen::Index n) {
    static std::map<Eigen::Index, layer> cache;
    auto it = cache.find(n);
    if (it != cache.end()) return it->second;
    std::mt19937_64 rng(static_cast<std::uint64_t>(n));
    std::normal_distribution<double> g(0.0, 1.0);
    Eigen::MatrixXd a(n, n);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = g(rng);
    layer l;
    l.h = 2.0 * (a * a.transpose() / static_cast<double>(n) + 0.1 * Eigen::MatrixXd::Identity(n, n));
    l.w.resize(n, n);
    for (Eigen::Index i = 0; i < l.w.size(); ++i) l.w.data()[i] = static_cast<float>(0.02 * g(rng));
    return cache.emplace(n, std::move(l)).first->second;
}

template <class F>
void run(benchmark::State& state, F&& f) {
    const auto& l = get_layer(state.range(0));
    for (auto _ : state) {
        auto r = f(l);
        benchmark::DoNotOptimize(r);
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * l.w.size());
}

void BM_plain_rtn4_g128(benchmark::State& state) {
    run(state, [](const layer& l) { return lowbit::quantize_rtn(l.w, {4}, lowbit::per_group{128}).dequantize(); });
}
void BM_gptq_rtn4_g128(benchmark::State& state) {
    run(state, [](const layer& l) {
        return lowbit::gptq_quantize(l.w, l.h, lowbit::rtn_quantizer{4}, lowbit::per_group{128}).weights;
    });
}
void BM_plain_e2m_atq(benchmark::State& state) {
    run(state, [](const layer& l) { return lowbit::quantize_e2m_atq(l.w, {}, lowbit::per_group{128}).dequantize(); });
}
void BM_gptq_e2m_atq(benchmark::State& state) {
    run(state, [](const layer& l) {
        return lowbit::gptq_quantize(l.w, l.h, lowbit::e2m_atq_quantizer{}, lowbit::per_group{128}).weights;
    });
}
void BM_tra_gptq(benchmark::State& state) {
    run(state, [](const layer& l) { return lowbit::tra_gptq_quantize(l.w, l.h).weights; });
}

} // namespace

BENCHMARK(BM_plain_rtn4_g128)->Arg(512)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gptq_rtn4_g128)->Arg(512)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_plain_e2m_atq)->Arg(512)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gptq_e2m_atq)->Arg(512)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_tra_gptq)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
