// MX / NVFP4 quantization throughput on one 4096×4096 matrix (items = elements). Baselines measured
// in the same run over the same matrix:
//   copy_baseline        a plain copy into a preallocated matrix (memory roof: read + write)
//   block_amax_baseline  the per-block max |x| pass every MX scale rule needs (std:: loop)
// Run: bench_mxfp --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/mxfp.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <utility>
#include <vector>

namespace {

using op = std::function<void(const lowbit::matrix_f&, lowbit::matrix_f&)>;

// Every case writes its result into `sink` (a preallocated float matrix) or returns a value that is
// kept alive with DoNotOptimize, so nothing is optimised away.
const std::vector<std::pair<const char*, op>>& cases() {
    static const std::vector<std::pair<const char*, op>> c = {
        {"copy_baseline", [](const lowbit::matrix_f& x, lowbit::matrix_f& sink) { sink = x; }},
        {"block_amax_baseline",
         [](const lowbit::matrix_f& x, lowbit::matrix_f& sink) {
             const float* p = x.data();
             float* o = sink.data();
             for (Eigen::Index b = 0; b < x.size() / 32; ++b) {
                 float a = 0.0f;
                 for (Eigen::Index j = 0; j < 32; ++j) a = std::max(a, std::fabs(p[b * 32 + j]));
                 o[b] = a;
             }
         }},
        {"quantize_mxfp4", [](const lowbit::matrix_f& x, lowbit::matrix_f&) {
             auto q = lowbit::quantize_mx<lowbit::mxfp4>(x);
             benchmark::DoNotOptimize(q.codes.data());
         }},
        {"quantize_mxfp8_e4m3", [](const lowbit::matrix_f& x, lowbit::matrix_f&) {
             auto q = lowbit::quantize_mx<lowbit::mxfp8_e4m3>(x);
             benchmark::DoNotOptimize(q.codes.data());
         }},
        {"quantize_mxint8", [](const lowbit::matrix_f& x, lowbit::matrix_f&) {
             auto q = lowbit::quantize_mx<lowbit::mxint8>(x);
             benchmark::DoNotOptimize(q.codes.data());
         }},
        {"quantize_nvfp4", [](const lowbit::matrix_f& x, lowbit::matrix_f&) {
             auto q = lowbit::quantize_nvfp4(x);
             benchmark::DoNotOptimize(q.codes.data());
         }},
        {"dequantize_mxfp4", [](const lowbit::matrix_f& x, lowbit::matrix_f& sink) {
             static const auto q = lowbit::quantize_mx<lowbit::mxfp4>(x); // same input every call
             sink = q.dequantize();
         }},
    };
    return c;
}

const lowbit::matrix_f& input() {
    static const lowbit::matrix_f x = [] {
        std::mt19937_64 rng(2);
        std::normal_distribution<float> g(0.0f, 1.0f);
        lowbit::matrix_f m(4096, 4096);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
        return m;
    }();
    return x;
}

const bool registered = [] {
    for (const auto& [name, f] : cases()) {
        benchmark::RegisterBenchmark(name, [f = f](benchmark::State& state) {
            const auto& x = input();
            lowbit::matrix_f sink(x.rows(), x.cols());
            f(x, sink); // warm-up: first-touch of `sink` and the dequantize case's static input
            for (auto _ : state) {
                f(x, sink);
                benchmark::DoNotOptimize(sink.data());
                benchmark::ClobberMemory();
            }
            state.SetItemsProcessed(state.iterations() * x.size());
        })->Unit(benchmark::kMillisecond);
    }
    return true;
}();

} // namespace
