// Tests of model/residual_rotation.hpp: QuaRot's offline residual-stream rotation folded into the
// weights. Oracles: transformers' reference logits and router logits of the real checkpoints (the
// rotated model must compute the same function), the rotation's orthogonality in double, and a
// brute-force per-row int4 error computed in the test.
#include <lowbit/model/residual_rotation.hpp>

#include <lowbit/model/hf_model.hpp>
#include <lowbit/model/recipes.hpp>

#include "models.hpp"
#include "test_files.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace {

std::vector<int> ref_ids(const std::string& model) {
    const auto u = lowbit_test::read_values<std::uint32_t>(lowbit_test::hf_model(model, "reference/ref_ids.u32"));
    return {u.begin(), u.end()};
}

/// Logits of the 128 reference tokens (one window), with the router logits of every layer.
lowbit::matrix_f logits_of(const lowbit::llama_model& m, const std::vector<int>& ids, std::vector<lowbit::matrix_f>* router = nullptr) {
    lowbit::kv_cache cache(m.config);
    lowbit::forward_hooks hooks;
    if (router) hooks.on_router_logits = [&](int, const lowbit::matrix_f& x) { router->push_back(x); };
    return lowbit::forward(m, cache, ids, lowbit::logits_rows::all, &hooks);
}

double max_abs(const lowbit::matrix_f& a, const lowbit::matrix_f& b) { return static_cast<double>((a - b).cwiseAbs().maxCoeff()); }

/// Squared error of a per-row 16-level RTN written here from scratch (levels α·(t + ½), t ∈ −8..7,
/// α = max|w| / 7.5), relative to ‖W‖².
double int4_relative_error(const lowbit::matrix_f& w) {
    double err = 0, norm = 0;
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        const double amax = w.row(i).cwiseAbs().maxCoeff();
        const double a = amax > 0 ? amax / 7.5 : 1.0;
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            const double x = w(i, j);
            const double t = std::clamp(std::round(x / a - 0.5), -8.0, 7.0);
            const double q = a * (t + 0.5);
            err += (x - q) * (x - q);
            norm += x * x;
        }
    }
    return err / norm;
}

} // namespace

TEST_CASE("residual_rotation_matrix is orthogonal, seeded, and not a permutation") {
    const lowbit::matrix_d q = lowbit::residual_rotation_matrix(512, 7);
    CHECK(((q.transpose() * q) - lowbit::matrix_d::Identity(512, 512)).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(q == lowbit::residual_rotation_matrix(512, 7));
    CHECK(q != lowbit::residual_rotation_matrix(512, 8));
    // a Hadamard: every entry ±1/√n
    CHECK((q.cwiseAbs().array() - 1.0 / std::sqrt(512.0)).abs().maxCoeff() < 1e-12);
}

TEST_CASE("rotate_residual_stream: llama-21M-en computes the same logits, with gains folded and an untied classifier") {
    const auto m = lowbit::load_hf_model(lowbit_test::llama21m());
    const auto r = lowbit::rotate_residual_stream(m, lowbit::residual_rotation_matrix(m.config.dim, 3));
    const auto ids = ref_ids("llama-21M-en");
    const lowbit::matrix_f a = logits_of(m, ids);
    const lowbit::matrix_f b = logits_of(r, ids);
    const double err = max_abs(a, b);
    MESSAGE("max |logits(rotated) − logits(original)| = " << err);
    CHECK(err < 2e-4);
    // and against transformers' own logits (the original model is within 2e-5 of them)
    const auto ref = lowbit_test::read_values<float>(lowbit_test::llama21m("reference/ref_logits.f32"));
    const Eigen::Map<const lowbit::matrix_f> want(ref.data(), b.rows(), b.cols());
    CHECK(static_cast<double>((b - want).cwiseAbs().maxCoeff()) < 3e-4);
    CHECK(r.rms_final.isOnes());
    CHECK(r.blocks[2].rms_att.isOnes());
    CHECK(r.blocks[2].rms_ffn.isOnes());
    CHECK(r.token_embedding.rows() == m.token_embedding.rows());
    CHECK(!r.token_embedding.isApprox(m.token_embedding));
    // the rotation spreads the weights: per-row int4 error of the stream-reading linears drops on average
    double before = 0, after = 0;
    for (int l = 0; l < m.config.n_layers; ++l)
        for (auto s : {lowbit::linear_slot::wq, lowbit::linear_slot::wk, lowbit::linear_slot::wv, lowbit::linear_slot::w1,
                       lowbit::linear_slot::w3}) {
            const lowbit::matrix_f& w0 = lowbit::detail::dense_weight_of(m.linear(l, s), "test");
            const lowbit::matrix_f& w1 = lowbit::detail::dense_weight_of(r.linear(l, s), "test");
            before += int4_relative_error(w0);
            after += int4_relative_error(w1);
        }
    MESSAGE("per-row int4 relative error of wq/wk/wv/w1/w3 summed over layers: " << before << " -> " << after);
    CHECK(after < before);
}

TEST_CASE("rotate_residual_stream: qwen3moe-18M-en keeps its logits and every router decision") {
    const auto m = lowbit::load_hf_model(lowbit_test::qwen3moe18m());
    const auto r = lowbit::rotate_residual_stream(m, lowbit::residual_rotation_matrix(m.config.dim, 1));
    const auto ids = ref_ids("qwen3moe-18M-en");
    std::vector<lowbit::matrix_f> ra, rb;
    const lowbit::matrix_f a = logits_of(m, ids, &ra);
    const lowbit::matrix_f b = logits_of(r, ids, &rb);
    CHECK(max_abs(a, b) < 2e-4);
    REQUIRE(ra.size() == rb.size());
    REQUIRE(!ra.empty());
    double router_err = 0;
    for (std::size_t l = 0; l < ra.size(); ++l) router_err = std::max(router_err, max_abs(ra[l], rb[l]));
    MESSAGE("max router logit difference " << router_err);
    CHECK(router_err < 1e-4);
}

TEST_CASE("rotate_residual_stream refuses what it cannot rotate") {
    lowbit::llama_config c;
    c.dim = 16;
    c.hidden_dim = 32;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 2;
    c.vocab_size = 8;
    c.seq_len = 8;
    const auto m = lowbit::random_llama(c, 5);
    CHECK_THROWS_AS((void)lowbit::rotate_residual_stream(m, lowbit::matrix_d::Identity(8, 8)), lowbit::shape_error);
    lowbit::matrix_d notq = lowbit::matrix_d::Identity(16, 16);
    notq(0, 0) = 2;
    CHECK_THROWS_AS((void)lowbit::rotate_residual_stream(m, notq), lowbit::numeric_error);
    notq(0, 0) = std::nan("");
    CHECK_THROWS_AS((void)lowbit::rotate_residual_stream(m, notq), lowbit::numeric_error);
    // a quantized model: rotate before quantizing
    const auto q = lowbit::quantize_model(m, lowbit::find_recipe("rtn-w4"), {});
    CHECK_THROWS_WITH_AS((void)lowbit::rotate_residual_stream(q, lowbit::matrix_d::Identity(16, 16)),
                         doctest::Contains("dense_linear"), lowbit::invalid_argument);
}

TEST_CASE("recipes with residual_rotation: quantize the rotated model, save and reload bit-identically") {
    lowbit_test::temp_dir d("lowbit_test_residual_rotation");
    const auto m = lowbit::load_hf_model(lowbit_test::llama21m());
    const auto ids = ref_ids("llama-21M-en");
    lowbit::recipe plain = lowbit::find_recipe("rtn-w4");
    lowbit::recipe rot = lowbit::find_recipe("rtn-w4-quarot");
    CHECK(rot.residual_rotation);
    CHECK(lowbit::recipe_fields(rot).find("residual_rotation=true") != std::string::npos);
    lowbit::recipe parsed = plain;
    lowbit::set_recipe_fields(parsed, lowbit::recipe_fields(rot));
    CHECK(parsed.residual_rotation);
    lowbit::quantized_model q{rot, {}, {}, "", {}};
    q.model = lowbit::quantize_model(m, rot, {}, {}, &q.records);
    const auto qp = lowbit::quantize_model(m, plain, {});
    // the rotated int4 model is closer to FP32 on the reference window (the point of the rotation)
    const lowbit::matrix_f fp = logits_of(m, ids);
    const double e_rot = max_abs(logits_of(q.model, ids), fp);
    const double e_plain = max_abs(logits_of(qp, ids), fp);
    MESSAGE("max logit error vs FP32: rtn-w4 " << e_plain << ", rtn-w4-quarot " << e_rot);
    CHECK(e_rot < e_plain);
    lowbit::save_quantized_model(d.path / "q.safetensors", q);
    const auto back = lowbit::load_quantized_model(d.path / "q.safetensors");
    CHECK(back.spec.residual_rotation);
    const lowbit::matrix_f x = logits_of(q.model, ids);
    const lowbit::matrix_f y = logits_of(back.model, ids);
    CHECK(std::equal(x.data(), x.data() + x.size(), y.data()));
}
