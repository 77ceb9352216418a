// Tests for lowbit/model/gguf_model.hpp. Oracles: transformers' reference logits of the real
// checkpoints (reference/ref_logits.f32) reached again after a GGUF round trip (export, import,
// lowbit's forward), the tokenizers-produced dev token stream (reference/dev_ids.u32) reproduced by
// the tokenizer rebuilt from GGUF metadata, gguf.quants-exact bytes (io::quantize_row, tested in
// test_gguf_quants) for FP exports, and the records' own dequantized weights for quantized exports.
// llama.cpp itself runs the exports in scripts/llama-cpp-check.
#include <lowbit/model/checkpoint.hpp> // open_model
#include <lowbit/model/gguf_model.hpp>
#include <lowbit/model/hf_model.hpp>

#include "gguf_fixture.hpp"
#include "models.hpp"

#include <doctest/doctest.h>

#include <fstream>

namespace {

template <class T>
std::vector<T> read_values(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary | std::ios::ate);
    REQUIRE(f.good());
    const auto n = static_cast<std::size_t>(f.tellg());
    f.seekg(0);
    std::vector<T> v(n / sizeof(T));
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
    return v;
}

std::vector<int> ref_ids(const std::string& model) {
    const auto u = read_values<std::uint32_t>(lowbit_test::hf_model(model, "reference/ref_ids.u32"));
    return {u.begin(), u.end()};
}

lowbit::matrix_f logits(const lowbit::llama_model& m, const std::vector<int>& ids) {
    lowbit::kv_cache cache(m.config);
    return lowbit::forward(m, cache, ids, lowbit::logits_rows::all);
}

double ref_error(const lowbit::llama_model& m, const std::string& model) {
    const auto ids = ref_ids(model);
    const auto ref = read_values<float>(lowbit_test::hf_model(model, "reference/ref_logits.f32"));
    const auto got = logits(m, ids);
    const Eigen::Map<const lowbit::matrix_f> want(ref.data(), got.rows(), got.cols());
    return static_cast<double>((got - want).cwiseAbs().maxCoeff());
}

struct loaded {
    lowbit::llama_model model;
    lowbit::text_tokenizer tok;
};
const loaded& hf(const std::string& name) {
    static std::map<std::string, loaded> cache;
    auto it = cache.find(name);
    if (it == cache.end()) {
        auto o = lowbit::open_model(lowbit_test::hf_model(name));
        it = cache.emplace(name, loaded{std::move(o.model), std::move(o.tokenizer)}).first;
    }
    return it->second;
}

} // namespace

TEST_CASE("gguf_model: F32 export and import of the real checkpoints reproduce transformers' logits") {
    lowbit_test::temp_dir dir;
    for (const std::string name : {"llama-21M-en", "qwen3moe-18M-en"}) {
        CAPTURE(name);
        const auto& src = hf(name);
        lowbit::gguf_export_options o;
        o.weight_type = o.embedding_type = lowbit::io::ggml_type::f32;
        const auto path = dir.path / (name + ".gguf");
        lowbit::export_gguf(src.model, src.tok, path, o);
        const auto g = lowbit::io::gguf_file::open(path);
        CHECK(g.get_string("general.architecture") == (name == "llama-21M-en" ? "llama" : "qwen3moe"));
        CHECK(g.get_string("tokenizer.ggml.model") == "gpt2");
        CHECK(g.find_tensor("output.weight") == nullptr); // tied
        if (name != "llama-21M-en") {
            const auto& t = g.tensor("blk.0.ffn_down_exps.weight");
            CHECK(t.shape == std::vector<std::uint64_t>{256, 512, 8});
        }
        const auto imp = lowbit::import_gguf(path);
        CHECK(imp.architecture == g.get_string("general.architecture"));
        CHECK(imp.model.config.rope == (name == "llama-21M-en" ? lowbit::rope_layout::interleaved : lowbit::rope_layout::rotate_half));
        const double e0 = ref_error(src.model, name), e1 = ref_error(imp.model, name);
        MESSAGE(name << ": max |logit - transformers| " << e0 << " (HF load), " << e1 << " (after GGUF F32 round trip)");
        CHECK(e1 <= 1e-3);
        // the tokenizer rebuilt from the metadata encodes the dev text as tokenizers does
        REQUIRE(!imp.tokenizer.empty());
        const std::string text = "It is a truth universally acknowledged, that a single man in possession of a good fortune.\n"
                                 "    def f(x):  return x**2  # caf\xc3\xa9 \xe2\x9c\x93 <|endoftext|>";
        CHECK(imp.tokenizer.encode(text) == src.tok.encode(text));
        CHECK(imp.model.config.bos_token == -1);
        CHECK(imp.model.config.stop_token == 0);
    }
}

TEST_CASE("gguf_model: F16 / Q8_0 / Q4_0 / MXFP4 / TQ2_0 exports store io::quantize_row of each weight") {
    const auto& src = hf("llama-21M-en");
    for (auto t : {lowbit::io::ggml_type::f16, lowbit::io::ggml_type::q8_0, lowbit::io::ggml_type::q4_0, lowbit::io::ggml_type::mxfp4,
                   lowbit::io::ggml_type::tq2_0}) {
        CAPTURE(lowbit::io::ggml_type_name(t));
        lowbit::gguf_export_options o;
        o.weight_type = t;
        const auto w = lowbit::make_gguf(src.model, src.tok, o);
        const auto bytes = w.serialize();
        const auto g = lowbit::io::gguf_file::parse(bytes);
        const auto& v = g.tensor("blk.2.attn_v.weight"); // not permuted
        CHECK(v.type == t);
        const lowbit::matrix_f& wv = lowbit::detail::dense_weight_of(src.model.linear(2, lowbit::linear_slot::wv), "test");
        const auto want = lowbit::io::quantize(t, std::span<const float>(wv.data(), static_cast<std::size_t>(wv.size())));
        CHECK(std::equal(want.begin(), want.end(), v.bytes.begin(), v.bytes.end()));
        CHECK(g.tensor("token_embd.weight").type == lowbit::io::ggml_type::f16);
        CHECK(g.tensor("blk.0.attn_norm.weight").type == lowbit::io::ggml_type::f32);
    }
}

TEST_CASE("gguf_model: quantized records export exactly, unrepresentable recipes are refused") {
    const auto& src = hf("llama-21M-en");
    lowbit_test::temp_dir dir;
    for (const std::string rn : {"rtn-w4", "absmean-w1.58"}) {
        CAPTURE(rn);
        lowbit::quantized_model q;
        q.spec = lowbit::find_recipe(rn);
        q.model = lowbit::quantize_model(src.model, q.spec, {}, {}, &q.records);
        const auto path = dir.path / (rn + ".gguf");
        lowbit::export_gguf(q, src.tok, path);
        const auto g = lowbit::io::gguf_file::open(path);
        const auto want_t = rn == "rtn-w4" ? lowbit::io::ggml_type::q4_0 : lowbit::io::ggml_type::tq2_0;
        CHECK(g.tensor("blk.0.attn_q.weight").type == want_t);
        const auto imp = lowbit::import_gguf(path);
        // every unpermuted block linear dequantizes to the record's weights exactly
        for (int l = 0; l < q.model.config.n_layers; ++l)
            for (auto s : {lowbit::linear_slot::wv, lowbit::linear_slot::wo, lowbit::linear_slot::w1, lowbit::linear_slot::w2}) {
                const auto& rec = q.records.at(lowbit::linear_id{l, s}.name());
                lowbit::matrix_f deq;
                if (rec.format == "int4") deq = lowbit::detail::gguf_record_codes<lowbit::int4>(rec).cast<float>();
                else deq = lowbit::detail::gguf_record_codes<lowbit::ternary_base3>(rec).cast<float>();
                deq = rec.scale.asDiagonal() * deq;
                if (rec.offset.size() > 0) deq.colwise() += rec.offset;
                CHECK(lowbit::detail::dense_weight_of(imp.model.linear(l, s), "test") == deq);
            }
        // and the whole model computes what the quantized model computes
        const auto ids = ref_ids("llama-21M-en");
        const double d = static_cast<double>((logits(imp.model, ids) - logits(q.model, ids)).cwiseAbs().maxCoeff());
        MESSAGE(rn << ": max |logit(GGUF import) - logit(lowbit packed model)| = " << d);
        CHECK(d <= 2e-3);
        // TQ1_0 alternative
        lowbit::gguf_export_options o1;
        o1.ternary_type = lowbit::io::ggml_type::tq1_0;
        if (want_t == lowbit::io::ggml_type::tq2_0) {
            const auto w1 = lowbit::make_gguf(q.model, src.tok, o1, &q.records, &q.spec).serialize();
            const auto g1 = lowbit::io::gguf_file::parse(w1);
            CHECK(g1.tensor("blk.1.ffn_up.weight").type == lowbit::io::ggml_type::tq1_0);
            CHECK(g1.tensor("blk.1.ffn_up.weight").to_float() == g.tensor("blk.1.ffn_up.weight").to_float());
        }
    }
    auto refusal = [&](const char* rn) {
        lowbit::quantized_model q;
        q.spec = lowbit::find_recipe(rn);
        // the refusal comes from the recipe or the records; quantize a 1-layer copy to keep it quick
        lowbit::llama_model small = src.model;
        small.blocks.resize(1);
        small.config.n_layers = 1;
        const auto calib = ref_ids("llama-21M-en");
        lowbit::quantize_options qo;
        qo.calib_window = 64;
        qo.calib_windows = 1;
        q.model = lowbit::quantize_model(small, q.spec, calib, qo, &q.records);
        const auto path = dir.path / "refused.gguf";
        try {
            lowbit::export_gguf(q, src.tok, path);
            std::filesystem::remove(path);
        } catch (const lowbit::invalid_argument& e) {
            CHECK(!std::filesystem::exists(path));
            return std::string(e.what());
        }
        return std::string();
    };
    CHECK(refusal("binary-w1").find("per-row offsets") != std::string::npos);
    CHECK(refusal("twla-w1.58").find("online") != std::string::npos);
    CHECK(refusal("fp32-a4-hadamard").find("online") != std::string::npos);
    CHECK(refusal("rtn-w4a8").empty());
    CHECK(refusal("absmean-w1.58a8").empty());
    CHECK(refusal("fp32-a4").find("quantizes activations") != std::string::npos);
    // grouped int4 (per-128-column α and μ): refused before any work, and from its records, saying why
    CHECK_THROWS_WITH_AS(lowbit::gguf_check_recipe(lowbit::find_recipe("gptq-w4-g128"), {}),
                         doctest::Contains("Q4_1"), lowbit::invalid_argument);
    lowbit::recipe mixed = lowbit::find_recipe("absmean-w1.58");
    mixed.int4_linears = "wv";
    CHECK_THROWS_WITH_AS(lowbit::gguf_check_recipe(mixed, {}), doctest::Contains("int4_linears=wv"), lowbit::invalid_argument);
    CHECK(refusal("gptq-w4-g128").find("m = μ − 8α") != std::string::npos);
    { // without the recipe, the grouped records themselves are refused (RTN: no calibration, 1 layer)
        lowbit::recipe rtn_g = lowbit::find_recipe("rtn-w4");
        rtn_g.group_size = 128;
        lowbit::llama_model small = src.model;
        small.blocks.resize(1);
        small.config.n_layers = 1;
        std::map<std::string, lowbit::linear_record> recs;
        const auto qm = lowbit::quantize_model(small, rtn_g, {}, {}, &recs);
        CHECK(recs.begin()->second.format == "int4_g128");
        CHECK_THROWS_WITH_AS((void)lowbit::make_gguf(qm, src.tok, {}, &recs, nullptr), doctest::Contains("its weights are grouped int4"),
                             lowbit::invalid_argument);
    }
}

TEST_CASE("gguf_model: llama2.c model with its SentencePiece tokenizer") {
    auto o = lowbit::open_model(lowbit_test::stories260k("stories260K.bin"), lowbit_test::stories260k("tok512.bin"));
    lowbit_test::temp_dir dir;
    lowbit::gguf_export_options eo;
    eo.weight_type = eo.embedding_type = lowbit::io::ggml_type::f32;
    lowbit::export_gguf(o.model, o.tokenizer, dir.path / "s.gguf", eo);
    const auto imp = lowbit::import_gguf(dir.path / "s.gguf");
    CHECK(imp.model.config.bos_token == 1);
    CHECK(imp.tokenizer.format() == "llama2c");
    CHECK(imp.tokenizer.encode("Once upon a time, there was a little girl.") == o.tokenizer.encode("Once upon a time, there was a little girl."));
    const std::vector<int> ids = {1, 403, 407, 261, 378};
    CHECK(logits(imp.model, ids) == logits(o.model, ids)); // interleaved RoPE both ways: no permutation, F32
}

TEST_CASE("gguf_model: import refuses what it cannot run") {
    lowbit_test::temp_dir dir;
    lowbit::io::gguf_writer w;
    w.set("general.architecture", lowbit::io::gguf_value::string("gpt2"));
    w.write(dir.path / "a.gguf");
    CHECK_THROWS_WITH_AS((void)lowbit::import_gguf(dir.path / "a.gguf"), doctest::Contains("architecture 'gpt2'"), lowbit::format_error);
    const auto& src = hf("llama-21M-en");
    auto bytes = lowbit::make_gguf(src.model, src.tok).serialize();
    // drop a tensor: rebuild without blk.0.attn_k.weight through the reader
    const auto g = lowbit::io::gguf_file::parse(bytes);
    lowbit::io::gguf_writer w2;
    for (const auto& [k, v] : g.metadata()) w2.set(k, v);
    for (const auto& t : g.tensors())
        if (t.name != "blk.0.attn_k.weight") w2.add_tensor(t.name, t.type, t.shape, {t.bytes.begin(), t.bytes.end()});
    w2.write(dir.path / "b.gguf");
    CHECK_THROWS_WITH_AS((void)lowbit::import_gguf(dir.path / "b.gguf"), doctest::Contains("blk.0.attn_k.weight"), lowbit::format_error);
}
