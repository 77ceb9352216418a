#pragma once
// Shared helpers of bench_gemv.cpp and bench_gemm.cpp: random packed matrices, copies that cycle
// through DRAM, and a two-thread runner (one persistent worker) for the row-range API.
#include <lowbit/gemm.hpp>

#include "random_codes.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <thread>
#include <vector>

namespace lowbit_bench {

/// Bytes that a "dram" case cycles through (well above the 32 MiB L3).
inline constexpr std::size_t dram_bytes = std::size_t(256) << 20;

template <class F>
lowbit::packed_matrix<F> random_packed(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    return lowbit::pack<F>(lowbit_test::random_codes<F>(rows, cols, seed), lowbit::vector_f::Constant(rows, 0.01f));
}

/// `n` independent copies of `w` (packed_matrix or interleaved_matrix; n = 1 for cache-resident
/// cases, enough for dram_bytes otherwise).
template <class M>
std::vector<M> copies(const M& w, bool dram) {
    const std::size_t n = dram ? std::max<std::size_t>(2, dram_bytes / w.bytes().size() + 1) : 1;
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

/// Runs job(part, nparts) on the calling thread (part 0) and, for nparts = 2, on one persistent
/// worker (part 1); returns when both are done. Both sides wait by spinning with a pause hint for
/// up to 2 ms (the caller then yields, the worker sleeps in std::atomic::wait and is woken only if
/// it went to sleep), so back-to-back calls never pay a futex round trip.
class thread_pair {
public:
    explicit thread_pair(int nparts) : nparts_(nparts) {
        if (nparts_ == 2) worker_ = std::thread([this] { loop(); });
    }
    ~thread_pair() {
        if (nparts_ == 2) {
            stop_.store(true);
            gen_.fetch_add(1);
            gen_.notify_one();
            worker_.join();
        }
    }
    void run(const std::function<void(int, int)>& job) {
        if (nparts_ == 1) return job(0, 1);
        job_ = &job;
        const int g = gen_.fetch_add(1) + 1; // seq_cst with the worker's sleeping_/gen_ pair (Dekker)
        if (sleeping_.load()) gen_.notify_one(); // only pay the futex wake when the worker sleeps
        job(0, 2);
        wait_until(done_, g);
    }

private:
    /// Spin (with a pause hint) for up to spin_budget before sleeping on the futex: in this VM a
    /// futex wake-up costs tens of µs, more than a whole 4096² GEMV on one core.
    static constexpr auto spin_budget = std::chrono::microseconds(2000);
    static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    void wait_until(std::atomic<int>& a, int value) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int spin = 0; a.load(std::memory_order_acquire) != value; ++spin) {
            pause();
            if ((spin & 255) == 255 && std::chrono::steady_clock::now() - t0 > spin_budget) {
                std::this_thread::yield();
            }
        }
    }
    void loop() {
        int seen = 0;
        for (;;) {
            // spin (pause hint) for up to spin_budget: the next call usually follows at once; then sleep on the futex
            const auto t0 = std::chrono::steady_clock::now();
            for (int spin = 0; gen_.load(std::memory_order_acquire) == seen; ++spin) {
                pause();
                if ((spin & 255) == 255 && std::chrono::steady_clock::now() - t0 > spin_budget) {
                    sleeping_.store(true);
                    if (gen_.load() == seen) gen_.wait(seen);
                    sleeping_.store(false);
                }
            }
            seen = gen_.load(std::memory_order_acquire);
            if (stop_.load()) return;
            (*job_)(1, 2);
            done_.store(seen, std::memory_order_release);
        }
    }
    int nparts_;
    std::thread worker_;
    std::atomic<int> gen_{0}, done_{0};
    std::atomic<bool> stop_{false}, sleeping_{false};
    const std::function<void(int, int)>* job_ = nullptr;
};

/// Rows [begin, end) of part p of n (contiguous halves).
inline std::pair<Eigen::Index, Eigen::Index> part_rows(Eigen::Index rows, int p, int n) {
    const Eigen::Index h = (rows / n + 15) / 16 * 16;
    return {std::min(rows, h * p), p + 1 == n ? rows : std::min(rows, h * (p + 1))};
}

} // namespace lowbit_bench
