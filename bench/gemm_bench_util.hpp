#pragma once
// Shared helpers of bench_gemv.cpp, bench_gemm.cpp and bench_ggml.cpp: the Eigen FP32 baselines,
// random packed matrices, copies that cycle through DRAM, and a two-thread runner (one persistent
// worker) for the row-range API.
#include <lowbit/gemm.hpp>

#include "random_codes.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <cstdint>
#include <functional>
#include <random>
#include <thread>
#include <unistd.h>
#include <vector>

namespace lowbit_bench {

/// Bytes that a "dram" case cycles through: 256 MiB, or twice the last-level cache the CPU reports
/// (sysconf's L3 size; some server CPUs report 300 MiB and more), so that every call reads from DRAM.
inline std::size_t dram_bytes() {
    std::size_t bytes = std::size_t(256) << 20;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0 && 2 * static_cast<std::size_t>(l3) > bytes) bytes = 2 * static_cast<std::size_t>(l3);
#endif
    return bytes;
}

template <class F>
lowbit::packed_matrix<F> random_packed(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    return lowbit::pack<F>(lowbit_test::random_codes<F>(rows, cols, seed), lowbit::vector_f::Constant(rows, 0.01f));
}

/// `n` independent copies of `w` (packed_matrix or interleaved_matrix; n = 1 for cache-resident
/// cases, enough for dram_bytes() otherwise).
template <class M>
std::vector<M> copies(const M& w, bool dram) {
    const std::size_t n = dram ? std::max<std::size_t>(2, dram_bytes() / w.bytes().size() + 1) : 1;
    std::vector<M> v;
    v.reserve(n);
    for (std::size_t i = 0; i < n; ++i) v.emplace_back(w.rows(), w.cols(), w.bytes(), w.scale(), w.offset());
    return v;
}

inline lowbit::matrix_f random_activations(Eigen::Index tokens, Eigen::Index cols, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f x(tokens, cols);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = g(rng);
    return x;
}

/// Weight-only packed GEMM (GEMV for 1 token) with fp32 activations: gemm_into(w, x, act_fp32, y,
/// workspace, isa), one matrix ("cache") or cycling through >= dram_bytes() of copies ("dram").
/// Counters: packed_bytes, bits_per_weight.
template <class F>
void packed_gemm_f32(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, Eigen::Index tokens, bool dram,
                     lowbit::kernel_isa isa = lowbit::kernel_isa::automatic) {
    const auto w0 = random_packed<F>(rows, cols, 7);
    const auto w = copies(w0, dram);
    const lowbit::matrix_f x = random_activations(tokens, cols, 1);
    lowbit::gemm_workspace ws;
    lowbit::matrix_f y(tokens, rows);
    std::size_t k = 0;
    for (auto _ : st) {
        lowbit::gemm_into(w[k], x, lowbit::act_fp32{}, y, ws, isa);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % w.size();
    }
    st.counters["packed_bytes"] = double(w0.bytes().size());
    st.counters["bits_per_weight"] = w0.bits_per_weight();
}

/// `eigen_fp32_gemv`'s weights: one random matrix ("cache") or >= dram_bytes() of copies ("dram").
inline std::vector<lowbit::matrix_f> eigen_fp32_copies(Eigen::Index rows, Eigen::Index cols, bool dram) {
    const std::size_t n = dram ? std::max<std::size_t>(2, dram_bytes() / (sizeof(float) * rows * cols) + 1) : 1;
    return std::vector<lowbit::matrix_f>(n, lowbit::matrix_f::Random(rows, cols));
}

/// Baseline GEMV y = W·x with Eigen FP32, 1 thread: one matrix ("cache") or cycling through
/// >= dram_bytes() of copies ("dram"). Counter packed_bytes = the FP32 weight bytes.
inline void eigen_fp32_gemv(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, bool dram) {
    const std::vector<lowbit::matrix_f> w = eigen_fp32_copies(rows, cols, dram);
    const std::size_t n = w.size();
    const lowbit::vector_f x = random_activations(1, cols, 1).row(0).transpose();
    lowbit::vector_f y(rows);
    std::size_t k = 0;
    for (auto _ : st) {
        y.noalias() = w[k] * x;
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % n;
    }
    st.counters["packed_bytes"] = double(sizeof(float) * rows * cols);
}

/// Baseline GEMM Y = X·Wᵀ (tokens × cols activations) with Eigen FP32 SGEMM, 1 thread, weights in cache.
inline void eigen_fp32_gemm(benchmark::State& st, Eigen::Index tokens, Eigen::Index rows, Eigen::Index cols) {
    const lowbit::matrix_f w = lowbit::matrix_f::Random(rows, cols);
    const lowbit::matrix_f x = random_activations(tokens, cols, 1);
    lowbit::matrix_f y(tokens, rows);
    for (auto _ : st) {
        y.noalias() = x * w.transpose();
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.counters["packed_bytes"] = double(sizeof(float) * rows * cols);
}

/// Runs job(part, nparts) on the calling thread (part 0) and, for nparts = 2, part 1 on one
/// persistent worker; returns when both parts are done. The worker spins with a pause hint for up
/// to 2 ms, then polls every 100 µs with sleep_for (no futex wait/notify: a futex wake-up costs tens
/// of µs in this VM, more than a whole 4096² GEMV, and the previous runner, which slept in
/// std::atomic::wait, was found hung with both threads asleep). Part 1 is
/// claimed with a compare-exchange by whoever gets there first: when the caller finishes part 0
/// and the worker has not started (its core is taken by another process), the caller runs part 1
/// itself instead of waiting for a time slice. `worker_share()` reports the fraction of calls
/// whose part 1 the worker ran (1.0 = a true two-thread measurement).
class thread_pair {
public:
    explicit thread_pair(int nparts) : nparts_(nparts) {
        if (nparts_ == 2) worker_ = std::thread([this] { loop(); });
    }
    ~thread_pair() {
        if (nparts_ == 2) {
            stop_.store(true);
            gen_.fetch_add(1);
            worker_.join();
        }
    }
    /// `serial_cpu_us`: thread CPU time the caller spent on this call's serial part before run()
    /// (e.g. activation quantization), added to part_cpu_us().
    void run(const std::function<void(int, int)>& job, double serial_cpu_us = 0.0) {
        if (nparts_ == 1) return job(0, 1);
        job_ = &job;
        const int g = gen_.fetch_add(1) + 1;
        const double c0 = thread_cpu_us();
        job(0, 2);
        const double part0 = thread_cpu_us() - c0;
        ++calls_;
        int expected = g - 1;
        if (claim_.compare_exchange_strong(expected, g)) { // worker not started: run part 1 here
            job(1, 2);
            return;
        }
        ++worker_runs_;
        while (done_.load(std::memory_order_acquire) != g) pause();
        part_cpu_sum_ += serial_cpu_us + std::max(part0, worker_cpu_.load(std::memory_order_relaxed));
    }
    /// Fraction of run() calls whose part 1 ran on the worker thread.
    double worker_share() const { return calls_ ? double(worker_runs_) / double(calls_) : 1.0; }
    /// Over the calls the worker took part in: mean of serial_cpu_us + max(thread CPU µs of part 0
    /// on the caller, of part 1 on the worker) — the two-thread time the split gives when both
    /// threads have a core, unaffected by preemption (time off-core is not thread CPU time). 0 if none.
    double part_cpu_us() const { return worker_runs_ ? part_cpu_sum_ / double(worker_runs_) : 0.0; }
    /// CPU time of the calling thread in µs (CLOCK_THREAD_CPUTIME_ID).
    static double thread_cpu_us() noexcept {
        timespec t{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
        return double(t.tv_sec) * 1e6 + double(t.tv_nsec) * 1e-3;
    }

private:
    static constexpr auto spin_budget = std::chrono::microseconds(2000);
    static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    void loop() {
        int seen = 0;
        for (;;) {
            const auto t0 = std::chrono::steady_clock::now();
            for (int spin = 0; gen_.load(std::memory_order_acquire) == seen; ++spin) {
                pause();
                if ((spin & 255) == 255 && std::chrono::steady_clock::now() - t0 > spin_budget)
                    std::this_thread::sleep_for(std::chrono::microseconds(100));
            }
            seen = gen_.load(std::memory_order_acquire);
            if (stop_.load()) return;
            int expected = seen - 1;
            if (claim_.compare_exchange_strong(expected, seen)) {
                const double c0 = thread_cpu_us();
                (*job_)(1, 2);
                worker_cpu_.store(thread_cpu_us() - c0, std::memory_order_relaxed);
                done_.store(seen, std::memory_order_release);
            }
        }
    }
    int nparts_;
    std::thread worker_;
    std::atomic<int> gen_{0}, done_{0}, claim_{0};
    std::atomic<bool> stop_{false};
    const std::function<void(int, int)>* job_ = nullptr;
    long long calls_ = 0, worker_runs_ = 0;
    double part_cpu_sum_ = 0.0;
    std::atomic<double> worker_cpu_{0.0};
};

/// Rows [begin, end) of part p of n (contiguous halves).
inline std::pair<Eigen::Index, Eigen::Index> part_rows(Eigen::Index rows, int p, int n) {
    const Eigen::Index h = (rows / n + 15) / 16 * 16;
    return {std::min(rows, h * p), p + 1 == n ? rows : std::min(rows, h * (p + 1))};
}

/// The Eigen FP32 GEMV of `eigen_fp32_gemv` split in two row halves over a thread_pair (1 thread:
/// the plain GEMV): "dram" on 2 threads gives the two-thread read roof measured in the same process.
/// Counters: packed_bytes (FP32 weight bytes), worker_share and part_cpu_us for 2 threads.
inline void eigen_fp32_gemv_threads(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, bool dram, int threads) {
    if (threads == 1) return eigen_fp32_gemv(st, rows, cols, dram);
    const std::vector<lowbit::matrix_f> w = eigen_fp32_copies(rows, cols, dram);
    const std::size_t n = w.size();
    const lowbit::vector_f x = random_activations(1, cols, 1).row(0).transpose();
    lowbit::vector_f y(rows);
    thread_pair pool(threads);
    std::size_t k = 0;
    for (auto _ : st) {
        const lowbit::matrix_f& wk = w[k];
        pool.run([&](int p, int np) {
            const auto [r0, r1] = part_rows(rows, p, np);
            y.segment(r0, r1 - r0).noalias() = wk.middleRows(r0, r1 - r0) * x;
        });
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % n;
    }
    st.counters["packed_bytes"] = double(sizeof(float) * rows * cols);
    st.counters["worker_share"] = pool.worker_share();
    st.counters["part_cpu_us"] = pool.part_cpu_us();
}

} // namespace lowbit_bench
