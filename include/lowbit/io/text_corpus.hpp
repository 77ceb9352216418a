#pragma once
/// \file io/text_corpus.hpp
/// Text corpora for calibration and evaluation: documents from a `.jsonl` or plain-text file, and
/// the token stream of the models README's perplexity protocol (each document's ids, then a
/// separator id).
///
/// `.jsonl` (JSON Lines, the models folder's `text-en/*.jsonl`): one JSON object per line with a
/// string member `text` (other members are ignored); lines are separated by "\n" (a "\r" before it
/// is JSON whitespace); lines holding only whitespace are skipped (e.g. a final newline). Every
/// other file is plain text and is one document, its bytes unchanged.

#include <lowbit/config.hpp>
#include <lowbit/detail/json.hpp>
#include <lowbit/error.hpp>

#include <concepts>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// The documents of JSON Lines bytes (see the file comment); `name` prefixes error messages.
/// O(bytes). \throws format_error "lowbit: <name>: line N: ..." for a line that is not strict JSON,
/// not an object, or has no string member `text`.
[[nodiscard]] inline std::vector<std::string> parse_jsonl_documents(std::string_view bytes,
                                                                   const std::string& name = "jsonl") {
    std::vector<std::string> docs;
    std::size_t line_no = 0;
    for (std::size_t pos = 0; pos < bytes.size();) {
        std::size_t end = bytes.find('\n', pos);
        if (end == std::string_view::npos) end = bytes.size();
        const std::string_view line = bytes.substr(pos, end - pos);
        pos = end + 1;
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
        const std::string where = name + ": line " + std::to_string(line_no);
        lowbit::detail::json_value v = lowbit::detail::json_parser(line, where.c_str()).parse_document();
        if (v.type != lowbit::detail::json_value::kind::object)
            throw format_error("lowbit: " + where + ": not a JSON object");
        std::string* text = nullptr;
        for (std::size_t i = 0; i < v.keys.size(); ++i)
            if (v.keys[i] == "text" && v.items[i].type == lowbit::detail::json_value::kind::string) text = &v.items[i].text;
        if (!text) throw format_error("lowbit: " + where + ": no string member \"text\"");
        docs.push_back(std::move(*text));
    }
    return docs;
}

/// The documents of the file at `path`: JSON Lines if the name ends in `.jsonl` (any case), else the
/// whole file as one document. O(bytes). \throws format_error (unreadable file, a bad `.jsonl`
/// line, with the file name and line number).
[[nodiscard]] inline std::vector<std::string> read_text_documents(const std::filesystem::path& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw format_error("lowbit: read_text_documents: cannot open '" + path.string() + "'");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (f.bad()) throw format_error("lowbit: read_text_documents: cannot read '" + path.string() + "'");
    std::string ext = path.extension().string();
    for (char& c : ext) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    if (ext == ".jsonl") return parse_jsonl_documents(s, path.string());
    std::vector<std::string> docs;
    docs.push_back(std::move(s));
    return docs;
}

/// Anything with `encode(std::string_view) -> std::vector<int>` (io::bpe_tokenizer; io::tokenizer
/// with its default arguments).
template <class T>
concept text_encoder = requires(const T& t, std::string_view s) {
    { t.encode(s) } -> std::convertible_to<std::vector<int>>;
};

/// The models README stream: for each document in order, `tok.encode(doc)` then `separator_id`
/// (token 0 for the Hugging Face checkpoints). O(total bytes) plus the tokenizer's cost.
template <text_encoder Tokenizer>
[[nodiscard]] std::vector<int> document_stream(const Tokenizer& tok, std::span<const std::string> docs, int separator_id) {
    std::vector<int> out;
    for (const auto& d : docs) {
        const std::vector<int> ids = tok.encode(std::string_view(d));
        out.insert(out.end(), ids.begin(), ids.end());
        out.push_back(separator_id);
    }
    return out;
}

} // namespace io
LOWBIT_END_NAMESPACE
