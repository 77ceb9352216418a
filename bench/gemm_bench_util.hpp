#pragma once
// Shared helpers of bench_gemv.cpp and bench_gemm.cpp: random packed matrices, copies that cycle
// through DRAM, and a two-thread runner (one persistent worker) for the row-range API.
#include <lowbit/gemm.hpp>

#include "random_codes.hpp"

#include <atomic>
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

/// `n` independent copies of `w` (n = 1 for cache-resident cases, enough for dram_bytes otherwise).
template <class F>
std::vector<lowbit::packed_matrix<F>> copies(const lowbit::packed_matrix<F>& w, bool dram) {
    const std::size_t n = dram ? std::max<std::size_t>(2, dram_bytes / w.bytes().size() + 1) : 1;
    std::vector<lowbit::packed_matrix<F>> v;
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
/// worker (part 1; spins briefly, then sleeps in std::atomic::wait); returns when both are done.
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
        const int g = gen_.fetch_add(1) + 1;
        gen_.notify_one();
        job(0, 2);
        for (int spin = 0; done_.load(std::memory_order_acquire) != g; ++spin)
            if (spin > 4096) done_.wait(done_.load(std::memory_order_acquire));
    }

private:
    void loop() {
        int seen = 0;
        for (;;) {
            // spin briefly (the next call usually follows at once), then sleep on the futex
            for (int spin = 0; gen_.load(std::memory_order_acquire) == seen; ++spin)
                if (spin > 4096) gen_.wait(seen);
            seen = gen_.load();
            if (stop_.load()) return;
            (*job_)(1, 2);
            done_.store(seen, std::memory_order_release);
            done_.notify_one();
        }
    }
    int nparts_;
    std::thread worker_;
    std::atomic<int> gen_{0}, done_{0};
    std::atomic<bool> stop_{false};
    const std::function<void(int, int)>* job_ = nullptr;
};

/// Rows [begin, end) of part p of n (contiguous halves).
inline std::pair<Eigen::Index, Eigen::Index> part_rows(Eigen::Index rows, int p, int n) {
    const Eigen::Index h = (rows / n + 15) / 16 * 16;
    return {std::min(rows, h * p), p + 1 == n ? rows : std::min(rows, h * (p + 1))};
}

} // namespace lowbit_bench
