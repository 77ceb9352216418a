#pragma once
/// \file io/llama2c.hpp
/// Reader and writer for llama2.c "legacy" (version 0) checkpoints.
///
/// Format: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
/// seq_len), then float32 tensors in the order token_embedding[vocab,dim], rms_att[L,dim],
/// wq[L,dim,dim], wk[L,kv_dim,dim], wv[L,kv_dim,dim], wo[L,dim,dim], rms_ffn[L,dim],
/// w1[L,hidden,dim], w2[L,dim,hidden], w3[L,hidden,dim], rms_final[dim], two legacy RoPE tables of
/// seq_len·head_size/2 floats each, and — only when vocab_size < 0 — a separate classifier
/// wcls[|vocab|,dim]. kv_dim = dim·n_kv_heads/n_heads. The file size must match exactly.
///
/// Every malformed input (truncated, trailing bytes, header values that are not positive or do not
/// divide, sizes that overflow, non-finite weights) throws `lowbit::format_error`.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// Hyper-parameters of a llama2.c checkpoint.
struct llama2c_config {
    int dim = 0;          ///< model width
    int hidden_dim = 0;   ///< FFN width
    int n_layers = 0;     ///< transformer blocks
    int n_heads = 0;      ///< query heads
    int n_kv_heads = 0;   ///< key/value heads (grouped-query attention)
    int vocab_size = 0;   ///< vocabulary size (always stored positive here)
    int seq_len = 0;      ///< maximum sequence length
    bool shared_classifier = true; ///< classifier = token embedding (vocab_size > 0 in the file)

    /// dim / n_heads.
    [[nodiscard]] int head_size() const { return dim / n_heads; }
    /// dim · n_kv_heads / n_heads.
    [[nodiscard]] int kv_dim() const { return dim / n_heads * n_kv_heads; }
};

/// One transformer block's weights. Linear weights are row-major `[out x in]`.
struct llama2c_layer {
    vector_f rms_att; ///< (dim)
    matrix_f wq;      ///< (dim, dim)
    matrix_f wk;      ///< (kv_dim, dim)
    matrix_f wv;      ///< (kv_dim, dim)
    matrix_f wo;      ///< (dim, dim)
    vector_f rms_ffn; ///< (dim)
    matrix_f w1;      ///< (hidden, dim)
    matrix_f w2;      ///< (dim, hidden)
    matrix_f w3;      ///< (hidden, dim)
};

/// A whole checkpoint in memory.
struct llama2c_checkpoint {
    llama2c_config config;
    matrix_f token_embedding; ///< (vocab, dim)
    std::vector<llama2c_layer> layers;
    vector_f rms_final;       ///< (dim)
    matrix_f wcls;            ///< (vocab, dim); empty when `config.shared_classifier`

    /// The classifier matrix (token embedding when shared).
    [[nodiscard]] const matrix_f& classifier() const {
        return config.shared_classifier ? token_embedding : wcls;
    }
};

/// Pointer and name of one linear weight of a layer, in llama2.c order (wq, wk, wv, wo, w1, w2, w3).
struct linear_ref {
    std::string name; ///< e.g. "layers.0.wq"
    matrix_f* weight; ///< the weight, row-major [out x in]
};

/// All linear weights of `ck` (7 per layer), named `layers.<l>.<w>`. The pointers stay valid while
/// `ck` lives and its layer vector is not resized.
inline std::vector<linear_ref> linear_weights(llama2c_checkpoint& ck) {
    std::vector<linear_ref> out;
    for (std::size_t l = 0; l < ck.layers.size(); ++l) {
        auto& L = ck.layers[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        for (auto [n, w] : {std::pair<const char*, matrix_f*>{"wq", &L.wq}, {"wk", &L.wk}, {"wv", &L.wv},
                            {"wo", &L.wo}, {"w1", &L.w1}, {"w2", &L.w2}, {"w3", &L.w3}})
            out.push_back({p + n, w});
    }
    return out;
}

namespace detail {

inline void fail(const std::string& what) { throw format_error("lowbit: llama2c: " + what); }

/// Multiplies with overflow detection against a bound on the float count.
inline std::uint64_t mul_checked(std::uint64_t a, std::uint64_t b) {
    if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) fail("tensor sizes overflow");
    return a * b;
}

class float_cursor {
public:
    float_cursor(const std::byte* p, std::uint64_t n) : p_(p), n_(n) {}
    void read(float* dst, std::uint64_t count, const char* name) {
        if (count > n_ - pos_) fail(std::string("file truncated inside tensor '") + name + "'");
        std::memcpy(dst, p_ + pos_ * 4, count * 4);
        for (std::uint64_t i = 0; i < count; ++i)
            if (!std::isfinite(dst[i])) fail(std::string("tensor '") + name + "' contains NaN or Inf");
        pos_ += count;
    }
    void skip(std::uint64_t count) { pos_ += count; }
    matrix_f matrix(Eigen::Index r, Eigen::Index c, const char* name) {
        matrix_f m(r, c);
        read(m.data(), static_cast<std::uint64_t>(r) * static_cast<std::uint64_t>(c), name);
        return m;
    }
    vector_f vector(Eigen::Index n, const char* name) {
        vector_f v(n);
        read(v.data(), static_cast<std::uint64_t>(n), name);
        return v;
    }

private:
    const std::byte* p_;
    std::uint64_t n_;
    std::uint64_t pos_ = 0;
};

} // namespace detail

/// Upper bound accepted for any header value (guards absurd sizes in corrupt files).
inline constexpr int llama2c_max_dimension = 1 << 20;

/// Parses a checkpoint held in memory. `bytes` is the whole file.
/// \throws format_error on any malformed input (see file comment).
inline llama2c_checkpoint parse_llama2c(std::span<const std::byte> bytes) {
    if (bytes.size() < 28) detail::fail("file truncated: " + std::to_string(bytes.size()) + " bytes, header needs 28");
    std::int32_t h[7];
    std::memcpy(h, bytes.data(), 28);
    const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    for (int i = 0; i < 7; ++i) {
        const std::int64_t v = i == 5 ? (h[i] < 0 ? -static_cast<std::int64_t>(h[i]) : h[i]) : h[i];
        if (v <= 0 || v > llama2c_max_dimension)
            detail::fail(std::string("header field '") + names[i] + "' = " + std::to_string(h[i]) +
                         " is out of range (1.." + std::to_string(llama2c_max_dimension) + ")");
    }
    llama2c_config c{h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6], h[5] > 0};
    if (c.dim % c.n_heads != 0) detail::fail("dim is not a multiple of n_heads");
    if (c.n_heads % c.n_kv_heads != 0) detail::fail("n_heads is not a multiple of n_kv_heads");
    if (c.head_size() % 2 != 0) detail::fail("head size must be even (RoPE rotates pairs)");

    using u64 = std::uint64_t;
    const u64 D = static_cast<u64>(c.dim), H = static_cast<u64>(c.hidden_dim), L = static_cast<u64>(c.n_layers),
              V = static_cast<u64>(c.vocab_size), KV = static_cast<u64>(c.kv_dim()),
              S = static_cast<u64>(c.seq_len), HS = static_cast<u64>(c.head_size());
    using detail::mul_checked;
    u64 total = mul_checked(V, D);
    total += mul_checked(L, D) * 2 + D;
    total += mul_checked(L, mul_checked(D, D)) * 2;
    total += mul_checked(L, mul_checked(KV, D)) * 2;
    total += mul_checked(L, mul_checked(H, D)) * 3;
    total += mul_checked(S, HS); // two tables of S*HS/2
    if (!c.shared_classifier) total += mul_checked(V, D);
    const u64 want = 28 + mul_checked(total, 4);
    if (static_cast<u64>(bytes.size()) != want)
        detail::fail("file size " + std::to_string(bytes.size()) + " does not match the header (expected " +
                     std::to_string(want) + " bytes: " + (bytes.size() < want ? "truncated" : "trailing bytes") + ")");

    llama2c_checkpoint ck;
    ck.config = c;
    detail::float_cursor cur(bytes.data() + 28, total);
    const auto d = static_cast<Eigen::Index>(c.dim), hd = static_cast<Eigen::Index>(c.hidden_dim),
               kv = static_cast<Eigen::Index>(c.kv_dim());
    ck.token_embedding = cur.matrix(c.vocab_size, d, "token_embedding");
    ck.layers.resize(static_cast<std::size_t>(c.n_layers));
    for (auto& l : ck.layers) l.rms_att = cur.vector(d, "rms_att");
    for (auto& l : ck.layers) l.wq = cur.matrix(d, d, "wq");
    for (auto& l : ck.layers) l.wk = cur.matrix(kv, d, "wk");
    for (auto& l : ck.layers) l.wv = cur.matrix(kv, d, "wv");
    for (auto& l : ck.layers) l.wo = cur.matrix(d, d, "wo");
    for (auto& l : ck.layers) l.rms_ffn = cur.vector(d, "rms_ffn");
    for (auto& l : ck.layers) l.w1 = cur.matrix(hd, d, "w1");
    for (auto& l : ck.layers) l.w2 = cur.matrix(d, hd, "w2");
    for (auto& l : ck.layers) l.w3 = cur.matrix(hd, d, "w3");
    ck.rms_final = cur.vector(d, "rms_final");
    cur.skip(S * HS); // legacy RoPE tables (recomputed by any forward pass)
    if (!c.shared_classifier) ck.wcls = cur.matrix(c.vocab_size, d, "wcls");
    return ck;
}

/// Reads a whole file into memory. \throws format_error if it cannot be opened or read.
inline std::vector<std::byte> read_file_bytes(const std::filesystem::path& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw format_error("lowbit: cannot open '" + path.string() + "'");
    const auto size = static_cast<std::size_t>(f.tellg());
    std::vector<std::byte> buf(size);
    f.seekg(0);
    if (size && !f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(size)))
        throw format_error("lowbit: cannot read '" + path.string() + "'");
    return buf;
}

/// Reads a checkpoint file. \throws format_error (unreadable or malformed file).
inline llama2c_checkpoint read_llama2c(const std::filesystem::path& path) {
    const auto bytes = read_file_bytes(path);
    try {
        return parse_llama2c(bytes);
    } catch (const format_error& e) {
        throw format_error(std::string(e.what()) + " (file '" + path.string() + "')");
    }
}

/// Serialises a checkpoint to llama2.c bytes (RoPE tables written as the legacy cos/sin values).
/// Round trip: `parse_llama2c(serialize_llama2c(ck))` equals `ck`.
inline std::vector<std::byte> serialize_llama2c(const llama2c_checkpoint& ck) {
    const auto& c = ck.config;
    std::vector<std::byte> out;
    auto put = [&out](const void* p, std::size_t n) {
        const auto* b = static_cast<const std::byte*>(p);
        out.insert(out.end(), b, b + n);
    };
    const std::int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                               c.shared_classifier ? c.vocab_size : -c.vocab_size, c.seq_len};
    put(h, 28);
    auto m = [&put](const auto& x) { put(x.data(), static_cast<std::size_t>(x.size()) * 4); };
    m(ck.token_embedding);
    for (auto& l : ck.layers) m(l.rms_att);
    for (auto& l : ck.layers) m(l.wq);
    for (auto& l : ck.layers) m(l.wk);
    for (auto& l : ck.layers) m(l.wv);
    for (auto& l : ck.layers) m(l.wo);
    for (auto& l : ck.layers) m(l.rms_ffn);
    for (auto& l : ck.layers) m(l.w1);
    for (auto& l : ck.layers) m(l.w2);
    for (auto& l : ck.layers) m(l.w3);
    m(ck.rms_final);
    const int hs = c.head_size();
    for (int table = 0; table < 2; ++table)
        for (int p = 0; p < c.seq_len; ++p)
            for (int i = 0; i < hs / 2; ++i) {
                const double freq = 1.0 / std::pow(10000.0, 2.0 * i / hs);
                const float v = static_cast<float>(table == 0 ? std::cos(p * freq) : std::sin(p * freq));
                put(&v, 4);
            }
    if (!c.shared_classifier) m(ck.wcls);
    return out;
}

} // namespace io
LOWBIT_END_NAMESPACE
