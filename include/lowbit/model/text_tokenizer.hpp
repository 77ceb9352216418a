#pragma once
/// \file model/text_tokenizer.hpp
/// `text_tokenizer`: the tokenizer of a model, of either kind behind one interface, with the file
/// bytes it was read from (lowbit's saved models carry them):
/// - "hf-json": a Hugging Face byte-level BPE tokenizer.json (`io::bpe_tokenizer`);
/// - "llama2c": a llama2.c tokenizer.bin (`io::tokenizer`).
///
/// Text protocol per kind (what `encode_documents` does, and what the perplexity protocols of the
/// models README expect): byte-level BPE — each document's ids then the EOS id (token 0 for the
/// models folder's checkpoints); llama2.c — each document encoded on its own without BOS
/// (`dummy_prefix::separate`) and concatenated.
///
/// Thread safety: const member functions may be called from several threads at once.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/mapped_file.hpp>
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/io/tokenizer.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
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

LOWBIT_END_NAMESPACE
