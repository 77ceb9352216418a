#pragma once
// A small two-block Qwen3-MoE-shaped model with random weights, random token streams and record
// equality, shared by the MoE recipe tests (test_moe_recipes, test_mobie).
#include <lowbit/model/llama.hpp>
#include <lowbit/model/recipes.hpp>

#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace lowbit_test {

/// `[r x c]` with N(0, sd²) entries drawn from `rng` (storage order), advancing it.
inline lowbit::matrix_f normal_matrix(Eigen::Index r, Eigen::Index c, std::mt19937_64& rng, float sd) {
    std::normal_distribution<float> g(0.0f, sd);
    lowbit::matrix_f m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
}

/// dim 32, 2 blocks, 4 heads (2 KV, head 8), q/k norms, rotate-half RoPE, 4 experts of width 24
/// with top-`top_k` renormalised routing, vocab 40; weights N(0, 0.3²), embedding and router N(0, 1),
/// tied classifier; deterministic for a seed.
inline lowbit::llama_model small_moe(int top_k, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    lowbit::llama_config c;
    c.dim = 32;
    c.hidden_dim = 48;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.vocab_size = 40;
    c.seq_len = 64;
    c.norm_eps = 1e-6f;
    c.rope = lowbit::rope_layout::rotate_half;
    c.qk_norm = true;
    c.n_experts = 4;
    c.n_experts_per_token = top_k;
    c.moe_hidden_dim = 24;
    c.norm_topk_prob = true;
    c.bos_token = -1;
    c.stop_token = 0;
    lowbit::llama_model m;
    m.config = c;
    m.architecture = "qwen3_moe";
    m.token_embedding = normal_matrix(c.vocab_size, c.dim, rng, 1.0f);
    m.rms_final = lowbit::vector_f::Ones(c.dim);
    m.classifier = lowbit::make_linear(lowbit::dense_linear(m.token_embedding));
    auto lin = [&](Eigen::Index o, Eigen::Index i) { return lowbit::make_linear(lowbit::dense_linear(normal_matrix(o, i, rng, 0.3f))); };
    for (int l = 0; l < c.n_layers; ++l) {
        lowbit::llama_block b;
        b.rms_att = lowbit::vector_f::Ones(c.dim);
        b.rms_ffn = lowbit::vector_f::Ones(c.dim);
        b.q_norm = lowbit::vector_f::Ones(c.head_size());
        b.k_norm = lowbit::vector_f::Ones(c.head_size());
        b.linear[0] = lin(c.q_dim(), c.dim);
        b.linear[1] = lin(c.kv_dim(), c.dim);
        b.linear[2] = lin(c.kv_dim(), c.dim);
        b.linear[3] = lin(c.dim, c.q_dim());
        b.router = normal_matrix(c.n_experts, c.dim, rng, 1.0f);
        for (int e = 0; e < c.n_experts; ++e)
            b.experts.push_back({lin(c.moe_hidden_dim, c.dim), lin(c.dim, c.moe_hidden_dim), lin(c.moe_hidden_dim, c.dim)});
        m.blocks.push_back(std::move(b));
    }
    return m;
}

/// `n` token ids uniform in [0, vocab), deterministic for a seed.
inline std::vector<int> random_tokens(int n, int vocab, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> u(0, vocab - 1);
    std::vector<int> t(static_cast<std::size_t>(n));
    for (auto& x : t) x = u(rng);
    return t;
}

/// Two records store the same thing (format, shape, codes, scales, offsets, dense weights, bits and expert tensors).
inline bool same_record(const lowbit::linear_record& a, const lowbit::linear_record& b) {
    return a.format == b.format && a.rows == b.rows && a.cols == b.cols && a.codes == b.codes && a.scale == b.scale &&
           a.offset == b.offset && a.dense == b.dense && a.dense_bits == b.dense_bits &&
           lowbit::same_expert_tensors(a.expert, b.expert);
}

/// Writes `q` to a temporary safetensors file (`save_quantized_model`), reads it back and reports
/// whether the reloaded model has the same recipe name, identical records, the same counted bits and
/// bit-identical logits on `probe`. `tag` names the temporary file.
inline bool reloads_identically(const lowbit::quantized_model& q, const std::string& tag, std::span<const int> probe) {
    const auto path = std::filesystem::temp_directory_path() / ("lowbit_test_" + tag + ".safetensors");
    lowbit::save_quantized_model(path, q);
    const auto back = lowbit::load_quantized_model(path);
    std::filesystem::remove(path);
    bool same = back.spec.name == q.spec.name && back.records.size() == q.records.size() &&
                back.model.bits_per_weight() == q.model.bits_per_weight();
    for (const auto& [k, rec] : q.records) same = same && back.records.count(k) && same_record(rec, back.records.at(k));
    lowbit::kv_cache c1(q.model.config), c2(q.model.config);
    return same && (lowbit::forward(q.model, c1, probe).array() == lowbit::forward(back.model, c2, probe).array()).all();
}

} // namespace lowbit_test
