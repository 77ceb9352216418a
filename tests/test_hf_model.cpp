// Tests of model/hf_model.hpp: Hugging Face config.json and checkpoints into the forward pass.
// Oracles: transformers' own float32 logits and router logits of the two real checkpoints
// (reference/ref_logits.f32, ref_router_logits.f32, computed by transformers 5.17 from the saved
// bf16 weights); the perplexity of reference.json (long suite: 30 TFLOP of forward passes);
// hand-written config.json files for every refusal.
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/model/hf_model.hpp>

#include "models.hpp"
#include "test_files.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

std::vector<int> ref_ids(const std::string& model) {
    const auto u = lowbit_test::read_values<std::uint32_t>(lowbit_test::hf_model(model, "reference/ref_ids.u32"));
    return {u.begin(), u.end()};
}

/// max |a − b| over the logits of the 128 reference tokens run as one window.
double logits_error(const lowbit::llama_model& m, const std::string& model, std::vector<lowbit::matrix_f>* router = nullptr) {
    const auto ids = ref_ids(model);
    const auto ref = lowbit_test::read_values<float>(lowbit_test::hf_model(model, "reference/ref_logits.f32"));
    REQUIRE(ref.size() == ids.size() * static_cast<std::size_t>(m.config.vocab_size));
    lowbit::kv_cache cache(m.config);
    lowbit::forward_hooks hooks;
    if (router) hooks.on_router_logits = [&](int, const lowbit::matrix_f& x) { router->push_back(x); };
    const lowbit::matrix_f got = lowbit::forward(m, cache, ids, lowbit::logits_rows::all, &hooks);
    const Eigen::Map<const lowbit::matrix_f> want(ref.data(), got.rows(), got.cols());
    return static_cast<double>((got - want).cwiseAbs().maxCoeff());
}

const lowbit::llama_model& llama() {
    static const lowbit::llama_model m = lowbit::load_hf_model(lowbit_test::llama21m());
    return m;
}
const lowbit::llama_model& qwen_moe() {
    static const lowbit::llama_model m = lowbit::load_hf_model(lowbit_test::qwen3moe18m());
    return m;
}

void write_text(const std::filesystem::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

/// A tiny llama checkpoint (hidden 16, 2 heads, 1 layer, vocab 32) in Hugging Face layout, with
/// `edit` applied to the tensor map before writing.
const char* tiny_config = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
 "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
 "vocab_size": 32, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
 "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0})";

std::map<std::string, lowbit::matrix_f> tiny_tensors() {
    std::mt19937 rng(5);
    std::normal_distribution<float> g(0.0f, 0.1f);
    auto rnd = [&](Eigen::Index r, Eigen::Index c) {
        lowbit::matrix_f m(r, c);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
        return m;
    };
    std::map<std::string, lowbit::matrix_f> t;
    t["model.embed_tokens.weight"] = rnd(32, 16);
    t["model.norm.weight"] = lowbit::matrix_f::Ones(1, 16);
    const std::string p = "model.layers.0.";
    t[p + "input_layernorm.weight"] = lowbit::matrix_f::Ones(1, 16);
    t[p + "post_attention_layernorm.weight"] = lowbit::matrix_f::Ones(1, 16);
    t[p + "self_attn.q_proj.weight"] = rnd(16, 16);
    t[p + "self_attn.k_proj.weight"] = rnd(8, 16);
    t[p + "self_attn.v_proj.weight"] = rnd(8, 16);
    t[p + "self_attn.o_proj.weight"] = rnd(16, 16);
    t[p + "mlp.gate_proj.weight"] = rnd(32, 16);
    t[p + "mlp.up_proj.weight"] = rnd(32, 16);
    t[p + "mlp.down_proj.weight"] = rnd(16, 32);
    return t;
}

void write_tiny(const std::filesystem::path& dir, const std::map<std::string, lowbit::matrix_f>& t,
                const std::string& config = tiny_config) {
    write_text(dir / "config.json", config);
    lowbit::io::safetensors_writer w;
    for (const auto& [name, m] : t) {
        if (m.rows() == 1) { // vectors are rank 1 in Hugging Face checkpoints
            w.add(name, lowbit::io::st_dtype::F32, {static_cast<std::uint64_t>(m.cols())},
                  std::as_bytes(std::span<const float>(m.data(), static_cast<std::size_t>(m.size()))));
        } else {
            w.add(name, m);
        }
    }
    w.write(dir / "model.safetensors");
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const lowbit::error& e) {
        return e.what();
    }
    return "(no error)";
}

} // namespace

TEST_CASE("llama-21M-en: logits of the reference window match transformers within 2e-3") {
    const auto& m = llama();
    CHECK(m.architecture == "llama");
    CHECK(m.config.dim == 512);
    CHECK(m.config.n_kv_heads == 4);
    CHECK(m.config.rope == lowbit::rope_layout::rotate_half);
    CHECK(m.config.bos_token == -1);
    CHECK(m.bits_per_weight() == 32.0);
    const double err = logits_error(m, "llama-21M-en");
    MESSAGE("llama-21M-en max abs logit error: " << err);
    CHECK(err <= 2e-3);
}

TEST_CASE("qwen3moe-18M-en: logits within 2e-3 and the same top-2 experts for every token and layer") {
    const auto& m = qwen_moe();
    CHECK(m.architecture == "qwen3_moe");
    CHECK(m.config.qk_norm);
    CHECK(m.config.n_experts == 8);
    CHECK(m.config.n_experts_per_token == 2);
    CHECK(m.config.norm_topk_prob);
    REQUIRE(m.blocks.size() == 4);
    CHECK(m.blocks[0].is_moe());
    CHECK(m.block_linears(0).size() == 4 + 8 * 3);
    std::vector<lowbit::matrix_f> router;
    const double err = logits_error(m, "qwen3moe-18M-en", &router);
    MESSAGE("qwen3moe-18M-en max abs logit error: " << err);
    CHECK(err <= 2e-3);
    const auto ref = lowbit_test::read_values<float>(lowbit_test::qwen3moe18m("reference/ref_router_logits.f32"));
    REQUIRE(router.size() == 4);
    REQUIRE(ref.size() == 4u * 128u * 8u);
    int mismatches = 0;
    double router_err = 0;
    for (int l = 0; l < 4; ++l)
        for (int t = 0; t < 128; ++t) {
            const float* want = &ref[static_cast<std::size_t>((l * 128 + t) * 8)];
            auto top2 = [](auto value) {
                int a = 0;
                for (int e = 1; e < 8; ++e)
                    if (value(e) > value(a)) a = e;
                int b = a == 0 ? 1 : 0;
                for (int e = 0; e < 8; ++e)
                    if (e != a && value(e) > value(b)) b = e;
                return std::pair<int, int>(std::min(a, b), std::max(a, b));
            };
            const auto g = top2([&](int e) { return router[static_cast<std::size_t>(l)](t, e); });
            const auto w = top2([&](int e) { return want[e]; });
            mismatches += g != w;
            for (int e = 0; e < 8; ++e)
                router_err = std::max(router_err, static_cast<double>(std::abs(router[static_cast<std::size_t>(l)](t, e) - want[e])));
        }
    MESSAGE("router logits max abs error: " << router_err);
    CHECK(mismatches == 0);
    CHECK(router_err <= 1e-3);
}

TEST_CASE("KV cache: one batch equals token-by-token decoding on both architectures") {
    for (const auto* m : {&llama(), &qwen_moe()}) {
        const auto ids = ref_ids(m == &llama() ? "llama-21M-en" : "qwen3moe-18M-en");
        const std::vector<int> toks(ids.begin(), ids.begin() + 12);
        lowbit::kv_cache a(m->config), b(m->config);
        const lowbit::matrix_f all = lowbit::forward(*m, a, toks);
        for (std::size_t i = 0; i < toks.size(); ++i) {
            const lowbit::matrix_f one = lowbit::forward(*m, b, std::span<const int>(&toks[i], 1));
            CHECK((one.row(0) - all.row(static_cast<Eigen::Index>(i))).cwiseAbs().maxCoeff() < 1e-3f);
        }
    }
}

TEST_CASE("greedy generation reproduces transformers' continuation (first 24 tokens)") {
    // reference.json's greedy output: prompt_ids then output_ids (which repeat the prompt).
    for (const char* model : {"llama-21M-en", "qwen3moe-18M-en"}) {
        std::ifstream f(lowbit_test::hf_model(model, "reference/reference.json"));
        const std::string text((std::istreambuf_iterator<char>(f)), {});
        const auto root = lowbit::detail::json_parser(text, "reference.json").parse_document();
        const auto* g = lowbit::detail::json_member(root, "greedy");
        REQUIRE(g);
        std::vector<int> prompt, out;
        for (const auto& v : lowbit::detail::json_member(*g, "prompt_ids")->items) prompt.push_back(std::stoi(v.text));
        for (const auto& v : lowbit::detail::json_member(*g, "output_ids")->items) out.push_back(std::stoi(v.text));
        REQUIRE(out.size() > prompt.size() + 24);
        const auto& m = std::string(model) == "llama-21M-en" ? llama() : qwen_moe();
        const auto gen = lowbit::generate_greedy(m, prompt, 24);
        const std::vector<int> want(out.begin() + static_cast<std::ptrdiff_t>(prompt.size()),
                                    out.begin() + static_cast<std::ptrdiff_t>(prompt.size()) + 24);
        CHECK(gen == want);
    }
}

TEST_CASE("perplexity protocol without BOS: windows of 512 from 0, last one shorter, tokens 1..len-1 scored") {
    const auto ids = lowbit_test::read_values<std::uint32_t>(lowbit_test::llama21m("reference/dev_ids.u32"));
    const std::vector<int> toks(ids.begin(), ids.begin() + 1100); // 512 + 512 + 76
    const auto r = lowbit::perplexity(llama(), toks);
    CHECK(r.windows == 3);
    CHECK(r.scored == 511 + 511 + 75);
    // the same figure with two threads (windows summed in order)
    lowbit::perplexity_options o;
    o.threads = 2;
    CHECK(lowbit::perplexity(llama(), toks, o).mean_nll == r.mean_nll);
    // oracle for the NLL of one window: log-softmax of forward's logits, in double
    lowbit::kv_cache cache(llama().config);
    const std::vector<int> w(toks.begin(), toks.begin() + 511);
    const lowbit::matrix_f logits = lowbit::forward(llama(), cache, w);
    double nll = 0;
    for (Eigen::Index t = 0; t < 511; ++t) {
        const Eigen::VectorXd row = logits.row(t).cast<double>().transpose();
        nll += std::log((row.array() - row.maxCoeff()).exp().sum()) + row.maxCoeff() - row(toks[static_cast<std::size_t>(t) + 1]);
    }
    lowbit::perplexity_options one;
    one.max_windows = 1;
    const auto r1 = lowbit::perplexity(llama(), toks, one);
    CHECK(r1.scored == 511);
    CHECK(r1.mean_nll == doctest::Approx(nll / 511).epsilon(1e-12));
}

TEST_CASE("dev perplexity reproduces reference.json within 0.02 % (both checkpoints)" * doctest::test_suite("long")) {
    // 720,751 scored tokens: ~30 TFLOP (llama) + ~12 TFLOP (MoE) of float32 forward passes.
    const auto docs = lowbit::io::read_text_documents(lowbit_test::models_dir() / "text-en" / "dev.jsonl");
    const auto tok = lowbit::io::bpe_tokenizer::load(lowbit_test::llama21m("tokenizer.json"));
    const auto stream = lowbit::io::document_stream(tok, docs, 0);
    CHECK(stream.size() == 722162u);
    for (const char* model : {"llama-21M-en", "qwen3moe-18M-en"}) {
        std::ifstream f(lowbit_test::hf_model(model, "reference/reference.json"));
        const std::string text((std::istreambuf_iterator<char>(f)), {});
        const auto root = lowbit::detail::json_parser(text, "reference.json").parse_document();
        const auto& all = *lowbit::detail::json_member(*lowbit::detail::json_member(*lowbit::detail::json_member(root, "ppl"), "dev"), "all");
        const double want = std::stod(all.items[0].text);
        lowbit::perplexity_options o;
        o.threads = 2;
        const auto r = lowbit::perplexity(std::string(model) == "llama-21M-en" ? llama() : qwen_moe(), stream, o);
        MESSAGE(model << ": dev perplexity " << r.perplexity << " (transformers " << want << "), " << r.scored << " tokens");
        CHECK(r.scored == std::stoll(all.items[1].text));
        CHECK(std::abs(r.perplexity / want - 1.0) <= 2e-4);
    }
}

TEST_CASE("config.json: transformers 4 and 5 spellings give the same configuration") {
    const std::string v5 = R"({"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 100, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "num_local_experts": 4,
        "num_experts_per_tok": 2, "moe_intermediate_size": 32, "norm_topk_prob": true, "decoder_sparse_step": 1,
        "mlp_only_layers": [1], "tie_word_embeddings": false})";
    const std::string v4 = R"({"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 100, "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0, "rope_scaling": null, "num_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [1]})";
    const auto a = lowbit::parse_hf_config(v5), b = lowbit::parse_hf_config(v4);
    for (const auto* h : {&a, &b}) {
        CHECK(h->config.rope_theta == 500000.0f);
        CHECK(h->config.n_experts == 4);
        CHECK(h->config.head_size() == 16);
        CHECK(h->config.moe_hidden_dim == 32);
        CHECK(h->config.hidden_dim == 128);
        CHECK(h->moe_layer == std::vector<bool>{true, false}); // layer 1 is mlp_only
        CHECK(!h->tie_word_embeddings);
    }
    // qwen2: q/k/v biases; qwen3: q/k norms; mistral: sliding window caps the context
    const auto q2 = lowbit::parse_hf_config(R"({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "use_sliding_window": false, "sliding_window": 32})");
    CHECK(q2.config.attention_bias);
    CHECK(!q2.config.qk_norm);
    CHECK(q2.config.n_kv_heads == 4);
    const auto q3 = lowbit::parse_hf_config(R"({"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "head_dim": 32, "vocab_size": 10})");
    CHECK(q3.config.qk_norm);
    CHECK(q3.config.q_dim() == 128);
    const auto mi = lowbit::parse_hf_config(R"({"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "max_position_embeddings": 32768, "sliding_window": 4096})");
    CHECK(mi.config.seq_len == 4096);
}

TEST_CASE("config.json: unsupported architectures and options are refused, naming the key") {
    const std::string base = R"("hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10)";
    auto refuse = [&](const std::string& body, const std::string& fragment) {
        const std::string msg = error_of([&] { (void)lowbit::parse_hf_config("{" + body + "}", "x/config.json"); });
        INFO(msg);
        CHECK(msg.find(fragment) != std::string::npos);
        CHECK(msg.find("x/config.json") != std::string::npos);
    };
    refuse(R"("model_type": "gpt_neox", )" + base, "unsupported model_type 'gpt_neox'");
    refuse(R"("model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}, )" + base, "rope_scaling 'yarn'");
    refuse(R"("model_type": "llama", "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}, )" + base, "rope_type 'llama3'");
    refuse(R"("model_type": "qwen2", "use_sliding_window": true, )" + base, "use_sliding_window");
    refuse(R"("model_type": "llama", "attention_bias": true, )" + base, "attention_bias");
    refuse(R"("model_type": "llama", "mlp_bias": true, )" + base, "mlp_bias");
    refuse(R"("model_type": "llama", "hidden_act": "gelu", )" + base, "hidden_act 'gelu'");
    refuse(R"("model_type": "llama", "quantization_config": {"quant_method": "gptq"}, )" + base, "already quantized");
    refuse(R"("model_type": "llama", "num_key_value_heads": 3, )" + base, "not a multiple");
    refuse(R"("model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4)", "'vocab_size' is missing");
    refuse(R"("model_type": "llama", "hidden_size": -4, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10)", "hidden_size");
    refuse(R"("model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 8, "moe_intermediate_size": 8, )" + base, "exceeds");
    refuse(R"("model_type": "llama", "num_experts": 4, )" + base, "only supported for model_type qwen3_moe");
    CHECK_THROWS_AS((void)lowbit::parse_hf_config("{\"model_type\": \"llama\",}"), lowbit::format_error);
}

TEST_CASE("checkpoints that disagree with config.json, or hold NaN, are refused naming file and tensor") {
    lowbit_test::temp_dir d("lowbit_test_hf_model");
    // the intact tiny checkpoint loads and runs
    write_tiny(d.path, tiny_tensors());
    const auto m = lowbit::load_hf_model(d.path);
    lowbit::kv_cache cache(m.config);
    const std::vector<int> toks{1, 2, 3};
    CHECK(lowbit::forward(m, cache, toks).allFinite());

    auto refuse = [&](const std::map<std::string, lowbit::matrix_f>& t, const std::string& fragment,
                      const std::string& config = tiny_config) {
        write_tiny(d.path, t, config);
        const std::string msg = error_of([&] { (void)lowbit::load_hf_model(d.path); });
        INFO(msg);
        CHECK(msg.find(fragment) != std::string::npos);
    };
    auto t = tiny_tensors();
    t.erase("model.layers.0.self_attn.k_proj.weight");
    refuse(t, "'model.layers.0.self_attn.k_proj.weight' is missing");
    t = tiny_tensors();
    t["model.layers.0.mlp.down_proj.weight"] = lowbit::matrix_f::Zero(16, 31);
    refuse(t, "'model.layers.0.mlp.down_proj.weight' in 'model.safetensors' has shape [16, 31], config.json implies [16, 32]");
    // vocabulary size mismatch: config says 32, embedding has 40 rows
    t = tiny_tensors();
    t["model.embed_tokens.weight"] = lowbit::matrix_f::Zero(40, 16);
    refuse(t, "'model.embed_tokens.weight' in 'model.safetensors' has shape [40, 16], config.json implies [32, 16]");
    t = tiny_tensors();
    t["model.layers.0.self_attn.q_proj.weight"](3, 4) = std::numeric_limits<float>::quiet_NaN();
    refuse(t, "'model.layers.0.self_attn.q_proj.weight' in 'model.safetensors' holds NaN or Inf");
    t = tiny_tensors();
    t["model.layers.0.mlp.gate_proj.weight"](0, 0) = std::numeric_limits<float>::infinity();
    refuse(t, "holds NaN or Inf");
    t = tiny_tensors();
    t["model.layers.0.self_attn.o_proj.bias"] = lowbit::matrix_f::Zero(1, 16);
    refuse(t, "'model.layers.0.self_attn.o_proj.bias' is not used by model_type llama");
    // untied embeddings need lm_head
    std::string untied = tiny_config;
    untied.replace(untied.find("\"tie_word_embeddings\": true"), 27, "\"tie_word_embeddings\": false");
    refuse(tiny_tensors(), "'lm_head.weight' is missing", untied);
    // truncated shard
    write_tiny(d.path, tiny_tensors());
    std::filesystem::resize_file(d.path / "model.safetensors", std::filesystem::file_size(d.path / "model.safetensors") - 5);
    CHECK_THROWS_AS((void)lowbit::load_hf_model(d.path), lowbit::format_error);
    // no config.json
    std::filesystem::remove(d.path / "config.json");
    CHECK_THROWS_AS((void)lowbit::load_hf_model(d.path), lowbit::format_error);
}
