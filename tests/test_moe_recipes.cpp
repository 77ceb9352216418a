// Tests for lowbit/model/moe_recipes.hpp. Oracles: GPTQ on the plain Hessian (AGQ with uniform
// affinities must give the same codes bit for bit); a model written and read back through
// safetensors (bit-identical logits and records); routing of the float model recomputed here by a
// brute-force sort of the router logits (top-2 agreement, expert usage σ of EBSS).
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/moe_recipes.hpp>

#include <doctest/doctest.h>

#include "models.hpp"
#include "real_moe.hpp"
#include "small_moe.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>
#include <vector>

namespace {

using lowbit_test::random_tokens;
using lowbit_test::same_record;

lowbit::matrix_f rnd(Eigen::Index r, Eigen::Index c, std::mt19937_64& rng, float sd) {
    return lowbit_test::normal_matrix(r, c, rng, sd);
}

// Brute-force top-k expert sets of router logits (sort by logit: softmax is monotone).
std::set<int> top_set(const float* z, int E, int k) {
    std::vector<int> idx(static_cast<std::size_t>(E));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return z[a] > z[b]; });
    return {idx.begin(), idx.begin() + k};
}

// Expert-usage σ (mean over layers of the sample std of routed fractions), computed here.
double usage_sigma(const lowbit::llama_model& m, std::span<const int> toks, int window) {
    const int E = m.config.n_experts, K = m.config.n_experts_per_token;
    std::vector<std::vector<double>> cnt(static_cast<std::size_t>(m.config.n_layers), std::vector<double>(static_cast<std::size_t>(E)));
    lowbit::forward_hooks h;
    h.on_router_logits = [&](int l, const lowbit::matrix_f& z) {
        for (Eigen::Index t = 0; t < z.rows(); ++t)
            for (int e : top_set(z.row(t).data(), E, K)) cnt[static_cast<std::size_t>(l)][static_cast<std::size_t>(e)] += 1;
    };
    lowbit::capture_linear_inputs(m, toks, h, window);
    double s = 0;
    for (const auto& c : cnt) {
        const double tot = std::accumulate(c.begin(), c.end(), 0.0), mean = 1.0 / E;
        double ss = 0;
        for (double v : c) ss += (v / tot - mean) * (v / tot - mean);
        s += std::sqrt(ss / (E - 1));
    }
    return s / static_cast<double>(cnt.size());
}

} // namespace

TEST_CASE("AGQ with uniform affinities equals GPTQ (Hessian scaled by a power of two: identical codes)") {
    std::mt19937_64 rng(3);
    const lowbit::matrix_f w = rnd(24, 64, rng, 0.5f);
    const lowbit::matrix_f x = rnd(300, 64, rng, 1.0f) * (lowbit::matrix_f::Identity(64, 64) + rnd(64, 64, rng, 0.2f));
    lowbit::gptq_hessian plain(64), agq(64);
    plain.add(x);
    agq.add(x, lowbit::vector_f::Constant(300, 0.25f));
    REQUIRE((agq.matrix() - 0.25 * plain.matrix()).cwiseAbs().maxCoeff() <= 1e-12 * plain.matrix().cwiseAbs().maxCoeff());
    for (int bits : {2, 3, 4}) {
        lowbit::moe_quant_config c;
        c.bits = bits;
        const auto a = lowbit::detail::quantize_grid_record(w, &plain.matrix(), c);
        const auto b = lowbit::detail::quantize_grid_record(w, &agq.matrix(), c);
        CHECK(same_record(a, b));
    }
}

TEST_CASE("quantize_moe: AGQ equals plain GPTQ when every gate is 1 (top-1, renormalised); AGQ differs at top-2") {
    const auto toks = random_tokens(128, 40, 1);
    lowbit::moe_quant_config c;
    c.bits = 3;
    c.calib_window = 64;
    auto run = [&](const lowbit::llama_model& m, bool agq) {
        c.agq = agq;
        return lowbit::quantize_moe(m, toks, c).q.records;
    };
    {
        const auto m = lowbit_test::small_moe(1, 7);
        const auto a = run(m, true), b = run(m, false);
        REQUIRE(a.size() == b.size());
        for (const auto& [k, r] : a) CHECK(same_record(r, b.at(k)));
    }
    {
        const auto m = lowbit_test::small_moe(2, 7);
        const auto a = run(m, true), b = run(m, false);
        int differ = 0;
        for (const auto& [k, r] : a) differ += same_record(r, b.at(k)) ? 0 : 1;
        CHECK(differ > 0);
        CHECK(same_record(a.at("layers.0.wq"), b.at("layers.0.wq"))); // attention linears do not use gates
    }
}

TEST_CASE("quantize_moe: bits counted with the int4 container; RTN; save and reload bit-identical") {
    const auto m = lowbit_test::small_moe(2, 9);
    const auto toks = random_tokens(128, 40, 2);
    for (int bits : {2, 3, 4}) {
        lowbit::moe_quant_config c;
        c.bits = bits;
        c.gptq = bits != 3; // RTN at 3 bits
        c.name = "test-w" + std::to_string(bits);
        c.calib_window = 64;
        const auto r = lowbit::quantize_moe(m, toks, c);
        // every linear: 4-bit codes + fp16 α and μ per row
        double bits_sum = 0, n = 0;
        for (int l = 0; l < 2; ++l)
            for (const auto& id : m.block_linears(l)) {
                const auto& op = m.linear(id);
                bits_sum += 4.0 * op.in_features() * op.out_features() + 32.0 * op.out_features();
                n += static_cast<double>(op.in_features() * op.out_features());
            }
        CHECK(r.bits_per_weight == doctest::Approx(bits_sum / n));
        CHECK(r.nominal_bits <= r.bits_per_weight + 1e-12);
        if (bits < 4) CHECK(r.nominal_bits < r.bits_per_weight);
        CHECK(r.layer_seconds.size() == 2);
        const auto path = std::filesystem::temp_directory_path() / ("lowbit_test_moe_w" + std::to_string(bits) + ".safetensors");
        lowbit::save_quantized_model(path, r.q);
        const auto back = lowbit::load_quantized_model(path);
        std::filesystem::remove(path);
        CHECK(back.spec.name == c.name);
        REQUIRE(back.records.size() == r.q.records.size());
        for (const auto& [k, rec] : r.q.records) CHECK(same_record(rec, back.records.at(k)));
        lowbit::kv_cache c1(m.config), c2(m.config);
        const auto probe = random_tokens(20, 40, 5);
        const auto y1 = lowbit::forward(r.q.model, c1, probe);
        const auto y2 = lowbit::forward(back.model, c2, probe);
        CHECK((y1.array() == y2.array()).all());
    }
}

TEST_CASE("compare_routing: top-2 agreement and load against a brute-force recomputation") {
    const auto m = lowbit_test::small_moe(2, 13);
    const auto toks = random_tokens(128, 40, 3);
    lowbit::moe_quant_config c;
    c.bits = 2;
    c.gptq = false;
    const auto q = lowbit::quantize_moe(m, toks, c).q.model;
    const auto r = lowbit::compare_routing(m, q, toks, 64);
    // brute force: router logits of both models, sets compared
    std::vector<std::vector<lowbit::matrix_f>> a(2), b(2);
    lowbit::forward_hooks ha, hb;
    ha.on_router_logits = [&](int l, const lowbit::matrix_f& z) { a[static_cast<std::size_t>(l)].push_back(z); };
    hb.on_router_logits = [&](int l, const lowbit::matrix_f& z) { b[static_cast<std::size_t>(l)].push_back(z); };
    lowbit::capture_linear_inputs(m, toks, ha, 64);
    lowbit::capture_linear_inputs(q, toks, hb, 64);
    double same = 0, n = 0;
    for (std::size_t l = 0; l < 2; ++l)
        for (std::size_t w = 0; w < a[l].size(); ++w)
            for (Eigen::Index t = 0; t < a[l][w].rows(); ++t) {
                same += top_set(a[l][w].row(t).data(), 4, 2) == top_set(b[l][w].row(t).data(), 4, 2) ? 1 : 0;
                n += 1;
            }
    CHECK(r.agreement == doctest::Approx(same / n));
    CHECK(r.agreement < 1.0);
    CHECK(r.ref_balance_std == doctest::Approx(usage_sigma(m, toks, 64)));
    const auto self = lowbit::compare_routing(m, m, toks, 64);
    CHECK(self.agreement == 1.0);
    CHECK(self.logit_rmse == 0.0);
}

TEST_CASE("ebss_sample: deterministic, right lengths, the balance term lowers expert-usage σ") {
    const auto m = lowbit_test::small_moe(2, 17);
    lowbit::ebss_options o;
    o.sequences = 3;
    o.length = 24;
    o.beam = 3;
    o.candidates = 3;
    o.seed = 5;
    o.tau = 1e-3; // balance dominates
    const auto a = lowbit::ebss_sample(m, o);
    CHECK(a == lowbit::ebss_sample(m, o));
    REQUIRE(a.size() == 3);
    for (const auto& s : a) CHECK(s.size() == 24);
    o.tau = 1e9; // likelihood only
    const auto b = lowbit::ebss_sample(m, o);
    double sa = 0, sb = 0;
    for (int i = 0; i < 3; ++i) {
        sa += usage_sigma(m, a[static_cast<std::size_t>(i)], 24);
        sb += usage_sigma(m, b[static_cast<std::size_t>(i)], 24);
    }
    MESSAGE("usage sigma with balance " << sa / 3 << ", likelihood only " << sb / 3);
    CHECK(sa < sb);
}

TEST_CASE("real qwen3moe-18M-en: MoEQuant W4 keeps top-2 routing of the float model better than W2; reload identical") {
    auto real = lowbit_test::open_real_moe();
    auto& fp = real.fp;
    const auto& calib = real.calib;
    const auto& dev = real.dev;
    std::vector<double> agree;
    for (int bits : {4, 2}) {
        lowbit::moe_quant_config c;
        c.bits = bits;
        c.calib_window = 256;
        c.calib_windows = 1;
        c.name = "moequant-w" + std::to_string(bits);
        const auto r = lowbit::quantize_moe(fp.model, calib, c);
        const auto cmp = lowbit::compare_routing(fp.model, r.q.model, dev, 256, 1);
        // the float model's own agreement, recomputed by brute force, is 1; the quantized model's is a fraction
        agree.push_back(cmp.agreement);
        MESSAGE("W" << bits << ": top-2 agreement " << cmp.agreement << ", bits/weight " << r.bits_per_weight);
        if (bits == 4) {
            const auto path = std::filesystem::temp_directory_path() / "lowbit_test_moe_real.safetensors";
            lowbit::save_quantized_model(path, r.q);
            const auto back = lowbit::load_quantized_model(path);
            std::filesystem::remove(path);
            lowbit::kv_cache c1(fp.model.config), c2(fp.model.config);
            const std::span<const int> probe(dev.data(), 64);
            CHECK((lowbit::forward(r.q.model, c1, probe).array() == lowbit::forward(back.model, c2, probe).array()).all());
        }
    }
    CHECK(agree[0] > 0.8);
    CHECK(agree[0] > agree[1]);
}
