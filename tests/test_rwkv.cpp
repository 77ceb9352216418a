// Tests of model/rwkv.hpp: the RWKV-4 checkpoint, forward pass, WKV kernels, state, perplexity.
// Oracles: transformers' float32 logits of rwkv4-25M-en (reference/ref_logits.f32, its sequential
// `rwkv_linear_attention_cpu`), its greedy continuation and dev perplexity (reference.json); a
// double-precision brute-force WKV written from the definition (no max shifting); hand-written
// config.json files and tiny checkpoints for every refusal.
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/model/rwkv.hpp>

#include "models.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

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

const lowbit::rwkv_model& rwkv() {
    static const lowbit::rwkv_model m = lowbit::load_rwkv_model(lowbit_test::rwkv4_25m());
    return m;
}

std::vector<int> ref_ids() {
    const auto u = read_values<std::uint32_t>(lowbit_test::rwkv4_25m("reference/ref_ids.u32"));
    return {u.begin(), u.end()};
}

lowbit::detail::json_value reference_json() {
    std::ifstream f(lowbit_test::rwkv4_25m("reference/reference.json"));
    const std::string text((std::istreambuf_iterator<char>(f)), {});
    return lowbit::detail::json_parser(text, "reference.json").parse_document();
}

std::vector<int> json_ids(const lowbit::detail::json_value& a) {
    std::vector<int> out;
    for (const auto& v : a.items) out.push_back(std::stoi(v.text));
    return out;
}

/// The WKV of one channel set in double, from the definition (sums over all earlier tokens, no
/// max shifting; inputs kept small so nothing overflows). `n0`, `d0`: the entry state's N and D.
lowbit::matrix_f wkv_oracle(const lowbit::matrix_f& k, const lowbit::matrix_f& v, const lowbit::vector_f& decay,
                            const lowbit::vector_f& first, const std::vector<double>& n0, const std::vector<double>& d0) {
    lowbit::matrix_f y(k.rows(), k.cols());
    for (Eigen::Index c = 0; c < k.cols(); ++c) {
        const double w = -std::exp(static_cast<double>(decay(c))), u = first(c);
        for (Eigen::Index t = 0; t < k.rows(); ++t) {
            double num = n0[static_cast<std::size_t>(c)] * std::exp(static_cast<double>(t) * w);
            double den = d0[static_cast<std::size_t>(c)] * std::exp(static_cast<double>(t) * w);
            for (Eigen::Index i = 0; i < t; ++i) {
                const double e = std::exp(static_cast<double>(t - 1 - i) * w + k(i, c));
                num += e * v(i, c);
                den += e;
            }
            const double e = std::exp(u + k(t, c));
            y(t, c) = static_cast<float>((num + e * v(t, c)) / (den + e));
        }
    }
    return y;
}

struct temp_dir {
    std::filesystem::path path;
    explicit temp_dir(const std::string& name) : path(std::filesystem::temp_directory_path() / name) {
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~temp_dir() { std::filesystem::remove_all(path); }
};

void write_text(const std::filesystem::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

const char* tiny_config = R"({"architectures": ["RwkvForCausalLM"], "model_type": "rwkv", "hidden_size": 16,
 "attention_hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 32,
 "context_length": 64, "layer_norm_epsilon": 1e-5, "rescale_every": 0, "tie_word_embeddings": false,
 "bos_token_id": 0, "eos_token_id": 0, "use_cache": true, "dtype": "float32", "transformers_version": "5.17.0"})";

/// Tensors of a tiny RWKV-4 (dim 16, 2 layers, vocab 32); vectors marked by one row, time_mix as [1, 1, n].
std::map<std::string, lowbit::matrix_f> tiny_tensors() {
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0.0f, 0.2f);
    std::uniform_real_distribution<float> u01(0.0f, 1.0f);
    auto rnd = [&](Eigen::Index r, Eigen::Index c) {
        lowbit::matrix_f m(r, c);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
        return m;
    };
    auto mix = [&] {
        lowbit::matrix_f m(1, 16);
        for (Eigen::Index i = 0; i < 16; ++i) m(0, i) = u01(rng);
        return m;
    };
    std::map<std::string, lowbit::matrix_f> t;
    t["rwkv.embeddings.weight"] = rnd(32, 16);
    t["rwkv.ln_out.weight"] = lowbit::matrix_f::Ones(1, 16);
    t["rwkv.ln_out.bias"] = lowbit::matrix_f::Zero(1, 16);
    t["head.weight"] = rnd(32, 16);
    for (int l = 0; l < 2; ++l) {
        const std::string p = "rwkv.blocks." + std::to_string(l) + ".";
        if (l == 0) {
            t[p + "pre_ln.weight"] = lowbit::matrix_f::Ones(1, 16);
            t[p + "pre_ln.bias"] = rnd(1, 16);
        }
        for (const char* n : {"ln1", "ln2"}) {
            t[p + n + ".weight"] = lowbit::matrix_f::Ones(1, 16) + rnd(1, 16);
            t[p + n + ".bias"] = rnd(1, 16);
        }
        t[p + "attention.time_decay"] = rnd(1, 16);
        t[p + "attention.time_first"] = rnd(1, 16);
        for (const char* n : {"attention.time_mix_key", "attention.time_mix_value", "attention.time_mix_receptance",
                              "feed_forward.time_mix_key", "feed_forward.time_mix_receptance"})
            t[p + n] = mix();
        for (const char* n : {"attention.key", "attention.value", "attention.receptance", "attention.output",
                              "feed_forward.receptance"})
            t[p + n + ".weight"] = rnd(16, 16);
        t[p + "feed_forward.key.weight"] = rnd(64, 16);
        t[p + "feed_forward.value.weight"] = rnd(16, 64);
    }
    return t;
}

void write_tiny(const std::filesystem::path& dir, const std::map<std::string, lowbit::matrix_f>& t,
                const std::string& config = tiny_config) {
    write_text(dir / "config.json", config);
    lowbit::io::safetensors_writer w;
    for (const auto& [name, m] : t) {
        const auto bytes = std::as_bytes(std::span<const float>(m.data(), static_cast<std::size_t>(m.size())));
        if (name.find("time_mix") != std::string::npos)
            w.add(name, lowbit::io::st_dtype::F32, {1, 1, static_cast<std::uint64_t>(m.cols())}, bytes);
        else if (m.rows() == 1)
            w.add(name, lowbit::io::st_dtype::F32, {static_cast<std::uint64_t>(m.cols())}, bytes);
        else
            w.add(name, m);
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

TEST_CASE("rwkv4-25M-en: config.json and every tensor load with the shapes of the README") {
    const auto& m = rwkv();
    CHECK(m.config.dim == 512);
    CHECK(m.config.attention_dim == 512);
    CHECK(m.config.ffn_dim == 2048);
    CHECK(m.config.n_layers == 6);
    CHECK(m.config.vocab_size == 4096);
    CHECK(m.config.eos_token_id == 0);
    CHECK(m.blocks[0].pre_ln_weight.size() == 512);
    CHECK(m.blocks[1].pre_ln_weight.size() == 0);
    CHECK(m.linear(3, lowbit::rwkv_slot::ffn_key).out_features() == 2048);
    CHECK(m.linear(3, lowbit::rwkv_slot::ffn_value).in_features() == 2048);
    // parameters of the README: 24,677,376
    long long n = m.embedding.size() + 2 * 512 + m.head->in_features() * m.head->out_features();
    for (const auto& b : m.blocks) {
        n += b.pre_ln_weight.size() * 2 + 4 * 512 + 2 * 512 + 5 * 512;
        for (const auto& op : b.linear) n += op->in_features() * op->out_features();
    }
    CHECK(n == 24677376);
    CHECK(m.bits_per_weight() == 32.0);
}

TEST_CASE("rwkv4-25M-en: logits of the reference window match transformers within 2e-3 (both WKV kernels)") {
    const auto ids = ref_ids();
    REQUIRE(ids.size() == 128u);
    const auto ref = read_values<float>(lowbit_test::rwkv4_25m("reference/ref_logits.f32"));
    REQUIRE(ref.size() == 128u * 4096u);
    const Eigen::Map<const lowbit::matrix_f> want(ref.data(), 128, 4096);
    for (auto kernel : {lowbit::wkv_kernel::sequential, lowbit::wkv_kernel::chunked}) {
        lowbit::rwkv_state s(rwkv().config);
        const lowbit::matrix_f got = lowbit::forward(rwkv(), s, ids, lowbit::logits_rows::all, nullptr, kernel);
        const double err = (got - want).cwiseAbs().maxCoeff();
        MESSAGE("max |logit error| " << err << std::string(kernel == lowbit::wkv_kernel::chunked ? " (chunked)" : " (sequential)"));
        CHECK(err <= 2e-3);
        CHECK(s.tokens == 128);
    }
}

TEST_CASE("WKV: sequential and chunked equal a double-precision brute force, from zero and carried states") {
    std::mt19937 rng(11);
    std::normal_distribution<float> g(0.0f, 1.0f);
    const Eigen::Index T = 45, C = 24;
    lowbit::matrix_f k(T, C), v(T, C);
    lowbit::vector_f decay(C), first(C);
    for (Eigen::Index i = 0; i < k.size(); ++i) k.data()[i] = 1.5f * g(rng);
    for (Eigen::Index i = 0; i < v.size(); ++i) v.data()[i] = g(rng);
    for (Eigen::Index c = 0; c < C; ++c) {
        decay(c) = -3.0f + 0.25f * static_cast<float>(c); // w from −0.05 (slow) to −12 (fast)
        first(c) = g(rng);
    }
    const std::vector<double> zero(static_cast<std::size_t>(C), 0.0);
    const lowbit::matrix_f want = wkv_oracle(k, v, decay, first, zero, zero);
    lowbit::wkv_state s0(C);
    lowbit::matrix_f ys;
    lowbit::wkv_sequential(k, v, decay, first, s0, ys);
    CHECK((ys - want).cwiseAbs().maxCoeff() < 2e-5);
    for (int chunk : {1, 3, 16, 32, 64}) {
        lowbit::wkv_state sc(C);
        lowbit::matrix_f yc;
        lowbit::wkv_chunked(k, v, decay, first, sc, yc, chunk);
        INFO("chunk " << chunk);
        CHECK((yc - want).cwiseAbs().maxCoeff() < 2e-5);
        CHECK((yc - ys).cwiseAbs().maxCoeff() < 2e-5);
        // the final states represent the same N and D
        for (Eigen::Index c = 0; c < C; ++c) {
            const double n1 = sc.num(c) * std::exp(static_cast<double>(sc.max(c))), n2 = s0.num(c) * std::exp(static_cast<double>(s0.max(c)));
            const double d1 = sc.den(c) * std::exp(static_cast<double>(sc.max(c))), d2 = s0.den(c) * std::exp(static_cast<double>(s0.max(c)));
            CHECK(n1 == doctest::Approx(n2).epsilon(1e-4).scale(1e-6));
            CHECK(d1 == doctest::Approx(d2).epsilon(1e-4));
        }
    }
    // split: 20 tokens, then the remaining 25 from the carried state, equals the whole
    for (auto kern : {0, 1}) {
        lowbit::wkv_state s(C);
        lowbit::matrix_f y1, y2;
        const lowbit::matrix_f k1 = k.topRows(20), v1 = v.topRows(20), k2 = k.bottomRows(25), v2 = v.bottomRows(25);
        if (kern == 0) {
            lowbit::wkv_sequential(k1, v1, decay, first, s, y1);
            lowbit::wkv_sequential(k2, v2, decay, first, s, y2);
        } else {
            lowbit::wkv_chunked(k1, v1, decay, first, s, y1, 7);
            lowbit::wkv_chunked(k2, v2, decay, first, s, y2, 7);
        }
        CHECK((y1 - want.topRows(20)).cwiseAbs().maxCoeff() < 2e-5);
        CHECK((y2 - want.bottomRows(25)).cwiseAbs().maxCoeff() < 2e-5);
    }
    // large keys (e^k overflows float without the max shift)
    lowbit::matrix_f kb = k.array() * 40.0f;
    lowbit::wkv_state a(C), b(C);
    lowbit::matrix_f ya, yb;
    lowbit::wkv_sequential(kb, v, decay, first, a, ya);
    lowbit::wkv_chunked(kb, v, decay, first, b, yb, 16);
    CHECK(ya.allFinite());
    CHECK((ya - yb).cwiseAbs().maxCoeff() < 1e-4);
    // sizes are checked
    lowbit::wkv_state bad(C + 1);
    CHECK_THROWS_AS(lowbit::wkv_sequential(k, v, decay, first, bad, ya), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::wkv_chunked(k, v, decay, first, a, ya, 0), lowbit::invalid_argument);
}

TEST_CASE("rwkv4-25M-en: sequential and chunked forward agree on a 512-token window") {
    const auto docs = lowbit::io::read_text_documents(lowbit_test::models_dir() / "text-en" / "calib.jsonl");
    const auto tok = lowbit::io::bpe_tokenizer::load(lowbit_test::rwkv4_25m("tokenizer.json"));
    const std::vector<std::string> first(docs.begin(), docs.begin() + 3);
    auto stream = lowbit::io::document_stream(tok, first, 0);
    REQUIRE(stream.size() >= 512u);
    stream.resize(512);
    lowbit::rwkv_state a(rwkv().config), b(rwkv().config);
    const auto ya = lowbit::forward(rwkv(), a, stream, lowbit::logits_rows::all, nullptr, lowbit::wkv_kernel::sequential);
    const auto yb = lowbit::forward(rwkv(), b, stream, lowbit::logits_rows::all, nullptr, lowbit::wkv_kernel::chunked);
    const double err = (ya - yb).cwiseAbs().maxCoeff();
    MESSAGE("sequential vs chunked, 512 tokens: max |logit difference| " << err);
    CHECK(err < 1e-3);
}

TEST_CASE("rwkv4-25M-en: token-by-token generation from the recurrent state equals the batch forward") {
    auto ids = ref_ids();
    ids.resize(40);
    lowbit::rwkv_state batch(rwkv().config);
    const auto all = lowbit::forward(rwkv(), batch, ids);
    lowbit::rwkv_state step(rwkv().config);
    double err = 0;
    for (std::size_t t = 0; t < ids.size(); ++t) {
        const auto one = lowbit::forward(rwkv(), step, std::span<const int>(&ids[t], 1));
        err = std::max(err, static_cast<double>((one.row(0) - all.row(static_cast<Eigen::Index>(t))).cwiseAbs().maxCoeff()));
    }
    MESSAGE("token-by-token vs batch: max |logit difference| " << err);
    CHECK(err < 1e-3);
    // the states agree too
    for (int l = 0; l < 6; ++l) {
        CHECK((step.att_shift[static_cast<std::size_t>(l)] - batch.att_shift[static_cast<std::size_t>(l)]).cwiseAbs().maxCoeff() < 1e-4);
        CHECK((step.wkv[static_cast<std::size_t>(l)].max - batch.wkv[static_cast<std::size_t>(l)].max).cwiseAbs().maxCoeff() < 1e-3);
    }
    // prefill in two pieces equals one piece
    lowbit::rwkv_state two(rwkv().config);
    (void)lowbit::forward(rwkv(), two, std::span<const int>(ids.data(), 25));
    const auto rest = lowbit::forward(rwkv(), two, std::span<const int>(ids.data() + 25, 15));
    CHECK((rest - all.bottomRows(15)).cwiseAbs().maxCoeff() < 1e-3);
}

TEST_CASE("rwkv4-25M-en: greedy generation reproduces transformers' continuation (reference.json)") {
    const auto root = reference_json();
    const auto& greedy = *lowbit::detail::json_member(root, "greedy");
    const auto prompt = json_ids(*lowbit::detail::json_member(greedy, "prompt_ids"));
    const auto full = json_ids(*lowbit::detail::json_member(greedy, "output_ids"));
    REQUIRE(full.size() > prompt.size() + 24);
    lowbit::sampling_options o;
    o.max_new_tokens = 24;
    const auto out = lowbit::generate(rwkv(), prompt, o);
    REQUIRE(out.size() == 24u);
    for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == full[prompt.size() + i]);
    // sampling is deterministic for a seed
    o.temperature = 0.8f;
    o.top_k = 40;
    o.seed = 3;
    CHECK(lowbit::generate(rwkv(), prompt, o) == lowbit::generate(rwkv(), prompt, o));
}

TEST_CASE("rwkv perplexity protocol: windows of 512 from 0, each from the zero state, tokens 1..len-1 scored") {
    const auto& m = rwkv();
    std::vector<int> toks;
    std::mt19937 rng(3);
    for (int i = 0; i < 600; ++i) toks.push_back(static_cast<int>(rng() % 4096));
    lowbit::perplexity_options o;
    const auto r = lowbit::perplexity(m, toks, o);
    CHECK(r.windows == 2);
    CHECK(r.scored == 511 + 87);
    // the second window by hand: zero state, logits of its tokens, double log-softmax
    lowbit::rwkv_state s(m.config);
    const std::span<const int> w2(toks.data() + 512, 88);
    const auto logits = lowbit::forward(m, s, w2.first(87));
    double nll2 = 0;
    for (Eigen::Index t = 0; t < 87; ++t) {
        double mx = logits.row(t).maxCoeff(), z = 0;
        for (Eigen::Index j = 0; j < 4096; ++j) z += std::exp(static_cast<double>(logits(t, j)) - mx);
        nll2 += mx + std::log(z) - logits(t, w2[static_cast<std::size_t>(t) + 1]);
    }
    o.max_windows = 1;
    const auto r1 = lowbit::perplexity(m, toks, o);
    CHECK(r1.scored == 511);
    CHECK(r.mean_nll * 598 == doctest::Approx(r1.mean_nll * 511 + nll2).epsilon(1e-9));
    o.max_windows = -1;
    o.threads = 2;
    CHECK(lowbit::perplexity(m, toks, o).mean_nll == r.mean_nll);
    o.window = 1;
    CHECK_THROWS_AS((void)lowbit::perplexity(m, toks, o), lowbit::invalid_argument);
}

TEST_CASE("rwkv4-25M-en: dev perplexity reproduces reference.json within 0.02 %" * doctest::test_suite("long")) {
    const auto docs = lowbit::io::read_text_documents(lowbit_test::models_dir() / "text-en" / "dev.jsonl");
    const auto tok = lowbit::io::bpe_tokenizer::load(lowbit_test::rwkv4_25m("tokenizer.json"));
    const auto stream = lowbit::io::document_stream(tok, docs, 0);
    CHECK(stream.size() == 722162u);
    const auto root = reference_json();
    const auto& all = *lowbit::detail::json_member(*lowbit::detail::json_member(*lowbit::detail::json_member(root, "ppl"), "dev"), "all");
    const double want = std::stod(all.items[0].text);
    lowbit::perplexity_options o;
    o.threads = 2;
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = lowbit::perplexity(rwkv(), stream, o);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("rwkv4-25M-en: dev perplexity " << r.perplexity << " (transformers " << want << "), " << r.scored
                                            << " tokens, " << secs << " s with 2 threads");
    CHECK(r.scored == std::stoll(all.items[1].text));
    CHECK(std::abs(r.perplexity / want - 1.0) <= 2e-4);
}

TEST_CASE("rwkv config.json: unsupported model types and unknown keys are refused, naming the key") {
    const std::string base = tiny_config;
    auto msg = [](const std::string& json) { return error_of([&] { (void)lowbit::parse_rwkv_config(json, "x/config.json"); }); };
    const auto c = lowbit::parse_rwkv_config(base);
    CHECK(c.dim == 16);
    CHECK(c.ffn_dim == 64);
    std::string j = base;
    j.replace(j.find("\"rwkv\""), 6, "\"rwkv6\"");
    CHECK(msg(j).find("model_type 'rwkv6'") != std::string::npos);
    j = base;
    j.insert(j.size() - 1, ", \"head_size\": 64");
    CHECK(msg(j).find("key 'head_size' is not understood") != std::string::npos);
    CHECK(msg(j).find("x/config.json") != std::string::npos);
    j = base;
    j.insert(j.size() - 1, ", \"quantization_config\": {}");
    CHECK(msg(j).find("'quantization_config'") != std::string::npos);
    j = base;
    j.replace(j.find("\"hidden_size\": 16"), 17, "\"hidden_size\": 0");
    CHECK(msg(j).find("'hidden_size' must lie in") != std::string::npos);
    j = base;
    j.replace(j.find("\"num_hidden_layers\": 2,"), 23, "");
    CHECK(msg(j).find("'num_hidden_layers' is missing") != std::string::npos);
    CHECK_THROWS_AS((void)lowbit::parse_rwkv_config("{"), lowbit::format_error);
}

TEST_CASE("rwkv checkpoints that disagree with config.json, or hold NaN, are refused naming file and tensor") {
    temp_dir d("lowbit_test_rwkv_model");
    write_tiny(d.path, tiny_tensors());
    const auto m = lowbit::load_rwkv_model(d.path);
    lowbit::rwkv_state s(m.config);
    const std::vector<int> toks{1, 2, 3, 31};
    CHECK(lowbit::forward(m, s, toks).allFinite());
    CHECK_THROWS_AS((void)lowbit::forward(m, s, std::vector<int>{32}), lowbit::invalid_argument);
    lowbit::rwkv_state wrong;
    CHECK_THROWS_AS((void)lowbit::forward(m, wrong, toks), lowbit::shape_error);

    auto refuse = [&](const std::map<std::string, lowbit::matrix_f>& t, const std::string& fragment,
                      const std::string& config = tiny_config) {
        write_tiny(d.path, t, config);
        const std::string msg = error_of([&] { (void)lowbit::load_rwkv_model(d.path); });
        INFO(msg);
        CHECK(msg.find(fragment) != std::string::npos);
    };
    auto t = tiny_tensors();
    t.erase("rwkv.blocks.1.attention.time_first");
    refuse(t, "'rwkv.blocks.1.attention.time_first' is missing");
    t = tiny_tensors();
    t["rwkv.blocks.0.feed_forward.value.weight"] = lowbit::matrix_f::Zero(16, 63);
    refuse(t, "'rwkv.blocks.0.feed_forward.value.weight' in 'model.safetensors' has shape [16, 63], config.json implies [16, 64]");
    t = tiny_tensors();
    t["rwkv.blocks.1.attention.time_decay"] = lowbit::matrix_f::Zero(1, 15);
    refuse(t, "'rwkv.blocks.1.attention.time_decay' in 'model.safetensors' has shape [15], config.json implies [16]");
    t = tiny_tensors();
    t["rwkv.blocks.0.attention.receptance.weight"](2, 3) = std::numeric_limits<float>::quiet_NaN();
    refuse(t, "'rwkv.blocks.0.attention.receptance.weight' in 'model.safetensors' holds NaN or Inf");
    t = tiny_tensors();
    t["rwkv.blocks.1.attention.time_mix_key"](0, 0) = std::numeric_limits<float>::infinity();
    refuse(t, "'rwkv.blocks.1.attention.time_mix_key' in 'model.safetensors' holds NaN or Inf");
    t = tiny_tensors();
    t["rwkv.blocks.1.pre_ln.weight"] = lowbit::matrix_f::Ones(1, 16);
    refuse(t, "'rwkv.blocks.1.pre_ln.weight' in 'model.safetensors' is not used by model_type rwkv");
    t = tiny_tensors();
    t.erase("head.weight");
    refuse(t, "'head.weight' is missing");
    // a config that says 3 layers for a 2-layer checkpoint
    std::string three = tiny_config;
    three.replace(three.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 3");
    refuse(tiny_tensors(), "'rwkv.blocks.2.ln1.weight' is missing", three);
    // vocabulary mismatch
    std::string vocab = tiny_config;
    vocab.replace(vocab.find("\"vocab_size\": 32"), 16, "\"vocab_size\": 40");
    refuse(tiny_tensors(), "'rwkv.embeddings.weight' in 'model.safetensors' has shape [32, 16], config.json implies [40, 16]", vocab);
    // tied embeddings: head.weight stored anyway is accepted, and the head is the embedding
    std::string tied = tiny_config;
    tied.replace(tied.find("\"tie_word_embeddings\": false"), 28, "\"tie_word_embeddings\": true");
    write_tiny(d.path, tiny_tensors(), tied);
    const auto mt = lowbit::load_rwkv_model(d.path);
    lowbit::rwkv_state st(mt.config);
    CHECK(lowbit::forward(mt, st, toks).allFinite());
    std::filesystem::remove(d.path / "config.json");
    CHECK_THROWS_AS((void)lowbit::load_rwkv_model(d.path), lowbit::format_error);
}

TEST_CASE("rwkv rescale_every: halving the residual stream changes the logits only through LayerNorm's eps") {
    temp_dir d("lowbit_test_rwkv_rescale");
    write_tiny(d.path, tiny_tensors());
    const auto m0 = lowbit::load_rwkv_model(d.path);
    std::string cfg = tiny_config;
    cfg.replace(cfg.find("\"rescale_every\": 0"), 18, "\"rescale_every\": 1");
    write_tiny(d.path, tiny_tensors(), cfg);
    const auto m1 = lowbit::load_rwkv_model(d.path);
    CHECK(m1.config.rescale_every == 1);
    const std::vector<int> toks{4, 9, 17, 2, 30};
    lowbit::rwkv_state a(m0.config), b(m1.config);
    const auto y0 = lowbit::forward(m0, a, toks), y1 = lowbit::forward(m1, b, toks);
    CHECK((y0 - y1).cwiseAbs().maxCoeff() < 1e-3);
}
