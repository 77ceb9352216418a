// Tests for lowbit/bit_allocation.hpp. Oracle: brute-force enumeration of all K^L allocations for
// small layer counts; a hand-worked instance; the knapsack DP (independent code) against the chain DP at β = 0.
#include <lowbit/bit_allocation.hpp>

#include <doctest/doctest.h>

#include <limits>
#include <random>

namespace {


lowbit::chain_allocation_problem random_problem(int layers, std::uint64_t seed, double beta, int budget) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    lowbit::chain_allocation_problem p;
    p.bits = {2, 4, 6, 8};
    p.single.resize(layers, 4);
    for (int i = 0; i < layers; ++i) {
        // Decreasing in bits, zero at 8 (as ILA-AMP's Δ_i(8) = 0), noisy.
        p.single(i, 0) = 2.0 + u(rng);
        p.single(i, 1) = 0.5 + 0.5 * u(rng);
        p.single(i, 2) = 0.1 * u(rng);
        p.single(i, 3) = 0.0;
    }
    for (int i = 1; i < layers; ++i) {
        lowbit::matrix_d m(4, 4);
        for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) m(a, b) = (a == 3 || b == 3) ? 0.0 : 2.0 * (u(rng) - 0.3);
        p.pair.push_back(m);
    }
    p.beta = beta;
    p.budget = budget;
    return p;
}

double objective(const lowbit::chain_allocation_problem& p, const std::vector<int>& ch) {
    double c = 0;
    for (std::size_t i = 0; i < ch.size(); ++i) {
        c += p.single(static_cast<Eigen::Index>(i), ch[i]);
        if (i > 0 && !p.pair.empty()) c += p.beta * p.pair[i - 1](ch[i - 1], ch[i]);
    }
    return c;
}

double brute_force(const lowbit::chain_allocation_problem& p) {
    const int L = static_cast<int>(p.single.rows()), K = static_cast<int>(p.bits.size());
    long long total = 1;
    for (int i = 0; i < L; ++i) total *= K;
    double best = std::numeric_limits<double>::infinity();
    for (long long code = 0; code < total; ++code) {
        std::vector<int> ch(static_cast<std::size_t>(L));
        long long c = code;
        int used = 0;
        for (int i = 0; i < L; ++i) {
            ch[static_cast<std::size_t>(i)] = static_cast<int>(c % K);
            c /= K;
            used += p.bits[static_cast<std::size_t>(ch[static_cast<std::size_t>(i)])];
        }
        if (used <= p.budget) best = std::min(best, objective(p, ch));
    }
    return best;
}

} // namespace

TEST_CASE("chain DP equals brute-force enumeration") {
    for (int layers = 1; layers <= 6; ++layers)
        for (std::uint64_t seed = 0; seed < 8; ++seed)
            for (double beta : {0.0, 0.5, 2.0}) {
                const int budget = 4 * layers + static_cast<int>(seed % 3) * 2 - 2;
                if (budget < 2 * layers) continue;
                const auto p = random_problem(layers, seed * 31 + layers, beta, budget);
                const auto a = lowbit::allocate_bits_chain(p);
                CHECK(a.cost == doctest::Approx(brute_force(p)).epsilon(1e-12));
                CHECK(a.total_bits <= budget);
                CHECK(a.cost == doctest::Approx(objective(p, a.choice)).epsilon(1e-12));
                for (std::size_t i = 0; i < a.choice.size(); ++i) CHECK(a.bits[i] == p.bits[static_cast<std::size_t>(a.choice[i])]);
            }
}

TEST_CASE("chain DP at beta = 0 reduces to the knapsack") {
    for (int layers = 2; layers <= 12; layers += 2)
        for (std::uint64_t seed = 0; seed < 5; ++seed) {
            auto p = random_problem(layers, 100 + seed, 0.0, 4 * layers);
            const auto chain = lowbit::allocate_bits_chain(p);
            const auto knap = lowbit::allocate_bits_knapsack(p.bits, p.single, p.budget);
            CHECK(chain.cost == doctest::Approx(knap.cost).epsilon(1e-12));
            CHECK(knap.total_bits <= p.budget);
            // Without interaction matrices at all: same answer.
            p.pair.clear();
            CHECK(lowbit::allocate_bits_chain(p).cost == doctest::Approx(knap.cost).epsilon(1e-12));
        }
}

TEST_CASE("hand-worked instance: the interaction term changes the allocation") {
    // Two layers, bits {2, 4}, budget 6: one layer must take 2 bits.
    lowbit::chain_allocation_problem p;
    p.bits = {2, 4};
    p.single.resize(2, 2);
    p.single << 1.0, 0.0,   // layer 0: 2 bits costs 1.0
        1.1, 0.0;           // layer 1: 2 bits costs 1.1
    p.budget = 6;
    p.beta = 1.0;
    lowbit::matrix_d k(2, 2);
    k << 0.0, 0.5,   // (2, 4): +0.5
        0.0, 0.0;    // (4, 2): 0
    p.pair = {k};
    // Knapsack (β = 0): put 2 bits on layer 0 (1.0 < 1.1). With interaction: (2,4) costs 1.5, (4,2) 1.1.
    const auto knap = lowbit::allocate_bits_knapsack(p.bits, p.single, p.budget);
    CHECK(knap.bits == std::vector<int>{2, 4});
    CHECK(knap.cost == doctest::Approx(1.0));
    const auto chain = lowbit::allocate_bits_chain(p);
    CHECK(chain.bits == std::vector<int>{4, 2});
    CHECK(chain.cost == doctest::Approx(1.1));
    // interaction_terms: K = P − Δ_{i−1} − Δ_i.
    lowbit::matrix_d pd(2, 2);
    pd << 2.1, 1.5, 1.1, 0.0;
    const auto kk = lowbit::interaction_terms(p.single, {pd});
    CHECK(kk[0](0, 0) == doctest::Approx(0.0));
    CHECK(kk[0](0, 1) == doctest::Approx(0.5));
    CHECK(kk[0](1, 0) == doctest::Approx(0.0));
}

TEST_CASE("bit allocation bad input") {
    auto p = random_problem(3, 1, 0.5, 12);
    auto q = p;
    q.budget = 5; // < 3 × 2
    CHECK_THROWS_AS((void)lowbit::allocate_bits_chain(q), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::allocate_bits_chain(q), doctest::Contains("infeasible"));
    CHECK_THROWS_AS((void)lowbit::allocate_bits_knapsack(q.bits, q.single, q.budget), lowbit::invalid_argument);
    q = p;
    q.bits = {};
    CHECK_THROWS_AS((void)lowbit::allocate_bits_chain(q), lowbit::invalid_argument);
    q = p;
    q.bits = {0, 4, 6, 8};
    CHECK_THROWS_AS((void)lowbit::allocate_bits_chain(q), lowbit::invalid_argument);
    q = p;
    q.pair.pop_back();
    CHECK_THROWS_AS((void)lowbit::allocate_bits_chain(q), lowbit::shape_error);
    q = p;
    q.single(1, 1) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::allocate_bits_chain(q), lowbit::numeric_error);
    q = p;
    q.single.resize(0, 4);
    CHECK_THROWS_AS((void)lowbit::allocate_bits_chain(q), lowbit::shape_error);
    q = p;
    q.budget = -1;
    CHECK_THROWS_AS((void)lowbit::allocate_bits_chain(q), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::interaction_terms(p.single, {}), lowbit::shape_error);
}
