// Rotation learning (KOTMS, OKT) on one layer at the factor sizes of the KOTMS rule:
// 512² → (8, 64), 4096² → (8, 512), 4096×11008 → (16, 688). Input: a Gaussian weight (σ = 0.02) with 8
// outlier columns (×10), rotated by the randomised Hadamard first, as the recipes do (hadamard_first); the
// counters give the loss with the Hadamard only (`loss_hadamard`, the loss at identity factors) and after
// learning (`loss_learned`), both on every row of the layer by the double-precision reference
// (`kotms_loss`, `okt_loss`), and the seconds per layer (`s_per_layer`, one learning run per iteration).
// Run (one core; docs/transforms.md "Learning time" has the figures and the machine's load):
//   cat /proc/loadavg
//   taskset -c 0 build-bench/bench/bench_rotation_learning --benchmark_filter='/512/' --benchmark_repetitions=3
//   taskset -c 0 build-bench/bench/bench_rotation_learning --benchmark_filter='/4096/|rect'
#include <lowbit/hadamard.hpp>
#include <lowbit/kotms.hpp>
#include <lowbit/okt.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <string>

namespace {

lowbit::matrix_f hadamard_rotated_layer(Eigen::Index m, Eigen::Index n) {
    std::mt19937_64 rng(7);
    std::normal_distribution<float> g(0.0f, 0.02f);
    lowbit::matrix_f w(m, n);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
    for (Eigen::Index k = 0; k < 8; ++k) w.col((k * 131 + 5) % n) *= 10.0f; // outlier input channels
    lowbit::hadamard_options ho;
    ho.randomized = true;
    ho.seed = 1;
    lowbit::hadamard_transform(n, ho).apply_rows(w);
    return w;
}

template <class Learn, class Loss>
void run(benchmark::State& st, Eigen::Index m, Eigen::Index n, Learn learn, Loss loss) {
    const lowbit::matrix_f w = hadamard_rotated_layer(m, n);
    lowbit::rotation_learning_result r;
    for (auto _ : st) {
        r = learn(w);
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

double kotms_total(const lowbit::matrix_f& w, const lowbit::kronecker_rotation& k) {
    return lowbit::kotms_loss(w, k.left.cast<double>(), k.right.cast<double>()).total;
}
double okt_value(const lowbit::matrix_f& w, const lowbit::kronecker_rotation& k) {
    return lowbit::okt_loss(w, k.left.cast<double>(), k.right.cast<double>());
}

// KOTMS, Adam (the published optimiser). range(0): n (square layer); range(1): steps, −1 = the default
// (100); range(2): sample_entries, −1 = the default (every row); range(3): batch_entries in units of 2¹⁶
// (mini-batch Adam), ≤ 0 = full batch (the default).
void BM_learn_kotms(benchmark::State& st) {
    const std::int64_t steps = st.range(1), sample = st.range(2), batch = st.range(3);
    run(st, st.range(0), st.range(0), [=](const lowbit::matrix_f& w) {
        lowbit::kotms_options o;
        if (steps >= 0) o.iters = static_cast<int>(steps);
        if (sample >= 0) o.sample_entries = sample;
        if (batch >= 0) o.batch_entries = batch << 16;
        return lowbit::learn_kotms(w, o);
    }, kotms_total);
}
BENCHMARK(BM_learn_kotms)->Args({512, -1, -1, -1})->Args({4096, -1, -1, -1})->Unit(benchmark::kMillisecond)->Iterations(1);
// 4096², mini-batch Adam: 100 steps over 16 batches (2²⁰ weights each) and 8 (2²¹); 50 and 40 steps over 4 (2²²).
BENCHMARK(BM_learn_kotms)->Args({4096, -1, -1, 16})->Args({4096, -1, -1, 32})->Args({4096, 50, -1, 64})->Args({4096, 40, -1, 64})->Unit(benchmark::kMillisecond)->Iterations(1);
// A few steps at 4096² (the cost per step), full batch.
BENCHMARK(BM_learn_kotms)->Args({4096, 2, 0, 0})->Args({4096, 12, 0, 0})->Unit(benchmark::kMillisecond)->Iterations(1);

// KOTMS as the recipes run it (`kotms_layer_options`): published full-batch Adam up to 2²¹ weights,
// stochastic Procrustes EM above (4096²: 24 rounds over 4 row batches).
void BM_learn_kotms_layer(benchmark::State& st) {
    run(st, st.range(0), st.range(0), [](const lowbit::matrix_f& w) {
        return lowbit::learn_kotms(w, lowbit::kotms_layer_options(w.rows(), w.cols()));
    }, kotms_total);
}
BENCHMARK(BM_learn_kotms_layer)->Arg(512)->Arg(4096)->Unit(benchmark::kMillisecond)->Iterations(1);

// KOTMS, Procrustes EM (opt-in `kotms_method::procrustes_em`, ω = 1.8). range(1): rounds; range(2):
// batch_entries in units of 2¹⁶ (stochastic EM), 0 = full batch.
void BM_learn_kotms_em(benchmark::State& st) {
    const std::int64_t rounds = st.range(1), batch = st.range(2);
    run(st, st.range(0), st.range(0), [=](const lowbit::matrix_f& w) {
        lowbit::kotms_options o;
        o.method = lowbit::kotms_method::procrustes_em;
        o.iters = static_cast<int>(rounds);
        o.batch_entries = batch << 16;
        return lowbit::learn_kotms(w, o);
    }, kotms_total);
}
// 4096², stochastic EM: 24 rounds over 4 batches (2²² weights, the recipes' setting), 12 over 4, 30 over 2.
BENCHMARK(BM_learn_kotms_em)->Args({4096, 24, 64})->Args({4096, 12, 64})->Args({4096, 30, 128})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_learn_kotms_em)->Args({512, 50, 0})->Args({512, 100, 0})->Args({4096, 12, 0})->Args({4096, 30, 0})->Args({4096, 100, 0})->Unit(benchmark::kMillisecond)->Iterations(1);

// OKT. range(1): rounds, −1 = the default (10, tolerance 1e-3); range(2): relaxation ω × 10, −1 = the
// default (1.8); 10 = plain EM.
void BM_learn_okt(benchmark::State& st) {
    const std::int64_t rounds = st.range(1), om = st.range(2);
    run(st, st.range(0), st.range(0), [=](const lowbit::matrix_f& w) {
        lowbit::okt_options o;
        if (rounds >= 0) o.rounds = static_cast<int>(rounds);
        if (om >= 0) o.relaxation = static_cast<double>(om) / 10.0;
        return lowbit::learn_okt(w, o);
    }, okt_value);
}
BENCHMARK(BM_learn_okt)->Args({512, -1, -1})->Args({4096, -1, -1})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_learn_okt)->Args({4096, 25, -1})->Args({4096, 25, 10})->Unit(benchmark::kMillisecond)->Iterations(1);

// OKT on a 4096×11008 layer (an FFN's down projection, in-features 11008): factors (16, 688).
void BM_learn_okt_rect(benchmark::State& st) {
    run(st, 4096, 11008, [](const lowbit::matrix_f& w) { return lowbit::learn_okt(w); }, okt_value);
}
BENCHMARK(BM_learn_okt_rect)->Unit(benchmark::kMillisecond)->Iterations(1);

} // namespace
