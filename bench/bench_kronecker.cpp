// Kronecker rotation x ↦ x (Cᵀ ⊗ B) on a batch of activation rows versus the dense product with the same
// n×n matrix (Eigen FP32 GEMM), measured in the same run. Factor sizes from the KOTMS rule for a square
// layer: 1024 → (8, 128), 4096 → (8, 512).
// Run: bench_kronecker --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/kronecker.hpp>
#include <lowbit/orthogonal.hpp>

#include <benchmark/benchmark.h>

#include <random>

namespace {

constexpr Eigen::Index batch_rows = 16;

lowbit::matrix_f random_rows(Eigen::Index rows, Eigen::Index n) {
    std::mt19937_64 rng(1);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f m(rows, n);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
}

lowbit::kronecker_rotation make_rotation(Eigen::Index n) {
    const auto s = lowbit::kotms_factor_sizes(n, n);
    return {lowbit::random_orthogonal(s.l, 1).cast<float>(), lowbit::random_orthogonal(s.r, 2).cast<float>()};
}

void BM_kronecker_apply(benchmark::State& st) {
    const Eigen::Index n = st.range(0);
    const auto t = make_rotation(n);
    lowbit::matrix_f x = random_rows(batch_rows, n);
    for (auto _ : st) {
        t.apply_rows(x);
        benchmark::DoNotOptimize(x.data());
    }
    st.SetLabel("l=" + std::to_string(t.left.rows()) + " r=" + std::to_string(t.right.rows()));
    st.SetItemsProcessed(st.iterations() * batch_rows);
}
BENCHMARK(BM_kronecker_apply)->Arg(1024)->Arg(4096);

void BM_dense_eigen_baseline(benchmark::State& st) {
    const Eigen::Index n = st.range(0);
    const lowbit::matrix_f q = make_rotation(n).matrix().cast<float>();
    const lowbit::matrix_f x = random_rows(batch_rows, n);
    lowbit::matrix_f y(batch_rows, n);
    for (auto _ : st) {
        y.noalias() = x * q;
        benchmark::DoNotOptimize(y.data());
    }
    st.SetItemsProcessed(st.iterations() * batch_rows);
}
BENCHMARK(BM_dense_eigen_baseline)->Arg(1024)->Arg(4096);

} // namespace
