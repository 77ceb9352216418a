// Kronecker rotation x ↦ x (Cᵀ ⊗ B) on a batch of activation rows versus, in the same run: the dense
// product with the same n×n matrix (Eigen FP32 GEMM), the same two-factor product as plain scalar loops,
// and a copy of the batch (memory roof). Factor sizes from the KOTMS rule for a square
// layer: 1024 → (8, 128), 4096 → (8, 512).
// Run: bench_kronecker --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/kronecker.hpp>
#include <lowbit/orthogonal.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <vector>

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

void BM_kronecker_scalar_loop_baseline(benchmark::State& st) { // C·M·B per row with std:: loops
    const Eigen::Index n = st.range(0);
    const auto t = make_rotation(n);
    const Eigen::Index l = t.left.rows(), r = t.right.rows();
    lowbit::matrix_f x = random_rows(batch_rows, n);
    std::vector<float> mb(static_cast<std::size_t>(n));
    for (auto _ : st) {
        for (Eigen::Index row = 0; row < batch_rows; ++row) {
            float* m = x.data() + row * n;
            for (Eigen::Index i = 0; i < l; ++i) // (M·B)_ij = Σ_k M_ik B_kj
                for (Eigen::Index j = 0; j < r; ++j) {
                    float acc = 0;
                    for (Eigen::Index k = 0; k < r; ++k) acc += m[i * r + k] * t.right(k, j);
                    mb[static_cast<std::size_t>(i * r + j)] = acc;
                }
            for (Eigen::Index i = 0; i < l; ++i) // (C·MB)_ij = Σ_k C_ik (MB)_kj
                for (Eigen::Index j = 0; j < r; ++j) {
                    float acc = 0;
                    for (Eigen::Index k = 0; k < l; ++k) acc += t.left(i, k) * mb[static_cast<std::size_t>(k * r + j)];
                    m[i * r + j] = acc;
                }
        }
        benchmark::DoNotOptimize(x.data());
    }
    st.SetItemsProcessed(st.iterations() * batch_rows);
}
BENCHMARK(BM_kronecker_scalar_loop_baseline)->Arg(1024)->Arg(4096);

void BM_copy_baseline(benchmark::State& st) { // memory roof: read and write the batch once
    const Eigen::Index n = st.range(0);
    const lowbit::matrix_f a = random_rows(batch_rows, n);
    lowbit::matrix_f b(batch_rows, n);
    for (auto _ : st) {
        b = a;
        benchmark::DoNotOptimize(b.data());
    }
    st.SetItemsProcessed(st.iterations() * batch_rows);
}
BENCHMARK(BM_copy_baseline)->Arg(1024)->Arg(4096);

} // namespace
