// Tests for lowbit/model/recipes.hpp on the real stories260K checkpoint. Oracles: the README's reference
// perplexities (independent numpy implementation), bit counts worked by hand, and bit-identical
// logits after a safetensors round trip.
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/rtn.hpp>

#include <doctest/doctest.h>

#include "models.hpp"

#include <fstream>
#include <sstream>

namespace {
struct fixture {
    lowbit::io::llama2c_checkpoint ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    lowbit::io::tokenizer tok = lowbit::io::read_tokenizer(lowbit_test::stories260k("tok512.bin"));
    std::string text = [] {
        std::ifstream f(lowbit_test::stories260k("tinystories_dev.txt"));
        std::stringstream ss;
        ss << f.rdbuf();
        return ss.str();
    }();
    std::vector<int> eval = tok.encode(text.substr(0, 60000), false, false, lowbit::io::dummy_prefix::separate);
    std::vector<int> calib = tok.encode(text.substr(60000, 12000), false, false, lowbit::io::dummy_prefix::separate);
    lowbit::llama_model fp32 = lowbit::model_from_llama2c(ck);
};
const fixture& fx() {
    static const fixture f;
    return f;
}
double ppl(const lowbit::llama_model& m, int windows = -1) {
    return lowbit::perplexity(m, fx().eval, -1, windows).perplexity;
}
} // namespace

TEST_CASE("recipe lookup") {
    CHECK(lowbit::find_recipe("gptq-w4").solver == lowbit::solver_kind::gptq);
    CHECK_THROWS_AS((void)lowbit::find_recipe("no-such-recipe"), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::find_recipe("w3"), doctest::Contains("known: fp32"));
    lowbit::recipe bad = lowbit::find_recipe("absmean-w1.58");
    bad.activation = lowbit::activation_kind::int_asymmetric;
    CHECK_THROWS_AS((void)lowbit::quantize_model(fx().fp32, bad, {}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_model(fx().fp32, lowbit::find_recipe("gptq-w4"), {}), lowbit::shape_error);
}

TEST_CASE("RTN int4 recipe: packed kernels reproduce the README's naive figure and count bits honestly") {
    const auto m = lowbit::quantize_model(fx().fp32, lowbit::find_recipe("rtn-w4"), {});
    // codes 4 bits + fp16 scale and offset per row: 4 + 32/in, in = 64 except w2 (172)
    const double in64 = 64.0 * 64 * 2 + 32.0 * 64 * 2 + 172.0 * 64 * 2, in172 = 64.0 * 172;
    const double want = (in64 * (4 + 32.0 / 64) + in172 * (4 + 32.0 / 172)) / (in64 + in172);
    CHECK(m.bits_per_weight() == doctest::Approx(want).epsilon(1e-9));
    // Oracle: the same rounding through rtn.hpp, dequantized into FP32 dense layers (Eigen GEMM),
    // must give the packed-kernel model's perplexity on the first 2 windows.
    lowbit::llama_model dense = fx().fp32;
    for (int l = 0; l < dense.config.n_layers; ++l)
        for (int s = 0; s < lowbit::linear_slots; ++s) {
            const auto slot = static_cast<lowbit::linear_slot>(s);
            const auto& w = fx().ck.layers[static_cast<std::size_t>(l)];
            const lowbit::matrix_f* src[] = {&w.wq, &w.wk, &w.wv, &w.wo, &w.w1, &w.w2, &w.w3};
            dense.set_weight(l, slot,
                             lowbit::quantize_rtn(*src[s], lowbit::rtn_quantizer{4, lowbit::int_mode::symmetric}).dequantize());
        }
    CHECK(ppl(m, 2) == doctest::Approx(ppl(dense, 2)).epsilon(1e-3));
}

TEST_CASE("RTN int4 reproduces the README's naive figure 5.055" * doctest::test_suite("long")) {
    CHECK(ppl(lowbit::quantize_model(fx().fp32, lowbit::find_recipe("rtn-w4"), {})) == doctest::Approx(5.055).epsilon(0.002));
}

TEST_CASE("a quantized model written to safetensors and read back gives bit-identical logits") {
    const auto dir = std::filesystem::temp_directory_path() / "lowbit_test_recipes";
    std::filesystem::create_directories(dir);
    // A cheap PSP variant (RTN binarizer, one alternation, a 64-token calibration window) keeps the
    // low-rank and offset tensors in the round trip without GPTQ's cost under sanitizers.
    lowbit::recipe psp = lowbit::find_recipe("bwla-w1a6-psp");
    psp.solver = lowbit::solver_kind::rtn;
    psp.psp_iterations = 1;
    // Learned rotations travel with the layers: KOTMS factors (RTN solver to stay cheap) and TORQ's
    // dense matrices (learned from the calibration inputs).
    lowbit::recipe kotms = lowbit::find_recipe("twla-w1.58a4-kotms");
    kotms.solver = lowbit::solver_kind::rtn;
    for (const char* name : {"absmean-w1.58a8", "fp32-a4-hadamard", "bwla-w1a6-psp", "twla-w1.58a4-kotms",
                             "mxfp4-w4a4-torq", "fp32-nli", "twla-tra-kotms"}) {
        lowbit::quantize_options qo;
        qo.calib_windows = 1;
        qo.calib_window = 64;
        const std::string n(name);
        lowbit::quantized_model q{n == psp.name ? psp : n == kotms.name ? kotms : lowbit::find_recipe(name), {}, {}};
        q.model = lowbit::quantize_model(fx().fp32, q.spec, fx().calib, qo, &q.records);
        const auto path = dir / (std::string(name) + ".safetensors");
        lowbit::save_quantized_model(path, q);
        const auto back = lowbit::load_quantized_model(path);
        CHECK(back.spec.name == name);
        if (q.spec.low_rank > 0) {
            REQUIRE(back.records.at("layers.0.wq").correction.has_value());
            CHECK(back.records.at("layers.0.wq").correction->a == q.records.at("layers.0.wq").correction->a);
        }
        if (q.spec.rotation == lowbit::rotation_kind::kotms || q.spec.rotation == lowbit::rotation_kind::torq) {
            REQUIRE(back.records.at("layers.0.wq").rotation.has_value());
            CHECK(back.records.at("layers.0.wq").rotation->left == q.records.at("layers.0.wq").rotation->left);
            CHECK(back.records.at("layers.0.wq").rotation->dense == q.records.at("layers.0.wq").rotation->dense);
        }
        CHECK(back.model.nonlinear.exact() == !q.spec.nli);
        if (q.spec.weights == lowbit::weight_scheme::tra_ternary)
            for (const auto& [name, rec] : q.records) {
                    // at least one group bit and one 1.6-bit trit per weight plus 10 fp16 per row per
                    // block of 128 columns; at most two trits per weight and every column index on top
                    const double per_row = 160.0 * static_cast<double>((rec.cols + 127) / 128) / static_cast<double>(rec.cols);
                    CHECK(rec.dense_bits >= 2.6 + per_row);
                    CHECK(rec.dense_bits <= 4.2 + per_row + 8.0 / static_cast<double>(rec.rows));
                }
        CHECK(back.model.bits_per_weight() == q.model.bits_per_weight());
        const std::vector<int> toks(fx().eval.begin(), fx().eval.begin() + 40);
        lowbit::kv_cache c1(q.model.config), c2(back.model.config);
        const auto a = lowbit::forward(q.model, c1, toks);
        const auto b = lowbit::forward(back.model, c2, toks);
        CHECK(a.rows() == b.rows());
        CHECK((a.array() == b.array()).all());

        // Corrupt and truncated copies give a clear error.
        auto bytes = lowbit::io::read_file_bytes(path);
        const auto cut = dir / "truncated.safetensors";
        std::ofstream(cut, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                                   static_cast<std::streamsize>(bytes.size() - 7));
        CHECK_THROWS_AS((void)lowbit::load_quantized_model(cut), lowbit::format_error);
    }
    CHECK_THROWS_AS((void)lowbit::load_quantized_model(dir / "missing.safetensors"), lowbit::format_error);
    std::filesystem::remove_all(dir);
}

TEST_CASE("every recipe field is saved: a non-default seed and hadamard_first reload as quantized") {
    const auto dir = std::filesystem::temp_directory_path() / "lowbit_test_recipe_fields";
    std::filesystem::create_directories(dir);
    lowbit::recipe r = lowbit::find_recipe("twla-w1.58a8");
    r.solver = lowbit::solver_kind::rtn; // cheap; the rotation seed is what matters here
    r.seed = 7;
    r.act_clip = 0.875f;
    r.damp = 0.0125;
    r.hadamard_first = false;
    lowbit::quantized_model q{r, {}, {}};
    q.model = lowbit::quantize_model(fx().fp32, r, {}, {}, &q.records);
    lowbit::save_quantized_model(dir / "seed7.safetensors", q);
    const auto back = lowbit::load_quantized_model(dir / "seed7.safetensors");
    CHECK(lowbit::recipe_fields(back.spec) == lowbit::recipe_fields(r));
    CHECK(back.spec.seed == 7);
    const std::vector<int> toks(fx().eval.begin(), fx().eval.begin() + 24);
    lowbit::kv_cache c1(q.model.config), c2(back.model.config);
    CHECK((lowbit::forward(q.model, c1, toks).array() == lowbit::forward(back.model, c2, toks).array()).all());
    // the seed changes the rotation, so the default-seed model differs: the field really travels
    lowbit::recipe r0 = r;
    r0.seed = 0;
    const auto m0 = lowbit::quantize_model(fx().fp32, r0, {});
    lowbit::kv_cache c3(m0.config);
    c1.clear();
    CHECK(!(lowbit::forward(q.model, c1, toks).array() == lowbit::forward(m0, c3, toks).array()).all());
    // recipe_fields / set_recipe_fields round trip and refusals
    lowbit::recipe x = lowbit::find_recipe("fp32");
    lowbit::set_recipe_fields(x, lowbit::recipe_fields(r));
    CHECK(lowbit::recipe_fields(x) == lowbit::recipe_fields(r));
    CHECK_THROWS_AS(lowbit::set_recipe_fields(x, "seeds=3"), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::set_recipe_fields(x, "seed=abc"), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::set_recipe_fields(x, "rotation=spin"), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::set_recipe_fields(x, "seed=1;seed=2"), lowbit::invalid_argument);
    // saved-model metadata that is not key=value is a format_error (fuzz_model_metadata regression:
    // a config.json fed to the lowbit.model parser escaped as invalid_argument)
    lowbit::llama_model junk;
    CHECK_THROWS_AS(lowbit::detail::parse_model_fields("{\n  \"architectures\": [\"LlamaForCausalLM\"]", junk), lowbit::format_error);
    CHECK_THROWS_AS(lowbit::detail::parse_model_fields("dim=64;dim=64", junk), lowbit::format_error);
    CHECK_THROWS_AS(lowbit::detail::parse_model_fields(lowbit::model_fields(fx().fp32) + ";extra=1", junk), lowbit::format_error);
    lowbit::detail::parse_model_fields(lowbit::model_fields(fx().fp32), junk);
    CHECK(lowbit::model_fields(junk) == lowbit::model_fields(fx().fp32));
    lowbit::set_recipe_fields(x, "seed=3,nli=true", ',');
    CHECK(x.seed == 3);
    CHECK(x.nli);
    std::filesystem::remove_all(dir);
}

TEST_CASE("learned rotations: orthonormal after fp16 storage, FP32 layers keep their function, bits counted") {
    // Oracle: with FP32 weights every rotation must leave the model's function unchanged,
    // (xQ)(WQ)ᵀ = xWᵀ, so the logits equal the unrotated FP32 model's up to float rounding.
    const std::vector<int> toks(fx().eval.begin(), fx().eval.begin() + 48);
    lowbit::kv_cache c0(fx().fp32.config);
    const lowbit::matrix_f ref = lowbit::forward(fx().fp32, c0, toks);
    const float scale = ref.cwiseAbs().maxCoeff();
    for (auto kind : {lowbit::rotation_kind::kotms, lowbit::rotation_kind::okt, lowbit::rotation_kind::torq}) {
        lowbit::recipe r = lowbit::find_recipe("fp32");
        r.rotation = kind;
        lowbit::quantize_options qo;
        qo.calib_windows = 1;
        qo.calib_window = 64;
        lowbit::linear_records recs;
        const auto m = lowbit::quantize_model(fx().fp32, r, fx().calib, qo, &recs);
        lowbit::kv_cache c1(m.config);
        const lowbit::matrix_f got = lowbit::forward(m, c1, toks);
        CHECK((got - ref).cwiseAbs().maxCoeff() < 1e-4f * scale);
        int learned = 0;
        double rotation_bits = 0;
        for (const auto& [name, rec] : recs) {
                if (!rec.rotation) continue;
                ++learned;
                rotation_bits += rec.rotation->storage_bits();
                const auto t = lowbit::block_rotation::from(std::nullopt, rec.rotation);
                lowbit::matrix_f q = lowbit::matrix_f::Identity(rec.cols, rec.cols);
                t.apply_rows(q);
                CHECK(lowbit::orthogonality_error(q) < 1e-5);
                // the fp16 entries are within fp16 rounding of the orthonormalised ones
                const lowbit::matrix_f& stored = rec.rotation->dense.size() ? rec.rotation->dense : rec.rotation->left;
                const lowbit::matrix_f ortho = rec.rotation->dense.size() ? q : t.kronecker->left;
                CHECK((stored - ortho).cwiseAbs().maxCoeff() < 2e-3f);
            }
        // KOTMS/OKT learn for every linear whose Kronecker factors are ≤ 16 (all but w2: 172 = 43·4);
        // TORQ for every linear whose width is a multiple of 32 (all but w2)
        CHECK(learned == 6 * m.config.n_layers);
        double weights = 0;
        for (const auto& [name, rec] : recs) weights += static_cast<double>(rec.rows * rec.cols);
        CHECK(m.bits_per_weight() == doctest::Approx(32.0 + rotation_bits / weights).epsilon(1e-12));
    }
}

TEST_CASE("NLI recipe operators: perplexity within 0.1 % of exact FP32 on 2 windows") {
    lowbit::llama_model m = fx().fp32;
    m.nonlinear = lowbit::recipe_nonlinear_ops(lowbit::find_recipe("fp32-nli"));
    CHECK(!m.nonlinear.exact());
    CHECK(lowbit::recipe_nonlinear_ops(lowbit::find_recipe("fp32")).exact());
    const double exact = ppl(fx().fp32, 2), nli = ppl(m, 2);
    CHECK(nli != exact); // the tables are really used
    CHECK(nli == doctest::Approx(exact).epsilon(1e-3));
}

TEST_CASE("published-figure checks on the first 60,000 characters" * doctest::test_suite("long")) {
    lowbit::quantize_options qo;
    qo.calib_windows = 8;
    // README / issue reference figures, reached by an independent implementation.
    CHECK(ppl(lowbit::quantize_model(fx().fp32, lowbit::find_recipe("gptq-w4"), fx().calib, qo)) <= 4.85);
    const auto twla = lowbit::quantize_model(fx().fp32, lowbit::find_recipe("twla-w1.58"), fx().calib, qo);
    CHECK(twla.bits_per_weight() <= 2.5);
    CHECK(ppl(twla) <= 66.0);
    // learned KOTMS rotations (docs/results.md): lower perplexity within the same bit budget
    const auto kotms = lowbit::quantize_model(fx().fp32, lowbit::find_recipe("twla-w1.58-kotms"), fx().calib, qo);
    CHECK(kotms.bits_per_weight() <= 2.5);
    CHECK(ppl(kotms) < ppl(twla));
    CHECK(ppl(lowbit::quantize_model(fx().fp32, lowbit::find_recipe("fp32-a4-hadamard"), {}, qo)) <= 4.6);
    CHECK(ppl(lowbit::quantize_model(fx().fp32, lowbit::find_recipe("absmean-w1.58"), {})) ==
          doctest::Approx(375.0).epsilon(0.01));
}
