// FWHT and Hadamard-of-any-width throughput, one activation row at a time, with same-run baselines:
// the scalar radix-2 FWHT (std:: loop), the portable xsimd FWHT (compile-time batch width), a dense Eigen
// FP32 matrix-vector product with the same orthogonal matrix (n = 4096 only), and a copy of the row
// (memory roof). BM_fwht_normalized takes the run-time dispatched path (AVX-512 kernel when available;
// its label says which). Hadamard widths run under both construction policies (label = construction).
// Run: bench_hadamard --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/hadamard.hpp>

#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

namespace {

lowbit::matrix_f random_rows(Eigen::Index rows, Eigen::Index n) {
    std::mt19937_64 rng(1);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f m(rows, n);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
}

void BM_fwht_normalized(benchmark::State& st) { // lowbit xsimd FWHT, x ↦ x H/√n in place
    const auto n = static_cast<std::size_t>(st.range(0));
    std::vector<float> x(n, 1.0f);
    for (auto _ : st) {
        lowbit::fwht_inplace(std::span<float>(x), lowbit::hadamard_norm::orthonormal);
        benchmark::DoNotOptimize(x.data());
    }
    st.SetLabel(lowbit::detail::fwht_path<float>(n));
    st.SetItemsProcessed(st.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_fwht_normalized)->Arg(1024)->Arg(4096)->Arg(16384);

void BM_fwht_xsimd_baseline(benchmark::State& st) { // portable xsimd path, then the 1/√n scale
    const auto n = static_cast<std::size_t>(st.range(0));
    std::vector<float> x(n, 1.0f);
    const float s = 1.0f / std::sqrt(static_cast<float>(n));
    for (auto _ : st) {
        lowbit::detail::fwht_simd(x.data(), n);
        lowbit::detail::scale_inplace(x.data(), n, s);
        benchmark::DoNotOptimize(x.data());
    }
    st.SetItemsProcessed(st.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_fwht_xsimd_baseline)->Arg(1024)->Arg(4096)->Arg(16384);

void BM_fwht_scalar_baseline(benchmark::State& st) { // std:: loop radix-2, then the 1/√n scale
    const auto n = static_cast<std::size_t>(st.range(0));
    std::vector<float> x(n, 1.0f);
    const float s = 1.0f / std::sqrt(static_cast<float>(n));
    for (auto _ : st) {
        lowbit::detail::fwht_scalar(x.data(), n);
        for (auto& v : x) v *= s;
        benchmark::DoNotOptimize(x.data());
    }
    st.SetItemsProcessed(st.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_fwht_scalar_baseline)->Arg(1024)->Arg(4096)->Arg(16384);

void BM_hadamard_transform(benchmark::State& st) { // exact_first: FWHT blocks + dense K×K block
    const Eigen::Index n = st.range(0);
    const lowbit::hadamard_transform t(n, {.randomized = true, .seed = 1});
    lowbit::matrix_f x = random_rows(1, n);
    for (auto _ : st) {
        t.apply_rows(x);
        benchmark::DoNotOptimize(x.data());
    }
    st.SetLabel(t.info().describe());
    st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_hadamard_transform)->Arg(172)->Arg(344)->Arg(4096)->Arg(768)->Arg(3584)->Arg(11008)->Arg(13696)->Arg(14336);

void BM_hadamard_transform_bounded_cost(benchmark::State& st) { // dense block ≤ 64, else Sylvester windows
    const Eigen::Index n = st.range(0);
    const lowbit::hadamard_transform t(n, {.randomized = true, .seed = 1, .policy = lowbit::hadamard_policy::bounded_cost});
    lowbit::matrix_f x = random_rows(1, n);
    for (auto _ : st) {
        t.apply_rows(x);
        benchmark::DoNotOptimize(x.data());
    }
    st.SetLabel(t.info().describe());
    st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_hadamard_transform_bounded_cost)->Arg(1376)->Arg(4544)->Arg(11008)->Arg(13696)->Arg(29568);

void BM_dense_gemv_eigen_baseline(benchmark::State& st) { // y = x Q with the dense Q (Eigen FP32)
    const Eigen::Index n = st.range(0);
    const lowbit::matrix_f q = lowbit::hadamard_transform(n).matrix().cast<float>();
    const lowbit::matrix_f x = random_rows(1, n);
    lowbit::matrix_f y(1, n);
    for (auto _ : st) {
        y.noalias() = x * q;
        benchmark::DoNotOptimize(y.data());
    }
    st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_dense_gemv_eigen_baseline)->Arg(172)->Arg(344)->Arg(4096);

void BM_copy_baseline(benchmark::State& st) { // memory roof: read and write the row once
    const auto n = static_cast<std::size_t>(st.range(0));
    std::vector<float> a(n, 1.0f), b(n);
    for (auto _ : st) {
        std::memcpy(b.data(), a.data(), n * sizeof(float));
        benchmark::DoNotOptimize(b.data());
    }
    st.SetItemsProcessed(st.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_copy_baseline)->Arg(4096)->Arg(11008)->Arg(13696);

} // namespace
