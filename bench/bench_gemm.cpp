// GEMM Y = X·Wᵀ with 128 tokens: Eigen FP32 SGEMM (baseline, same process) against the packed
// ternary 2-bit × int8 kernel (activation quantization included, `automatic` ISA: AMX where the CPU
// has it), weights 4096x4096, 1 or 2 threads, and the base-3 ternary, int4 and int2 kernels with 1
// thread (peers of ggml's TQ1_0, Q4_0 and Q2_K in bench_ggml).
// Prefill kernels: gemm{M}/{format}_i8_{amx,avx512}/4096x4096/cache/threads:1 — the integer GEMM
// (gemm_rows on activations quantized once outside the loop) of M tokens on the AMX-INT8 tile path
// against lowbit's AVX-512 VNNI path, same process, M = 8 … 512 (ternary2, int4) and 128 (binary1).
#include "gemm_bench_util.hpp"

#include <benchmark/benchmark.h>

#include <initializer_list>
#include <string>

namespace {

template <class F>
void packed_gemm(benchmark::State& st, Eigen::Index tokens, Eigen::Index rows, Eigen::Index cols, int threads) {
    const auto w = lowbit_bench::random_packed<F>(rows, cols, 7);
    const lowbit::matrix_f x = lowbit_bench::random_activations(tokens, cols, 1);
    lowbit::matrix_f y(tokens, rows);
    lowbit_bench::thread_pair pool(threads);
    for (auto _ : st) {
        const double c0 = lowbit_bench::thread_pair::thread_cpu_us();
        const auto a = lowbit::quantize_activations(x, 8);
        const double serial = lowbit_bench::thread_pair::thread_cpu_us() - c0;
        pool.run(
            [&](int p, int np) {
                const auto [r0, r1] = lowbit_bench::part_rows(rows, p, np);
                lowbit::gemm_rows(w, a, r0, r1, y);
            },
            serial);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.counters["packed_bytes"] = double(w.bytes().size());
    if (threads == 2) {
        st.counters["worker_share"] = pool.worker_share(); // 1.0: the worker ran every part 1
        st.counters["part_cpu_us"] = pool.part_cpu_us();   // max thread CPU of the two halves, per call
    }
}

template <class F>
void packed_gemm_isa(benchmark::State& st, Eigen::Index tokens, Eigen::Index rows, Eigen::Index cols, lowbit::kernel_isa isa) {
    if (!lowbit::isa_available(isa)) {
        st.SkipWithError("ISA not available on this CPU");
        return;
    }
    const auto w = lowbit_bench::random_packed<F>(rows, cols, 7);
    const auto a = lowbit::quantize_activations(lowbit_bench::random_activations(tokens, cols, 1), 8);
    lowbit::matrix_f y(tokens, rows);
    for (auto _ : st) {
        lowbit::gemm_rows(w, a, 0, rows, y, isa);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.counters["packed_bytes"] = double(w.bytes().size());
    st.counters["gops"] = benchmark::Counter(2.0 * double(tokens * rows * cols), benchmark::Counter::kIsIterationInvariantRate,
                                             benchmark::Counter::kIs1000);
}

template <class F>
void register_prefill(const char* name, std::initializer_list<Eigen::Index> tokens) {
    for (Eigen::Index m : tokens)
        for (lowbit::kernel_isa isa : {lowbit::kernel_isa::avx512, lowbit::kernel_isa::amx})
            benchmark::RegisterBenchmark(("gemm" + std::to_string(m) + "/" + name + "_i8_" + lowbit::isa_name(isa) +
                                          "/4096x4096/cache/threads:1").c_str(),
                                         [=](benchmark::State& s) { packed_gemm_isa<F>(s, m, 4096, 4096, isa); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
}

const int registered = [] {
    benchmark::RegisterBenchmark("gemm128/eigen_fp32/4096x4096/cache/threads:1",
                                 [](benchmark::State& s) { lowbit_bench::eigen_fp32_gemm(s, 128, 4096, 4096); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    for (int t : {1, 2})
        benchmark::RegisterBenchmark(("gemm128/ternary2_i8/4096x4096/cache/threads:" + std::to_string(t)).c_str(),
                                     [=](benchmark::State& s) { packed_gemm<lowbit::ternary2>(s, 128, 4096, 4096, t); })
            ->Unit(benchmark::kMillisecond)->UseRealTime();
    // the other widths, 1 thread (peers of ggml's TQ1_0, Q4_0 and Q2_K in bench_ggml)
    benchmark::RegisterBenchmark("gemm128/ternary_base3_i8/4096x4096/cache/threads:1",
                                 [](benchmark::State& s) { packed_gemm<lowbit::ternary_base3>(s, 128, 4096, 4096, 1); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark("gemm128/int4_i8/4096x4096/cache/threads:1",
                                 [](benchmark::State& s) { packed_gemm<lowbit::int4>(s, 128, 4096, 4096, 1); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark("gemm128/int2_i8/4096x4096/cache/threads:1",
                                 [](benchmark::State& s) { packed_gemm<lowbit::int2>(s, 128, 4096, 4096, 1); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    register_prefill<lowbit::ternary2>("ternary2", {8, 16, 32, 64, 128, 256, 512});
    register_prefill<lowbit::int4>("int4", {8, 16, 32, 64, 128, 256, 512});
    register_prefill<lowbit::binary1>("binary1", {128});
    return 0;
}();

} // namespace
