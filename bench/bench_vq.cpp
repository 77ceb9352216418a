// Nearest-codeword encode throughput (items = 8-dim vectors, so items_per_second is vectors/s) of
// 65536 vectors against K = 256 and 4096 centroids. Baselines measured in the same run on the same
// data: a plain std:: scalar loop computing every squared distance in float (the brute force
// lowbit's blocked-GEMM encode replaces), and the bare blocked Eigen FP32 GEMM X·Cᵀ with the same
// blocking (the arithmetic roof: lowbit's encode does this GEMM in double plus the argmin scan).
// Run: bench_vq --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/vq.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <limits>
#include <random>
#include <vector>

namespace {

constexpr Eigen::Index n_vec = 65536, dim = 8;

lowbit::matrix_f gaussian(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
}

const lowbit::matrix_f& points() {
    static const lowbit::matrix_f p = gaussian(n_vec, dim, 1);
    return p;
}
const lowbit::matrix_f& hdiag() {
    static const lowbit::matrix_f h = gaussian(n_vec, dim, 3).cwiseAbs();
    return h;
}

void BM_scalar_loop_baseline(benchmark::State& state) {
    const auto& p = points();
    const lowbit::matrix_f c = gaussian(state.range(0), dim, 2);
    std::vector<std::uint32_t> codes(n_vec);
    for (auto _ : state) {
        for (Eigen::Index i = 0; i < n_vec; ++i) {
            float best = std::numeric_limits<float>::infinity();
            std::uint32_t arg = 0;
            for (Eigen::Index k = 0; k < c.rows(); ++k) {
                float d = 0;
                for (Eigen::Index j = 0; j < dim; ++j) {
                    const float t = p(i, j) - c(k, j);
                    d += t * t;
                }
                if (d < best) {
                    best = d;
                    arg = static_cast<std::uint32_t>(k);
                }
            }
            codes[static_cast<std::size_t>(i)] = arg;
        }
        benchmark::DoNotOptimize(codes.data());
    }
    state.SetItemsProcessed(state.iterations() * n_vec);
}
void BM_eigen_gemm_f32_roof(benchmark::State& state) {
    const auto& p = points();
    const lowbit::matrix_f c = gaussian(state.range(0), dim, 2);
    const Eigen::MatrixXf ct = c.transpose();
    const Eigen::Index chunk = std::max<Eigen::Index>(16, 65536 / c.rows()); // same blocking as vq_encode
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> d;
    for (auto _ : state) {
        for (Eigen::Index s = 0; s < n_vec; s += chunk) {
            d.noalias() = p.middleRows(s, std::min(chunk, n_vec - s)) * ct;
            benchmark::DoNotOptimize(d.data());
        }
    }
    state.SetItemsProcessed(state.iterations() * n_vec);
}
void BM_vq_encode(benchmark::State& state) {
    const lowbit::matrix_f c = gaussian(state.range(0), dim, 2);
    for (auto _ : state) {
        auto codes = lowbit::vq_encode(points(), c);
        benchmark::DoNotOptimize(codes.data());
    }
    state.SetItemsProcessed(state.iterations() * n_vec);
}
void BM_vq_encode_weighted(benchmark::State& state) {
    const lowbit::matrix_f c = gaussian(state.range(0), dim, 2);
    for (auto _ : state) {
        auto codes = lowbit::vq_encode(points(), c, hdiag());
        benchmark::DoNotOptimize(codes.data());
    }
    state.SetItemsProcessed(state.iterations() * n_vec);
}
void BM_kmeans_iteration(benchmark::State& state) {
    // One k-means++ seeding + 1 Lloyd iteration on 65536 vectors.
    for (auto _ : state) {
        auto r = lowbit::weighted_kmeans(points(), lowbit::matrix_f(), {state.range(0), 1, 0});
        benchmark::DoNotOptimize(r.centroids.data());
    }
    state.SetItemsProcessed(state.iterations() * n_vec);
}

} // namespace

BENCHMARK(BM_scalar_loop_baseline)->Arg(256)->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_eigen_gemm_f32_roof)->Arg(256)->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_vq_encode)->Arg(256)->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_vq_encode_weighted)->Arg(256)->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_kmeans_iteration)->Arg(256)->Unit(benchmark::kMillisecond);
