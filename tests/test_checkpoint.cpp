// Tests of model/checkpoint.hpp: open_model on every kind of model, text_tokenizer, and the
// quantize → save → open round trip on the Hugging Face checkpoints (dense and MoE).
// Oracles: transformers' reference logits (through the FP32 models), the Hugging Face tokenizer's
// dev_ids.u32, llama2.c's own tokenizer on stories260K, and bit-identity of a saved model's logits.
#include <lowbit/model/checkpoint.hpp>

#include "models.hpp"
#include "test_files.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <string>
#include <vector>

namespace {

} // namespace

TEST_CASE("open_model: a Hugging Face folder gives the model and its tokenizer") {
    const auto o = lowbit::open_model(lowbit_test::llama21m());
    CHECK(o.kind == "hf");
    CHECK(o.tokenizer.format() == "hf-json");
    CHECK(o.tokenizer.vocab_size() == 4096);
    CHECK(!o.quantized);
    // the tokenizer.json beside config.json was read (its own oracle tests: test_text_tokenizer)
    const auto ref = lowbit_test::read_values<std::uint32_t>(lowbit_test::llama21m("reference/ref_ids.u32"));
    const auto docs = lowbit::io::read_text_documents(lowbit_test::models_dir() / "text-en" / "dev.jsonl");
    const auto ids = o.tokenizer.encode(docs.front());
    REQUIRE(ids.size() >= 16);
    CHECK(std::equal(ids.begin(), ids.begin() + 16, ref.begin()));
}

TEST_CASE("open_model: a llama2.c checkpoint finds its tokenizer beside it") {
    const auto o = lowbit::open_model(lowbit_test::stories260k("stories260K.bin"));
    CHECK(o.kind == "llama2c");
    CHECK(o.tokenizer.format() == "llama2c");
    CHECK(o.model.config.bos_token == 1);
    // llama2.c's own greedy output from BOS (models README): "Once upon a time, there was a little girl named Lily."
    const std::vector<int> prompt{1};
    const auto out = lowbit::generate_greedy(o.model, prompt, 16);
    CHECK(o.tokenizer.decode(out, 1).rfind("Once upon a time, there was a little girl named Lily.", 0) == 0);
}

TEST_CASE("open_model refuses what is not a model, naming it") {
    lowbit_test::temp_dir d("lowbit_test_checkpoint_bad");
    CHECK_THROWS_WITH_AS((void)lowbit::open_model(d.path), doctest::Contains("is not a Hugging Face checkpoint"), lowbit::format_error);
    CHECK_THROWS_WITH_AS((void)lowbit::open_model(d.path / "nope.bin"), doctest::Contains("does not exist"), lowbit::format_error);
    std::ofstream(d.path / "junk.safetensors") << "not a safetensors file";
    CHECK_THROWS_AS((void)lowbit::open_model(d.path / "junk.safetensors"), lowbit::format_error);
    std::ofstream(d.path / "junk.gguf") << "GGUF but not really";
    CHECK_THROWS_AS((void)lowbit::open_model(d.path / "junk.gguf"), lowbit::format_error);
}

TEST_CASE("open_model: a GGUF file (written by export_gguf) runs like its source, with its tokenizer") {
    lowbit_test::temp_dir d("lowbit_test_checkpoint_gguf");
    const auto src = lowbit::open_model(lowbit_test::stories260k("stories260K.bin"));
    lowbit::gguf_export_options eo;
    eo.weight_type = lowbit::io::ggml_type::f32;
    eo.embedding_type = lowbit::io::ggml_type::f32;
    lowbit::export_gguf(src.model, src.tokenizer, d.path / "s.gguf", eo);
    const auto g = lowbit::open_model(d.path / "s.gguf");
    CHECK(g.kind == "gguf");
    CHECK(g.model.architecture == "llama");
    REQUIRE(g.tokenizer.format() == "llama2c");
    CHECK(g.tokenizer.vocab_size() == src.tokenizer.vocab_size());
    const std::string text = "Once upon a time, there was a little girl named Lily.";
    CHECK(g.tokenizer.encode(text) == src.tokenizer.encode(text));
    // same greedy continuation as the llama2.c checkpoint (FP32 weights, same RoPE pairs)
    const std::vector<int> prompt{1};
    CHECK(lowbit::generate_greedy(g.model, prompt, 24) == lowbit::generate_greedy(src.model, prompt, 24));
}

TEST_CASE("quantize, save and open: HF llama and qwen3moe reload bit-identical, with every expert and the tokenizer") {
    lowbit_test::temp_dir d("lowbit_test_checkpoint_roundtrip");
    for (const auto& [model, recipe] : {std::pair<std::string, std::string>{"llama-21M-en", "absmean-w1.58a8"},
                                        std::pair<std::string, std::string>{"qwen3moe-18M-en", "rtn-w4"}}) {
        const auto src = lowbit::open_model(lowbit_test::hf_model(model));
        lowbit::quantized_model q{lowbit::find_recipe(recipe), {}, {}, src.tokenizer.format(), src.tokenizer.bytes()};
        q.model = lowbit::quantize_model(src.model, q.spec, {}, {}, &q.records);
        std::size_t linears = 0;
        for (int l = 0; l < src.model.config.n_layers; ++l) linears += src.model.block_linears(l).size();
        CHECK(q.records.size() == linears);
        if (model == "qwen3moe-18M-en") {
            CHECK(q.records.count("layers.3.experts.7.w2") == 1);
            CHECK(q.records.at("layers.3.experts.7.w2").rows == 512);
            CHECK(q.records.at("layers.3.experts.7.w2").cols == 256);
        }
        CHECK(q.model.bits_per_weight() < 5.0);
        const auto path = d.path / (model + ".safetensors");
        lowbit::save_quantized_model(path, q);
        const auto back = lowbit::open_model(path);
        CHECK(back.kind == "lowbit");
        REQUIRE(back.quantized);
        CHECK(back.quantized->spec.name == recipe);
        CHECK(back.tokenizer.format() == "hf-json");
        CHECK(back.tokenizer.bytes() == src.tokenizer.bytes());
        CHECK(back.model.architecture == src.model.architecture);
        CHECK(back.model.bits_per_weight() == q.model.bits_per_weight());
        const auto ids = lowbit_test::read_values<std::uint32_t>(lowbit_test::hf_model(model, "reference/ref_ids.u32"));
        const std::vector<int> toks(ids.begin(), ids.begin() + 32);
        lowbit::kv_cache c1(q.model.config), c2(back.model.config);
        CHECK((lowbit::forward(q.model, c1, toks).array() == lowbit::forward(back.model, c2, toks).array()).all());
        // quantization really changed the function, and the quantized model is still a language model
        lowbit::kv_cache c3(src.model.config);
        const lowbit::matrix_f ref = lowbit::forward(src.model, c3, toks);
        c1.clear();
        const lowbit::matrix_f got = lowbit::forward(q.model, c1, toks);
        CHECK((got - ref).cwiseAbs().maxCoeff() > 1e-3f);
        CHECK(got.allFinite());
    }
}

TEST_CASE("a saved model whose records disagree with its architecture is refused") {
    lowbit_test::temp_dir d("lowbit_test_checkpoint_mismatch");
    const auto src = lowbit::open_model(lowbit_test::qwen3moe18m());
    lowbit::quantized_model q{lowbit::find_recipe("rtn-w4"), {}, {}, {}, {}};
    q.model = lowbit::quantize_model(src.model, q.spec, {}, {}, &q.records);
    auto missing = q;
    missing.records.erase("layers.1.experts.4.w3");
    CHECK_THROWS_WITH_AS(lowbit::save_quantized_model(d.path / "m.safetensors", missing),
                         doctest::Contains("missing record for layers.1.experts.4.w3"), lowbit::invalid_argument);
    CHECK(!std::filesystem::exists(d.path / "m.safetensors")); // nothing written
}
