// Tests for lowbit/model/ila_amp.hpp. Oracles: an NLL function of known additive + adjacent-pair
// structure (tables and interactions must come back exactly), brute-force enumeration of every
// allocation with the objective evaluated from the NLL oracle itself (not from the tables), and on a
// tiny model NLLs computed independently: a freshly built model per allocation, forward pass, and
// log-softmax written out here.
#include <lowbit/model/ila_amp.hpp>
#include <lowbit/quantized_linear.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

// nll(bits) = c0 + Σ_i f[i][b_i] + Σ_{i≥1} g[i][b_{i−1}][b_i] + h·[b_0 ≠ 8 and b_2 ≠ 8] with f[i][8] = 0 and
// g = 0 whenever one of the pair is at 8; all values multiples of 1/64 (sums exact in double).
struct synthetic {
    int layers;
    std::vector<int> cand{2, 4, 6, 8};
    std::vector<std::map<int, double>> f;
    std::vector<std::map<std::pair<int, int>, double>> g;
    double c0 = 3.0, h = 0.0;
    int calls = 0;
    explicit synthetic(int L, unsigned seed, double h_ = 0.0) : layers(L), f(L), g(L), h(h_) {
        std::mt19937 rng(seed);
        std::uniform_int_distribution<int> d(-16, 256);
        for (int i = 0; i < L; ++i)
            for (int b : cand) {
                f[i][b] = b == 8 ? 0.0 : d(rng) / 64.0;
                for (int bp : cand) g[i][{bp, b}] = (i == 0 || b == 8 || bp == 8) ? 0.0 : (d(rng) - 120) / 64.0;
            }
    }
    double operator()(const std::vector<int>& bits) {
        ++calls;
        double v = c0;
        for (int i = 0; i < layers; ++i) v += f[i].at(bits[i]);
        for (int i = 1; i < layers; ++i) v += g[i].at({bits[i - 1], bits[i]});
        if (layers > 2 && bits[0] != 8 && bits[2] != 8) v += h;
        return v;
    }
};

} // namespace

TEST_CASE("tables from an NLL oracle: single and pair entries, interactions, evaluation count") {
    for (int L : {1, 2, 5}) {
        CAPTURE(L);
        synthetic s(L, 7u + static_cast<unsigned>(L));
        lowbit::ila_amp_options o;
        o.candidates = {8, 2, 6, 4}; // any order: sorted
        int lines = 0;
        o.progress = [&](const std::string& line) {
            ++lines;
            CHECK(line.starts_with("ila-amp NLL " + std::to_string(lines) + "/"));
        };
        const auto t = lowbit::ila_amp_measure(L, o, [&](const std::vector<int>& b) { return s(b); });
        CHECK(t.candidates == std::vector<int>{2, 4, 6, 8});
        CHECK(t.evaluations == 1 + 3 * L + 9 * (L - 1));
        CHECK(s.calls == t.evaluations);
        CHECK(lines == t.evaluations);
        CHECK(t.nll_base == s.c0);
        REQUIRE(t.single.rows() == L);
        REQUIRE(t.pair.size() == static_cast<std::size_t>(L - 1));
        for (int i = 0; i < L; ++i)
            for (int k = 0; k < 4; ++k) CHECK(t.single(i, k) == s.f[i][t.candidates[k]]);
        const auto K = lowbit::interaction_terms(t.single, t.pair);
        for (int i = 1; i < L; ++i)
            for (int a = 0; a < 4; ++a)
                for (int b = 0; b < 4; ++b) CHECK(K[i - 1](a, b) == s.g[i][{t.candidates[a], t.candidates[b]}]);
    }
    // refusals
    synthetic s(3, 1);
    auto nll = [&](const std::vector<int>& b) { return s(b); };
    lowbit::ila_amp_options bad;
    bad.candidates = {2, 4, 4, 8};
    CHECK_THROWS_WITH_AS((void)lowbit::ila_amp_measure(3, bad, nll), doctest::Contains("given twice"), lowbit::invalid_argument);
    bad.candidates = {1, 8};
    CHECK_THROWS_WITH_AS((void)lowbit::ila_amp_measure(3, bad, nll), doctest::Contains("2..8"), lowbit::invalid_argument);
    bad.candidates = {};
    CHECK_THROWS_AS((void)lowbit::ila_amp_measure(3, bad, nll), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ila_amp_measure(0, {}, nll), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ila_amp_measure(3, {}, {}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ila_amp_measure(3, {}, [](const std::vector<int>&) { return std::nan(""); }),
                    lowbit::numeric_error);
    const auto t = lowbit::ila_amp_measure(3, {}, nll);
    CHECK_THROWS_AS((void)lowbit::ila_amp_problem(t, 1.5, 0.5), lowbit::invalid_argument); // below the smallest
    CHECK_THROWS_AS((void)lowbit::ila_amp_problem(t, 8.5, 0.5), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ila_amp_problem(t, 4, -0.5), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ila_amp_problem(t, std::nan(""), 0.5), lowbit::invalid_argument);
}

TEST_CASE("tables -> problem -> allocation equals brute force over every allocation, objective from the oracle") {
    for (unsigned seed : {1u, 2u, 3u, 4u})
        for (double mean : {2.0, 3.4, 4.0, 5.5, 8.0})
            for (double beta : {0.0, 0.5, 1.0}) {
                CAPTURE(seed);
                CAPTURE(mean);
                CAPTURE(beta);
                const int L = 5;
                synthetic s(L, seed, 0.25); // h: a non-adjacent term the chain model ignores
                const auto t = lowbit::ila_amp_measure(L, {}, [&](const std::vector<int>& b) { return s(b); });
                const lowbit::chain_allocation_problem p = lowbit::ila_amp_problem(t, mean, beta);
                const int budget = static_cast<int>(std::floor(mean * L + 0.5));
                CHECK(p.budget == budget);
                const lowbit::bit_allocation a = lowbit::ila_amp_allocate(t, mean, beta);
                // brute force: Σ Δ_i + β Σ K_i with Δ and K computed from oracle calls on explicit allocations
                auto oracle = [&](const std::vector<int>& b) { return s(b) - s.c0; };
                auto objective = [&](const std::vector<int>& bits) {
                    double v = 0;
                    for (int i = 0; i < L; ++i) {
                        std::vector<int> one(L, 8);
                        one[i] = bits[i];
                        v += oracle(one);
                    }
                    for (int i = 1; i < L; ++i) {
                        std::vector<int> two(L, 8), a1(L, 8), a2(L, 8);
                        two[i - 1] = a1[i - 1] = bits[i - 1];
                        two[i] = a2[i] = bits[i];
                        v += beta * (oracle(two) - oracle(a1) - oracle(a2));
                    }
                    return v;
                };
                double best = std::numeric_limits<double>::infinity();
                std::vector<int> bits(L);
                for (int code = 0; code < 1024; ++code) {
                    int sum = 0;
                    for (int i = 0, c = code; i < L; ++i, c /= 4) sum += bits[i] = 2 + 2 * (c % 4);
                    if (sum > budget) continue;
                    best = std::min(best, objective(bits));
                }
                CHECK(a.total_bits <= budget);
                CHECK(a.cost == doctest::Approx(best).epsilon(1e-12));
                CHECK(objective(a.bits) == doctest::Approx(best).epsilon(1e-12));
            }
}

namespace {

// A tiny model whose linears are dense weights with int-b activations (quantize-dequantize), block
// by block at `bits`, built from scratch.
struct tiny {
    lowbit::llama_config c{32, 64, 3, 4, 2, 48, 33};
    std::vector<std::vector<lowbit::matrix_f>> w; // [layer][slot]
    lowbit::llama_model fp = lowbit::random_llama(c, 5);
    tiny() {
        std::mt19937_64 rng(11);
        std::normal_distribution<float> g(0.0f, 0.25f); // larger than random_llama's 0.02: visible NLL changes
        for (int l = 0; l < c.n_layers; ++l) {
            w.emplace_back();
            for (const auto& id : fp.block_linears(l)) {
                const auto& op = fp.linear(id);
                lowbit::matrix_f m(op.out_features(), op.in_features());
                for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
                w.back().push_back(m);
            }
        }
    }
    std::shared_ptr<const lowbit::linear_operator> op(int l, std::size_t s, int bits) const {
        return lowbit::make_linear(
            lowbit::quantized_linear<lowbit::dense_weights, lowbit::act_int>(lowbit::dense_weights{w[l][s]}, lowbit::act_int{bits}));
    }
    lowbit::llama_model model(const std::vector<int>& bits) const {
        lowbit::llama_model m = fp;
        for (int l = 0; l < c.n_layers; ++l) {
            const auto ids = m.block_linears(l);
            for (std::size_t s = 0; s < ids.size(); ++s) m.set_linear(ids[s], op(l, s, bits[l]));
        }
        return m;
    }
};

// Mean NLL of one BOS window over `toks` (all targets), written out here: log-softmax in double.
double direct_nll(const lowbit::llama_model& m, const std::vector<int>& toks) {
    std::vector<int> in{m.config.bos_token};
    in.insert(in.end(), toks.begin(), toks.end() - 1);
    lowbit::kv_cache cache(m.config);
    const lowbit::matrix_f logits = lowbit::forward(m, cache, in);
    double sum = 0;
    for (std::size_t t = 0; t < toks.size(); ++t) {
        const auto row = logits.row(static_cast<Eigen::Index>(t));
        double mx = -std::numeric_limits<double>::infinity();
        for (Eigen::Index j = 0; j < row.size(); ++j) mx = std::max(mx, static_cast<double>(row(j)));
        double z = 0;
        for (Eigen::Index j = 0; j < row.size(); ++j) z += std::exp(static_cast<double>(row(j)) - mx);
        sum += mx + std::log(z) - static_cast<double>(row(toks[t]));
    }
    return sum / static_cast<double>(toks.size());
}

} // namespace

TEST_CASE("model tables equal NLLs of freshly built models with explicitly set per-block bits") {
    const tiny T;
    std::mt19937 rng(3);
    std::vector<int> toks(32); // one window of seq_len − 1 tokens
    for (int& t : toks) t = static_cast<int>(rng() % 48);
    const std::vector<int> all8(3, 8);
    const lowbit::llama_model base = T.model(all8);
    int built = 0;
    const lowbit::ila_block_builder build = [&](int l, int bits) {
        ++built;
        std::vector<std::pair<lowbit::linear_id, std::shared_ptr<const lowbit::linear_operator>>> ops;
        const auto ids = base.block_linears(l);
        for (std::size_t s = 0; s < ids.size(); ++s) ops.emplace_back(ids[s], T.op(l, s, bits));
        return ops;
    };
    lowbit::ila_amp_options o;
    o.candidates = {2, 3, 8}; // 3-bit activations through the same path
    const auto t = lowbit::ila_amp_model_tables(base, build, toks, -1, 1, o);
    CHECK(t.evaluations == 1 + 2 * 3 + 4 * 2);
    CHECK(built == 2 * 3 + 2 * 4 * 2); // one block per single entry, two per pair entry
    const double nb = direct_nll(T.model(all8), toks);
    CHECK(t.nll_base == doctest::Approx(nb).epsilon(1e-13));
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k) {
            std::vector<int> bits = all8;
            bits[i] = t.candidates[k];
            CAPTURE(i);
            CAPTURE(k);
            CHECK(t.single(i, k) == doctest::Approx(direct_nll(T.model(bits), toks) - nb).epsilon(1e-12).scale(1e-3));
            if (k < 2) CHECK(std::abs(t.single(i, k)) > 1e-6); // the widths matter on this model
        }
    for (int i = 1; i < 3; ++i)
        for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) {
                std::vector<int> bits = all8;
                bits[i - 1] = t.candidates[a];
                bits[i] = t.candidates[b];
                CAPTURE(i);
                CAPTURE(a);
                CAPTURE(b);
                CHECK(t.pair[i - 1](a, b) == doctest::Approx(direct_nll(T.model(bits), toks) - nb).epsilon(1e-12).scale(1e-3));
            }
    // the base model is left as it was (every evaluation restores the blocks it changed)
    CHECK(direct_nll(base, toks) == doctest::Approx(nb).epsilon(1e-13));
    // the chosen allocation is the brute-force optimum of the measured objective
    const auto a = lowbit::ila_amp_allocate(t, 4.0, 0.5);
    CHECK(a.total_bits <= 12);
    const auto K = lowbit::interaction_terms(t.single, t.pair);
    double best = std::numeric_limits<double>::infinity();
    for (int c = 0; c < 27; ++c) {
        const int k[3] = {c % 3, c / 3 % 3, c / 9};
        if (t.candidates[k[0]] + t.candidates[k[1]] + t.candidates[k[2]] > 12) continue;
        best = std::min(best, t.single(0, k[0]) + t.single(1, k[1]) + t.single(2, k[2]) +
                                  0.5 * (K[0](k[0], k[1]) + K[1](k[1], k[2])));
    }
    CHECK(a.cost == doctest::Approx(best).epsilon(1e-12));
    // refusals
    CHECK_THROWS_AS((void)lowbit::ila_amp_model_tables(base, build, toks, -1, 0, o), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ila_amp_model_tables(base, {}, toks, -1, 1, o), lowbit::invalid_argument);
    const lowbit::ila_block_builder wrong = [&](int l, int bits) {
        auto ops = build((l + 1) % 3, bits);
        return ops;
    };
    CHECK_THROWS_WITH_AS((void)lowbit::ila_amp_model_tables(base, wrong, toks, -1, 1, o), doctest::Contains("another block"),
                         lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ila_amp_model_tables(base, build, std::vector<int>(5, 1), -1, 1, o), lowbit::shape_error);
}
