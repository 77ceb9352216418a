#pragma once
/// \file thread_pool.hpp
/// Optional multi-threading for the packed kernels: a `thread_pool` that the caller constructs and
/// owns. It models `PartRunner` (concepts.hpp), so `gemm_parallel(w, x, act, pool)` (gemm.hpp)
/// splits the output rows of one GEMV/GEMM over it. This header does not include the kernels (and
/// gemm.hpp does not include this one): each costs only its own compile time.
///
/// No hidden threads: lowbit never starts a thread by itself. A `thread_pool(n)` starts n − 1 worker
/// threads in its constructor and joins them in its destructor; the thread calling `run` does part 0.
/// Workers that find no work spin (with a pause hint) for `spin` after each job — back-to-back
/// kernel calls, as in token-by-token decoding, then start without a sleep/wake round trip — and
/// then block on a condition variable (no CPU used while idle).
///
/// gemm_parallel over a pool is bit-identical to the single-threaded gemm: each output row is computed by exactly
/// one part, with the same kernel and ISA path.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// A fixed set of worker threads for `run(job)`: job(p, n) for every part p < n = size(), part 0
/// on the calling thread. Thread-safe: concurrent `run` calls from several threads are serialised.
/// Not reentrant: a job must not call `run` on the same pool (it would deadlock).
class thread_pool {
public:
    /// Starts `threads − 1` workers (threads ≥ 1; 1 = everything on the caller, no thread started).
    /// `spin`: how long an idle worker polls before it blocks.
    /// \throws invalid_argument (threads < 1 or > 256), std::system_error (thread creation failed).
    explicit thread_pool(int threads, std::chrono::microseconds spin = std::chrono::microseconds(500)) : spin_(spin) {
        detail::require(threads >= 1 && threads <= 256, "thread_pool", [&] {
            return "argument 'threads' must be in [1, 256], got " + std::to_string(threads);
        });
        workers_.reserve(static_cast<std::size_t>(threads - 1));
        try {
            for (int p = 1; p < threads; ++p) workers_.emplace_back([this, p] { loop(p); });
        } catch (...) {
            shutdown();
            throw;
        }
    }
    thread_pool(const thread_pool&) = delete;            ///< not copyable
    thread_pool& operator=(const thread_pool&) = delete; ///< not assignable
    /// Joins the workers (waits for a running job to finish first).
    ~thread_pool() { shutdown(); }

    /// Threads that run parts: workers + the caller.
    [[nodiscard]] int size() const noexcept { return static_cast<int>(workers_.size()) + 1; }

    /// Runs job(p, size()) for p = 0 … size() − 1 (part 0 here, the others on the workers) and
    /// returns when all parts have finished. If parts throw, the first exception caught is rethrown
    /// after every part has finished.
    void run(const std::function<void(int, int)>& job) {
        std::lock_guard<std::mutex> serial(run_mutex_);
        const int n = size();
        error_ = nullptr;
        if (n > 1) {
            job_ = &job;
            pending_.store(n - 1, std::memory_order_relaxed);
            {
                std::lock_guard<std::mutex> lock(mutex_);
                generation_.fetch_add(1, std::memory_order_release);
            }
            wake_.notify_all();
        }
        run_part(job, 0, n);
        if (n > 1) {
            for (std::uint32_t spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
                pause();
                if (spin > 4096) std::this_thread::yield();
            }
            job_ = nullptr;
        }
        if (error_) std::rethrow_exception(error_);
    }

private:
    static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
    }

    void run_part(const std::function<void(int, int)>& job, int p, int n) noexcept {
        try {
            job(p, n);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex_);
            if (!error_) error_ = std::current_exception();
        }
    }

    void loop(int p) {
        std::uint64_t seen = 0;
        for (;;) {
            // spin for a new generation, then block
            const auto t0 = std::chrono::steady_clock::now();
            std::uint32_t spin = 0;
            while (generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_acquire)) {
                pause();
                if ((++spin & 255u) == 0 && std::chrono::steady_clock::now() - t0 > spin_) {
                    std::unique_lock<std::mutex> lock(mutex_);
                    wake_.wait(lock, [&] {
                        return generation_.load(std::memory_order_acquire) != seen || stop_.load(std::memory_order_acquire);
                    });
                    break;
                }
            }
            if (stop_.load(std::memory_order_acquire)) return;
            seen = generation_.load(std::memory_order_acquire);
            run_part(*job_, p, size());
            pending_.fetch_sub(1, std::memory_order_acq_rel);
        }
    }

    void shutdown() noexcept {
        {
            std::lock_guard<std::mutex> serial(run_mutex_);
            std::lock_guard<std::mutex> lock(mutex_);
            stop_.store(true, std::memory_order_release);
        }
        wake_.notify_all();
        for (auto& t : workers_)
            if (t.joinable()) t.join();
        workers_.clear();
    }

    std::chrono::microseconds spin_;
    std::vector<std::thread> workers_;
    std::mutex run_mutex_, mutex_, error_mutex_;
    std::condition_variable wake_;
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
    const std::function<void(int, int)>* job_ = nullptr;
    std::exception_ptr error_;
};

LOWBIT_END_NAMESPACE
