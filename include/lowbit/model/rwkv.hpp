#pragma once
/// \file model/rwkv.hpp
/// RWKV-4 (Hugging Face `RwkvForCausalLM`, `model_type` "rwkv"): config.json, the sharded
/// safetensors weights, the forward pass with a recurrent state, a chunked-parallel WKV for prefill
/// that equals the sequential one, perplexity under the models README protocol and generation.
///
/// Architecture (transformers `modeling_rwkv.py`, float32, inference mode):
///
///     x = embeddings[token];  block 0 first applies x ← pre_ln(x)
///     per block l:   a = ln1(x);  a' = a shifted one token back (row 0: the state's last a)
///         k = key(a⊙μk + a'⊙(1−μk)),  v = value(a⊙μv + a'⊙(1−μv)),  r = σ(receptance(a⊙μr + a'⊙(1−μr)))
///         x ← x + s_l · output(r ⊙ wkv(k, v))
///         f = ln2(x);  f' shifted likewise
///         x ← x + s_l · σ(ffn.receptance(f⊙νr + f'⊙(1−νr))) ⊙ ffn.value(relu(ffn.key(f⊙νk + f'⊙(1−νk)))²)
///         with rescale_every R > 0: s_l = 2^−⌊l/R⌋ and x ← x/2 after every block with (l+1) mod R = 0
///         (transformers' inference-mode rescaling; s_l = 1 when R = 0)
///     logits = head(ln_out(x))
///
/// LayerNorm: (x − mean)/√(var + eps)·w + b per row (biased variance, sums in double).
/// WKV per channel c (w = −exp(time_decay), u = time_first), from a state (num, den, max) that
/// represents N = num·e^max, D = den·e^max (zero state: num = den = 0, max = −1e38):
///
///     y_t = (N_t + e^{u+k_t} v_t) / (D_t + e^{u+k_t}),   N_{t+1} = e^w N_t + e^{k_t} v_t,   D_{t+1} = e^w D_t + e^{k_t}
///
/// evaluated in the max-shifted form of transformers' `rwkv_linear_attention_cpu` (`wkv_sequential`),
/// or chunk by chunk (`wkv_chunked`): inside a chunk every output is computed independently of the
/// others (parallel in time) from the chunk's entry state and the chunk's earlier tokens, each sum
/// shifted by its own maximum exponent, and the state is carried from chunk to chunk.
///
/// Layout: activations `[tokens x features]` row-major, weights `[out x in]`. The seven linears of a
/// block are type-erased `linear_operator`s (llama.hpp), so dense FP32, dequantized or packed
/// quantized weights plug in alike; the element-wise vectors (`time_mix_*`, `time_decay`,
/// `time_first`, LayerNorms) stay float.
///
/// Determinism: no hidden threads (`perplexity_options::threads` is explicit and does not change the
/// result), no global state.

#include <lowbit/config.hpp>
#include <lowbit/detail/json.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/mapped_file.hpp>
#include <lowbit/io/sharded_safetensors.hpp>
#include <lowbit/model/hf_model.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of an RWKV-4 model (config.json of `RwkvForCausalLM`).
struct rwkv_config {
    int dim = 0;               ///< hidden_size
    int attention_dim = 0;     ///< attention_hidden_size (width of key/value/receptance, time_decay); default dim
    int ffn_dim = 0;           ///< intermediate_size (channel-mix key rows); default 4·dim
    int n_layers = 0;          ///< num_hidden_layers
    int vocab_size = 0;        ///< vocab_size
    int context_length = 512;  ///< context_length (training context; the default perplexity window is min(512, it))
    float layer_norm_eps = 1e-5f; ///< layer_norm_epsilon
    int rescale_every = 0;     ///< transformers' inference-mode rescaling period (0: none)
    bool tie_word_embeddings = false; ///< head = embeddings
    int bos_token_id = -1;     ///< informational (the protocol adds no BOS)
    int eos_token_id = -1;     ///< generation stops here (−1: never)
};

/// Parses the `config.json` text of an RWKV-4 checkpoint (`source` names the file in messages).
/// Accepted keys: the RwkvConfig keys (vocab_size, context_length, hidden_size, num_hidden_layers,
/// attention_hidden_size, intermediate_size, layer_norm_epsilon, bos_token_id, eos_token_id,
/// rescale_every, tie_word_embeddings, use_cache) and generic bookkeeping keys that do not change
/// the computation (architectures, model_type, dtype/torch_dtype, transformers_version,
/// _name_or_path, pad_token_id, ...). Any other key is refused: lowbit cannot know whether it
/// changes the model's semantics (e.g. RWKV-5/6 `head_size`, a `quantization_config`).
/// \throws format_error naming the file and the key (model_type other than "rwkv", missing or
/// non-positive sizes, unknown keys, wrong JSON types).
[[nodiscard]] inline rwkv_config parse_rwkv_config(std::string_view json, const std::string& source = "config.json") {
    using detail::hf_fail;
    using detail::json_value;
    json_value root;
    try {
        root = detail::json_parser(json, "config.json").parse_document();
    } catch (const format_error& e) {
        throw format_error(std::string(e.what()) + " (file '" + source + "')");
    }
    if (root.type != json_value::kind::object) hf_fail(source, "the document is not a JSON object");
    const std::string mt = detail::json_string(root, "model_type", source);
    if (mt != "rwkv") hf_fail(source, "model_type '" + mt + "' is not an RWKV-4 model (expected 'rwkv')");
    static const std::set<std::string, std::less<>> known = {
        // RwkvConfig
        "vocab_size", "context_length", "hidden_size", "num_hidden_layers", "attention_hidden_size",
        "intermediate_size", "layer_norm_epsilon", "bos_token_id", "eos_token_id", "rescale_every",
        "tie_word_embeddings", "use_cache",
        // bookkeeping of PretrainedConfig / generation that does not change the forward pass
        "architectures", "model_type", "dtype", "torch_dtype", "transformers_version", "_name_or_path",
        "pad_token_id", "output_hidden_states", "output_attentions", "return_dict", "id2label", "label2id",
        "is_encoder_decoder", "tokenizer_class", "chunk_size_feed_forward", "_attn_implementation_autoset",
        "use_return_dict", "problem_type", "task_specific_params", "finetuning_task", "prefix"};
    for (const auto& k : root.keys)
        if (!known.count(k))
            hf_fail(source, "key '" + k +
                                "' is not understood by lowbit's RWKV-4 loader and may change the model's semantics "
                                "(refused rather than run wrong)");
    rwkv_config c;
    auto positive = [&](std::string_view key, long long fallback, bool required) {
        const long long v = detail::json_int(root, key, fallback, source, required);
        if (v <= 0 || v > (1LL << 24)) hf_fail(source, "key '" + std::string(key) + "' must lie in [1, 2^24], is " + std::to_string(v));
        return static_cast<int>(v);
    };
    c.dim = positive("hidden_size", 0, true);
    c.n_layers = positive("num_hidden_layers", 0, true);
    c.vocab_size = positive("vocab_size", 0, true);
    c.attention_dim = positive("attention_hidden_size", c.dim, false);
    c.ffn_dim = positive("intermediate_size", 4LL * c.dim, false);
    c.context_length = positive("context_length", 1024, false);
    c.layer_norm_eps = static_cast<float>(detail::json_real(root, "layer_norm_epsilon", 1e-5, source));
    if (!(c.layer_norm_eps > 0)) hf_fail(source, "layer_norm_epsilon must be positive");
    const long long re = detail::json_int(root, "rescale_every", 0, source);
    if (re < 0 || re > (1LL << 24)) hf_fail(source, "key 'rescale_every' must lie in [0, 2^24]");
    c.rescale_every = static_cast<int>(re);
    c.tie_word_embeddings = detail::json_bool(root, "tie_word_embeddings", false, source);
    (void)detail::json_bool(root, "use_cache", true, source);
    c.bos_token_id = detail::json_token_id(root, "bos_token_id", source);
    c.eos_token_id = detail::json_token_id(root, "eos_token_id", source);
    return c;
}

/// Reads and parses `path` (a config.json, or a folder holding one). \throws format_error.
[[nodiscard]] inline rwkv_config read_rwkv_config(const std::filesystem::path& path) {
    const auto file = std::filesystem::is_directory(path) ? path / "config.json" : path;
    const io::mapped_file text(file);
    return parse_rwkv_config(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()), file.string());
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The seven linears of an RWKV-4 block, in the order the forward pass runs them.
enum class rwkv_slot : int {
    att_key = 0,    ///< attention.key        [attention_dim x dim]
    att_value,      ///< attention.value      [attention_dim x dim]
    att_receptance, ///< attention.receptance [attention_dim x dim]
    att_output,     ///< attention.output     [dim x attention_dim]
    ffn_key,        ///< feed_forward.key     [ffn_dim x dim]
    ffn_value,      ///< feed_forward.value   [dim x ffn_dim]
    ffn_receptance, ///< feed_forward.receptance [dim x dim]
};
/// Number of linears per block.
inline constexpr int rwkv_slots = 7;

/// The Hugging Face tensor name suffix of a slot ("attention.key", ...; "?" out of range).
[[nodiscard]] inline const char* rwkv_slot_name(rwkv_slot s) {
    static constexpr const char* names[] = {"attention.key",        "attention.value",   "attention.receptance",
                                            "attention.output",     "feed_forward.key",  "feed_forward.value",
                                            "feed_forward.receptance"};
    const int i = static_cast<int>(s);
    return i >= 0 && i < rwkv_slots ? names[i] : "?";
}

/// One RWKV-4 block: LayerNorms, time-mix and channel-mix vectors (float), and seven linears.
struct rwkv_block {
    vector_f pre_ln_weight, pre_ln_bias; ///< (dim) block 0 only, else empty
    vector_f ln1_weight, ln1_bias;       ///< (dim)
    vector_f ln2_weight, ln2_bias;       ///< (dim)
    vector_f time_decay;                 ///< (attention_dim) w = −exp(time_decay)
    vector_f time_first;                 ///< (attention_dim) u
    vector_f att_mix_key, att_mix_value, att_mix_receptance; ///< (dim) token-shift mixes of the time-mix
    vector_f ffn_mix_key, ffn_mix_receptance;                ///< (dim) token-shift mixes of the channel-mix
    std::array<std::shared_ptr<const linear_operator>, rwkv_slots> linear; ///< indexed by rwkv_slot
};

/// An RWKV-4 language model whose linears are pluggable `linear_operator`s.
struct rwkv_model {
    rwkv_config config;
    matrix_f embedding;              ///< (vocab, dim)
    std::vector<rwkv_block> blocks;  ///< n_layers
    vector_f ln_out_weight, ln_out_bias; ///< (dim)
    std::shared_ptr<const linear_operator> head; ///< (vocab x dim)

    /// The operator of `slot` in block `layer`. \throws invalid_argument (layer or slot out of range).
    [[nodiscard]] const linear_operator& linear(int layer, rwkv_slot slot) const { return *ref(layer, slot, "rwkv_model::linear"); }

    /// Replaces a block linear. \throws invalid_argument (layer, slot, null op), shape_error
    /// (in/out features differ from the current operator's).
    void set_linear(int layer, rwkv_slot slot, std::shared_ptr<const linear_operator> op) {
        constexpr const char* where = "rwkv_model::set_linear";
        auto& cur = const_cast<std::shared_ptr<const linear_operator>&>(ref(layer, slot, where));
        detail::require(op != nullptr, where, "argument 'op' is null");
        detail::require_dim(op->in_features(), cur->in_features(), where, "in_features of 'op'");
        detail::require_dim(op->out_features(), cur->out_features(), where, "out_features of 'op'");
        cur = std::move(op);
    }

    /// Replaces a block linear by an FP32 `dense_linear` of `w`. \throws as set_linear, dense_linear.
    void set_weight(int layer, rwkv_slot slot, matrix_f w) { set_linear(layer, slot, make_linear(dense_linear(std::move(w)))); }

    /// Σ storage_bits / Σ in·out over the 7·n_layers block linears (embedding, head, vectors
    /// excluded). 32 for an FP32 model.
    [[nodiscard]] double bits_per_weight() const {
        double bits = 0, n = 0;
        for (const auto& b : blocks)
            for (const auto& op : b.linear) {
                bits += op->storage_bits();
                n += static_cast<double>(op->in_features()) * static_cast<double>(op->out_features());
            }
        return n > 0 ? bits / n : 0.0;
    }

private:
    const std::shared_ptr<const linear_operator>& ref(int layer, rwkv_slot slot, const char* where) const {
        detail::require(layer >= 0 && layer < static_cast<int>(blocks.size()), where,
                        "layer " + std::to_string(layer) + " is outside [0, " + std::to_string(blocks.size()) + ")");
        const int s = static_cast<int>(slot);
        detail::require(s >= 0 && s < rwkv_slots, where, "slot out of range");
        const auto& p = blocks[static_cast<std::size_t>(layer)].linear[static_cast<std::size_t>(s)];
        detail::require(p != nullptr, where, "linear is not set");
        return p;
    }
};

/// Loads a Hugging Face RWKV-4 checkpoint folder (config.json + model.safetensors[.index.json]) as
/// an FP32 `rwkv_model`. Every tensor the architecture needs must exist with the shape config.json
/// implies (`time_mix_*` may be stored as [dim] or [1, 1, dim]); every value must be finite; a
/// tensor the architecture does not use is refused. O(parameters); memory 4 bytes per parameter.
/// \throws format_error (config, missing/extra tensors, shapes; naming file and tensor),
/// numeric_error (NaN/Inf weights, naming file and tensor).
[[nodiscard]] inline rwkv_model load_rwkv_model(const std::filesystem::path& folder) {
    const rwkv_config c = read_rwkv_config(folder);
    const auto st = io::sharded_safetensors::open(folder);
    std::set<std::string> used;
    constexpr const char* where = "lowbit: load_rwkv_model: ";
    auto file_of = [&](const std::string& name) {
        return st.index().weight_map.count(name) ? st.index().weight_map.at(name) : st.source().string();
    };
    // rows < 0: a vector of `cols` values, stored with any number of leading 1-dimensions
    auto fetch = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols) -> matrix_f {
        if (!st.contains(name))
            throw format_error(where + ("tensor '" + name + "' is missing from '" + st.source().string() + "' (model_type rwkv)"));
        const auto t = st.tensor(name);
        const std::string file = file_of(name);
        bool ok;
        if (rows < 0) {
            ok = !t.shape.empty() && t.shape.back() == static_cast<std::uint64_t>(cols);
            for (std::size_t i = 0; i + 1 < t.shape.size(); ++i) ok = ok && t.shape[i] == 1;
        } else {
            ok = t.shape.size() == 2 && t.shape[0] == static_cast<std::uint64_t>(rows) &&
                 t.shape[1] == static_cast<std::uint64_t>(cols);
        }
        if (!ok) {
            std::string got = "[";
            for (std::size_t i = 0; i < t.shape.size(); ++i) got += (i ? ", " : "") + std::to_string(t.shape[i]);
            got += "]";
            throw format_error(where + ("tensor '" + name + "' in '" + file + "' has shape " + got + ", config.json implies " +
                                        (rows < 0 ? "[" + std::to_string(cols) + "]"
                                                  : "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]")));
        }
        matrix_f m;
        try {
            if (rows < 0) { // any rank: the shape check above guarantees `cols` values
                m.resize(1, cols);
                io::to_float(t, std::span<float>(m.data(), static_cast<std::size_t>(cols)));
            } else {
                m = st.to_matrix(name);
            }
        } catch (const invalid_argument& e) {
            throw format_error(where + ("tensor '" + name + "' in '" + file + "': " + e.what()));
        }
        if (!m.allFinite())
            throw numeric_error(where + ("tensor '" + name + "' in '" + file + "' holds NaN or Inf values"));
        used.insert(name);
        return m;
    };
    auto vec = [&](const std::string& name, Eigen::Index n) -> vector_f { return fetch(name, -1, n).row(0).transpose(); };
    rwkv_model m;
    m.config = c;
    m.embedding = fetch("rwkv.embeddings.weight", c.vocab_size, c.dim);
    m.ln_out_weight = vec("rwkv.ln_out.weight", c.dim);
    m.ln_out_bias = vec("rwkv.ln_out.bias", c.dim);
    if (c.tie_word_embeddings) {
        if (st.contains("head.weight")) used.insert("head.weight");
        m.head = make_linear(dense_linear(m.embedding));
    } else {
        m.head = make_linear(dense_linear(fetch("head.weight", c.vocab_size, c.dim)));
    }
    const Eigen::Index D = c.dim, A = c.attention_dim, F = c.ffn_dim;
    const Eigen::Index shape[rwkv_slots][2] = {{A, D}, {A, D}, {A, D}, {D, A}, {F, D}, {D, F}, {D, D}};
    for (int l = 0; l < c.n_layers; ++l) {
        const std::string p = "rwkv.blocks." + std::to_string(l) + ".";
        rwkv_block b;
        if (l == 0) {
            b.pre_ln_weight = vec(p + "pre_ln.weight", D);
            b.pre_ln_bias = vec(p + "pre_ln.bias", D);
        }
        b.ln1_weight = vec(p + "ln1.weight", D);
        b.ln1_bias = vec(p + "ln1.bias", D);
        b.ln2_weight = vec(p + "ln2.weight", D);
        b.ln2_bias = vec(p + "ln2.bias", D);
        b.time_decay = vec(p + "attention.time_decay", A);
        b.time_first = vec(p + "attention.time_first", A);
        b.att_mix_key = vec(p + "attention.time_mix_key", D);
        b.att_mix_value = vec(p + "attention.time_mix_value", D);
        b.att_mix_receptance = vec(p + "attention.time_mix_receptance", D);
        b.ffn_mix_key = vec(p + "feed_forward.time_mix_key", D);
        b.ffn_mix_receptance = vec(p + "feed_forward.time_mix_receptance", D);
        for (int s = 0; s < rwkv_slots; ++s)
            b.linear[static_cast<std::size_t>(s)] = make_linear(dense_linear(
                fetch(p + rwkv_slot_name(static_cast<rwkv_slot>(s)) + ".weight", shape[s][0], shape[s][1])));
        m.blocks.push_back(std::move(b));
    }
    for (const auto& n : st.names())
        if (!used.count(n))
            throw format_error(where + ("tensor '" + n + "' in '" + file_of(n) +
                                        "' is not used by model_type rwkv as config.json describes it (wrong config.json, "
                                        "pre_ln outside block 0, or an unsupported variant)"));
    return m;
}

// ---------------------------------------------------------------------------------------------
// WKV
// ---------------------------------------------------------------------------------------------

/// The WKV state of one layer: N = num·e^max, D = den·e^max per channel.
struct wkv_state {
    vector_f num; ///< (channels)
    vector_f den; ///< (channels)
    vector_f max; ///< (channels) −1e38 in the zero state
    wkv_state() = default;
    /// The zero state of `channels` channels.
    explicit wkv_state(Eigen::Index channels)
        : num(vector_f::Zero(channels)), den(vector_f::Zero(channels)), max(vector_f::Constant(channels, -1e38f)) {}
};

namespace detail {
inline void check_wkv(const matrix_f& k, const matrix_f& v, const vector_f& time_decay, const vector_f& time_first,
                      const wkv_state& s, const char* where) {
    require_dim(v.rows(), k.rows(), where, "rows of v");
    require_dim(v.cols(), k.cols(), where, "columns of v");
    require_dim(time_decay.size(), k.cols(), where, "length of time_decay");
    require_dim(time_first.size(), k.cols(), where, "length of time_first");
    require_dim(s.num.size(), k.cols(), where, "state channels (num)");
    require_dim(s.den.size(), k.cols(), where, "state channels (den)");
    require_dim(s.max.size(), k.cols(), where, "state channels (max)");
}
} // namespace detail

/// Sequential WKV (transformers' `rwkv_linear_attention_cpu`, float): for t = 0..T−1 and every
/// channel, y_t from the state and (k_t, v_t), then the state update (see the file comment).
/// `k`, `v` `[T x C]`; `time_decay`, `time_first` (C); `state` updated in place; `y` resized to
/// `[T x C]`. If `self_weight` is given it receives e^{u+k_t}/(D_t + e^{u+k_t}) `[T x C]` (the
/// weight of the current token in y_t; calibration of RWKVQuant's key codebooks). O(T·C).
/// \throws shape_error (sizes disagree).
inline void wkv_sequential(const matrix_f& k, const matrix_f& v, const vector_f& time_decay, const vector_f& time_first,
                           wkv_state& state, matrix_f& y, matrix_f* self_weight = nullptr) {
    detail::check_wkv(k, v, time_decay, time_first, state, "wkv_sequential");
    const Eigen::Index T = k.rows(), C = k.cols();
    y.resize(T, C);
    if (self_weight) self_weight->resize(T, C);
    const Eigen::ArrayXf w = -time_decay.array().exp();
    const Eigen::ArrayXf u = time_first.array();
    Eigen::ArrayXf num = state.num.array(), den = state.den.array(), mx = state.max.array();
    Eigen::ArrayXf kt(C), vt(C), mo(C), e1(C), e2(C), ms(C);
    for (Eigen::Index t = 0; t < T; ++t) {
        kt = k.row(t).transpose().array();
        vt = v.row(t).transpose().array();
        mo = mx.max(kt + u);
        e1 = (mx - mo).exp();
        e2 = (kt + u - mo).exp();
        const Eigen::ArrayXf d = e1 * den + e2;
        y.row(t) = ((e1 * num + e2 * vt) / d).transpose();
        if (self_weight) self_weight->row(t) = (e2 / d).transpose();
        ms = (mx + w).max(kt);
        e1 = (mx + w - ms).exp();
        e2 = (kt - ms).exp();
        num = e1 * num + e2 * vt;
        den = e1 * den + e2;
        mx = ms;
    }
    state.num = num.matrix();
    state.den = den.matrix();
    state.max = mx.matrix();
}

/// Chunked-parallel WKV: the same function as `wkv_sequential` computed chunk by chunk. Inside a
/// chunk starting at s with entry state (num, den, max), each output t = s + τ is computed on its
/// own (independently of the other outputs of the chunk) as
///     y_t = (num·e^{max+τw−M} + Σ_{s≤i<t} e^{k_i+(t−1−i)w−M} v_i + e^{u+k_t−M} v_t) / (same with v ≡ 1),
/// M the largest of those exponents; then the state jumps to the chunk's end in one step
/// (max' = largest of max + L·w and k_i + (s+L−1−i)w). Float arithmetic; agrees with the
/// sequential form to rounding (tested). `chunk` ≥ 1 tokens per chunk. O(T·chunk·C).
/// \throws shape_error (sizes disagree), invalid_argument (chunk < 1).
inline void wkv_chunked(const matrix_f& k, const matrix_f& v, const vector_f& time_decay, const vector_f& time_first,
                        wkv_state& state, matrix_f& y, int chunk = 32) {
    detail::check_wkv(k, v, time_decay, time_first, state, "wkv_chunked");
    detail::require(chunk >= 1, "wkv_chunked", "chunk must be >= 1");
    const Eigen::Index T = k.rows(), C = k.cols();
    y.resize(T, C);
    const Eigen::ArrayXf w = -time_decay.array().exp();
    const Eigen::ArrayXf u = time_first.array();
    Eigen::ArrayXf num = state.num.array(), den = state.den.array(), mx = state.max.array();
    Eigen::ArrayXf M(C), a(C), e(C), sn(C), sd(C);
    for (Eigen::Index s = 0; s < T; s += chunk) {
        const Eigen::Index L = std::min<Eigen::Index>(chunk, T - s);
        // outputs: each t independent of the others
        for (Eigen::Index t = s; t < s + L; ++t) {
            const float tau = static_cast<float>(t - s);
            const auto kt = k.row(t).transpose().array();
            M = (mx + tau * w).max(kt + u);
            for (Eigen::Index i = s; i < t; ++i) M = M.max(k.row(i).transpose().array() + static_cast<float>(t - 1 - i) * w);
            e = (mx + tau * w - M).exp();
            sn = e * num;
            sd = e * den;
            for (Eigen::Index i = s; i < t; ++i) {
                e = (k.row(i).transpose().array() + static_cast<float>(t - 1 - i) * w - M).exp();
                sn += e * v.row(i).transpose().array();
                sd += e;
            }
            e = (kt + u - M).exp();
            sn += e * v.row(t).transpose().array();
            sd += e;
            y.row(t) = (sn / sd).transpose();
        }
        // the state at the chunk's end
        const float Lf = static_cast<float>(L);
        M = mx + Lf * w;
        for (Eigen::Index i = s; i < s + L; ++i) M = M.max(k.row(i).transpose().array() + static_cast<float>(s + L - 1 - i) * w);
        e = (mx + Lf * w - M).exp();
        sn = e * num;
        sd = e * den;
        for (Eigen::Index i = s; i < s + L; ++i) {
            e = (k.row(i).transpose().array() + static_cast<float>(s + L - 1 - i) * w - M).exp();
            sn += e * v.row(i).transpose().array();
            sd += e;
        }
        num = sn;
        den = sd;
        mx = M;
    }
    state.num = num.matrix();
    state.den = den.matrix();
    state.max = mx.matrix();
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

/// The recurrent state of a whole model: per layer the last LayerNorm outputs seen by the two
/// token shifts and the WKV state. A fresh state is the zero state of the protocol.
struct rwkv_state {
    std::vector<vector_f> att_shift; ///< per layer (dim): ln1 output of the previous token (zeros at start)
    std::vector<vector_f> ffn_shift; ///< per layer (dim): ln2 output of the previous token
    std::vector<wkv_state> wkv;      ///< per layer (attention_dim)
    long long tokens = 0;            ///< tokens consumed since the zero state
    rwkv_state() = default;
    /// The zero state for `c`. Memory (2·dim + 3·attention_dim)·n_layers floats.
    explicit rwkv_state(const rwkv_config& c) {
        for (int l = 0; l < c.n_layers; ++l) {
            att_shift.emplace_back(vector_f::Zero(c.dim));
            ffn_shift.emplace_back(vector_f::Zero(c.dim));
            wkv.emplace_back(c.attention_dim);
        }
    }
};

/// Which WKV evaluation `forward` uses.
enum class wkv_kernel {
    sequential, ///< `wkv_sequential` (transformers' order of operations)
    chunked,    ///< `wkv_chunked` with chunks of 32 tokens
};

/// Observers of an RWKV forward pass (calibration).
struct rwkv_hooks {
    /// The input `[T x in]` of every block linear, just before it is applied.
    std::function<void(int layer, rwkv_slot slot, const matrix_f& x)> on_linear_input;
    /// For the linears whose output is multiplied element-wise before the next linear —
    /// att_receptance (σ(r)⊙wkv), ffn_receptance (σ(r)⊙value) and att_key (e^{k}·v inside the WKV) —
    /// the first-order sensitivity g `[T x out]` of that product to the linear's output:
    /// σ'(r)·wkv, σ'(r)·value, and σ(r)·α·(v − y) for the key (α = `self_weight` of the WKV, only the
    /// current token's term). Only computed when set (the key term needs the sequential WKV).
    std::function<void(int layer, rwkv_slot slot, const matrix_f& g)> on_product_sensitivity;
};

namespace detail {
/// Row-wise LayerNorm with bias: (x − mean)/√(var + eps)·w + b (mean and variance in double).
inline void layer_norm_rows(const matrix_f& x, const vector_f& w, const vector_f& b, float eps, matrix_f& out) {
    out.resize(x.rows(), x.cols());
    const double n = static_cast<double>(x.cols());
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
        double s = 0, ss = 0;
        for (Eigen::Index j = 0; j < x.cols(); ++j) s += x(t, j);
        const double mean = s / n;
        for (Eigen::Index j = 0; j < x.cols(); ++j) {
            const double d = x(t, j) - mean;
            ss += d * d;
        }
        const auto inv = static_cast<float>(1.0 / std::sqrt(ss / n + static_cast<double>(eps)));
        const auto mf = static_cast<float>(mean);
        for (Eigen::Index j = 0; j < x.cols(); ++j) out(t, j) = (x(t, j) - mf) * inv * w(j) + b(j);
    }
}
/// The token-shifted rows of `a` (row 0 ← `prev`) mixed: a⊙μ + shifted⊙(1−μ).
inline void token_mix(const matrix_f& a, const vector_f& prev, const vector_f& mu, matrix_f& out) {
    out.resize(a.rows(), a.cols());
    const auto m = mu.transpose().array();
    out.row(0) = a.row(0).array() * m + prev.transpose().array() * (1.0f - m);
    for (Eigen::Index t = 1; t < a.rows(); ++t) out.row(t) = a.row(t).array() * m + a.row(t - 1).array() * (1.0f - m);
}
inline void check_rwkv_tokens(const rwkv_model& m, std::span<const int> tokens, const char* where) {
    for (std::size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] < 0 || tokens[i] >= m.config.vocab_size)
            throw invalid_argument(std::string("lowbit: ") + where + ": token " + std::to_string(tokens[i]) + " at index " +
                                   std::to_string(i) + " is outside [0, " + std::to_string(m.config.vocab_size) + ")");
}
} // namespace detail

/// Runs `tokens` (T ≥ 1) from `state` as one batch (every linear one `[T x in]` GEMM), updates the
/// state to after the last token and returns logits `[T x vocab]` (or `[1 x vocab]` for
/// `logits_rows::last`). One call with T tokens equals T calls with one token (up to float rounding;
/// tested), so the same function serves prefill and generation. O(T·parameters + T·chunk·dim).
/// \throws shape_error (empty tokens, state not sized for the model), invalid_argument (token id).
[[nodiscard]] inline matrix_f forward(const rwkv_model& m, rwkv_state& state, std::span<const int> tokens,
                                      logits_rows rows = logits_rows::all, const rwkv_hooks* hooks = nullptr,
                                      wkv_kernel kernel = wkv_kernel::chunked) {
    constexpr const char* where = "forward(rwkv)";
    const auto& c = m.config;
    detail::require<shape_error>(!tokens.empty(), where, "argument 'tokens' is empty");
    detail::check_rwkv_tokens(m, tokens, where);
    detail::require_dim(static_cast<Eigen::Index>(state.wkv.size()), c.n_layers, where, "state layers");
    const auto T = static_cast<Eigen::Index>(tokens.size());
    matrix_f x(T, c.dim);
    for (Eigen::Index t = 0; t < T; ++t) x.row(t) = m.embedding.row(tokens[static_cast<std::size_t>(t)]);
    matrix_f a, mixed, k, v, r, y, out, tmp, sw, g;
    const bool want_g = hooks && hooks->on_product_sensitivity;
    auto run = [&](int l, rwkv_slot s, const matrix_f& in, matrix_f& o) {
        if (hooks && hooks->on_linear_input) hooks->on_linear_input(l, s, in);
        m.blocks[static_cast<std::size_t>(l)].linear[static_cast<std::size_t>(s)]->apply(in, o);
    };
    auto sigmoid = [](matrix_f& z) { z = (1.0f / (1.0f + (-z.array()).exp())).matrix(); };
    for (int l = 0; l < c.n_layers; ++l) {
        const auto& b = m.blocks[static_cast<std::size_t>(l)];
        const auto L = static_cast<std::size_t>(l);
        const float scale = c.rescale_every > 0 ? std::ldexp(1.0f, -(l / c.rescale_every)) : 1.0f;
        if (l == 0 && b.pre_ln_weight.size()) {
            detail::layer_norm_rows(x, b.pre_ln_weight, b.pre_ln_bias, c.layer_norm_eps, tmp);
            x.swap(tmp);
        }
        // time mix
        detail::layer_norm_rows(x, b.ln1_weight, b.ln1_bias, c.layer_norm_eps, a);
        detail::token_mix(a, state.att_shift[L], b.att_mix_key, mixed);
        run(l, rwkv_slot::att_key, mixed, k);
        detail::token_mix(a, state.att_shift[L], b.att_mix_value, mixed);
        run(l, rwkv_slot::att_value, mixed, v);
        detail::token_mix(a, state.att_shift[L], b.att_mix_receptance, mixed);
        run(l, rwkv_slot::att_receptance, mixed, r);
        sigmoid(r);
        state.att_shift[L] = a.row(T - 1).transpose();
        if (kernel == wkv_kernel::sequential || want_g)
            wkv_sequential(k, v, b.time_decay, b.time_first, state.wkv[L], y, want_g ? &sw : nullptr);
        else
            wkv_chunked(k, v, b.time_decay, b.time_first, state.wkv[L], y);
        if (want_g) {
            g = (r.array() * (1.0f - r.array()) * y.array()).matrix();
            hooks->on_product_sensitivity(l, rwkv_slot::att_receptance, g);
            g = (r.array() * sw.array() * (v.array() - y.array())).matrix();
            hooks->on_product_sensitivity(l, rwkv_slot::att_key, g);
        }
        y.array() *= r.array();
        run(l, rwkv_slot::att_output, y, out);
        if (scale != 1.0f) out *= scale;
        x += out;
        // channel mix
        detail::layer_norm_rows(x, b.ln2_weight, b.ln2_bias, c.layer_norm_eps, a);
        detail::token_mix(a, state.ffn_shift[L], b.ffn_mix_key, mixed);
        run(l, rwkv_slot::ffn_key, mixed, k);
        k = k.cwiseMax(0.0f).cwiseAbs2();
        run(l, rwkv_slot::ffn_value, k, v);
        detail::token_mix(a, state.ffn_shift[L], b.ffn_mix_receptance, mixed);
        run(l, rwkv_slot::ffn_receptance, mixed, r);
        sigmoid(r);
        state.ffn_shift[L] = a.row(T - 1).transpose();
        if (want_g) {
            g = (r.array() * (1.0f - r.array()) * v.array()).matrix();
            hooks->on_product_sensitivity(l, rwkv_slot::ffn_receptance, g);
        }
        v.array() *= r.array();
        if (scale != 1.0f) v *= scale;
        x += v;
        if (c.rescale_every > 0 && (l + 1) % c.rescale_every == 0) x *= 0.5f;
    }
    state.tokens += T;
    if (rows == logits_rows::last) {
        const matrix_f last = x.bottomRows(1);
        detail::layer_norm_rows(last, m.ln_out_weight, m.ln_out_bias, c.layer_norm_eps, a);
    } else {
        detail::layer_norm_rows(x, m.ln_out_weight, m.ln_out_bias, c.layer_norm_eps, a);
    }
    matrix_f logits;
    m.head->apply(a, logits);
    return logits;
}

/// Sampled or greedy generation (see llama.hpp `generate` for the sampling rules, which are the
/// same): the prompt (non-empty) runs as one batch from the zero state, then one token per step
/// from the recurrent state (O(parameters) per token, no context limit); stops after
/// `max_new_tokens` or when the model emits `config.eos_token_id` (not returned). Deterministic for
/// a seed. \throws as forward; invalid_argument (temperature < 0, top_p ∉ (0, 1]).
[[nodiscard]] inline std::vector<int> generate(const rwkv_model& m, std::span<const int> prompt, const sampling_options& opt) {
    constexpr const char* where = "generate(rwkv)";
    detail::require(opt.temperature >= 0.0f && std::isfinite(opt.temperature), where, "temperature must be >= 0");
    detail::require(opt.top_p > 0.0f && opt.top_p <= 1.0f, where, "top_p must lie in (0, 1]");
    rwkv_state state(m.config);
    std::vector<int> out;
    if (opt.max_new_tokens <= 0) return out;
    std::mt19937_64 rng(opt.seed);
    std::vector<std::pair<double, int>> cand;
    auto pick = [&](const matrix_f& logits) { return detail::sample_next(logits, opt, rng, cand); };
    matrix_f logits = forward(m, state, prompt, logits_rows::last);
    while (true) {
        const int next = pick(logits);
        if (next == m.config.eos_token_id) break;
        out.push_back(next);
        if (opt.on_token) opt.on_token(next);
        if (static_cast<int>(out.size()) >= opt.max_new_tokens) break;
        logits = forward(m, state, std::span<const int>(&out.back(), 1), logits_rows::last);
    }
    return out;
}

/// Perplexity under the models README protocol for Hugging Face checkpoints: windows of `window`
/// tokens (default 512) from position 0, the last one possibly shorter; each window from the zero
/// state (no carried state, no BOS added); tokens 1..len−1 of each window scored given their prefix;
/// log-softmax in double; at most `max_windows` windows; windows are split over `threads` explicit
/// std::threads and their NLLs summed in window order (the result does not depend on `threads`).
/// Uses the chunked WKV. O(tokens·parameters).
/// \throws invalid_argument (window < 2, threads < 1, token out of range), shape_error (no window).
[[nodiscard]] inline perplexity_result perplexity(const rwkv_model& m, std::span<const int> tokens,
                                                  const perplexity_options& opt) {
    constexpr const char* where = "perplexity(rwkv)";
    const int window = opt.window < 0 ? 512 : opt.window;
    detail::require(window >= 2, where, "window must be >= 2");
    detail::require(opt.threads >= 1, where, "threads must be >= 1");
    detail::check_rwkv_tokens(m, tokens, where);
    const auto wins = detail::perplexity_windows(tokens.size(), static_cast<std::size_t>(window), true, opt.max_windows);
    detail::require<shape_error>(!wins.empty(), where, "argument 'tokens' has no window of at least 2 tokens");
    return detail::score_windows(wins.size(), opt, [&](std::size_t w) {
        const auto win = tokens.subspan(wins[w].first, wins[w].second - wins[w].first);
        rwkv_state state(m.config);
        const matrix_f logits = forward(m, state, win.first(win.size() - 1));
        const double nll = detail::rows_nll(logits, static_cast<Eigen::Index>(win.size() - 1),
                                            [&](Eigen::Index t) { return win[static_cast<std::size_t>(t) + 1]; });
        return std::pair<double, long long>(nll, static_cast<long long>(win.size() - 1));
    });
}

/// Runs the perplexity protocol's windows (each from the zero state; at most `max_windows`, window
/// length `window`, default 512) over `tokens` and reports every block linear's input and the
/// product sensitivities through `hooks` (calibration). Inputs are those the current model sees
/// (quantized earlier layers included). \throws as forward; invalid_argument (window < 1).
inline void capture_rwkv_inputs(const rwkv_model& m, std::span<const int> tokens, const rwkv_hooks& hooks,
                                int window = 512, int max_windows = -1) {
    constexpr const char* where = "capture_rwkv_inputs";
    detail::require(window >= 1, where, "window must be >= 1");
    detail::require<shape_error>(!tokens.empty(), where, "argument 'tokens' is empty");
    const auto W = static_cast<std::size_t>(window);
    int done = 0;
    for (std::size_t at = 0; at < tokens.size() && (max_windows < 0 || done < max_windows); at += W, ++done) {
        rwkv_state state(m.config);
        (void)forward(m, state, tokens.subspan(at, std::min(W, tokens.size() - at)), logits_rows::last, &hooks);
    }
}

LOWBIT_END_NAMESPACE
