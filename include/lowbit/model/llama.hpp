#pragma once
/// \file model/llama.hpp
/// The Llama-2 forward pass of llama2.c checkpoints (FP32 reference and pluggable linear layers):
/// KV cache, batched prompt, greedy decoding, the perplexity protocol of the models README, and
/// calibration capture of every linear layer's input.
///
/// Architecture (llama2.c `run.c`): x = embedding[token]; per block
///     h = x + wo(attention(rope(wq(n)), rope(wk(n)), wv(n))),  n = rmsnorm(x)·rms_att
///     x = h + w2(silu(w1(m)) ⊙ w3(m)),                          m = rmsnorm(h)·rms_ffn
/// then logits = classifier(rmsnorm(x)·rms_final). RMSNorm: x / sqrt(mean(x²) + 1e-5).
/// RoPE (theta 10000) rotates pairs (2i, 2i+1) inside each head by pos·theta^(−2i/head_size).
/// Grouped-query attention: query head h reads KV head h / (n_heads / n_kv_heads); causal,
/// scaled by 1/sqrt(head_size), softmax in float.
///
/// Layout: activations `[tokens x features]`, weights `[out x in]`; a batch of T tokens at
/// positions p..p+T−1 goes through every linear layer as one `[T x in]` matrix product (this makes
/// the perplexity protocol fast: one 511-token window costs 7·L GEMMs, not 511·7·L GEMVs).
///
/// Linear layers are type-erased `linear_operator`s (7 per block: wq, wk, wv, wo, w1, w2, w3, plus
/// the classifier): `dense_linear` is the FP32 reference; anything modelling `LinearOperator`
/// (packed weights + a gemm kernel, an online rotation, ...) is wrapped by `make_linear`. The
/// fake-quant hooks are `input_transformed_linear` (e.g. `per_token_fake_quant` before a linear)
/// and `llama_model::set_weight` (a dequantized weight replaces the FP32 one).
///
/// Determinism: no threads, no global state; results depend only on the weights and tokens.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <atomic>
#include <exception>
#include <cmath>
#include <concepts>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

// ---------------------------------------------------------------------------------------------
// Linear operators
// ---------------------------------------------------------------------------------------------

/// A linear operator `y = x·Wᵀ` on a batch of tokens. A type models it by providing
/// `in_features()`, `out_features()` and `apply(const matrix_f& x, matrix_f& y)` where x is
/// `[tokens x in]` and y is resized to `[tokens x out]`. `storage_bits()` (optional) reports the
/// bits the operator stores for its weights (codes + scales + masks + factors), for the effective
/// bits per weight.
template <class T>
concept LinearOperator = requires(const T& op, const matrix_f& x, matrix_f& y) {
    { op.in_features() } -> std::convertible_to<Eigen::Index>;
    { op.out_features() } -> std::convertible_to<Eigen::Index>;
    op.apply(x, y);
};

/// Type-erased `LinearOperator`: what a `llama_model` holds for each of its linear layers.
class linear_operator {
public:
    virtual ~linear_operator() = default;
    /// Input width.
    [[nodiscard]] virtual Eigen::Index in_features() const = 0;
    /// Output width.
    [[nodiscard]] virtual Eigen::Index out_features() const = 0;
    /// y = x·Wᵀ; x is `[tokens x in_features()]`, y is resized to `[tokens x out_features()]`.
    /// Callers (the forward pass) guarantee the shape of x.
    virtual void apply(const matrix_f& x, matrix_f& y) const = 0;
    /// Bits stored for the weights (codes, scales, masks, low-rank factors); 32·in·out for FP32.
    [[nodiscard]] virtual double storage_bits() const = 0;
};

/// The FP32 reference linear layer: y = x·Wᵀ with W `[out x in]` (Eigen GEMM).
class dense_linear {
public:
    /// \throws shape_error (empty W), numeric_error (NaN/Inf in W).
    explicit dense_linear(matrix_f w) : w_(std::move(w)) {
        detail::require_nonempty(w_, "dense_linear", "w");
        detail::require_finite(w_, "dense_linear", "w");
    }
    [[nodiscard]] Eigen::Index in_features() const { return w_.cols(); }
    [[nodiscard]] Eigen::Index out_features() const { return w_.rows(); }
    /// y = x·Wᵀ, float accumulation. O(tokens·in·out).
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply(const matrix_f& x, matrix_f& y) const {
        y.resize(x.rows(), w_.rows());
        y.noalias() = x * w_.transpose();
    }
    /// 32 bits per weight.
    [[nodiscard]] double storage_bits() const { return 32.0 * static_cast<double>(w_.size()); }
    /// The weight `[out x in]`.
    [[nodiscard]] const matrix_f& weight() const { return w_; }

private:
    matrix_f w_;
};
static_assert(LinearOperator<dense_linear>);

namespace detail {
template <LinearOperator Op>
class linear_adapter final : public linear_operator {
public:
    explicit linear_adapter(Op op) : op_(std::move(op)) {}
    Eigen::Index in_features() const override { return static_cast<Eigen::Index>(op_.in_features()); }
    Eigen::Index out_features() const override { return static_cast<Eigen::Index>(op_.out_features()); }
    void apply(const matrix_f& x, matrix_f& y) const override { op_.apply(x, y); }
    double storage_bits() const override {
        if constexpr (requires { { op_.storage_bits() } -> std::convertible_to<double>; })
            return static_cast<double>(op_.storage_bits());
        else
            return 32.0 * static_cast<double>(op_.in_features()) * static_cast<double>(op_.out_features());
    }
    const Op& get() const { return op_; }

private:
    Op op_;
};
} // namespace detail

namespace detail {
/// x rounded to the nearest fp16 value (round to nearest even; stored scales and factors are fp16).
inline float round_fp16(float x) { return static_cast<float>(Eigen::half(x)); }

/// The FP32 weight of a dense block linear. \throws invalid_argument if the layer is not dense.
inline const matrix_f& dense_weight_of(const linear_operator& op, const char* where) {
    const auto* d = dynamic_cast<const linear_adapter<dense_linear>*>(&op);
    require(d != nullptr, where, "the model's block linears must be FP32 dense_linear layers (quantize an unquantized model)");
    return d->get().weight();
}
} // namespace detail

/// Wraps any `LinearOperator` into the type-erased `linear_operator` a model holds. Operators
/// without `storage_bits()` count as 32 bits per weight.
template <LinearOperator Op>
[[nodiscard]] std::shared_ptr<const linear_operator> make_linear(Op op) {
    return std::make_shared<detail::linear_adapter<Op>>(std::move(op));
}

/// Applies `transform` to the input rows, then `inner`: y = inner(transform(x)). The fake-quant
/// hook for activations (transform = per-token quantize + dequantize) and the place for an online
/// input rotation. `transform` maps `[tokens x in]` to `[tokens x in]`.
class input_transformed_linear {
public:
    using transform_fn = std::function<matrix_f(const matrix_f&)>;
    /// \throws invalid_argument (null inner or empty transform).
    input_transformed_linear(std::shared_ptr<const linear_operator> inner, transform_fn transform)
        : inner_(std::move(inner)), transform_(std::move(transform)) {
        detail::require(inner_ != nullptr, "input_transformed_linear", "argument 'inner' is null");
        detail::require(static_cast<bool>(transform_), "input_transformed_linear", "argument 'transform' is empty");
    }
    [[nodiscard]] Eigen::Index in_features() const { return inner_->in_features(); }
    [[nodiscard]] Eigen::Index out_features() const { return inner_->out_features(); }
    /// \throws shape_error if the transform changes the shape of x.
    void apply(const matrix_f& x, matrix_f& y) const {
        const matrix_f t = transform_(x);
        detail::require_dim(t.rows(), x.rows(), "input_transformed_linear", "transformed rows");
        detail::require_dim(t.cols(), x.cols(), "input_transformed_linear", "transformed cols");
        inner_->apply(t, y);
    }
    /// The inner operator's bits (the transform stores nothing it reports).
    [[nodiscard]] double storage_bits() const { return inner_->storage_bits(); }

private:
    std::shared_ptr<const linear_operator> inner_;
    transform_fn transform_;
};

/// Activation fake quantization per token (rtn.hpp `quantize_per_token`, then dequantize): the
/// transform of an `input_transformed_linear`. O(tokens·in).
struct per_token_fake_quant {
    per_token_quantizer quantizer{}; ///< bits, grid kind, clip ratio
    /// x̂ = dequantize(quantize_per_token(x)). \throws as quantize_per_token.
    [[nodiscard]] matrix_f operator()(const matrix_f& x) const { return quantize_per_token(x, quantizer).dequantize(); }
};

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The seven linear layers of a block, in llama2.c order.
enum class linear_slot : int { wq = 0, wk, wv, wo, w1, w2, w3 };
/// Number of linear layers per block.
inline constexpr int linear_slots = 7;

/// "wq", "wk", ... for a slot.
[[nodiscard]] inline const char* slot_name(linear_slot s) {
    static constexpr const char* names[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
    const int i = static_cast<int>(s);
    return i >= 0 && i < linear_slots ? names[i] : "?";
}

/// How RoPE pairs the features of a head.
enum class rope_layout {
    interleaved, ///< pairs (2i, 2i+1) (llama2.c, Meta's original checkpoints, GGUF)
    rotate_half, ///< pairs (i, i + head_size/2) (Hugging Face transformers' `rotate_half`)
};

/// Hyper-parameters of the forward pass: Llama-2 / Llama-3 / Mistral (dense, GQA), Qwen2 (q/k/v
/// bias), Qwen3 (per-head q/k RMSNorm) and Qwen3-MoE (routed SwiGLU experts).
struct llama_config {
    int dim = 0;              ///< model width
    int hidden_dim = 0;       ///< FFN width of dense blocks
    int n_layers = 0;         ///< blocks
    int n_heads = 0;          ///< query heads
    int n_kv_heads = 0;       ///< key/value heads
    int vocab_size = 0;       ///< tokens
    int seq_len = 0;          ///< positions (KV cache capacity)
    float norm_eps = 1e-5f;   ///< RMSNorm epsilon (also of the q/k norms)
    float rope_theta = 10000; ///< RoPE base
    int head_dim = 0;         ///< features per head; 0: dim / n_heads
    rope_layout rope = rope_layout::interleaved; ///< RoPE pairing
    bool qk_norm = false;        ///< RMSNorm of every query and key head before RoPE (Qwen3)
    bool attention_bias = false; ///< biases on q, k, v (Qwen2)
    int n_experts = 0;           ///< routed experts of MoE blocks (0: every block dense)
    int n_experts_per_token = 0; ///< experts each token uses (top-k)
    int moe_hidden_dim = 0;      ///< FFN width of one expert
    bool norm_topk_prob = true;  ///< renormalise the top-k routing weights to sum 1
    int bos_token = 1;  ///< token the llama2.c perplexity protocol prepends to each window; −1: none (Hugging Face protocol)
    int stop_token = 1; ///< generation stops when the model emits it (llama2.c: BOS; Hugging Face: EOS); −1: never
    /// Features per head.
    [[nodiscard]] int head_size() const { return head_dim > 0 ? head_dim : (n_heads > 0 ? dim / n_heads : 0); }
    /// Width of the concatenated query heads (wq's output, wo's input).
    [[nodiscard]] int q_dim() const { return head_size() * n_heads; }
    /// Width of the concatenated key (or value) heads.
    [[nodiscard]] int kv_dim() const { return head_size() * n_kv_heads; }
};

/// Index of an expert's linear in `llama_block::experts[e]`: w1 (gate) → 0, w2 (down) → 1, w3 (up) → 2;
/// −1 for the attention slots.
[[nodiscard]] constexpr int expert_slot_index(linear_slot s) {
    return s == linear_slot::w1 ? 0 : s == linear_slot::w2 ? 1 : s == linear_slot::w3 ? 2 : -1;
}

/// One transformer block: norms, the attention linears and either a dense SwiGLU FFN (slots w1, w2,
/// w3) or a routed MoE FFN (a float router and per-expert w1, w2, w3; the dense slots are null).
struct llama_block {
    vector_f rms_att; ///< (dim)
    vector_f rms_ffn; ///< (dim)
    std::array<std::shared_ptr<const linear_operator>, linear_slots> linear; ///< wq, wk, wv, wo, w1, w2, w3
    vector_f q_norm;  ///< (head_size) when config.qk_norm, else empty
    vector_f k_norm;  ///< (head_size) when config.qk_norm, else empty
    vector_f q_bias;  ///< (q_dim) when config.attention_bias, else empty
    vector_f k_bias;  ///< (kv_dim) when config.attention_bias, else empty
    vector_f v_bias;  ///< (kv_dim) when config.attention_bias, else empty
    matrix_f router;  ///< (n_experts x dim) router of an MoE block (float); empty for a dense block
    /// Expert e's gate (w1, [moe_hidden x dim]), down (w2, [dim x moe_hidden]) and up (w3) linears.
    std::vector<std::array<std::shared_ptr<const linear_operator>, 3>> experts;
    /// True for a routed-expert FFN.
    [[nodiscard]] bool is_moe() const { return router.size() > 0; }
};

/// Names one block linear: an attention or dense-FFN slot (expert −1) or an expert's w1/w2/w3.
struct linear_id {
    int layer = 0;                        ///< block
    linear_slot slot = linear_slot::wq;   ///< slot
    int expert = -1;                      ///< expert index, −1 for the block's own slots
    /// "layers.L.wq" or "layers.L.experts.E.w1" (the key of records and saved tensors).
    [[nodiscard]] std::string name() const {
        std::string n = "layers." + std::to_string(layer) + ".";
        if (expert >= 0) n += "experts." + std::to_string(expert) + ".";
        return n + slot_name(slot);
    }
    friend bool operator==(const linear_id&, const linear_id&) = default;
};

/// Elementwise nonlinear operators of the forward pass, each optional (empty: the exact float
/// function). Each maps `in` to `out` (same length, in place allowed): `silu` the FFN gate
/// x·σ(x), `exp` the attention softmax's exponentials (arguments ≤ 0), `rsqrt` RMSNorm's
/// 1/√(mean(x²) + eps). NLI tables (activations.hpp) plug in here; recipes set them (`recipe::nli`).
struct nonlinear_ops {
    std::function<void(std::span<const float>, std::span<float>)> silu; ///< SiLU
    std::function<void(std::span<const float>, std::span<float>)> exp;  ///< exp (softmax)
    std::function<void(std::span<const float>, std::span<float>)> rsqrt; ///< 1/√x (RMSNorm)
    /// True if every operator is exact.
    [[nodiscard]] bool exact() const { return !silu && !exp && !rsqrt; }
};

/// A decoder-only transformer of the Llama family whose linear layers are pluggable.
///
/// Thread safety: a const `llama_model` may be used from several threads at once — `forward` (each
/// thread with its own `kv_cache`), `perplexity`, `generate`, calibration capture — since these only
/// read it: no member is `mutable`, no operator caches anything, there is no global state (function-
/// local tables are initialised once, thread-safely). Changing a model (`set_linear`, `set_weight`,
/// assignment) while another thread uses it is a data race. A `linear_operator` plugged in must keep
/// that contract (`apply` const and writing only its output), as every lowbit operator does.
/// Checked by tests/test_thread_safety.cpp, also under ThreadSanitizer (docs/reliability.md).
struct llama_model {
    llama_config config;
    std::string architecture = "llama"; ///< informational ("llama", "qwen3_moe", ...)
    matrix_f token_embedding; ///< (vocab, dim), FP32
    std::vector<llama_block> blocks;
    vector_f rms_final;       ///< (dim)
    std::shared_ptr<const linear_operator> classifier; ///< (vocab x dim); FP32 dense by default
    nonlinear_ops nonlinear; ///< approximate nonlinear operators (default: exact)

    /// The operator of `slot` in block `layer`. \throws invalid_argument (layer out of range, an FFN
    /// slot of an MoE block).
    [[nodiscard]] const linear_operator& linear(int layer, linear_slot slot) const { return linear(linear_id{layer, slot}); }

    /// The operator named by `id`. \throws invalid_argument (layer, expert or slot out of range, or absent).
    [[nodiscard]] const linear_operator& linear(const linear_id& id) const { return *slot_ref(id, "llama_model::linear"); }

    /// Replaces a linear layer. \throws invalid_argument (layer, null op), shape_error (in/out
    /// features differ from the slot's).
    void set_linear(int layer, linear_slot slot, std::shared_ptr<const linear_operator> op) {
        set_linear(linear_id{layer, slot}, std::move(op));
    }

    /// Replaces the linear named by `id`. \throws as `set_linear(layer, slot, op)`.
    void set_linear(const linear_id& id, std::shared_ptr<const linear_operator> op) {
        constexpr const char* where = "llama_model::set_linear";
        auto& cur = const_cast<std::shared_ptr<const linear_operator>&>(slot_ref(id, where));
        detail::require(op != nullptr, where, "argument 'op' is null");
        detail::require_dim(op->in_features(), cur->in_features(), where, "in_features of 'op'");
        detail::require_dim(op->out_features(), cur->out_features(), where, "out_features of 'op'");
        cur = std::move(op);
    }

    /// Replaces a linear layer by an FP32 `dense_linear` of `w` (e.g. a dequantized weight).
    /// \throws as set_linear and dense_linear.
    void set_weight(int layer, linear_slot slot, matrix_f w) {
        set_linear(layer, slot, make_linear(dense_linear(std::move(w))));
    }

    /// The linears of block `layer` in the order the forward pass runs them: wq, wk, wv, wo, then
    /// w1, w2, w3 (dense FFN) or, per expert e, w1, w2, w3. \throws invalid_argument (layer).
    [[nodiscard]] std::vector<linear_id> block_linears(int layer) const {
        check_layer(layer, "llama_model::block_linears");
        const auto& b = blocks[static_cast<std::size_t>(layer)];
        std::vector<linear_id> ids;
        for (auto s : {linear_slot::wq, linear_slot::wk, linear_slot::wv, linear_slot::wo}) ids.push_back({layer, s});
        if (b.is_moe()) {
            for (int e = 0; e < static_cast<int>(b.experts.size()); ++e)
                for (auto s : {linear_slot::w1, linear_slot::w2, linear_slot::w3}) ids.push_back({layer, s, e});
        } else {
            for (auto s : {linear_slot::w1, linear_slot::w2, linear_slot::w3}) ids.push_back({layer, s});
        }
        return ids;
    }

    /// Σ storage_bits / Σ in·out over every block linear (attention, dense FFN, experts; embedding,
    /// norms, routers and classifier excluded). 32 for an FP32 model.
    [[nodiscard]] double bits_per_weight() const {
        double bits = 0, n = 0;
        for (int l = 0; l < static_cast<int>(blocks.size()); ++l)
            for (const auto& id : block_linears(l)) {
                const auto& op = linear(id);
                bits += op.storage_bits();
                n += static_cast<double>(op.in_features()) * static_cast<double>(op.out_features());
            }
        return n > 0 ? bits / n : 0.0;
    }

private:
    void check_layer(int layer, const char* where) const {
        if (layer < 0 || layer >= static_cast<int>(blocks.size()))
            throw invalid_argument(std::string("lowbit: ") + where + ": layer " + std::to_string(layer) +
                                   " is outside [0, " + std::to_string(blocks.size()) + ")");
    }
    const std::shared_ptr<const linear_operator>& slot_ref(const linear_id& id, const char* where) const {
        check_layer(id.layer, where);
        const auto& b = blocks[static_cast<std::size_t>(id.layer)];
        const int s = static_cast<int>(id.slot);
        detail::require(s >= 0 && s < linear_slots, where, "slot out of range");
        const std::shared_ptr<const linear_operator>* p = nullptr;
        if (id.expert >= 0) {
            const int k = expert_slot_index(id.slot);
            detail::require(id.expert < static_cast<int>(b.experts.size()) && k >= 0, where,
                            "no linear '" + id.name() + "' (expert or slot out of range)");
            p = &b.experts[static_cast<std::size_t>(id.expert)][static_cast<std::size_t>(k)];
        } else {
            p = &b.linear[static_cast<std::size_t>(s)];
        }
        detail::require(*p != nullptr, where, "no linear '" + id.name() + "' in this model (an MoE block's FFN lives in its experts)");
        return *p;
    }
};

/// The FP32 model of a llama2.c checkpoint (dense linears copy the weights; the classifier is the
/// token embedding when shared).
[[nodiscard]] inline llama_model model_from_llama2c(const io::llama2c_checkpoint& ck) {
    const auto& c = ck.config;
    llama_model m;
    m.config = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len};
    m.token_embedding = ck.token_embedding;
    m.rms_final = ck.rms_final;
    m.classifier = make_linear(dense_linear(ck.classifier()));
    for (const auto& l : ck.layers) {
        llama_block b;
        b.rms_att = l.rms_att;
        b.rms_ffn = l.rms_ffn;
        const matrix_f* w[] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3};
        for (int s = 0; s < linear_slots; ++s) b.linear[static_cast<std::size_t>(s)] = make_linear(dense_linear(*w[s]));
        m.blocks.push_back(std::move(b));
    }
    return m;
}

/// A model of the given shape with random weights (speed measurements only): linear weights and
/// embedding N(0, 0.02²), norms 1, shared classifier; deterministic for a seed.
/// \throws invalid_argument (non-positive sizes, dim not a multiple of n_heads, n_heads not a
/// multiple of n_kv_heads, odd head size).
[[nodiscard]] inline llama_model random_llama(const llama_config& c, std::uint64_t seed) {
    constexpr const char* where = "random_llama";
    detail::require(c.dim > 0 && c.hidden_dim > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
                        c.vocab_size > 0 && c.seq_len > 0,
                    where, "every size in 'c' must be positive");
    detail::require(c.dim % c.n_heads == 0 && c.n_heads % c.n_kv_heads == 0 && c.head_size() % 2 == 0, where,
                    "dim must be a multiple of n_heads, n_heads of n_kv_heads, head size even");
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 0.02f);
    auto rnd = [&](Eigen::Index r, Eigen::Index k) {
        matrix_f m(r, k);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
        return m;
    };
    llama_model m;
    m.config = c;
    m.token_embedding = rnd(c.vocab_size, c.dim);
    m.rms_final = vector_f::Ones(c.dim);
    m.classifier = make_linear(dense_linear(m.token_embedding));
    for (int l = 0; l < c.n_layers; ++l) {
        llama_block b;
        b.rms_att = vector_f::Ones(c.dim);
        b.rms_ffn = vector_f::Ones(c.dim);
        const Eigen::Index shape[linear_slots][2] = {{c.q_dim(), c.dim},    {c.kv_dim(), c.dim}, {c.kv_dim(), c.dim},
                                                     {c.dim, c.q_dim()},        {c.hidden_dim, c.dim},
                                                     {c.dim, c.hidden_dim}, {c.hidden_dim, c.dim}};
        for (int s = 0; s < linear_slots; ++s)
            b.linear[static_cast<std::size_t>(s)] = make_linear(dense_linear(rnd(shape[s][0], shape[s][1])));
        m.blocks.push_back(std::move(b));
    }
    return m;
}

/// Keys and values of every block for positions [0, pos).
struct kv_cache {
    std::vector<matrix_f> k; ///< per block (seq_len, kv_dim), RoPE applied
    std::vector<matrix_f> v; ///< per block (seq_len, kv_dim)
    int pos = 0;             ///< number of positions filled

    kv_cache() = default;
    /// An empty cache sized for `c` (zeros, pos 0). Memory 2·n_layers·seq_len·kv_dim floats.
    explicit kv_cache(const llama_config& c) {
        for (int l = 0; l < c.n_layers; ++l) {
            k.emplace_back(matrix_f::Zero(c.seq_len, c.kv_dim()));
            v.emplace_back(matrix_f::Zero(c.seq_len, c.kv_dim()));
        }
    }
    /// Forgets every position (keeps the memory).
    void clear() { pos = 0; }
};

/// Observers of a forward pass.
struct forward_hooks {
    /// Called with the input `[T x in]` of every block linear of a block's own slots (attention and
    /// dense FFN), just before it is applied.
    std::function<void(int layer, linear_slot slot, const matrix_f& x)> on_linear_input;
    /// Called with the input of every expert linear (slot w1, w3 or w2 of expert e): the rows of the
    /// tokens routed to e, in token order, with their routing weights `gates` (after top-k and
    /// renormalisation) and their row indices in the batch.
    std::function<void(int layer, int expert, linear_slot slot, const matrix_f& x, const vector_f& gates,
                       std::span<const Eigen::Index> rows)>
        on_expert_input;
    /// Called with the router logits `[T x n_experts]` of every MoE block (before the softmax).
    std::function<void(int layer, const matrix_f& logits)> on_router_logits;
};

namespace detail {

/// out = rmsnorm(x)·w per row (llama2.c: x·w / sqrt(mean(x²) + eps)); sums in double; `rsqrt`, when
/// set, replaces 1/sqrt (applied to the float mean(x²) + eps).
inline void rmsnorm_rows(const matrix_f& x, const vector_f& w, float eps, matrix_f& out,
                         const std::function<void(std::span<const float>, std::span<float>)>& rsqrt = {}) {
    out.resize(x.rows(), x.cols());
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
        double ss = 0;
        for (Eigen::Index j = 0; j < x.cols(); ++j) ss += static_cast<double>(x(t, j)) * x(t, j);
        float inv;
        if (rsqrt) {
            const float arg = static_cast<float>(ss / static_cast<double>(x.cols()) + eps);
            rsqrt(std::span<const float>(&arg, 1), std::span<float>(&inv, 1));
        } else {
            inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(x.cols()) + eps));
        }
        for (Eigen::Index j = 0; j < x.cols(); ++j) out(t, j) = w(j) * (inv * x(t, j));
    }
}

/// cos/sin of the RoPE angles pos·theta^(−2i/head_size) for rows pos0..pos0+T−1 and i < head_size/2
/// (angles in double, rounded to float): `[T x head_size/2]` each.
inline void rope_table(Eigen::Index T, int head_size, int pos0, float theta, matrix_f& cos_t, matrix_f& sin_t) {
    const int half = head_size / 2;
    cos_t.resize(T, half);
    sin_t.resize(T, half);
    for (int i = 0; i < half; ++i) {
        const double freq = 1.0 / std::pow(static_cast<double>(theta), static_cast<double>(2 * i) / head_size);
        for (Eigen::Index t = 0; t < T; ++t) {
            const double ang = static_cast<double>(pos0 + t) * freq;
            cos_t(t, i) = static_cast<float>(std::cos(ang));
            sin_t(t, i) = static_cast<float>(std::sin(ang));
        }
    }
}

/// RoPE in place on the first `width` columns of `m` (row t at the position of table row t), per
/// head of `head_size` features: `interleaved` rotates pairs (2i, 2i+1) by angle i, `rotate_half`
/// rotates pairs (i, i + head_size/2) by angle i.
inline void rope_rows(matrix_f& m, Eigen::Index width, int head_size, const matrix_f& cos_t, const matrix_f& sin_t,
                      rope_layout layout = rope_layout::interleaved) {
    const Eigen::Index half = head_size / 2;
    for (Eigen::Index t = 0; t < m.rows(); ++t) {
        float* row = m.row(t).data();
        for (Eigen::Index h0 = 0; h0 < width; h0 += head_size)
            for (Eigen::Index k = 0; k < half; ++k) {
                const float c = cos_t(t, k), s = sin_t(t, k);
                const Eigen::Index i = layout == rope_layout::interleaved ? h0 + 2 * k : h0 + k;
                const Eigen::Index j = layout == rope_layout::interleaved ? i + 1 : i + half;
                const float a = row[i], b = row[j];
                row[i] = a * c - b * s;
                row[j] = a * s + b * c;
            }
    }
}

/// RMSNorm of every `head_size`-wide head of every row, in place, with weight `w` (head_size).
inline void head_rmsnorm(matrix_f& m, int head_size, const vector_f& w, float eps) {
    for (Eigen::Index t = 0; t < m.rows(); ++t)
        for (Eigen::Index h0 = 0; h0 < m.cols(); h0 += head_size) {
            double ss = 0;
            for (int j = 0; j < head_size; ++j) ss += static_cast<double>(m(t, h0 + j)) * m(t, h0 + j);
            const auto inv = static_cast<float>(1.0 / std::sqrt(ss / head_size + eps));
            for (int j = 0; j < head_size; ++j) m(t, h0 + j) = w(j) * (inv * m(t, h0 + j));
        }
}

/// SwiGLU gate in place: g ← silu(g) ⊙ u (the recipe's SiLU operator when set).
inline void swiglu_inplace(matrix_f& g, const matrix_f& u, const nonlinear_ops& ops) {
    if (ops.silu) {
        const auto len = static_cast<std::size_t>(g.size());
        ops.silu(std::span<const float>(g.data(), len), std::span<float>(g.data(), len));
        g.array() *= u.array();
    } else {
        for (Eigen::Index i = 0; i < g.size(); ++i) {
            const float a = g.data()[i];
            g.data()[i] = a / (1.0f + std::exp(-a)) * u.data()[i];
        }
    }
}

/// Top-k routing of one row of router logits: softmax in float, the k largest probabilities (ties:
/// lower expert index first), renormalised to sum 1 when `renormalise`. Writes k (expert, weight) pairs.
inline void route_top_k(const float* logits, int n_experts, int k, bool renormalise, std::vector<int>& experts,
                        std::vector<float>& weights) {
    std::vector<float> p(static_cast<std::size_t>(n_experts));
    float mx = logits[0];
    for (int e = 1; e < n_experts; ++e) mx = std::max(mx, logits[e]);
    float sum = 0;
    for (int e = 0; e < n_experts; ++e) sum += p[static_cast<std::size_t>(e)] = std::exp(logits[e] - mx);
    for (auto& x : p) x /= sum;
    experts.resize(static_cast<std::size_t>(n_experts));
    for (int e = 0; e < n_experts; ++e) experts[static_cast<std::size_t>(e)] = e;
    std::partial_sort(experts.begin(), experts.begin() + k, experts.end(), [&](int a, int b) {
        const float pa = p[static_cast<std::size_t>(a)], pb = p[static_cast<std::size_t>(b)];
        return pa > pb || (pa == pb && a < b);
    });
    experts.resize(static_cast<std::size_t>(k));
    weights.resize(static_cast<std::size_t>(k));
    float wsum = 0;
    for (int i = 0; i < k; ++i) wsum += weights[static_cast<std::size_t>(i)] = p[static_cast<std::size_t>(experts[static_cast<std::size_t>(i)])];
    if (renormalise)
        for (auto& w : weights) w /= wsum;
}

inline void check_tokens(const llama_model& m, std::span<const int> tokens, const char* where) {
    for (std::size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] < 0 || tokens[i] >= m.config.vocab_size)
            throw invalid_argument(std::string("lowbit: ") + where + ": token " + std::to_string(tokens[i]) +
                                   " at index " + std::to_string(i) + " is outside [0, " +
                                   std::to_string(m.config.vocab_size) + ")");
}

} // namespace detail

/// Which rows of logits `forward` returns.
enum class logits_rows { all, last };

/// Runs `tokens` (T ≥ 1) at positions cache.pos .. cache.pos+T−1 as one batch, appends their keys
/// and values to `cache`, advances cache.pos by T and returns logits `[T x vocab]` (or `[1 x vocab]`
/// for `logits_rows::last`). Each token attends to every cached position and to itself and the
/// earlier tokens of the batch, so one call with T tokens equals T calls with one token (up to
/// float rounding). O(T·(weights + (pos+T)·dim)) per block.
/// \throws shape_error (empty tokens, cache not sized for the model, pos + T > seq_len),
/// invalid_argument (token id out of range).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] matrix_f forward(const llama_model& m, kv_cache& cache, std::span<const int> tokens,
                                      logits_rows rows = logits_rows::all, const forward_hooks* hooks = nullptr) {
    constexpr const char* where = "forward";
    const auto& c = m.config;
    detail::require<shape_error>(!tokens.empty(), where, "argument 'tokens' is empty");
    detail::check_tokens(m, tokens, where);
    detail::require_dim(static_cast<Eigen::Index>(cache.k.size()), c.n_layers, where, "cache layers");
    detail::require<shape_error>(cache.pos >= 0 && static_cast<std::size_t>(cache.pos) + tokens.size() <=
                                                       static_cast<std::size_t>(c.seq_len),
                                 where,
                                 "cache position " + std::to_string(cache.pos) + " + " + std::to_string(tokens.size()) +
                                     " tokens exceeds seq_len " + std::to_string(c.seq_len));
    const auto T = static_cast<Eigen::Index>(tokens.size());
    const int p0 = cache.pos, hs = c.head_size(), kv = c.kv_dim(), group = c.n_heads / c.n_kv_heads;
    const Eigen::Index P = p0 + T; // positions visible after this batch
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));

    matrix_f x(T, c.dim);
    for (Eigen::Index t = 0; t < T; ++t) x.row(t) = m.token_embedding.row(tokens[static_cast<std::size_t>(t)]);
    matrix_f n, q, k, v, att_out(T, c.q_dim()), o, h1, h3, ff;
    matrix_f scores, rope_cos, rope_sin;
    detail::rope_table(T, hs, p0, c.rope_theta, rope_cos, rope_sin);
    auto run = [&](int layer, linear_slot s, const matrix_f& in, matrix_f& out) {
        if (hooks && hooks->on_linear_input) hooks->on_linear_input(layer, s, in);
        m.blocks[static_cast<std::size_t>(layer)].linear[static_cast<std::size_t>(s)]->apply(in, out);
    };
    for (int l = 0; l < c.n_layers; ++l) {
        const auto& b = m.blocks[static_cast<std::size_t>(l)];
        detail::rmsnorm_rows(x, b.rms_att, c.norm_eps, n, m.nonlinear.rsqrt);
        run(l, linear_slot::wq, n, q);
        run(l, linear_slot::wk, n, k);
        run(l, linear_slot::wv, n, v);
        if (b.q_bias.size()) q.rowwise() += b.q_bias.transpose();
        if (b.k_bias.size()) k.rowwise() += b.k_bias.transpose();
        if (b.v_bias.size()) v.rowwise() += b.v_bias.transpose();
        if (b.q_norm.size()) detail::head_rmsnorm(q, hs, b.q_norm, c.norm_eps);
        if (b.k_norm.size()) detail::head_rmsnorm(k, hs, b.k_norm, c.norm_eps);
        detail::rope_rows(q, c.q_dim(), hs, rope_cos, rope_sin, c.rope);
        detail::rope_rows(k, kv, hs, rope_cos, rope_sin, c.rope);
        auto& K = cache.k[static_cast<std::size_t>(l)];
        auto& V = cache.v[static_cast<std::size_t>(l)];
        K.middleRows(p0, T) = k;
        V.middleRows(p0, T) = v;
        for (int h = 0; h < c.n_heads; ++h) {
            const int kvh = h / group;
            scores.resize(T, P);
            scores.noalias() = q.middleCols(h * hs, hs) * K.topRows(P).middleCols(kvh * hs, hs).transpose();
            for (Eigen::Index t = 0; t < T; ++t) {
                const Eigen::Index visible = p0 + t + 1;
                auto row = scores.row(t).head(visible).array();
                row *= scale;
                const float mx = row.maxCoeff();
                if (m.nonlinear.exp) {
                    row -= mx;
                    float* p = scores.row(t).data(); // row-major: the visible prefix is contiguous
                    m.nonlinear.exp(std::span<const float>(p, static_cast<std::size_t>(visible)),
                                    std::span<float>(p, static_cast<std::size_t>(visible)));
                } else {
                    row = (row - mx).exp(); // Eigen's vectorised expf
                }
                row /= row.sum();
                scores.row(t).tail(P - visible).setZero();
            }
            att_out.middleCols(h * hs, hs).noalias() = scores * V.topRows(P).middleCols(kvh * hs, hs);
        }
        run(l, linear_slot::wo, att_out, o);
        x += o;
        detail::rmsnorm_rows(x, b.rms_ffn, c.norm_eps, n, m.nonlinear.rsqrt);
        if (!b.is_moe()) {
            run(l, linear_slot::w1, n, h1);
            run(l, linear_slot::w3, n, h3);
            detail::swiglu_inplace(h1, h3, m.nonlinear);
            run(l, linear_slot::w2, h1, ff);
            x += ff;
            continue;
        }
        // Routed experts: each expert runs once on the rows of the tokens routed to it.
        const int E = static_cast<int>(b.experts.size()), topk = c.n_experts_per_token;
        matrix_f logits_r = n * b.router.transpose(); // [T x E]
        if (hooks && hooks->on_router_logits) hooks->on_router_logits(l, logits_r);
        std::vector<std::vector<Eigen::Index>> rows_of(static_cast<std::size_t>(E));
        std::vector<std::vector<float>> gates_of(static_cast<std::size_t>(E));
        std::vector<int> sel;
        std::vector<float> wts;
        for (Eigen::Index t = 0; t < T; ++t) {
            detail::route_top_k(logits_r.row(t).data(), E, topk, c.norm_topk_prob, sel, wts);
            for (int i = 0; i < topk; ++i) {
                rows_of[static_cast<std::size_t>(sel[static_cast<std::size_t>(i)])].push_back(t);
                gates_of[static_cast<std::size_t>(sel[static_cast<std::size_t>(i)])].push_back(wts[static_cast<std::size_t>(i)]);
            }
        }
        matrix_f xe;
        for (int e = 0; e < E; ++e) {
            const auto& rows = rows_of[static_cast<std::size_t>(e)];
            if (rows.empty()) continue;
            const auto R = static_cast<Eigen::Index>(rows.size());
            xe.resize(R, c.dim);
            for (Eigen::Index i = 0; i < R; ++i) xe.row(i) = n.row(rows[static_cast<std::size_t>(i)]);
            const vector_f gates = Eigen::Map<const vector_f>(gates_of[static_cast<std::size_t>(e)].data(), R);
            const auto& ex = b.experts[static_cast<std::size_t>(e)];
            auto run_e = [&](linear_slot s, const matrix_f& in, matrix_f& out) {
                if (hooks && hooks->on_expert_input) hooks->on_expert_input(l, e, s, in, gates, rows);
                ex[static_cast<std::size_t>(expert_slot_index(s))]->apply(in, out);
            };
            run_e(linear_slot::w1, xe, h1);
            run_e(linear_slot::w3, xe, h3);
            detail::swiglu_inplace(h1, h3, m.nonlinear);
            run_e(linear_slot::w2, h1, ff);
            for (Eigen::Index i = 0; i < R; ++i) x.row(rows[static_cast<std::size_t>(i)]) += gates(i) * ff.row(i);
        }
    }
    cache.pos = static_cast<int>(P);
    matrix_f last = rows == logits_rows::last ? matrix_f(x.bottomRows(1)) : matrix_f();
    detail::rmsnorm_rows(rows == logits_rows::last ? last : x, m.rms_final, c.norm_eps, n, m.nonlinear.rsqrt);
    matrix_f logits;
    m.classifier->apply(n, logits);
    return logits;
}

/// Index of the largest logit of row `r` (first on ties).
[[nodiscard]] inline int argmax_row(const matrix_f& logits, Eigen::Index r) {
    Eigen::Index best = 0;
    for (Eigen::Index j = 1; j < logits.cols(); ++j)
        if (logits(r, j) > logits(r, best)) best = j;
    return static_cast<int>(best);
}

/// Options of `generate`.
struct sampling_options {
    int max_new_tokens = 128;  ///< tokens to generate at most
    float temperature = 0.0f;  ///< 0: greedy (argmax); > 0: softmax(logits / temperature) sampling
    int top_k = 0;             ///< keep the k most likely tokens (0: all)
    float top_p = 1.0f;        ///< nucleus: smallest prefix of the sorted distribution with mass ≥ top_p
    std::uint64_t seed = 0;    ///< sampling seed (std::mt19937_64; the same seed gives the same text)
    /// Called with each generated token as soon as it is chosen (streaming output), optional.
    std::function<void(int)> on_token;
};

namespace detail {
/// The next token from the last row of `logits` under `opt`: the first maximum for temperature 0;
/// else softmax(logits / temperature) in double, the `top_k` most likely kept, then the smallest
/// prefix of mass ≥ `top_p`, and a draw u ∈ [0, mass) from 53 bits of `rng` (independent of the
/// standard library's distributions, so the text is the same everywhere for a seed). `cand` is scratch.
inline int sample_next(const matrix_f& logits, const sampling_options& opt, std::mt19937_64& rng,
                       std::vector<std::pair<double, int>>& cand) {
    const Eigen::Index r = logits.rows() - 1;
    if (opt.temperature == 0.0f) return argmax_row(logits, r);
    cand.clear();
    double mx = -std::numeric_limits<double>::infinity();
    for (Eigen::Index j = 0; j < logits.cols(); ++j) mx = std::max(mx, static_cast<double>(logits(r, j)));
    for (Eigen::Index j = 0; j < logits.cols(); ++j)
        cand.emplace_back(std::exp((static_cast<double>(logits(r, j)) - mx) / opt.temperature), static_cast<int>(j));
    std::stable_sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    if (opt.top_k > 0 && static_cast<std::size_t>(opt.top_k) < cand.size()) cand.resize(static_cast<std::size_t>(opt.top_k));
    double total = 0;
    for (const auto& c : cand) total += c.first;
    if (opt.top_p < 1.0f) {
        double acc = 0;
        std::size_t keep = 0;
        while (keep < cand.size() && acc < opt.top_p * total) acc += cand[keep++].first;
        cand.resize(std::max<std::size_t>(keep, 1));
        total = 0;
        for (const auto& c : cand) total += c.first;
    }
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
    double acc = 0;
    for (const auto& c : cand) {
        acc += c.first;
        if (u < acc) return c.second;
    }
    return cand.back().second;
}
} // namespace detail

/// Decoding: the prompt (non-empty) runs as one batch, then one token per step; stops after
/// `max_new_tokens`, when the model emits `config.stop_token` (not returned), or when the cache is
/// full. Greedy for temperature 0 (first maximum on ties), else sampling (top-k, then top-p, then a
/// draw from the renormalised distribution, in double). Deterministic for a seed. Returns the
/// generated tokens (prompt excluded). \throws as forward; invalid_argument (temperature < 0, top_p ∉ (0, 1]).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] std::vector<int> generate(const llama_model& m, std::span<const int> prompt,
                                               const sampling_options& opt) {
    constexpr const char* where = "generate";
    detail::require(opt.temperature >= 0.0f && std::isfinite(opt.temperature), where, "temperature must be >= 0");
    detail::require(opt.top_p > 0.0f && opt.top_p <= 1.0f, where, "top_p must lie in (0, 1]");
    kv_cache cache(m.config);
    std::vector<int> out;
    if (opt.max_new_tokens <= 0) return out;
    std::mt19937_64 rng(opt.seed);
    std::vector<std::pair<double, int>> cand;
    auto pick = [&](const matrix_f& logits) { return detail::sample_next(logits, opt, rng, cand); };
    matrix_f logits = forward(m, cache, prompt, logits_rows::last);
    while (true) {
        const int next = pick(logits);
        if (next == m.config.stop_token) break;
        out.push_back(next);
        if (opt.on_token) opt.on_token(next);
        if (static_cast<int>(out.size()) >= opt.max_new_tokens || cache.pos >= m.config.seq_len) break;
        logits = forward(m, cache, std::span<const int>(&out.back(), 1), logits_rows::last);
    }
    return out;
}

/// Greedy (temperature 0) decoding as llama2.c's `generate` (see `generate`): stops at
/// `config.stop_token` (llama2.c models: BOS = 1). \throws as forward.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] std::vector<int> generate_greedy(const llama_model& m, std::span<const int> prompt,
                                                      int max_new_tokens) {
    sampling_options o;
    o.max_new_tokens = max_new_tokens;
    return generate(m, prompt, o);
}

/// Result of `perplexity`.
struct perplexity_result {
    double perplexity = 0; ///< exp(mean NLL)
    double mean_nll = 0;   ///< mean negative log-likelihood (nats)
    long long scored = 0;  ///< scored predictions
    int windows = 0;       ///< windows evaluated
};

/// Options of `perplexity`.
struct perplexity_options {
    int window = -1;       ///< window length in tokens; −1: seq_len − 1 (with BOS) or min(512, seq_len) (without)
    int max_windows = -1;  ///< evaluate at most this many windows (< 0: all)
    int threads = 1;       ///< windows are split over this many std::threads (explicit; the result does not depend on it)
    /// Called after each window with (windows done, windows in all), from the calling thread; optional.
    std::function<void(int, int)> progress;
};

namespace detail {
/// The windows of the perplexity protocol: [begin, end) ranges of `tokens`.
inline std::vector<std::pair<std::size_t, std::size_t>> perplexity_windows(std::size_t n, std::size_t W, bool keep_partial,
                                                                           int max_windows) {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    for (std::size_t at = 0; at < n; at += W) {
        const std::size_t end = std::min(n, at + W);
        if (end - at < W && !keep_partial) break;
        if (end - at < 2 && keep_partial) break; // nothing to score
        if (max_windows >= 0 && out.size() >= static_cast<std::size_t>(max_windows)) break;
        out.emplace_back(at, end);
    }
    return out;
}
} // namespace detail

namespace detail {
/// Σ over the first `rows` rows t of −log softmax(logits.row(t))[target(t)], in double.
template <class Target>
[[nodiscard]] double rows_nll(const matrix_f& logits, Eigen::Index rows, Target target) {
    double sum = 0;
    for (Eigen::Index t = 0; t < rows; ++t) {
        const auto row = logits.row(t);
        const double mx = static_cast<double>(row.maxCoeff());
        double s = 0;
        for (Eigen::Index j = 0; j < row.size(); ++j) s += std::exp(static_cast<double>(row(j)) - mx);
        sum += mx + std::log(s) - static_cast<double>(row(target(t)));
    }
    return sum;
}

/// Scores `n` windows with `score(w) -> {nll sum, scored tokens}` on `opt.threads` explicit
/// std::threads (the calling thread included; it reports `opt.progress(done, n)`), then sums the
/// windows' NLLs in window order, so the result does not depend on the thread count. An exception
/// in any window stops the others and reaches the caller.
template <class Score>
[[nodiscard]] perplexity_result score_windows(std::size_t n, const perplexity_options& opt, Score score) {
    std::vector<double> nll(n, 0.0);
    std::vector<long long> scored(n, 0);
    std::atomic<std::size_t> next{0};
    std::atomic<int> done{0};
    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto worker = [&](bool report) {
        try {
            for (std::size_t w; (w = next.fetch_add(1)) < n;) {
                std::tie(nll[w], scored[w]) = score(w);
                const int d = done.fetch_add(1) + 1;
                if (report && opt.progress) opt.progress(d, static_cast<int>(n));
            }
        } catch (...) {
            const std::lock_guard<std::mutex> lock(failure_mutex);
            if (!failure) failure = std::current_exception();
            next.store(n);
        }
    };
    std::vector<std::thread> pool;
    for (int i = 1; i < std::min<int>(opt.threads, static_cast<int>(n)); ++i) pool.emplace_back(worker, false);
    worker(true);
    for (auto& t : pool) t.join();
    if (failure) std::rethrow_exception(failure);
    perplexity_result r;
    double total = 0;
    for (std::size_t w = 0; w < n; ++w) {
        total += nll[w];
        r.scored += scored[w];
    }
    r.windows = static_cast<int>(n);
    r.mean_nll = total / static_cast<double>(r.scored);
    r.perplexity = std::exp(r.mean_nll);
    return r;
}
} // namespace detail

/// Perplexity under the models README protocols, chosen by `config.bos_token`:
/// - with a BOS token (llama2.c models): cut `tokens` (the encoded text, no BOS) into
///   non-overlapping windows of `window` tokens (default seq_len − 1 = 511), prepend BOS to each,
///   score the `window` next-token predictions, drop a last partial window;
/// - without (Hugging Face models, `bos_token` = −1): windows of `window` tokens (default 512) from
///   position 0, each alone from an empty cache, score tokens 1..len−1 of each given their prefix;
///   the last window may be shorter.
/// Log-softmax in double; at most `max_windows` windows. Returns exp(mean NLL). The per-window
/// NLLs are summed in window order, so the result is the same for any `threads`.
/// \throws invalid_argument (window outside its range, token out of range, threads < 1),
/// shape_error (no window to score).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] perplexity_result perplexity(const llama_model& m, std::span<const int> tokens,
                                                  const perplexity_options& opt) {
    constexpr const char* where = "perplexity";
    const bool bos = m.config.bos_token >= 0;
    int window = opt.window;
    if (window < 0) window = bos ? m.config.seq_len - 1 : std::min(512, m.config.seq_len);
    const int max_w = bos ? m.config.seq_len - 1 : m.config.seq_len;
    detail::require(window >= (bos ? 1 : 2) && window <= max_w, where,
                    "window must lie in [" + std::string(bos ? "1" : "2") + ", " + std::to_string(max_w) + "]");
    detail::require(opt.threads >= 1, where, "threads must be >= 1");
    detail::check_tokens(m, tokens, where);
    const auto wins = detail::perplexity_windows(tokens.size(), static_cast<std::size_t>(window), !bos, opt.max_windows);
    detail::require<shape_error>(!wins.empty(), where,
                                 "argument 'tokens' has " + std::to_string(tokens.size()) +
                                     " tokens, fewer than one window of " + std::to_string(window));
    llama_config wc = m.config; // a cache of one window's length suffices: each window starts empty
    wc.seq_len = window + (bos ? 1 : 0);
    return detail::score_windows(wins.size(), opt, [&](std::size_t w) {
        const auto win = tokens.subspan(wins[w].first, wins[w].second - wins[w].first);
        std::vector<int> in;
        if (bos) {
            in.push_back(m.config.bos_token);
            in.insert(in.end(), win.begin(), win.end() - 1);
        } else {
            in.assign(win.begin(), win.end() - 1); // the last token is only a target
        }
        kv_cache cache(wc);
        const matrix_f logits = forward(m, cache, in);
        const double nll = detail::rows_nll(logits, static_cast<Eigen::Index>(in.size()),
                                            [&](Eigen::Index t) { return bos ? win[static_cast<std::size_t>(t)] : win[static_cast<std::size_t>(t) + 1]; });
        return std::pair<double, long long>(nll, static_cast<long long>(in.size()));
    });
}

/// `perplexity` with a window length and window count (see `perplexity_options`).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] perplexity_result perplexity(const llama_model& m, std::span<const int> tokens, int window = -1,
                                                  int max_windows = -1) {
    perplexity_options o;
    o.window = window;
    o.max_windows = max_windows;
    return perplexity(m, tokens, o);
}

/// Runs the windows of the model's perplexity protocol over `tokens` (same cutting; with a BOS
/// token it is prepended and a last partial window of ≥ 1 token is included; at most
/// `max_windows`) and reports every block linear's input through `hooks` (`on_linear_input`,
/// `on_expert_input`, `on_router_logits`). Inputs are those the current model sees (quantized
/// earlier layers included), so a solver that quantizes layer by layer captures X̂ of the partially
/// quantized model. \throws as forward; invalid_argument (window).
template <class = void> // compiled only where called (docs/compile_time.md)
void capture_linear_inputs(const llama_model& m, std::span<const int> tokens, const forward_hooks& hooks,
                                  int window = -1, int max_windows = -1) {
    constexpr const char* where = "capture_linear_inputs";
    const bool bos = m.config.bos_token >= 0;
    if (window < 0) window = bos ? m.config.seq_len - 1 : std::min(512, m.config.seq_len);
    detail::require(window >= 1 && window <= (bos ? m.config.seq_len - 1 : m.config.seq_len), where,
                    "window must lie in [1, seq_len" + std::string(bos ? " - 1]" : "]"));
    detail::require<shape_error>(!tokens.empty(), where, "argument 'tokens' is empty");
    kv_cache cache(m.config);
    const auto W = static_cast<std::size_t>(window);
    int done = 0;
    for (std::size_t at = 0; at < tokens.size() && (max_windows < 0 || done < max_windows); at += W, ++done) {
        const auto win = tokens.subspan(at, std::min(W, tokens.size() - at));
        std::vector<int> in;
        if (bos) {
            in.push_back(m.config.bos_token);
            in.insert(in.end(), win.begin(), win.end() - (win.size() == W ? 1 : 0));
        } else {
            in.assign(win.begin(), win.end());
        }
        cache.clear();
        (void)forward(m, cache, in, logits_rows::last, &hooks);
    }
}

/// Every block linear's inputs stacked over the calibration tokens: `inputs[layer][slot]` is
/// `[N x in]` (wq, wk, wv share one input, as do w1 and w3; each slot keeps its own copy).
/// Memory 7·L·N·in floats — for large models feed `capture_linear_inputs` into a Hessian
/// accumulator instead. \throws as capture_linear_inputs.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] std::vector<std::array<matrix_f, linear_slots>>
calibration_inputs(const llama_model& m, std::span<const int> tokens, int window = -1, int max_windows = -1) {
    std::vector<std::array<std::vector<matrix_f>, linear_slots>> parts(m.blocks.size());
    forward_hooks hooks;
    hooks.on_linear_input = [&](int l, linear_slot s, const matrix_f& x) {
        parts[static_cast<std::size_t>(l)][static_cast<std::size_t>(s)].push_back(x);
    };
    capture_linear_inputs(m, tokens, hooks, window, max_windows);
    std::vector<std::array<matrix_f, linear_slots>> out(m.blocks.size());
    for (std::size_t l = 0; l < parts.size(); ++l)
        for (std::size_t s = 0; s < linear_slots; ++s) {
            if (!m.blocks[l].linear[s]) continue; // FFN slot of an MoE block
            Eigen::Index rows = 0, cols = m.blocks[l].linear[s]->in_features();
            for (const auto& p : parts[l][s]) rows += p.rows();
            matrix_f all(rows, cols);
            Eigen::Index r = 0;
            for (const auto& p : parts[l][s]) {
                all.middleRows(r, p.rows()) = p;
                r += p.rows();
            }
            out[l][s] = std::move(all);
        }
    return out;
}

LOWBIT_END_NAMESPACE
