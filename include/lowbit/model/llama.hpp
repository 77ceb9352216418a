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

#include <array>
#include <cmath>
#include <concepts>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
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

/// Hyper-parameters of the forward pass.
struct llama_config {
    int dim = 0;              ///< model width
    int hidden_dim = 0;       ///< FFN width
    int n_layers = 0;         ///< blocks
    int n_heads = 0;          ///< query heads
    int n_kv_heads = 0;       ///< key/value heads
    int vocab_size = 0;       ///< tokens
    int seq_len = 0;          ///< positions (KV cache capacity)
    float norm_eps = 1e-5f;   ///< RMSNorm epsilon
    float rope_theta = 10000; ///< RoPE base
    [[nodiscard]] int head_size() const { return dim / n_heads; }
    [[nodiscard]] int kv_dim() const { return head_size() * n_kv_heads; }
};

/// One transformer block: norms and seven linear operators (index by `linear_slot`).
struct llama_block {
    vector_f rms_att; ///< (dim)
    vector_f rms_ffn; ///< (dim)
    std::array<std::shared_ptr<const linear_operator>, linear_slots> linear; ///< wq, wk, wv, wo, w1, w2, w3
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

/// A Llama-2 model whose linear layers are pluggable.
struct llama_model {
    llama_config config;
    matrix_f token_embedding; ///< (vocab, dim), FP32
    std::vector<llama_block> blocks;
    vector_f rms_final;       ///< (dim)
    std::shared_ptr<const linear_operator> classifier; ///< (vocab x dim); FP32 dense by default
    nonlinear_ops nonlinear; ///< approximate nonlinear operators (default: exact)

    /// The operator of `slot` in block `layer`. \throws invalid_argument (layer out of range).
    [[nodiscard]] const linear_operator& linear(int layer, linear_slot slot) const {
        check_layer(layer, "llama_model::linear");
        return *blocks[static_cast<std::size_t>(layer)].linear[static_cast<std::size_t>(slot)];
    }

    /// Replaces a linear layer. \throws invalid_argument (layer, null op), shape_error (in/out
    /// features differ from the slot's).
    void set_linear(int layer, linear_slot slot, std::shared_ptr<const linear_operator> op) {
        constexpr const char* where = "llama_model::set_linear";
        check_layer(layer, where);
        detail::require(op != nullptr, where, "argument 'op' is null");
        auto& cur = blocks[static_cast<std::size_t>(layer)].linear[static_cast<std::size_t>(slot)];
        detail::require_dim(op->in_features(), cur->in_features(), where, "in_features of 'op'");
        detail::require_dim(op->out_features(), cur->out_features(), where, "out_features of 'op'");
        cur = std::move(op);
    }

    /// Replaces a linear layer by an FP32 `dense_linear` of `w` (e.g. a dequantized weight).
    /// \throws as set_linear and dense_linear.
    void set_weight(int layer, linear_slot slot, matrix_f w) {
        set_linear(layer, slot, make_linear(dense_linear(std::move(w))));
    }

    /// Σ storage_bits / Σ in·out over the 7·n_layers block linears (embedding, norms and classifier
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
    void check_layer(int layer, const char* where) const {
        if (layer < 0 || layer >= static_cast<int>(blocks.size()))
            throw invalid_argument(std::string("lowbit: ") + where + ": layer " + std::to_string(layer) +
                                   " is outside [0, " + std::to_string(blocks.size()) + ")");
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
        const Eigen::Index shape[linear_slots][2] = {{c.dim, c.dim},        {c.kv_dim(), c.dim}, {c.kv_dim(), c.dim},
                                                     {c.dim, c.dim},        {c.hidden_dim, c.dim},
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
    /// Called with the input `[T x in]` of every block linear, just before it is applied.
    std::function<void(int layer, linear_slot slot, const matrix_f& x)> on_linear_input;
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

/// RoPE in place on the first `width` columns of `m` (row t at the position of table row t):
/// pairs (2i, 2i+1) inside each head rotate by the angle of pair index (2i mod head_size)/2.
inline void rope_rows(matrix_f& m, Eigen::Index width, int head_size, const matrix_f& cos_t, const matrix_f& sin_t) {
    for (Eigen::Index t = 0; t < m.rows(); ++t)
        for (Eigen::Index i = 0; i < width; i += 2) {
            const Eigen::Index k = (i % head_size) / 2;
            const float c = cos_t(t, k), s = sin_t(t, k);
            const float a = m(t, i), b = m(t, i + 1);
            m(t, i) = a * c - b * s;
            m(t, i + 1) = a * s + b * c;
        }
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
[[nodiscard]] inline matrix_f forward(const llama_model& m, kv_cache& cache, std::span<const int> tokens,
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
    matrix_f n, q, k, v, att_out(T, c.dim), o, h1, h3, ff;
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
        detail::rope_rows(q, c.dim, hs, rope_cos, rope_sin);
        detail::rope_rows(k, kv, hs, rope_cos, rope_sin);
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
        run(l, linear_slot::w1, n, h1);
        run(l, linear_slot::w3, n, h3);
        if (m.nonlinear.silu) {
            const auto len = static_cast<std::size_t>(h1.size());
            m.nonlinear.silu(std::span<const float>(h1.data(), len), std::span<float>(h1.data(), len));
            h1.array() *= h3.array();
        } else {
            for (Eigen::Index i = 0; i < h1.size(); ++i) {
                const float a = h1.data()[i];
                h1.data()[i] = a / (1.0f + std::exp(-a)) * h3.data()[i];
            }
        }
        run(l, linear_slot::w2, h1, ff);
        x += ff;
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

/// Greedy (temperature 0) decoding as llama2.c's `generate`: the prompt (non-empty, usually
/// starting with BOS = 1) runs as one batch, then one token per step; stops after
/// `max_new_tokens`, when the model emits BOS (llama2.c's sequence delimiter; not returned), or
/// when the cache is full. Returns the generated tokens (prompt excluded).
/// \throws as forward.
[[nodiscard]] inline std::vector<int> generate_greedy(const llama_model& m, std::span<const int> prompt,
                                                      int max_new_tokens) {
    kv_cache cache(m.config);
    std::vector<int> out;
    if (max_new_tokens <= 0) return out;
    matrix_f logits = forward(m, cache, prompt, logits_rows::last);
    while (true) {
        const int next = argmax_row(logits, logits.rows() - 1);
        if (next == 1) break;
        out.push_back(next);
        if (static_cast<int>(out.size()) >= max_new_tokens || cache.pos >= m.config.seq_len) break;
        logits = forward(m, cache, std::span<const int>(&out.back(), 1), logits_rows::last);
    }
    return out;
}

/// Result of `perplexity`.
struct perplexity_result {
    double perplexity = 0; ///< exp(mean NLL)
    double mean_nll = 0;   ///< mean negative log-likelihood (nats)
    long long scored = 0;  ///< scored predictions
    int windows = 0;       ///< windows evaluated
};

/// The models README protocol: cut `tokens` (the encoded text, no BOS) into non-overlapping
/// windows of `window` tokens (default seq_len − 1 = 511), prepend BOS to each, score the `window`
/// next-token predictions (log-softmax in double), drop a last partial window; at most
/// `max_windows` windows (< 0: all). Returns exp(mean NLL).
/// \throws invalid_argument (window outside [1, seq_len − 1], token out of range), shape_error (fewer
/// tokens than one window).
[[nodiscard]] inline perplexity_result perplexity(const llama_model& m, std::span<const int> tokens, int window = -1,
                                                  int max_windows = -1) {
    constexpr const char* where = "perplexity";
    if (window < 0) window = m.config.seq_len - 1;
    detail::require(window >= 1 && window <= m.config.seq_len - 1, where,
                    "window must lie in [1, seq_len - 1 = " + std::to_string(m.config.seq_len - 1) + "]");
    detail::check_tokens(m, tokens, where);
    const auto W = static_cast<std::size_t>(window);
    std::size_t n_windows = tokens.size() / W;
    if (max_windows >= 0) n_windows = std::min(n_windows, static_cast<std::size_t>(max_windows));
    detail::require<shape_error>(n_windows > 0, where,
                                 "argument 'tokens' has " + std::to_string(tokens.size()) +
                                     " tokens, fewer than one window of " + std::to_string(window));
    kv_cache cache(m.config);
    std::vector<int> in(W);
    double nll = 0;
    perplexity_result r;
    for (std::size_t w = 0; w < n_windows; ++w) {
        const auto win = tokens.subspan(w * W, W);
        in[0] = 1;
        std::copy(win.begin(), win.end() - 1, in.begin() + 1);
        cache.clear();
        const matrix_f logits = forward(m, cache, in);
        for (std::size_t t = 0; t < W; ++t) {
            const auto row = logits.row(static_cast<Eigen::Index>(t));
            const double mx = static_cast<double>(row.maxCoeff());
            double s = 0;
            for (Eigen::Index j = 0; j < row.size(); ++j) s += std::exp(static_cast<double>(row(j)) - mx);
            nll += mx + std::log(s) - static_cast<double>(row(win[t]));
        }
        r.scored += static_cast<long long>(W);
    }
    r.windows = static_cast<int>(n_windows);
    r.mean_nll = nll / static_cast<double>(r.scored);
    r.perplexity = std::exp(r.mean_nll);
    return r;
}

/// Runs the windows of the perplexity protocol over `tokens` (same cutting, BOS prepended, at most
/// `max_windows`; a last partial window of ≥ 1 token is included here) and calls
/// `hooks.on_linear_input(layer, slot, x)` with every block linear's input `[T x in]`. Inputs are
/// those the current model sees (quantized earlier layers included), so a solver that quantizes
/// layer by layer captures X̂ of the partially quantized model.
/// \throws as forward; invalid_argument (window).
inline void capture_linear_inputs(const llama_model& m, std::span<const int> tokens, const forward_hooks& hooks,
                                  int window = -1, int max_windows = -1) {
    constexpr const char* where = "capture_linear_inputs";
    if (window < 0) window = m.config.seq_len - 1;
    detail::require(window >= 1 && window <= m.config.seq_len - 1, where, "window must lie in [1, seq_len - 1]");
    detail::require<shape_error>(!tokens.empty(), where, "argument 'tokens' is empty");
    kv_cache cache(m.config);
    const auto W = static_cast<std::size_t>(window);
    int done = 0;
    for (std::size_t at = 0; at < tokens.size() && (max_windows < 0 || done < max_windows); at += W, ++done) {
        const auto win = tokens.subspan(at, std::min(W, tokens.size() - at));
        std::vector<int> in{1};
        in.insert(in.end(), win.begin(), win.end() - (win.size() == W ? 1 : 0));
        cache.clear();
        (void)forward(m, cache, in, logits_rows::last, &hooks);
    }
}

/// Every block linear's inputs stacked over the calibration tokens: `inputs[layer][slot]` is
/// `[N x in]` (wq, wk, wv share one input, as do w1 and w3; each slot keeps its own copy).
/// Memory 7·L·N·in floats — for large models feed `capture_linear_inputs` into a Hessian
/// accumulator instead. \throws as capture_linear_inputs.
[[nodiscard]] inline std::vector<std::array<matrix_f, linear_slots>>
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
