// Rotation learning (KOTMS, OKT) on one square layer at the factor sizes of the KOTMS rule:
// 512² → (8, 64), 4096² → (8, 512). Input: a Gaussian weight (σ = 0.02) with 8 outlier columns (×10),
// rotated by the randomised Hadamard first, as the recipes do (hadamard_first); the counters give the loss
// with the Hadamard only (`loss_hadamard`, the loss at identity factors) and after learning (`loss_learned`),
// both on every row of the layer, and the seconds per layer (`s_per_layer`, one learning run per iteration).
// Run (one core; docs/transforms.md "Learning time" has the figures and the machine's load):
//   cat /proc/loadavg
//   taskset -c 0 build-bench/bench/bench_rotation_learning --benchmark_filter='/512/|okt/4096/-1' --benchmark_repetitions=3
//   taskset -c 0 build-bench/bench/bench_rotation_learning --benchmark_filter='okt/4096/(1|3|6)/|kotms/4096/-1/-1'
#include <lowbit/hadamard.hpp>
#include <lowbit/kotms.hpp>
#include <lowbit/okt.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <string>

namespace {

lowbit::matrix_f hadamard_rotated_layer(Eigen::Index n) {
    std::mt19937_64 rng(7);
    std::normal_distribution<float> g(0.0f, 0.02f);
    lowbit::matrix_f w(n, n);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
    for (Eigen::Index k = 0; k < 8; ++k) w.col((k * 131 + 5) % n) *= 10.0f; // outlier input channels
    lowbit::hadamard_options ho;
    ho.randomized = true;
    ho.seed = 1;
    lowbit::hadamard_transform(n, ho).apply_rows(w);
    return w;
}

template <class Learn, class Loss>
void run(benchmark::State& st, Learn learn, Loss loss) {
    const Eigen::Index n = st.range(0);
    const lowbit::matrix_f w = hadamard_rotated_layer(n);
    lowbit::rotation_learning_result r;
    for (auto _ : st) {
        r = learn(w, static_cast<int>(st.range(1)));
        benchmark::DoNotOptimize(r.rotation.left.data());
    }
    const auto sz = r.rotation.sizes();
    st.SetLabel("l=" + std::to_string(sz.l) + " r=" + std::to_string(sz.r) + " steps=" +
                std::to_string(r.loss_history.size() - 1));
    // both on every row of the layer (the learner may fit a row sample; its own history is `loss_fit_*`)
    st.counters["loss_hadamard"] = loss(w, lowbit::kronecker_rotation::identity(sz));
    st.counters["loss_learned"] = loss(w, r.rotation);
    st.counters["loss_fit_first"] = r.loss_history.front();
    st.counters["loss_fit_last"] = r.loss_history.back();
    st.counters["s_per_layer"] = benchmark::Counter(static_cast<double>(st.iterations()),
                                                    benchmark::Counter::kIsIterationInvariantRate |
                                                        benchmark::Counter::kInvert);
}

// range(1): iterations (KOTMS) / EM rounds (OKT), −1 = the defaults; range(2) (optional): sample_entries,
// −1 = the default, 0 = every row.
void BM_learn_kotms(benchmark::State& st) {
    const std::int64_t sample = st.range(2);
    run(st, [sample](const lowbit::matrix_f& w, int steps) {
        lowbit::kotms_options o;
        if (steps >= 0) o.iters = steps;
        if (sample >= 0) o.sample_entries = sample;
        return lowbit::learn_kotms(w, o);
    }, [](const lowbit::matrix_f& w, const lowbit::kronecker_rotation& k) {
        return lowbit::kotms_loss(w, k.left.cast<double>(), k.right.cast<double>()).total;
    });
}
BENCHMARK(BM_learn_kotms)->Args({512, -1, -1})->Args({4096, -1, -1})->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_learn_okt(benchmark::State& st) {
    run(st, [](const lowbit::matrix_f& w, int steps) {
        lowbit::okt_options o;
        if (steps >= 0) o.rounds = steps;
        return lowbit::learn_okt(w, o);
    }, [](const lowbit::matrix_f& w, const lowbit::kronecker_rotation& k) {
        return lowbit::okt_loss(w, k.left.cast<double>(), k.right.cast<double>());
    });
}
BENCHMARK(BM_learn_okt)->Args({512, -1})->Args({4096, -1})->Unit(benchmark::kMillisecond)->Iterations(1);

// Row-sample sizes at 4096² (256, 1024 rows, every row): time against the loss on the whole layer.
BENCHMARK(BM_learn_kotms)->Args({4096, -1, 1 << 22})->Args({4096, 20, 0})->Unit(benchmark::kMillisecond)->Iterations(1);

// A few steps at 4096² (the cost per step, to extrapolate runs too long to repeat).
BENCHMARK(BM_learn_kotms)->Args({4096, 2, 0})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_learn_okt)->Args({4096, 1})->Args({4096, 3})->Args({4096, 6})->Unit(benchmark::kMillisecond)->Iterations(1);

} // namespace
