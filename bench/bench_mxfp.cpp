// MX / NVFP4 quantization throughput on one 4096×4096 matrix (items = elements). Baselines measured
// in the same run over the same matrix:
//   BM_copy_baseline      a plain copy into a preallocated matrix (memory roof: read + write)
//   BM_block_amax_baseline the per-block max |x| pass every MX scale rule needs (std:: loop)
// Run: bench_mxfp --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/mxfp.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace {

constexpr Eigen::Index n = 4096;

const lowbit::matrix_f& data() {
    static const lowbit::matrix_f w = [] {
        std::mt19937_64 rng(1);
        std::normal_distribution<float> g(0.0f, 1.0f);
        lowbit::matrix_f m(n, n);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
        return m;
    }();
    return w;
}

template <class F>
void run(benchmark::State& state, F&& f) {
    const auto& w = data();
    for (auto _ : state) {
        auto q = f(w);
        benchmark::DoNotOptimize(q);
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * w.size());
}

void BM_copy_baseline(benchmark::State& state) {
    const auto& w = data();
    lowbit::matrix_f out(n, n);
    for (auto _ : state) {
        out = w;
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * w.size());
}
void BM_block_amax_baseline(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) {
        std::vector<float> amax(static_cast<std::size_t>(w.size() / 32));
        const float* p = w.data();
        for (std::size_t b = 0; b < amax.size(); ++b) {
            float a = 0.0f;
            for (int j = 0; j < 32; ++j) a = std::max(a, std::fabs(p[b * 32 + static_cast<std::size_t>(j)]));
            amax[b] = a;
        }
        return amax;
    });
}
void BM_quantize_mxfp4(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_mx<lowbit::mxfp4>(w); });
}
void BM_quantize_mxfp8_e4m3(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_mx<lowbit::mxfp8_e4m3>(w); });
}
void BM_quantize_mxint8(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_mx<lowbit::mxint8>(w); });
}
void BM_quantize_nvfp4(benchmark::State& state) {
    run(state, [](const lowbit::matrix_f& w) { return lowbit::quantize_nvfp4(w); });
}
void BM_dequantize_mxfp4(benchmark::State& state) {
    const auto q = lowbit::quantize_mx<lowbit::mxfp4>(data());
    run(state, [&](const lowbit::matrix_f&) { return q.dequantize(); });
}

} // namespace

BENCHMARK(BM_copy_baseline)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_block_amax_baseline)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_quantize_mxfp4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_quantize_mxfp8_e4m3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_quantize_mxint8)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_quantize_nvfp4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_dequantize_mxfp4)->Unit(benchmark::kMillisecond);
