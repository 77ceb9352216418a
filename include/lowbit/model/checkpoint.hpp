#pragma once
/// \file model/checkpoint.hpp
/// One entry point for every model a user has: `open_model(path)` recognises
/// - a Hugging Face checkpoint folder (config.json + model.safetensors[.index.json] + tokenizer.json),
/// - a llama2.c checkpoint file (`.bin`; its tokenizer is `--tokenizer`, or `tokenizer.bin` /
///   `tok<N>.bin` beside it),
/// - a lowbit quantized model (`.safetensors` written by `save_quantized_model`, which carries its
///   tokenizer),
/// and returns the runnable model with its tokenizer (`text_tokenizer`, either kind behind one
/// interface) and, for a quantized model, its recipe and records.
///
/// Text protocol per tokenizer kind (what `encode_documents` does, and what the perplexity
/// protocols of the models README expect): Hugging Face byte-level BPE — each document's ids then
/// the EOS id (token 0 for the models folder's checkpoints); llama2.c SentencePiece-style BPE —
/// each document encoded on its own without BOS (`dummy_prefix::separate`) and concatenated.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/mapped_file.hpp>
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/hf_model.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/recipes.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// A tokenizer of either kind, with the file bytes it was read from (saved with quantized models).
class text_tokenizer {
public:
    text_tokenizer() = default;
    /// Parses tokenizer file bytes of `format` "hf-json" (tokenizer.json) or "llama2c" (tokenizer.bin).
    /// \throws format_error (malformed file), invalid_argument (unknown format).
    text_tokenizer(std::string format, std::vector<std::uint8_t> bytes, int vocab_size = -1)
        : format_(std::move(format)), bytes_(std::move(bytes)) {
        if (format_ == "hf-json") {
            impl_ = io::bpe_tokenizer::parse(std::string_view(reinterpret_cast<const char*>(bytes_.data()), bytes_.size()));
        } else if (format_ == "llama2c") {
            impl_ = io::parse_tokenizer(std::as_bytes(std::span<const std::uint8_t>(bytes_)), vocab_size);
        } else {
            throw invalid_argument("lowbit: text_tokenizer: unknown format '" + format_ + "' (hf-json or llama2c)");
        }
    }
    /// Reads a tokenizer file; the format follows the name (`.json` → hf-json, else llama2c).
    /// \throws format_error.
    [[nodiscard]] static text_tokenizer read(const std::filesystem::path& path, int vocab_size = -1) {
        const io::mapped_file f(path);
        const auto* b = reinterpret_cast<const std::uint8_t*>(f.data());
        return text_tokenizer(path.extension() == ".json" ? "hf-json" : "llama2c", std::vector<std::uint8_t>(b, b + f.size()),
                              vocab_size);
    }
    /// True if a tokenizer is held.
    [[nodiscard]] bool empty() const noexcept { return format_.empty(); }
    /// "hf-json", "llama2c" or "" (none).
    [[nodiscard]] const std::string& format() const noexcept { return format_; }
    /// The file's bytes.
    [[nodiscard]] const std::vector<std::uint8_t>& bytes() const noexcept { return bytes_; }
    /// Number of ids.
    [[nodiscard]] int vocab_size() const {
        if (auto* h = std::get_if<io::bpe_tokenizer>(&impl_)) return h->vocab_size();
        if (auto* l = std::get_if<io::tokenizer>(&impl_)) return l->vocab_size();
        return 0;
    }
    /// Ids of one document (no BOS/EOS). \throws invalid_argument (no tokenizer) or as the tokenizer.
    [[nodiscard]] std::vector<int> encode(std::string_view text) const {
        if (auto* h = std::get_if<io::bpe_tokenizer>(&impl_)) return h->encode(text);
        if (auto* l = std::get_if<io::tokenizer>(&impl_)) return l->encode(text, false, false, io::dummy_prefix::separate);
        throw invalid_argument("lowbit: text_tokenizer::encode: no tokenizer");
    }
    /// The text of `ids` (`prev` is the token before them, for llama2.c's leading-space rule).
    [[nodiscard]] std::string decode(std::span<const int> ids, int prev = -1) const {
        if (auto* h = std::get_if<io::bpe_tokenizer>(&impl_)) return h->decode(ids);
        std::string out;
        if (auto* l = std::get_if<io::tokenizer>(&impl_))
            for (int id : ids) {
                out += l->decode_piece(prev, id);
                prev = id;
            }
        return out;
    }
    /// The token stream of `docs` under the protocol of the file comment (HF: separator = EOS id).
    [[nodiscard]] std::vector<int> encode_documents(const std::vector<std::string>& docs) const {
        if (auto* h = std::get_if<io::bpe_tokenizer>(&impl_)) return io::document_stream(*h, docs, std::max(h->eos_id(), 0));
        std::vector<int> out;
        for (const auto& d : docs) {
            const auto ids = encode(d);
            out.insert(out.end(), ids.begin(), ids.end());
        }
        return out;
    }

private:
    std::string format_;
    std::vector<std::uint8_t> bytes_;
    std::variant<std::monostate, io::bpe_tokenizer, io::tokenizer> impl_;
};

/// What `open_model` found.
struct opened_model {
    std::string kind;                  ///< "hf", "llama2c" or "lowbit"
    llama_model model;                 ///< runnable (FP32 for hf/llama2c; packed kernels for lowbit)
    text_tokenizer tokenizer;          ///< may be empty (llama2.c file without a tokenizer beside it)
    std::optional<quantized_model> quantized; ///< recipe and records of a lowbit model (its `model` is moved into `model`)
};

namespace detail {
inline std::filesystem::path llama2c_tokenizer_beside(const std::filesystem::path& model) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path dir = model.parent_path().empty() ? fs::path(".") : model.parent_path();
    if (fs::exists(dir / "tokenizer.bin", ec)) return dir / "tokenizer.bin";
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        if (n.size() > 7 && n.rfind("tok", 0) == 0 && e.path().extension() == ".bin" && e.path() != model) return e.path();
    }
    return {};
}
} // namespace detail

/// Opens the model at `path` (see the file comment). `tokenizer` overrides the tokenizer file.
/// \throws format_error (not a recognised model, or as the readers), numeric_error (NaN/Inf weights).
[[nodiscard]] inline opened_model open_model(const std::filesystem::path& path, const std::filesystem::path& tokenizer = {}) {
    namespace fs = std::filesystem;
    std::error_code ec;
    opened_model o;
    if (fs::is_directory(path, ec)) {
        if (!is_hf_checkpoint(path))
            throw format_error("lowbit: open_model: folder '" + path.string() +
                               "' is not a Hugging Face checkpoint (needs config.json and model.safetensors[.index.json])");
        o.kind = "hf";
        o.model = load_hf_model(path);
        const fs::path tok = tokenizer.empty() ? path / "tokenizer.json" : tokenizer;
        if (fs::exists(tok, ec)) o.tokenizer = text_tokenizer::read(tok, o.model.config.vocab_size);
    } else if (path.extension() == ".safetensors") {
        o.kind = "lowbit";
        quantized_model q = load_quantized_model(path);
        o.model = std::move(q.model);
        if (!tokenizer.empty()) o.tokenizer = text_tokenizer::read(tokenizer, o.model.config.vocab_size);
        else if (!q.tokenizer_format.empty())
            o.tokenizer = text_tokenizer(q.tokenizer_format, q.tokenizer_bytes, o.model.config.vocab_size);
        o.quantized = std::move(q);
    } else {
        if (!fs::exists(path, ec)) throw format_error("lowbit: open_model: '" + path.string() + "' does not exist");
        o.kind = "llama2c";
        const auto ck = io::read_llama2c(path);
        o.model = model_from_llama2c(ck);
        o.model.architecture = "llama2c";
        const fs::path tok = tokenizer.empty() ? detail::llama2c_tokenizer_beside(path) : tokenizer;
        if (!tok.empty()) o.tokenizer = text_tokenizer::read(tok, o.model.config.vocab_size);
    }
    if (!o.tokenizer.empty() && o.tokenizer.vocab_size() > o.model.config.vocab_size)
        throw format_error("lowbit: open_model: the tokenizer has " + std::to_string(o.tokenizer.vocab_size()) +
                           " tokens, the model's vocabulary " + std::to_string(o.model.config.vocab_size));
    return o;
}

LOWBIT_END_NAMESPACE
