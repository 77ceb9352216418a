// thread_pool.hpp: every part runs exactly once per run(), exceptions reach the caller, idle workers
// that blocked wake up again, and gemm_parallel is bit-identical to the single-threaded gemm (the
// oracle) for every packed layout and MXFP4, with row counts that do not divide into the parts.
#include <lowbit/gemm.hpp>
#include <lowbit/thread_pool.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"
#include "random_codes.hpp"

#include <atomic>
#include <chrono>
#include <limits>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

using lowbit_test::gaussian;

TEST_CASE("thread_pool runs every part exactly once, also after idle workers blocked") {
    for (int threads : {1, 2, 3}) {
        CAPTURE(threads);
        // spin 0: workers block on the condition variable after every job (the wake-up path)
        for (auto spin : {std::chrono::microseconds(0), std::chrono::microseconds(500)}) {
            lowbit::thread_pool pool(threads, spin);
            CHECK(pool.size() == threads);
            for (int rep = 0; rep < 300; ++rep) {
                std::vector<std::atomic<int>> hits(static_cast<std::size_t>(threads));
                std::atomic<int> bad{0};
                pool.run([&](int p, int n) {
                    if (n != threads || p < 0 || p >= n) ++bad;
                    else ++hits[static_cast<std::size_t>(p)];
                });
                CHECK(bad.load() == 0);
                for (auto& h : hits) CHECK(h.load() == 1);
                if (rep % 100 == 99) std::this_thread::sleep_for(std::chrono::milliseconds(2)); // let workers block
            }
        }
    }
}

TEST_CASE("thread_pool rethrows a part's exception after all parts finished, and stays usable") {
    lowbit::thread_pool pool(2, std::chrono::microseconds(0));
    std::atomic<int> finished{0};
    CHECK_THROWS_AS(pool.run([&](int p, int) {
        if (p == 1) throw std::runtime_error("part 1");
        ++finished;
    }),
                    std::runtime_error);
    CHECK(finished.load() == 1);
    CHECK_THROWS_AS(pool.run([&](int p, int) {
        if (p == 0) throw lowbit::shape_error("part 0");
    }),
                    lowbit::shape_error);
    int ran = 0;
    pool.run([&](int p, int) { if (p == 0) ++ran; });
    CHECK(ran == 1);
    CHECK_THROWS_AS(lowbit::thread_pool(0), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::thread_pool(257), lowbit::invalid_argument);
}

TEST_CASE_TEMPLATE("gemm_parallel is bit-identical to gemm", F, lowbit::ternary2, lowbit::ternary_base3, lowbit::binary1,
                   lowbit::int4) {
    for (Eigen::Index rows : {1, 5, 70}) {
        const Eigen::Index cols = 300;
        const auto w = lowbit::pack<F>(lowbit_test::random_codes<F>(rows, cols, 5), lowbit::vector_f::Constant(rows, 0.03f),
                                       lowbit::vector_f::Constant(rows, 0.01f));
        const auto wi = lowbit::interleave(w);
        for (Eigen::Index tokens : {1, 3}) {
            const lowbit::matrix_f x = gaussian(tokens, cols, 7);
            for (int threads : {1, 2, 3}) {
                CAPTURE(rows);
                CAPTURE(threads);
                lowbit::thread_pool pool(threads);
                CHECK(lowbit::gemm_parallel(w, x, lowbit::act_int{8}, pool) == lowbit::gemm(w, x, lowbit::act_int{8}));
                CHECK(lowbit::gemm_parallel(wi, x, lowbit::act_int{6}, pool) == lowbit::gemm(wi, x, lowbit::act_int{6}));
            }
        }
    }
}

TEST_CASE("gemm_parallel on MXFP4 is bit-identical to gemm; errors reach the caller") {
    const Eigen::Index rows = 37, cols = 200, nb = (cols + 31) / 32;
    std::mt19937_64 rng(3);
    lowbit::detail::u8_matrix c(rows, cols), e(rows, nb);
    for (Eigen::Index i = 0; i < c.size(); ++i) c.data()[i] = static_cast<std::uint8_t>(rng() % 16);
    for (Eigen::Index i = 0; i < e.size(); ++i) e.data()[i] = static_cast<std::uint8_t>(120 + rng() % 10);
    const auto w = lowbit::pack_mxfp4<lowbit::mxfp4_ggml>(c, e);
    const lowbit::matrix_f x = gaussian(2, cols, 9);
    lowbit::thread_pool pool(2);
    CHECK(lowbit::gemm_parallel(w, x, lowbit::act_int{8}, pool) == lowbit::gemm(w, x, lowbit::act_int{8}));
    CHECK_THROWS_AS((void)lowbit::gemm_parallel(w, gaussian(2, cols + 1, 9), lowbit::act_int{8}, pool), lowbit::shape_error);
    lowbit::matrix_f bad = x;
    bad(1, 3) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::gemm_parallel(w, bad, lowbit::act_int{8}, pool), lowbit::numeric_error);
}

namespace {
/// A caller's own pool: runs the parts serially in reverse order (a PartRunner that is not lowbit's).
struct reverse_serial_runner {
    int parts = 3;
    int size() const { return parts; }
    template <class F>
    void run(const F& job) {
        for (int p = parts - 1; p >= 0; --p) job(p, parts);
    }
};
} // namespace

static_assert(lowbit::PartRunner<lowbit::thread_pool>);
static_assert(lowbit::PartRunner<reverse_serial_runner>);
static_assert(!lowbit::PartRunner<int>);

TEST_CASE("gemm_parallel runs on a caller's own PartRunner, bit-identical to gemm") {
    const Eigen::Index rows = 70, cols = 300;
    const auto w = lowbit::pack<lowbit::ternary2>(lowbit_test::random_codes<lowbit::ternary2>(rows, cols, 5),
                                                  lowbit::vector_f::Constant(rows, 0.03f), lowbit::vector_f::Constant(rows, 0.01f));
    const lowbit::matrix_f x = gaussian(3, cols, 7);
    for (int parts : {1, 4, 9}) {
        reverse_serial_runner runner{parts};
        CHECK(lowbit::gemm_parallel(w, x, lowbit::act_int{8}, runner) == lowbit::gemm(w, x, lowbit::act_int{8}));
    }
}
