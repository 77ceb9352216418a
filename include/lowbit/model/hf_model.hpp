#pragma once
/// \file model/hf_model.hpp
/// Hugging Face checkpoints in: `config.json` of the Llama family and sharded safetensors weights
/// into a `llama_model` (FP32 dense linears), with every check a user needs before running it.
///
/// Supported `model_type`s (transformers 4 and 5 key spellings both accepted):
/// | model_type | what lowbit runs |
/// |---|---|
/// | `llama`     | RMSNorm, GQA, SwiGLU, RoPE (rotate-half); `attention_bias`/`mlp_bias` must be false |
/// | `mistral`   | as llama; a `sliding_window` W limits the context (seq_len) to W, where it is exact |
/// | `qwen2`     | as llama with biases on q, k, v (always present in Qwen2 checkpoints) |
/// | `qwen3`     | as llama with per-head RMSNorm of q and k (`q_norm`, `k_norm`) before RoPE, explicit `head_dim` |
/// | `qwen3_moe` | qwen3 attention; MoE blocks: softmax router over `num_experts` (or `num_local_experts`), top-`num_experts_per_tok`, `norm_topk_prob`, expert FFN width `moe_intermediate_size`; a block is MoE when its index is not in `mlp_only_layers` and (index + 1) is a multiple of `decoder_sparse_step`, else dense with `intermediate_size` |
///
/// Keys read: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
/// num_key_value_heads (default: num_attention_heads), head_dim (default hidden/heads), vocab_size,
/// max_position_embeddings (the KV-cache capacity), rms_norm_eps, rope_theta (transformers 4) or
/// rope_parameters.rope_theta (transformers 5; default 10000), tie_word_embeddings (default false),
/// hidden_act (must be "silu"). Refused with `format_error` naming config.json and the key, never run
/// wrong: any other model_type; rope scaling of any type but "default" (rope_scaling /
/// rope_parameters.rope_type); an active sliding window on qwen2/qwen3 (use_sliding_window true);
/// attention or MLP biases other than Qwen2's q/k/v; hidden_act other than silu; pretraining_tp ≠ 1;
/// shared experts; a `quantization_config` (an already quantized checkpoint).
///
/// Weights (`load_hf_model`): every tensor the architecture needs must exist with the shape the
/// config implies (`format_error` naming the shard file and the tensor otherwise); every value
/// must be finite (`numeric_error` naming file and tensor); a tensor the architecture does not use
/// is refused too (a config/weights mismatch), except `rotary_emb.inv_freq` buffers of old
/// checkpoints. Dtypes BF16, F16, F32, F64 (converted exactly or rounded to float).
/// Tied embeddings: the classifier is a copy of `model.embed_tokens.weight`; untied: `lm_head.weight`.
/// The model runs the Hugging Face conventions: RoPE `rotate_half`, no BOS in the perplexity
/// protocol (`bos_token` −1), generation stops at `eos_token_id`.

#include <lowbit/config.hpp>
#include <lowbit/detail/json.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/mapped_file.hpp>
#include <lowbit/io/sharded_safetensors.hpp>
#include <lowbit/model/llama.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// What `config.json` says, as lowbit runs it.
struct hf_config {
    std::string model_type;        ///< "llama", "mistral", "qwen2", "qwen3", "qwen3_moe"
    std::string architecture;      ///< first entry of `architectures` (informational)
    llama_config config;           ///< forward-pass hyper-parameters (rope_layout::rotate_half, bos_token −1)
    bool tie_word_embeddings = false; ///< classifier = token embedding
    std::vector<bool> moe_layer;   ///< per block: routed experts (true) or dense FFN
    int bos_token_id = -1;         ///< from config.json (informational: the protocol adds no BOS)
    int eos_token_id = -1;         ///< generation stops here (−1: never)
};

namespace detail {

[[noreturn]] inline void hf_fail(const std::string& source, const std::string& what) {
    throw format_error("lowbit: config.json: " + what + " (file '" + source + "')");
}

/// Member `key` of object `o`, or nullptr (also for JSON null).
inline const json_value* json_member(const json_value& o, std::string_view key) {
    if (o.type != json_value::kind::object) return nullptr;
    for (std::size_t i = 0; i < o.keys.size(); ++i)
        if (o.keys[i] == key) return o.items[i].type == json_value::kind::null ? nullptr : &o.items[i];
    return nullptr;
}

inline long long json_int(const json_value& o, std::string_view key, long long fallback, const std::string& src,
                          bool required = false) {
    const json_value* v = json_member(o, key);
    if (!v) {
        if (required) hf_fail(src, "key '" + std::string(key) + "' is missing");
        return fallback;
    }
    if (v->type != json_value::kind::number) hf_fail(src, "key '" + std::string(key) + "' is not a number");
    char* end = nullptr;
    const long long x = std::strtoll(v->text.c_str(), &end, 10);
    if (!end || *end) hf_fail(src, "key '" + std::string(key) + "' is not an integer: " + v->text);
    return x;
}

inline double json_real(const json_value& o, std::string_view key, double fallback, const std::string& src) {
    const json_value* v = json_member(o, key);
    if (!v) return fallback;
    if (v->type != json_value::kind::number) hf_fail(src, "key '" + std::string(key) + "' is not a number");
    char* end = nullptr;
    const double x = std::strtod(v->text.c_str(), &end);
    if (!end || *end || !std::isfinite(x)) hf_fail(src, "key '" + std::string(key) + "' is not a finite number");
    return x;
}

inline bool json_bool(const json_value& o, std::string_view key, bool fallback, const std::string& src) {
    const json_value* v = json_member(o, key);
    if (!v) return fallback;
    if (v->type != json_value::kind::boolean) hf_fail(src, "key '" + std::string(key) + "' is not a boolean");
    return v->boolean;
}

inline std::string json_string(const json_value& o, std::string_view key, const std::string& src) {
    const json_value* v = json_member(o, key);
    if (!v) return {};
    if (v->type != json_value::kind::string) hf_fail(src, "key '" + std::string(key) + "' is not a string");
    return v->text;
}

/// bos/eos ids may be an integer or a list (first entry).
inline int json_token_id(const json_value& o, std::string_view key, const std::string& src) {
    const json_value* v = json_member(o, key);
    if (!v) return -1;
    if (v->type == json_value::kind::array) {
        if (v->items.empty()) return -1;
        v = &v->items[0];
    }
    std::uint64_t u = 0;
    if (!v->as_uint(u) || u > (1u << 30)) hf_fail(src, "key '" + std::string(key) + "' is not a token id");
    return static_cast<int>(u);
}

} // namespace detail

/// Parses `config.json` text (`source` names the file in messages). \throws format_error (malformed
/// JSON, unsupported architecture or option, sizes that are missing, non-positive or inconsistent).
[[nodiscard]] inline hf_config parse_hf_config(std::string_view json, const std::string& source = "config.json") {
    using detail::hf_fail;
    using detail::json_value;
    json_value root;
    try {
        root = detail::json_parser(json, "config.json").parse_document();
    } catch (const format_error& e) {
        throw format_error(std::string(e.what()) + " (file '" + source + "')");
    }
    if (root.type != json_value::kind::object) hf_fail(source, "the document is not a JSON object");
    hf_config h;
    h.model_type = detail::json_string(root, "model_type", source);
    if (const auto* a = detail::json_member(root, "architectures"); a && a->type == json_value::kind::array && !a->items.empty())
        h.architecture = a->items[0].text;
    const std::string& mt = h.model_type;
    const bool llama_like = mt == "llama" || mt == "mistral";
    if (!(llama_like || mt == "qwen2" || mt == "qwen3" || mt == "qwen3_moe"))
        hf_fail(source, "unsupported model_type '" + mt + "' (supported: llama, mistral, qwen2, qwen3, qwen3_moe)");
    if (detail::json_member(root, "quantization_config"))
        hf_fail(source, "the checkpoint is already quantized (quantization_config); lowbit needs the float weights");
    auto& c = h.config;
    auto positive = [&](std::string_view key, long long fallback, bool required) {
        const long long v = detail::json_int(root, key, fallback, source, required);
        if (v <= 0 || v > (1LL << 24)) hf_fail(source, "key '" + std::string(key) + "' must lie in [1, 2^24], is " + std::to_string(v));
        return static_cast<int>(v);
    };
    c.dim = positive("hidden_size", 0, true);
    c.n_layers = positive("num_hidden_layers", 0, true);
    c.n_heads = positive("num_attention_heads", 0, true);
    c.n_kv_heads = positive("num_key_value_heads", c.n_heads, false);
    c.vocab_size = positive("vocab_size", 0, true);
    c.seq_len = positive("max_position_embeddings", 2048, false);
    c.head_dim = positive("head_dim", c.dim / c.n_heads, false);
    c.norm_eps = static_cast<float>(detail::json_real(root, "rms_norm_eps", 1e-6, source));
    if (!(c.norm_eps > 0)) hf_fail(source, "rms_norm_eps must be positive");
    c.rope = rope_layout::rotate_half;
    c.bos_token = -1;
    if (c.n_heads % c.n_kv_heads != 0)
        hf_fail(source, "num_attention_heads (" + std::to_string(c.n_heads) + ") is not a multiple of num_key_value_heads (" +
                            std::to_string(c.n_kv_heads) + ")");
    if (c.head_dim % 2 != 0) hf_fail(source, "head_dim must be even for RoPE");
    // RoPE: transformers 4 (rope_theta, rope_scaling) or 5 (rope_parameters)
    double theta = detail::json_real(root, "rope_theta", 10000.0, source);
    if (const auto* rp = detail::json_member(root, "rope_parameters")) {
        theta = detail::json_real(*rp, "rope_theta", theta, source);
        const std::string type = detail::json_string(*rp, "rope_type", source);
        if (!type.empty() && type != "default")
            hf_fail(source, "rope_parameters.rope_type '" + type + "' is not implemented (only 'default')");
    }
    if (const auto* rs = detail::json_member(root, "rope_scaling")) {
        const std::string type = rs->type == json_value::kind::object
                                     ? detail::json_string(*rs, "rope_type", source) + detail::json_string(*rs, "type", source)
                                     : std::string("?");
        if (!type.empty() && type != "default") hf_fail(source, "rope_scaling '" + type + "' is not implemented");
    }
    if (!(theta > 0)) hf_fail(source, "rope_theta must be positive");
    c.rope_theta = static_cast<float>(theta);
    const std::string act = detail::json_string(root, "hidden_act", source);
    if (!act.empty() && act != "silu") hf_fail(source, "hidden_act '" + act + "' is not supported (only silu)");
    if (detail::json_int(root, "pretraining_tp", 1, source) != 1) hf_fail(source, "pretraining_tp != 1 is not supported");
    if (detail::json_bool(root, "mlp_bias", false, source)) hf_fail(source, "mlp_bias is not supported");
    const bool attn_bias = detail::json_bool(root, "attention_bias", false, source);
    if (attn_bias) hf_fail(source, "attention_bias (bias on q, k, v and o) is not supported");
    c.attention_bias = mt == "qwen2";
    c.qk_norm = mt == "qwen3" || mt == "qwen3_moe";
    // sliding windows
    if (mt == "mistral") {
        const long long w = detail::json_int(root, "sliding_window", 0, source);
        if (w < 0) hf_fail(source, "sliding_window must be positive");
        if (w > 0 && w < c.seq_len) c.seq_len = static_cast<int>(w); // exact for contexts up to the window
    } else if (detail::json_bool(root, "use_sliding_window", false, source)) {
        hf_fail(source, "use_sliding_window is not supported");
    }
    h.tie_word_embeddings = detail::json_bool(root, "tie_word_embeddings", false, source);
    h.bos_token_id = detail::json_token_id(root, "bos_token_id", source);
    h.eos_token_id = detail::json_token_id(root, "eos_token_id", source);
    c.stop_token = h.eos_token_id;
    h.moe_layer.assign(static_cast<std::size_t>(c.n_layers), false);
    const long long inter = detail::json_int(root, "intermediate_size", 0, source);
    if (mt == "qwen3_moe") {
        long long e = detail::json_int(root, "num_experts", 0, source);
        e = detail::json_int(root, "num_local_experts", e, source);
        if (e <= 0 || e > 4096) hf_fail(source, "num_experts / num_local_experts must lie in [1, 4096]");
        c.n_experts = static_cast<int>(e);
        c.n_experts_per_token = positive("num_experts_per_tok", 0, true);
        if (c.n_experts_per_token > c.n_experts) hf_fail(source, "num_experts_per_tok exceeds the number of experts");
        c.moe_hidden_dim = positive("moe_intermediate_size", 0, true);
        c.norm_topk_prob = detail::json_bool(root, "norm_topk_prob", false, source);
        if (detail::json_int(root, "shared_expert_intermediate_size", 0, source) > 0)
            hf_fail(source, "shared experts are not supported");
        const long long step = detail::json_int(root, "decoder_sparse_step", 1, source);
        if (step < 1) hf_fail(source, "decoder_sparse_step must be >= 1");
        std::set<long long> dense_only;
        if (const auto* ml = detail::json_member(root, "mlp_only_layers")) {
            if (ml->type != json_value::kind::array) hf_fail(source, "mlp_only_layers is not a list");
            for (const auto& v : ml->items) {
                std::uint64_t u = 0;
                if (!v.as_uint(u) || u >= static_cast<std::uint64_t>(c.n_layers))
                    hf_fail(source, "mlp_only_layers holds a value that is not a layer index");
                dense_only.insert(static_cast<long long>(u));
            }
        }
        for (int l = 0; l < c.n_layers; ++l)
            h.moe_layer[static_cast<std::size_t>(l)] = !dense_only.count(l) && (l + 1) % step == 0;
    } else if (detail::json_member(root, "num_experts") || detail::json_member(root, "num_local_experts")) {
        hf_fail(source, "experts are only supported for model_type qwen3_moe");
    }
    bool any_dense = false;
    for (bool moe : h.moe_layer) any_dense |= !moe;
    if (any_dense) {
        if (inter <= 0 || inter > (1LL << 24)) hf_fail(source, "key 'intermediate_size' must lie in [1, 2^24]");
        c.hidden_dim = static_cast<int>(inter);
    } else {
        c.hidden_dim = inter > 0 && inter <= (1LL << 24) ? static_cast<int>(inter) : c.moe_hidden_dim;
    }
    return h;
}

/// Reads and parses `path` (a config.json, or a folder holding one). \throws format_error.
[[nodiscard]] inline hf_config read_hf_config(const std::filesystem::path& path) {
    const auto file = std::filesystem::is_directory(path) ? path / "config.json" : path;
    const io::mapped_file text(file);
    return parse_hf_config(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()), file.string());
}

/// True if `folder` looks like a Hugging Face checkpoint (config.json plus model.safetensors or its index).
[[nodiscard]] inline bool is_hf_checkpoint(const std::filesystem::path& folder) {
    std::error_code ec;
    return std::filesystem::is_directory(folder, ec) && std::filesystem::exists(folder / "config.json", ec) &&
           (std::filesystem::exists(folder / "model.safetensors.index.json", ec) ||
            std::filesystem::exists(folder / "model.safetensors", ec));
}

/// Loads a Hugging Face checkpoint folder (config.json + model.safetensors[.index.json]) as an FP32
/// `llama_model` (see the file comment for the checks). Memory: the float weights (4 bytes per
/// parameter) plus the mapped files. O(parameters).
/// \throws format_error (config, missing/extra tensors, shapes), numeric_error (NaN/Inf weights).
template <class = void>
[[nodiscard]] llama_model load_hf_model(const std::filesystem::path& folder) {
    const hf_config h = read_hf_config(folder);
    const auto st = io::sharded_safetensors::open(folder);
    const auto& c = h.config;
    std::set<std::string> used;
    auto fetch = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols) -> matrix_f {
        if (!st.contains(name))
            throw format_error("lowbit: load_hf_model: tensor '" + name + "' is missing from '" + st.source().string() +
                               "' (model_type " + h.model_type + ")");
        const auto t = st.tensor(name);
        const std::string file = st.index().weight_map.count(name) ? st.index().weight_map.at(name) : st.source().string();
        const bool vec = rows < 0;
        const bool ok = vec ? (t.shape.size() == 1 && t.shape[0] == static_cast<std::uint64_t>(cols))
                            : (t.shape.size() == 2 && t.shape[0] == static_cast<std::uint64_t>(rows) &&
                               t.shape[1] == static_cast<std::uint64_t>(cols));
        if (!ok) {
            std::string got = "[";
            for (std::size_t i = 0; i < t.shape.size(); ++i) got += (i ? ", " : "") + std::to_string(t.shape[i]);
            got += "]";
            throw format_error("lowbit: load_hf_model: tensor '" + name + "' in '" + file + "' has shape " + got +
                               ", config.json implies " +
                               (vec ? "[" + std::to_string(cols) + "]"
                                    : "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]"));
        }
        matrix_f m;
        try {
            m = st.to_matrix(name);
        } catch (const invalid_argument& e) {
            throw format_error("lowbit: load_hf_model: tensor '" + name + "' in '" + file + "': " + e.what());
        }
        if (!m.allFinite())
            throw numeric_error("lowbit: load_hf_model: tensor '" + name + "' in '" + file + "' holds NaN or Inf values");
        used.insert(name);
        return m;
    };
    auto vec = [&](const std::string& name, Eigen::Index n) -> vector_f { return fetch(name, -1, n).row(0).transpose(); };
    llama_model m;
    m.config = c;
    m.architecture = h.model_type;
    m.token_embedding = fetch("model.embed_tokens.weight", c.vocab_size, c.dim);
    m.rms_final = vec("model.norm.weight", c.dim);
    if (h.tie_word_embeddings) {
        if (st.contains("lm_head.weight")) used.insert("lm_head.weight"); // some writers store the tied copy
        m.classifier = make_linear(dense_linear(m.token_embedding));
    } else {
        m.classifier = make_linear(dense_linear(fetch("lm_head.weight", c.vocab_size, c.dim)));
    }
    auto dense = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols) {
        return make_linear(dense_linear(fetch(name, rows, cols)));
    };
    for (int l = 0; l < c.n_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        llama_block b;
        b.rms_att = vec(p + "input_layernorm.weight", c.dim);
        b.rms_ffn = vec(p + "post_attention_layernorm.weight", c.dim);
        using S = linear_slot;
        auto at = [&](S s) -> auto& { return b.linear[static_cast<std::size_t>(s)]; };
        at(S::wq) = dense(p + "self_attn.q_proj.weight", c.q_dim(), c.dim);
        at(S::wk) = dense(p + "self_attn.k_proj.weight", c.kv_dim(), c.dim);
        at(S::wv) = dense(p + "self_attn.v_proj.weight", c.kv_dim(), c.dim);
        at(S::wo) = dense(p + "self_attn.o_proj.weight", c.dim, c.q_dim());
        if (c.attention_bias) {
            b.q_bias = vec(p + "self_attn.q_proj.bias", c.q_dim());
            b.k_bias = vec(p + "self_attn.k_proj.bias", c.kv_dim());
            b.v_bias = vec(p + "self_attn.v_proj.bias", c.kv_dim());
        }
        if (c.qk_norm) {
            b.q_norm = vec(p + "self_attn.q_norm.weight", c.head_size());
            b.k_norm = vec(p + "self_attn.k_norm.weight", c.head_size());
        }
        if (h.moe_layer[static_cast<std::size_t>(l)]) {
            b.router = fetch(p + "mlp.gate.weight", c.n_experts, c.dim);
            for (int e = 0; e < c.n_experts; ++e) {
                const std::string q = p + "mlp.experts." + std::to_string(e) + ".";
                b.experts.push_back({dense(q + "gate_proj.weight", c.moe_hidden_dim, c.dim),
                                     dense(q + "down_proj.weight", c.dim, c.moe_hidden_dim),
                                     dense(q + "up_proj.weight", c.moe_hidden_dim, c.dim)});
            }
        } else {
            at(S::w1) = dense(p + "mlp.gate_proj.weight", c.hidden_dim, c.dim);
            at(S::w2) = dense(p + "mlp.down_proj.weight", c.dim, c.hidden_dim);
            at(S::w3) = dense(p + "mlp.up_proj.weight", c.hidden_dim, c.dim);
        }
        m.blocks.push_back(std::move(b));
    }
    for (const auto& n : st.names())
        if (!used.count(n) && n.find("rotary_emb.inv_freq") == std::string::npos)
            throw format_error("lowbit: load_hf_model: tensor '" + n + "' is not used by model_type " + h.model_type +
                               " as config.json describes it (wrong config.json, or an unsupported variant)");
    return m;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template llama_model load_hf_model<>(const std::filesystem::path&);
#endif

LOWBIT_END_NAMESPACE
