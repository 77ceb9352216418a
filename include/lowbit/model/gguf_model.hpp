#pragma once
/// \file model/gguf_model.hpp
/// lowbit models to and from GGUF files that llama.cpp runs.
///
/// Export (`make_gguf`, `export_gguf`): a `llama_model` (FP32 dense linears, or a quantized model
/// with its records) becomes a GGUF v3 file with
/// - architecture `llama` (dense, no q/k norms), `qwen3` (dense with q/k norms) or `qwen3moe`
///   (every block routed: softmax router, top-k renormalised) and llama.cpp's hyper-parameter keys
///   (`<arch>.context_length`, `embedding_length`, `block_count`, `feed_forward_length`,
///   `attention.head_count[_kv]`, `attention.key_length`/`value_length`, `rope.dimension_count`,
///   `rope.freq_base`, `attention.layer_norm_rms_epsilon`, `expert_count`, `expert_used_count`,
///   `expert_feed_forward_length`, `vocab_size`), `general.file_type`, `general.quantization_version`;
/// - the tokenizer: `gpt2` byte-level BPE from a tokenizer.json (tokens, merges, token types —
///   1 normal, 3 control for special added tokens, 4 user-defined for other added tokens —
///   bos/eos ids, pre-tokenizer `gpt-2`), or `llama` SentencePiece from a llama2.c tokenizer.bin
///   (pieces with ' ' written as U+2581, scores, types 2 unknown/3 control/6 byte/1 normal);
/// - tensors in llama.cpp's names and layouts: `token_embd`, `output_norm`, `output` (omitted when
///   the classifier is the embedding), `blk.L.attn_norm|attn_q|attn_k|attn_v|attn_output|ffn_norm|
///   ffn_gate|ffn_down|ffn_up`, `attn_q_norm|attn_k_norm`, `ffn_gate_inp` (router, F32) and the
///   experts stacked as 3-D `ffn_gate_exps|ffn_down_exps|ffn_up_exps` (ne = {in, out, n_expert}).
///   GGUF's ne[0] is the row length, so a lowbit weight `[out x in]` is stored as is.
///   RoPE: llama.cpp's `llama` rotates pairs (2i, 2i+1) (NORM), `qwen3`/`qwen3moe` pairs (i, i+d/2)
///   (NEOX). When the model's `rope_layout` differs, the rows of wq/wk (and q/k biases, norms) are
///   permuted within each head as convert_hf_to_gguf.py does: row h·d + 2i + s ← row h·d + s·d/2 + i.
///
/// Weight types: block linears of an FP32 model are stored as `options.weight_type` (F32, F16, BF16,
/// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, TQ1_0, TQ2_0, MXFP4 through io::quantize_row, i.e. exactly what
/// gguf.quants would write), the embedding as `options.embedding_type`, norms and routers F32.
/// Quantized models export their records without re-quantizing when the codes are representable:
/// - int4 per row whose offset is a whole multiple of the scale (lowbit's symmetric grid α·(t + 1),
///   t ∈ −8..7) → Q4_0 with d = ±α in every block of 32 and q = ±(t + 1) (exact);
/// - symmetric ternary (ternary2 or ternary_base3, one α per row) and binary without offsets →
///   TQ2_0 / TQ1_0 (`options.ternary_type`) with d = α per block of 256 (exact; needs in % 256 = 0);
/// - MXFP4 weights (dense record, 4.25 bits) → MXFP4, checked to dequantize bit-identically;
/// - FP32 records → `options.weight_type`.
/// Refused with a message saying why: online rotations (Hadamard/KOTMS/OKT/TORQ act on activations at
/// run time; llama.cpp has no such operator), per-row offsets μ (asymmetric ternary/binary: GGUF's
/// ternary and 4-bit types are symmetric, x = d·q), low-rank corrections, TRA-GPTQ group codes,
/// activation quantization other than none/int8 and NLI operators (llama.cpp would run different
/// math; `options.weights_only` exports the weights anyway), row lengths that are not whole blocks.
///
/// Import (`import_gguf`): `llama`, `qwen3` and `qwen3moe` GGUF files become FP32 `llama_model`s
/// (every tensor dequantized; `llama` keeps llama.cpp's interleaved RoPE layout, the Qwen
/// architectures use rotate-half) with their tokenizer rebuilt from the metadata (`gpt2` → an
/// equivalent tokenizer.json for lowbit's BPE tokenizer; `llama` → a llama2.c tokenizer).
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/gguf.hpp>
#include <lowbit/io/gguf_quants.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/model/text_tokenizer.hpp>
#include <lowbit/detail/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Options of `make_gguf` / `export_gguf`.
struct gguf_export_options {
    io::ggml_type weight_type = io::ggml_type::f16;    ///< block linears of FP32 layers (and FP32 records)
    io::ggml_type embedding_type = io::ggml_type::f16; ///< token_embd (and output when untied)
    io::ggml_type ternary_type = io::ggml_type::tq2_0; ///< ternary records: TQ2_0 or TQ1_0
    std::string name;            ///< general.name (default: the architecture)
    bool weights_only = false;   ///< export the weights even if the recipe's activation policy / NLI cannot be expressed
};

namespace detail {

[[noreturn]] inline void gguf_refuse(const std::string& what) { throw invalid_argument("lowbit: export_gguf: " + what); }

/// Why grouped int4 (records "int4_g128" / "int4_g256") has no exact GGUF form.
[[nodiscard]] inline std::string grouped_int4_gguf_reason() {
    return "grouped int4 (an fp16 scale α and offset μ per row and 128 or 256 columns, w = α·(u − 8) + μ), which has no "
           "exact GGUF form: the nearest type, Q4_1 (w = d·u + m per 32 weights), needs m = μ − 8α as an fp16 value, which it "
           "is not in general (per-row int4 recipes export as Q4_0)";
}

/// Row order of wq/wk when converting between RoPE layouts (see the file comment). `to_interleaved`:
/// new row h·d + 2i + s takes old row h·d + s·d/2 + i; otherwise the inverse.
inline std::vector<Eigen::Index> gguf_rope_rows(int heads, int d, bool to_interleaved) {
    std::vector<Eigen::Index> src(static_cast<std::size_t>(heads) * static_cast<std::size_t>(d));
    for (int h = 0; h < heads; ++h)
        for (int i = 0; i < d / 2; ++i)
            for (int s = 0; s < 2; ++s) {
                const Eigen::Index inter = static_cast<Eigen::Index>(h) * d + 2 * i + s;
                const Eigen::Index half = static_cast<Eigen::Index>(h) * d + s * (d / 2) + i;
                if (to_interleaved) src[static_cast<std::size_t>(inter)] = half;
                else src[static_cast<std::size_t>(half)] = inter;
            }
    return src;
}

inline matrix_f gguf_permute_rows(const matrix_f& m, const std::vector<Eigen::Index>& src) {
    if (src.empty()) return m;
    matrix_f o(m.rows(), m.cols());
    for (Eigen::Index r = 0; r < m.rows(); ++r) o.row(r) = m.row(src[static_cast<std::size_t>(r)]);
    return o;
}
inline vector_f gguf_permute_vec(const vector_f& v, const std::vector<Eigen::Index>& src) {
    if (src.empty() || v.size() == 0) return v;
    vector_f o(v.size());
    for (Eigen::Index r = 0; r < v.size(); ++r) o(r) = v(src[static_cast<std::size_t>(r)]);
    return o;
}

/// Encoded rows of one 2-D weight plus their count: the bytes of a GGUF tensor.
struct gguf_encoded {
    io::ggml_type type = io::ggml_type::f32;
    Eigen::Index rows = 0, cols = 0;
    std::vector<std::byte> bytes;
};

inline gguf_encoded gguf_encode_float(const matrix_f& w, io::ggml_type t, const std::string& tensor) {
    gguf_encoded e{t, w.rows(), w.cols(), {}};
    const auto& tr = io::ggml_traits(t);
    if (!tr.quantize) gguf_refuse("tensor '" + tensor + "': lowbit cannot write type " + tr.name);
    if (w.cols() % tr.block_size != 0)
        gguf_refuse("tensor '" + tensor + "': rows of " + std::to_string(w.cols()) + " weights are not whole " + tr.name +
                    " blocks of " + std::to_string(tr.block_size));
    const std::size_t rb = static_cast<std::size_t>(io::ggml_row_bytes(t, static_cast<std::uint64_t>(w.cols())));
    e.bytes.resize(rb * static_cast<std::size_t>(w.rows()));
    for (Eigen::Index r = 0; r < w.rows(); ++r)
        io::quantize_row(t, std::span<const float>(w.row(r).data(), static_cast<std::size_t>(w.cols())),
                         std::span<std::byte>(e.bytes.data() + rb * static_cast<std::size_t>(r), rb));
    return e;
}

/// Integer codes v (Q4_0: −8..7, TQ: −1..1) with one fp16 scale d per row (x = d·v), packed into
/// Q4_0 or TQ1_0/TQ2_0 blocks (every block of a row gets the row's d).
inline gguf_encoded gguf_encode_codes(const matrix_i8& t, const vector_f& alpha, io::ggml_type type, const std::string& tensor) {
    const auto& tr = io::ggml_traits(type);
    if (t.cols() % tr.block_size != 0)
        gguf_refuse("tensor '" + tensor + "': rows of " + std::to_string(t.cols()) + " weights are not whole " + tr.name +
                    " blocks of " + std::to_string(tr.block_size));
    gguf_encoded e{type, t.rows(), t.cols(), {}};
    const std::size_t rb = static_cast<std::size_t>(io::ggml_row_bytes(type, static_cast<std::uint64_t>(t.cols())));
    e.bytes.assign(rb * static_cast<std::size_t>(t.rows()), std::byte{0});
    for (Eigen::Index r = 0; r < t.rows(); ++r) {
        const float a = alpha(r);
        if (io::f16_to_float(io::float_to_f16(a)) != a) gguf_refuse("tensor '" + tensor + "': a row scale is not an fp16 value");
        const std::uint16_t d = io::float_to_f16(a);
        std::byte* row = e.bytes.data() + rb * static_cast<std::size_t>(r);
        for (Eigen::Index b = 0; b < t.cols() / tr.block_size; ++b) {
            std::byte* blk = row + static_cast<std::size_t>(b) * static_cast<std::size_t>(tr.type_size);
            const std::int8_t* q = t.row(r).data() + b * tr.block_size;
            if (type == io::ggml_type::q4_0) {
                io::detail::store_le<std::uint16_t>(blk, d);
                for (int j = 0; j < 16; ++j)
                    blk[2 + j] = static_cast<std::byte>((q[j] + 8) | ((q[j + 16] + 8) << 4));
            } else if (type == io::ggml_type::tq2_0) {
                for (int g = 0; g < 2; ++g)
                    for (int j = 0; j < 32; ++j) {
                        unsigned v = 0;
                        for (int n = 0; n < 4; ++n) v |= static_cast<unsigned>(q[g * 128 + n * 32 + j] + 1) << (2 * n);
                        blk[g * 32 + j] = static_cast<std::byte>(v);
                    }
                io::detail::store_le<std::uint16_t>(blk + 64, d);
            } else { // tq1_0
                static constexpr unsigned pw[5] = {81, 27, 9, 3, 1};
                auto pack = [](unsigned v) { return static_cast<std::byte>((v * 256u + 242u) / 243u); };
                for (int j = 0; j < 32; ++j) {
                    unsigned v = 0;
                    for (int n = 0; n < 5; ++n) v += static_cast<unsigned>(q[n * 32 + j] + 1) * pw[n];
                    blk[j] = pack(v);
                }
                for (int j = 0; j < 16; ++j) {
                    unsigned v = 0;
                    for (int n = 0; n < 5; ++n) v += static_cast<unsigned>(q[160 + n * 16 + j] + 1) * pw[n];
                    blk[32 + j] = pack(v);
                }
                for (int j = 0; j < 4; ++j) {
                    unsigned v = 0;
                    for (int n = 0; n < 4; ++n) v += static_cast<unsigned>(q[240 + n * 4 + j] + 1) * pw[n];
                    blk[48 + j] = pack(v);
                }
                io::detail::store_le<std::uint16_t>(blk + 52, d);
            }
        }
    }
    return e;
}

/// Rewrites a record's rows α_i·t_ij + μ_i as d_i·v_ij with integer v in [lo, hi] (the GGUF type's
/// symmetric grid): possible when μ_i = k_i·α_i for an integer k_i (lowbit's symmetric int4 grid is
/// α·(t + 1), t ∈ −8..7, i.e. k = 1) and every t + k (or its negation, with d = −α) lies in [lo, hi].
/// \throws invalid_argument (refusal naming the block linear) otherwise.
inline void gguf_shift_codes(matrix_i8& t, vector_f& alpha, const vector_f& mu, int lo, int hi, const std::string& who) {
    for (Eigen::Index r = 0; r < t.rows(); ++r) {
        int k = 0;
        const float m = mu.size() > 0 ? mu(r) : 0.0f;
        if (m != 0.0f) {
            const float kf = alpha(r) != 0.0f ? m / alpha(r) : 0.5f;
            k = static_cast<int>(std::lround(kf));
            if (alpha(r) == 0.0f || static_cast<float>(k) * alpha(r) != m)
                gguf_refuse(who + "per-row offsets μ that are not whole multiples of the scale (w = μ + α·t, e.g. asymmetric "
                                  "ternary/binary): GGUF's ternary and 4-bit types are symmetric (x = d·q)");
        }
        int vmin = 127, vmax = -128;
        for (Eigen::Index c = 0; c < t.cols(); ++c) {
            const int v = t(r, c) + k;
            vmin = std::min(vmin, v);
            vmax = std::max(vmax, v);
        }
        int sign = 1;
        if (vmin < lo || vmax > hi) {
            if (-vmax >= lo && -vmin <= hi) sign = -1;
            else gguf_refuse(who + "codes span " + std::to_string(vmin) + ".." + std::to_string(vmax) + ", the GGUF grid only " +
                             std::to_string(lo) + ".." + std::to_string(hi));
        }
        for (Eigen::Index c = 0; c < t.cols(); ++c) t(r, c) = static_cast<std::int8_t>(sign * (t(r, c) + k));
        alpha(r) = static_cast<float>(sign) * alpha(r);
    }
}

inline gguf_encoded gguf_permute_encoded(const gguf_encoded& e, const std::vector<Eigen::Index>& src) {
    if (src.empty()) return e;
    gguf_encoded o = e;
    const std::size_t rb = e.bytes.size() / static_cast<std::size_t>(e.rows);
    for (Eigen::Index r = 0; r < e.rows; ++r)
        std::memcpy(o.bytes.data() + rb * static_cast<std::size_t>(r),
                    e.bytes.data() + rb * static_cast<std::size_t>(src[static_cast<std::size_t>(r)]), rb);
    return o;
}

template <class F>
inline matrix_i8 gguf_record_codes(const linear_record& rec) {
    typename packed_matrix<F>::buffer bytes(rec.codes.begin(), rec.codes.end());
    packed_matrix<F> pw(rec.rows, rec.cols, std::move(bytes), rec.scale, rec.offset);
    return pw.codes();
}

/// The GGUF encoding of one block linear (see the file comment for what is representable).
inline gguf_encoded gguf_encode_linear(const linear_operator& op, const linear_record* rec, const gguf_export_options& o,
                                       const std::string& tensor, const std::string& id) {
    if (!rec) return gguf_encode_float(dense_weight_of(op, "export_gguf"), o.weight_type, tensor);
    const std::string who = "block linear '" + id + "' (tensor '" + tensor + "'): ";
    if (rec->rotation) gguf_refuse(who + "it stores a learned rotation applied to its input at run time; llama.cpp has no such operator");
    if (rec->correction) gguf_refuse(who + "its low-rank correction W + A·B has no GGUF form");
    if (rec->format == "dense") {
        if (rec->dense_bits == 32.0) return gguf_encode_float(rec->dense, o.weight_type, tensor);
        if (rec->dense_bits == 4.25) {
            gguf_encoded e = gguf_encode_float(rec->dense, io::ggml_type::mxfp4, tensor);
            const auto back = io::dequantize(io::ggml_type::mxfp4, e.bytes, static_cast<std::size_t>(rec->dense.size()));
            if (std::memcmp(back.data(), rec->dense.data(), back.size() * sizeof(float)) != 0)
                gguf_refuse(who + "its MXFP4 weights do not re-encode exactly as ggml MXFP4");
            return e;
        }
        gguf_refuse(who + "its weights (" + std::to_string(rec->dense_bits) +
                    " bits per weight) match no GGUF block format");
    }
    matrix_i8 t;
    io::ggml_type type = o.ternary_type;
    if (rec->format == pack_format<int4>::name) {
        t = gguf_record_codes<int4>(*rec);
        type = io::ggml_type::q4_0;
    } else if (rec->format == pack_format<ternary2>::name) t = gguf_record_codes<ternary2>(*rec);
    else if (rec->format == pack_format<ternary_base3>::name) t = gguf_record_codes<ternary_base3>(*rec);
    else if (rec->format == pack_format<binary1>::name) t = gguf_record_codes<binary1>(*rec);
    else if (rec->format == "salient_binary")
        gguf_refuse(who + "BiLLM's salient-binary layout (three groups with their own scales per row and block) "
                          "matches no GGUF block format");
    else if (rec->format == "salient_ternary")
        gguf_refuse(who + "TRA-GPTQ's salient-ternary layout (four groups with their own scales and offsets per row and "
                          "block, order-2 residuals on the salient columns) matches no GGUF block format");
    else if (rec->format.rfind("int4_g", 0) == 0) gguf_refuse(who + "its weights are " + grouped_int4_gguf_reason());
    else gguf_refuse(who + "unknown record format '" + rec->format + "'");
    if (type != io::ggml_type::q4_0 && type != io::ggml_type::tq1_0 && type != io::ggml_type::tq2_0)
        gguf_refuse("options.ternary_type must be TQ1_0 or TQ2_0");
    vector_f d = rec->scale;
    if (type == io::ggml_type::q4_0) gguf_shift_codes(t, d, rec->offset, -8, 7, who);
    else gguf_shift_codes(t, d, rec->offset, -1, 1, who);
    return gguf_encode_codes(t, d, type, tensor);
}

inline std::uint32_t gguf_file_type(io::ggml_type t) {
    switch (t) {
    case io::ggml_type::f32: return 0;
    case io::ggml_type::f16: return 1;
    case io::ggml_type::q4_0: return 2;
    case io::ggml_type::q4_1: return 3;
    case io::ggml_type::q8_0: return 7;
    case io::ggml_type::q5_0: return 8;
    case io::ggml_type::q5_1: return 9;
    case io::ggml_type::bf16: return 32;
    case io::ggml_type::tq1_0: return 36;
    case io::ggml_type::tq2_0: return 37;
    case io::ggml_type::mxfp4: return 38;
    default: return 1024; // "guessed"
    }
}

/// Token strings of a llama2.c piece in SentencePiece form (' ' → U+2581) and back.
inline std::string spm_from_llama2c(const std::string& s) {
    std::string o;
    for (char c : s) o += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
    return o;
}
inline std::string llama2c_from_spm(const std::string& s) {
    std::string o;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s.compare(i, 3, "\xe2\x96\x81") == 0) {
            o += ' ';
            i += 2;
        } else o += s[i];
    }
    return o;
}

inline void gguf_put_tokenizer(io::gguf_writer& w, const text_tokenizer& tok, int vocab_size) {
    using io::gguf_value;
    if (tok.empty()) return;
    const std::string_view text(reinterpret_cast<const char*>(tok.bytes().data()), tok.bytes().size());
    std::vector<std::string> tokens;
    std::vector<int> types;
    if (tok.format() == "hf-json") {
        const auto bpe = io::bpe_tokenizer::parse(text);
        for (int i = 0; i < bpe.vocab_size(); ++i) {
            tokens.push_back(bpe.token(i));
            types.push_back(1);
        }
        for (const auto& a : bpe.added_tokens()) types[static_cast<std::size_t>(a.id)] = a.special ? 3 : 4;
        // merges as "a b", from the file (the tokenizer does not keep their text)
        const json_value j = json_parser(text, "export_gguf tokenizer.json").parse_document();
        std::vector<std::string> merges;
        const json_value* model = nullptr;
        for (std::size_t k = 0; k < j.keys.size(); ++k)
            if (j.keys[k] == "model") model = &j.items[k];
        if (model)
            for (std::size_t k = 0; k < model->keys.size(); ++k)
                if (model->keys[k] == "merges")
                    for (const auto& m : model->items[k].items) {
                        if (m.type == json_value::kind::string) merges.push_back(m.text);
                        else if (m.type == json_value::kind::array && m.items.size() == 2)
                            merges.push_back(m.items[0].text + " " + m.items[1].text);
                    }
        for (int i = static_cast<int>(tokens.size()); i < vocab_size; ++i) {
            tokens.push_back("[PAD" + std::to_string(i) + "]");
            types.push_back(4);
        }
        w.set("tokenizer.ggml.model", gguf_value::string("gpt2"));
        w.set("tokenizer.ggml.pre", gguf_value::string("gpt-2"));
        w.set("tokenizer.ggml.tokens", gguf_value::strings(tokens));
        w.set("tokenizer.ggml.token_type", gguf_value::i32s(types));
        w.set("tokenizer.ggml.merges", gguf_value::strings(merges));
        if (bpe.bos_id() >= 0) w.set("tokenizer.ggml.bos_token_id", gguf_value::u32(static_cast<std::uint32_t>(bpe.bos_id())));
        if (bpe.eos_id() >= 0) w.set("tokenizer.ggml.eos_token_id", gguf_value::u32(static_cast<std::uint32_t>(bpe.eos_id())));
        w.set("tokenizer.ggml.add_bos_token", gguf_value::boolean(false));
        return;
    }
    const auto spm = io::parse_tokenizer(std::as_bytes(std::span<const std::uint8_t>(tok.bytes())), vocab_size);
    std::vector<gguf_value> scores;
    for (int i = 0; i < spm.vocab_size(); ++i) {
        const std::string& p = spm.piece(i);
        tokens.push_back(spm_from_llama2c(p));
        scores.push_back(gguf_value::f32(spm.score(i)));
        const bool byte = p.size() == 6 && p.rfind("<0x", 0) == 0 && p[5] == '>';
        types.push_back(i == io::tokenizer::unk_id ? 2 : (i == io::tokenizer::bos_id || i == io::tokenizer::eos_id) ? 3 : byte ? 6 : 1);
    }
    w.set("tokenizer.ggml.model", gguf_value::string("llama"));
    w.set("tokenizer.ggml.pre", gguf_value::string("default"));
    w.set("tokenizer.ggml.tokens", gguf_value::strings(tokens));
    w.set("tokenizer.ggml.scores", gguf_value::array(io::gguf_type::f32, std::move(scores)));
    w.set("tokenizer.ggml.token_type", gguf_value::i32s(types));
    w.set("tokenizer.ggml.bos_token_id", gguf_value::u32(io::tokenizer::bos_id));
    w.set("tokenizer.ggml.eos_token_id", gguf_value::u32(io::tokenizer::eos_id));
    w.set("tokenizer.ggml.unknown_token_id", gguf_value::u32(io::tokenizer::unk_id));
    w.set("tokenizer.ggml.add_bos_token", gguf_value::boolean(true));
    w.set("tokenizer.ggml.add_space_prefix", gguf_value::boolean(true));
}

} // namespace detail

/// Refuses a recipe whose run-time math llama.cpp cannot express (online rotations; activation
/// quantization below 8 bits and NLI operators unless `o.weights_only`) or whose records have no
/// exact GGUF block format (grouped int4: `group_size` with int4 weights, `int4_linears`). Called by `make_gguf`, and
/// by tools before they spend minutes quantizing. \throws invalid_argument saying why.
inline void gguf_check_recipe(const recipe& spec, const gguf_export_options& o) {
    if (spec.rotation != rotation_kind::none)
        detail::gguf_refuse("recipe '" + spec.name + "' rotates every block linear's input online (" +
                            std::string(detail::name_of(spec.rotation, detail::rotation_names)) +
                            "); llama.cpp has no online rotation, so the weights alone compute something else (recipes with "
                            "residual_rotation=true, such as rtn-w4-quarot, rotate offline and export)");
    if (spec.specquant)
        detail::gguf_refuse("recipe '" + spec.name + "' (SpecQuant) smooths every block linear's input and adds a low-frequency "
                            "part at run time; llama.cpp runs neither");
    const bool act_ok = spec.activation == activation_kind::fp32 ||
                        (spec.activation == activation_kind::int_symmetric && spec.act_bits == 8);
    if (!act_ok && !o.weights_only)
        detail::gguf_refuse("recipe '" + spec.name + "' quantizes activations (" +
                            std::string(detail::name_of(spec.activation, detail::activation_names)) + ", " +
                            std::to_string(spec.act_bits) +
                            " bits); llama.cpp keeps them at 8 bits or more (set weights_only to export the weights anyway)");
    if (spec.nli && !o.weights_only)
        detail::gguf_refuse("recipe '" + spec.name + "' runs NLI piecewise-linear SiLU/exp/rsqrt; llama.cpp uses the exact functions (set weights_only)");
    if (spec.weights == weight_scheme::int4 && spec.group_size > 0)
        detail::gguf_refuse("recipe '" + spec.name + "' stores " + detail::grouped_int4_gguf_reason());
    if (!spec.int4_linears.empty())
        detail::gguf_refuse("recipe '" + spec.name + "' (int4_linears=" + spec.int4_linears + ") stores " +
                            detail::grouped_int4_gguf_reason());
}

/// The GGUF architecture llama.cpp would run `m` as: "llama", "qwen3" or "qwen3moe".
/// \throws invalid_argument naming what has no llama.cpp architecture here (q/k/v biases, MoE
/// without q/k norms or without renormalised top-k, MoE models with dense blocks).
[[nodiscard]] inline std::string gguf_architecture(const llama_model& m) {
    const auto& c = m.config;
    if (c.attention_bias) detail::gguf_refuse("q/k/v biases (Qwen2) are not exported (use a llama/qwen3/qwen3moe model)");
    bool any_moe = false, all_moe = true;
    for (const auto& b : m.blocks) {
        any_moe = any_moe || b.is_moe();
        all_moe = all_moe && b.is_moe();
    }
    if (any_moe) {
        if (!all_moe) detail::gguf_refuse("a MoE model with dense blocks: llama.cpp's qwen3moe routes every block");
        if (!c.qk_norm) detail::gguf_refuse("a MoE model without q/k norms: only qwen3moe is exported");
        if (!c.norm_topk_prob) detail::gguf_refuse("qwen3moe in llama.cpp renormalises the top-k weights; this model does not");
        return "qwen3moe";
    }
    return c.qk_norm ? "qwen3" : "llama";
}

/// Builds the GGUF of `m` (see the file comment) without writing it. `records` (optional) are the
/// stored forms of a quantized model's block linears keyed by `linear_id::name()`, with `spec` its
/// recipe; without them every block linear must be an FP32 `dense_linear`. `tok` may be empty (no
/// tokenizer metadata; llama.cpp then refuses the file). O(weights).
/// \throws invalid_argument (what cannot be expressed, see the file comment), shape_error.
template <class = void>
[[nodiscard]] io::gguf_writer make_gguf(const llama_model& m, const text_tokenizer& tok, const gguf_export_options& o = {},
                                               const linear_records* records = nullptr, const recipe* spec = nullptr) {
    using io::gguf_value;
    using io::ggml_type;
    const auto& c = m.config;
    const std::string arch = gguf_architecture(m);
    if (spec) gguf_check_recipe(*spec, o);
    const bool neox = arch != "llama";
    const bool permute = (c.rope == rope_layout::rotate_half) != neox;
    const int hd = c.head_size();
    const auto qrows = permute ? detail::gguf_rope_rows(c.n_heads, hd, !neox) : std::vector<Eigen::Index>{};
    const auto krows = permute ? detail::gguf_rope_rows(c.n_kv_heads, hd, !neox) : std::vector<Eigen::Index>{};
    const auto hrows = permute ? detail::gguf_rope_rows(1, hd, !neox) : std::vector<Eigen::Index>{};

    io::gguf_writer w;
    w.set("general.architecture", gguf_value::string(arch));
    w.set("general.name", gguf_value::string(o.name.empty() ? arch : o.name));
    w.set("general.quantization_version", gguf_value::u32(2));
    const std::string a = arch + ".";
    w.set(a + "context_length", gguf_value::u32(static_cast<std::uint32_t>(c.seq_len)));
    w.set(a + "embedding_length", gguf_value::u32(static_cast<std::uint32_t>(c.dim)));
    w.set(a + "block_count", gguf_value::u32(static_cast<std::uint32_t>(c.n_layers)));
    w.set(a + "feed_forward_length", gguf_value::u32(static_cast<std::uint32_t>(c.hidden_dim > 0 ? c.hidden_dim : c.moe_hidden_dim)));
    w.set(a + "attention.head_count", gguf_value::u32(static_cast<std::uint32_t>(c.n_heads)));
    w.set(a + "attention.head_count_kv", gguf_value::u32(static_cast<std::uint32_t>(c.n_kv_heads)));
    w.set(a + "attention.key_length", gguf_value::u32(static_cast<std::uint32_t>(hd)));
    w.set(a + "attention.value_length", gguf_value::u32(static_cast<std::uint32_t>(hd)));
    w.set(a + "rope.dimension_count", gguf_value::u32(static_cast<std::uint32_t>(hd)));
    w.set(a + "rope.freq_base", gguf_value::f32(c.rope_theta));
    w.set(a + "attention.layer_norm_rms_epsilon", gguf_value::f32(c.norm_eps));
    w.set(a + "vocab_size", gguf_value::u32(static_cast<std::uint32_t>(c.vocab_size)));
    if (arch == "qwen3moe") {
        w.set(a + "expert_count", gguf_value::u32(static_cast<std::uint32_t>(c.n_experts)));
        w.set(a + "expert_used_count", gguf_value::u32(static_cast<std::uint32_t>(c.n_experts_per_token)));
        w.set(a + "expert_feed_forward_length", gguf_value::u32(static_cast<std::uint32_t>(c.moe_hidden_dim)));
    }
    // the file type follows the weights actually written (first block linear)
    io::ggml_type main_type = o.weight_type;
    detail::gguf_put_tokenizer(w, tok, c.vocab_size);

    auto ne2 = [](const detail::gguf_encoded& e) {
        return std::vector<std::uint64_t>{static_cast<std::uint64_t>(e.cols), static_cast<std::uint64_t>(e.rows)};
    };
    auto vec = [&](const std::string& name, const vector_f& v) {
        w.add_float_tensor(name, ggml_type::f32, {static_cast<std::uint64_t>(v.size())}, std::span<const float>(v.data(), static_cast<std::size_t>(v.size())));
    };
    {
        auto e = detail::gguf_encode_float(m.token_embedding, o.embedding_type, "token_embd.weight");
        w.add_tensor("token_embd.weight", e.type, ne2(e), std::move(e.bytes));
    }
    vec("output_norm.weight", m.rms_final);
    {
        const matrix_f& cls = detail::dense_weight_of(*m.classifier, "export_gguf (classifier)");
        const bool tied = cls.rows() == m.token_embedding.rows() && cls.cols() == m.token_embedding.cols() && cls == m.token_embedding;
        if (!tied) {
            auto e = detail::gguf_encode_float(cls, o.embedding_type, "output.weight");
            w.add_tensor("output.weight", e.type, ne2(e), std::move(e.bytes));
        }
    }
    auto find_rec = [&](const linear_id& id) -> const linear_record* {
        if (!records) return nullptr;
        auto it = records->find(id.name());
        if (it == records->end()) detail::gguf_refuse("no record for block linear '" + id.name() + "'");
        return &it->second;
    };
    bool first = true;
    for (int l = 0; l < c.n_layers; ++l) {
        const auto& b = m.blocks[static_cast<std::size_t>(l)];
        const std::string p = "blk." + std::to_string(l) + ".";
        vec(p + "attn_norm.weight", b.rms_att);
        vec(p + "ffn_norm.weight", b.rms_ffn);
        auto lin = [&](linear_slot s, const std::string& name, const std::vector<Eigen::Index>& rows) {
            const linear_id id{l, s};
            auto e = detail::gguf_encode_linear(m.linear(id), find_rec(id), o, name, id.name());
            if (first) {
                main_type = e.type;
                first = false;
            }
            e = detail::gguf_permute_encoded(e, rows);
            w.add_tensor(name, e.type, ne2(e), std::move(e.bytes));
        };
        lin(linear_slot::wq, p + "attn_q.weight", qrows);
        lin(linear_slot::wk, p + "attn_k.weight", krows);
        lin(linear_slot::wv, p + "attn_v.weight", {});
        lin(linear_slot::wo, p + "attn_output.weight", {});
        if (c.qk_norm) {
            vec(p + "attn_q_norm.weight", detail::gguf_permute_vec(b.q_norm, hrows));
            vec(p + "attn_k_norm.weight", detail::gguf_permute_vec(b.k_norm, hrows));
        }
        if (!b.is_moe()) {
            lin(linear_slot::w1, p + "ffn_gate.weight", {});
            lin(linear_slot::w2, p + "ffn_down.weight", {});
            lin(linear_slot::w3, p + "ffn_up.weight", {});
            continue;
        }
        w.add_float_tensor(p + "ffn_gate_inp.weight", ggml_type::f32,
                           {static_cast<std::uint64_t>(b.router.cols()), static_cast<std::uint64_t>(b.router.rows())},
                           std::span<const float>(b.router.data(), static_cast<std::size_t>(b.router.size())));
        static constexpr const char* names[3] = {"ffn_gate_exps", "ffn_down_exps", "ffn_up_exps"};
        static constexpr linear_slot slots[3] = {linear_slot::w1, linear_slot::w2, linear_slot::w3};
        for (int k = 0; k < 3; ++k) {
            const std::string name = p + names[k] + ".weight";
            std::vector<std::byte> all;
            io::ggml_type type = io::ggml_type::f32;
            Eigen::Index rows = 0, cols = 0;
            for (int e = 0; e < c.n_experts; ++e) {
                const linear_id id{l, slots[k], e};
                auto enc = detail::gguf_encode_linear(m.linear(id), find_rec(id), o, name, id.name());
                if (e > 0 && enc.type != type) detail::gguf_refuse("tensor '" + name + "': experts of different weight types cannot be stacked");
                type = enc.type;
                rows = enc.rows;
                cols = enc.cols;
                all.insert(all.end(), enc.bytes.begin(), enc.bytes.end());
            }
            w.add_tensor(name, type, {static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(c.n_experts)},
                         std::move(all));
        }
    }
    w.set("general.file_type", gguf_value::u32(detail::gguf_file_type(main_type)));
    return w;
}

/// `make_gguf` then an atomic write to `path` (nothing is written when anything is refused).
/// \throws as make_gguf; format_error (I/O).
inline void export_gguf(const llama_model& m, const text_tokenizer& tok, const std::filesystem::path& path,
                        const gguf_export_options& o = {}) {
    make_gguf(m, tok, o).write(path);
}

/// Exports a quantized model through its records (see the file comment). \throws as make_gguf.
inline void export_gguf(const quantized_model& q, const text_tokenizer& tok, const std::filesystem::path& path,
                        const gguf_export_options& o = {}) {
    make_gguf(q.model, tok, o, &q.records, &q.spec).write(path);
}

/// What `import_gguf` returns.
struct gguf_model {
    llama_model model;        ///< FP32 model (every tensor dequantized)
    text_tokenizer tokenizer; ///< rebuilt from the metadata (empty if the file has none or an unsupported one)
    std::string architecture; ///< "llama", "qwen3" or "qwen3moe"
    std::string tokenizer_note; ///< why the tokenizer is empty, if it is
};

namespace detail {

inline std::string gguf_tokenizer_json(const io::gguf_file& g, const std::vector<std::string>& tokens, const std::vector<int>& types) {
    std::string j = "{\"version\":\"1.0\",\"added_tokens\":[";
    bool firsttok = true;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        if (types[i] != 3 && types[i] != 4) continue;
        if (!firsttok) j += ',';
        firsttok = false;
        j += "{\"id\":" + std::to_string(i) + ",\"content\":";
        json_escape(j, tokens[i]);
        j += std::string(",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":") +
             (types[i] == 3 ? "true" : "false") + "}";
    }
    j += "],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
         "\"use_regex\":true},\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
         "\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"vocab\":{";
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        if (i) j += ',';
        json_escape(j, tokens[i]);
        j += ':' + std::to_string(i);
    }
    j += "},\"merges\":[";
    if (const auto* mv = g.find("tokenizer.ggml.merges")) {
        bool f = true;
        for (const auto& m : mv->as_array("tokenizer.ggml.merges")) {
            if (!f) j += ',';
            f = false;
            json_escape(j, m.as_string("tokenizer.ggml.merges"));
        }
    }
    j += "]}}";
    return j;
}

inline text_tokenizer gguf_read_tokenizer(const io::gguf_file& g, int vocab_size, std::string& note) {
    const auto* mv = g.find("tokenizer.ggml.model");
    if (!mv) {
        note = "the file has no tokenizer.ggml.model";
        return {};
    }
    const std::string model = mv->as_string("tokenizer.ggml.model");
    std::vector<std::string> tokens;
    for (const auto& t : g.at("tokenizer.ggml.tokens").as_array("tokenizer.ggml.tokens")) tokens.push_back(t.as_string("tokenizer.ggml.tokens"));
    std::vector<int> types(tokens.size(), 1);
    if (const auto* tv = g.find("tokenizer.ggml.token_type")) {
        const auto& a = tv->as_array("tokenizer.ggml.token_type");
        if (a.size() != tokens.size()) throw format_error("lowbit: import_gguf: tokenizer.ggml.token_type and tokens differ in length");
        for (std::size_t i = 0; i < a.size(); ++i) types[i] = static_cast<int>(a[i].as_int("tokenizer.ggml.token_type"));
    }
    if (model == "gpt2") {
        const std::string pre = g.find("tokenizer.ggml.pre") ? g.get_string("tokenizer.ggml.pre") : "default";
        if (pre != "gpt-2" && pre != "default") {
            note = "pre-tokenizer '" + pre + "' is not rebuilt (only gpt-2)";
            return {};
        }
        const std::string j = gguf_tokenizer_json(g, tokens, types);
        return text_tokenizer("hf-json", std::vector<std::uint8_t>(j.begin(), j.end()), vocab_size);
    }
    if (model == "llama") {
        const auto& sc = g.at("tokenizer.ggml.scores").as_array("tokenizer.ggml.scores");
        if (sc.size() != tokens.size()) throw format_error("lowbit: import_gguf: tokenizer.ggml.scores and tokens differ in length");
        std::vector<std::uint8_t> b;
        auto put32 = [&b](std::uint32_t v) { for (int k = 0; k < 4; ++k) b.push_back(static_cast<std::uint8_t>(v >> (8 * k))); };
        std::size_t maxlen = 0;
        std::vector<std::string> pieces;
        for (const auto& t : tokens) {
            pieces.push_back(llama2c_from_spm(t));
            maxlen = std::max(maxlen, pieces.back().size());
        }
        put32(static_cast<std::uint32_t>(maxlen));
        for (std::size_t i = 0; i < pieces.size(); ++i) {
            const float s = static_cast<float>(sc[i].as_double("tokenizer.ggml.scores"));
            std::uint32_t u;
            std::memcpy(&u, &s, 4);
            put32(u);
            put32(static_cast<std::uint32_t>(pieces[i].size()));
            b.insert(b.end(), pieces[i].begin(), pieces[i].end());
        }
        return text_tokenizer("llama2c", std::move(b), vocab_size);
    }
    note = "tokenizer model '" + model + "' is not rebuilt (gpt2 and llama are)";
    return {};
}

} // namespace detail

/// Reads a `llama`, `qwen3` or `qwen3moe` GGUF file into an FP32 model and its tokenizer (see the
/// file comment). O(weights). \throws format_error (missing or misshaped tensors and keys, unknown
/// architecture, tensors the architecture does not use), invalid_argument (a tensor type without a
/// dequantizer), numeric_error (NaN/Inf weights).
template <class = void>
[[nodiscard]] gguf_model import_gguf(const std::filesystem::path& path) {
    const auto g = io::gguf_file::open(path);
    gguf_model out;
    const std::string arch = g.get_string("general.architecture");
    if (arch != "llama" && arch != "qwen3" && arch != "qwen3moe")
        throw format_error("lowbit: import_gguf: '" + path.string() + "': architecture '" + arch + "' is not supported (llama, qwen3, qwen3moe)");
    out.architecture = arch;
    const std::string a = arch + ".";
    auto geti = [&](const std::string& k) { return static_cast<int>(g.get_int(a + k)); };
    llama_config c;
    c.dim = geti("embedding_length");
    c.n_layers = geti("block_count");
    c.n_heads = geti("attention.head_count");
    c.n_kv_heads = static_cast<int>(g.get_int(a + "attention.head_count_kv", c.n_heads));
    c.head_dim = static_cast<int>(g.get_int(a + "attention.key_length", c.n_heads > 0 ? c.dim / c.n_heads : 0));
    c.hidden_dim = static_cast<int>(g.get_int(a + "feed_forward_length", 0));
    c.seq_len = geti("context_length");
    c.norm_eps = static_cast<float>(g.get_double(a + "attention.layer_norm_rms_epsilon"));
    c.rope_theta = static_cast<float>(g.get_double(a + "rope.freq_base", 10000.0));
    c.rope = arch == "llama" ? rope_layout::interleaved : rope_layout::rotate_half;
    c.qk_norm = arch != "llama";
    if (arch == "qwen3moe") {
        c.n_experts = geti("expert_count");
        c.n_experts_per_token = geti("expert_used_count");
        c.moe_hidden_dim = geti("expert_feed_forward_length");
        c.norm_topk_prob = true;
    }
    const auto& emb = g.tensor("token_embd.weight");
    if (emb.shape.size() != 2 || emb.shape[0] != static_cast<std::uint64_t>(c.dim))
        throw format_error("lowbit: import_gguf: token_embd.weight does not have embedding_length columns");
    c.vocab_size = static_cast<int>(emb.shape[1]);
    if (c.dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0 || c.head_dim <= 0 ||
        c.head_dim % 2 != 0 || c.seq_len <= 0 || (arch != "qwen3moe" && c.hidden_dim <= 0))
        throw format_error("lowbit: import_gguf: '" + path.string() + "': inconsistent hyper-parameters");
    std::vector<std::string> used;
    auto fetch = [&](const std::string& name, std::vector<std::uint64_t> shape) -> matrix_f {
        const auto& t = g.tensor(name);
        if (t.shape != shape) {
            std::string want, got;
            for (auto d : shape) want += (want.empty() ? "" : ",") + std::to_string(d);
            for (auto d : t.shape) got += (got.empty() ? "" : ",") + std::to_string(d);
            throw format_error("lowbit: import_gguf: tensor '" + name + "' has ne {" + got + "}, the metadata implies {" + want + "}");
        }
        used.push_back(name);
        const auto f = t.to_float();
        const auto cols = static_cast<Eigen::Index>(shape[0]);
        const auto rows = static_cast<Eigen::Index>(t.rows());
        matrix_f m = Eigen::Map<const matrix_f>(f.data(), rows, cols);
        if (!m.allFinite()) throw numeric_error("lowbit: import_gguf: tensor '" + name + "' holds NaN or Inf values");
        return m;
    };
    using U = std::uint64_t;
    auto vec = [&](const std::string& name, int n) -> vector_f { return fetch(name, {static_cast<U>(n)}).row(0).transpose(); };
    auto dense = [&](const std::string& name, int rows, int cols) {
        return make_linear(dense_linear(fetch(name, {static_cast<U>(cols), static_cast<U>(rows)})));
    };
    llama_model& m = out.model;
    m.architecture = arch == "qwen3moe" ? "qwen3_moe" : arch;
    m.token_embedding = fetch("token_embd.weight", {static_cast<U>(c.dim), static_cast<U>(c.vocab_size)});
    m.rms_final = vec("output_norm.weight", c.dim);
    m.classifier = g.find_tensor("output.weight") ? dense("output.weight", c.vocab_size, c.dim) : make_linear(dense_linear(m.token_embedding));
    for (int l = 0; l < c.n_layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        llama_block b;
        b.rms_att = vec(p + "attn_norm.weight", c.dim);
        b.rms_ffn = vec(p + "ffn_norm.weight", c.dim);
        using S = linear_slot;
        auto at = [&](S s) -> auto& { return b.linear[static_cast<std::size_t>(s)]; };
        at(S::wq) = dense(p + "attn_q.weight", c.q_dim(), c.dim);
        at(S::wk) = dense(p + "attn_k.weight", c.kv_dim(), c.dim);
        at(S::wv) = dense(p + "attn_v.weight", c.kv_dim(), c.dim);
        at(S::wo) = dense(p + "attn_output.weight", c.dim, c.q_dim());
        if (c.qk_norm) {
            b.q_norm = vec(p + "attn_q_norm.weight", c.head_size());
            b.k_norm = vec(p + "attn_k_norm.weight", c.head_size());
        }
        if (arch == "qwen3moe") {
            b.router = fetch(p + "ffn_gate_inp.weight", {static_cast<U>(c.dim), static_cast<U>(c.n_experts)});
            const char* names[3] = {"ffn_gate_exps", "ffn_down_exps", "ffn_up_exps"};
            std::array<matrix_f, 3> st;
            for (int k = 0; k < 3; ++k) {
                const bool down = k == 1;
                st[static_cast<std::size_t>(k)] = fetch(p + names[k] + ".weight", {static_cast<U>(down ? c.moe_hidden_dim : c.dim),
                                                                                      static_cast<U>(down ? c.dim : c.moe_hidden_dim),
                                                                                      static_cast<U>(c.n_experts)});
            }
            for (int e = 0; e < c.n_experts; ++e) {
                std::array<std::shared_ptr<const linear_operator>, 3> ex;
                for (int k = 0; k < 3; ++k) {
                    const matrix_f& s = st[static_cast<std::size_t>(k)];
                    const Eigen::Index r = s.rows() / c.n_experts;
                    ex[static_cast<std::size_t>(k)] = make_linear(dense_linear(s.middleRows(e * r, r)));
                }
                b.experts.push_back(std::move(ex));
            }
        } else {
            at(S::w1) = dense(p + "ffn_gate.weight", c.hidden_dim, c.dim);
            at(S::w2) = dense(p + "ffn_down.weight", c.dim, c.hidden_dim);
            at(S::w3) = dense(p + "ffn_up.weight", c.hidden_dim, c.dim);
        }
        m.blocks.push_back(std::move(b));
    }
    for (const auto& t : g.tensors())
        if (std::find(used.begin(), used.end(), t.name) == used.end() && t.name != "rope_freqs.weight")
            throw format_error("lowbit: import_gguf: tensor '" + t.name + "' is not used by architecture " + arch);
    out.tokenizer = detail::gguf_read_tokenizer(g, c.vocab_size, out.tokenizer_note);
    const std::string tm = g.find("tokenizer.ggml.model") ? g.get_string("tokenizer.ggml.model") : "";
    const int bos = static_cast<int>(g.get_int("tokenizer.ggml.bos_token_id", -1));
    const int eos = static_cast<int>(g.get_int("tokenizer.ggml.eos_token_id", -1));
    c.bos_token = tm == "llama" ? bos : -1; // SentencePiece models: BOS-prefixed windows; BPE: the HF protocol
    c.stop_token = eos;
    m.config = c;
    return out;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template io::gguf_writer make_gguf<>(const llama_model&, const text_tokenizer&, const gguf_export_options&,
                                                            const linear_records*, const recipe*);
LOWBIT_MODEL_INSTANTIATION template gguf_model import_gguf<>(const std::filesystem::path&);
#endif

LOWBIT_END_NAMESPACE
