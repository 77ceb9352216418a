#pragma once
/// \file io/tokenizer.hpp
/// Reader for llama2.c tokenizer files (`tokenizer.bin`, `tok512.bin`) and BPE encode/decode with
/// llama2.c's semantics (`run.c`: `encode`, `decode`).
///
/// File format: int32 `max_token_length`, then for each token: float32 score, int32 byte length n,
/// n bytes (no terminator). The file does not store the vocabulary size; `parse_tokenizer` reads
/// tokens until the end of the buffer, or exactly `vocab_size` tokens when given (then trailing
/// bytes are an error). Every malformed input throws `lowbit::format_error`.
///
/// Encoding (identical output to llama2.c's `encode` with the default `dummy_prefix::merge`):
///  1. optional BOS (id 1);
///  2. for non-empty text, the dummy prefix: the token whose string is " ";
///  3. each UTF-8 code point (a lead byte plus at most 3 continuation bytes, as llama2.c groups
///     them — invalid UTF-8 is grouped the same way, never rejected) becomes its token if the
///     vocabulary holds it, otherwise one byte-fallback token per byte, id = byte + 3;
///  4. repeatedly merge the adjacent pair whose concatenation is a vocabulary token of highest
///     score (ties: the leftmost pair), until no pair merges;
///  5. optional EOS (id 2).
/// With `dummy_prefix::separate` the " " token of step 2 is kept out of step 4; this is the
/// convention behind the models README's token counts (first 60,000 dev characters: 28,770 tokens
/// with `separate`, 28,769 with llama2.c's `merge`; only the first token pair differs).
/// llama2.c rescans the whole sequence for every merge (O(n²)); here a heap with lazy
/// invalidation finds the same pair each step (highest score, then leftmost), O(n log n).
/// Unlike llama2.c, a byte 0 in the text is encoded (as byte fallback), not a terminator.
///
/// Decoding: `decode_piece(prev, tok)` follows llama2.c's `decode`: after BOS a leading space is
/// stripped, and pieces of the form `<0xHH>` decode to the raw byte HH.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/llama2c.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// Whether the dummy-prefix token " " takes part in BPE merges.
enum class dummy_prefix {
    merge,    ///< llama2.c `run.c` (and SentencePiece): " " merges with what follows (" S" + ...)
    separate, ///< the " " token stays alone; the convention of the models README's reference token counts
};

/// A llama2.c BPE vocabulary: token strings and merge scores.
class tokenizer {
public:
    static constexpr int unk_id = 0; ///< `<unk>`
    static constexpr int bos_id = 1; ///< beginning of sequence
    static constexpr int eos_id = 2; ///< end of sequence
    static constexpr int byte_fallback_offset = 3; ///< byte b is token b + 3

    tokenizer() = default;

    /// Builds a tokenizer from its pieces. \throws format_error (sizes differ, empty vocabulary,
    /// non-finite score, a piece longer than `max_token_length`).
    tokenizer(std::vector<std::string> pieces, std::vector<float> scores, int max_token_length)
        : pieces_(std::move(pieces)), scores_(std::move(scores)), max_token_length_(max_token_length) {
        auto fail = [](const std::string& w) { throw format_error("lowbit: tokenizer: " + w); };
        if (pieces_.size() != scores_.size()) fail("pieces and scores differ in length");
        if (pieces_.empty()) fail("empty vocabulary");
        if (max_token_length_ < 1) fail("max_token_length must be positive");
        lookup_.reserve(pieces_.size() * 2);
        for (std::size_t i = 0; i < pieces_.size(); ++i) {
            if (!std::isfinite(scores_[i])) fail("score of token " + std::to_string(i) + " is NaN or Inf");
            if (pieces_[i].size() > static_cast<std::size_t>(max_token_length_))
                fail("token " + std::to_string(i) + " is longer than max_token_length");
            lookup_.emplace(pieces_[i], static_cast<int>(i)); // first occurrence wins
        }
    }

    /// Number of tokens.
    [[nodiscard]] int vocab_size() const { return static_cast<int>(pieces_.size()); }
    /// Longest token in bytes (from the file header).
    [[nodiscard]] int max_token_length() const { return max_token_length_; }
    /// Raw string of token `id` (byte tokens are their `<0xHH>` text). \throws invalid_argument.
    [[nodiscard]] const std::string& piece(int id) const {
        check_id(id, "piece");
        return pieces_[static_cast<std::size_t>(id)];
    }
    /// Merge score of token `id`. \throws invalid_argument.
    [[nodiscard]] float score(int id) const {
        check_id(id, "score");
        return scores_[static_cast<std::size_t>(id)];
    }
    /// Id of the token whose string is exactly `s`, or -1.
    [[nodiscard]] int find(std::string_view s) const {
        auto it = lookup_.find(std::string(s));
        return it == lookup_.end() ? -1 : it->second;
    }

    /// Encodes `text` (see the file comment). O(n log n) in the text length.
    /// \throws invalid_argument if a byte needs fallback and token byte+3 is not `<0xHH>` for that
    /// byte, or if the text is non-empty and the vocabulary has no " " token.
    [[nodiscard]] std::vector<int> encode(std::string_view text, bool bos = false, bool eos = false,
                                          dummy_prefix prefix = dummy_prefix::merge) const {
        std::vector<int> tok;
        tok.reserve(text.size() + 3);
        if (bos) tok.push_back(bos_id);
        std::size_t first = tok.size(); // BOS never merges (no vocabulary token starts with it)
        if (!text.empty()) {
            const int sp = find(" ");
            lowbit::detail::require(sp >= 0, "tokenizer::encode", "vocabulary has no \" \" token for the dummy prefix");
            tok.push_back(sp);
            if (prefix == dummy_prefix::separate) first = tok.size();
        }
        const auto* c = reinterpret_cast<const unsigned char*>(text.data());
        const std::size_t n = text.size();
        std::size_t i = 0;
        while (i < n) {
            std::size_t len = 1; // lead byte (or stray continuation byte) plus up to 3 continuations
            while (len < 4 && i + len < n && (c[i + len] & 0xC0) == 0x80) ++len;
            const int id = find(text.substr(i, len));
            if (id >= 0) {
                tok.push_back(id);
            } else {
                for (std::size_t k = 0; k < len; ++k) tok.push_back(byte_token(c[i + k]));
            }
            i += len;
        }
        merge(tok, first);
        if (eos) tok.push_back(eos_id);
        return tok;
    }

    /// The bytes token `token` stands for when it follows `prev` (llama2.c `decode`): a leading space
    /// is dropped after BOS, `<0xHH>` pieces become the byte HH. \throws invalid_argument (bad id).
    [[nodiscard]] std::string decode_piece(int prev, int token) const {
        std::string_view p = piece(token);
        if (prev == bos_id && !p.empty() && p[0] == ' ') p.remove_prefix(1);
        if (int b = parse_byte_piece(p); b >= 0) return std::string(1, static_cast<char>(b));
        return std::string(p);
    }

    /// Concatenates `decode_piece` over `tokens`, skipping BOS and EOS themselves (the previous token
    /// of the first one counts as BOS only if it is BOS). Inverse of `encode(text, true)`:
    /// `decode(encode(t, true)) == t` for every byte string t. \throws invalid_argument (bad id).
    [[nodiscard]] std::string decode(std::span<const int> tokens) const {
        std::string out;
        int prev = -1;
        for (int t : tokens) {
            if (t != bos_id && t != eos_id) out += decode_piece(prev, t);
            else check_id(t, "decode");
            prev = t;
        }
        return out;
    }

private:
    void check_id(int id, const char* where) const {
        if (id < 0 || id >= vocab_size())
            throw invalid_argument(std::string("lowbit: tokenizer::") + where + ": token id " + std::to_string(id) +
                                   " is outside [0, " + std::to_string(vocab_size()) + ")");
    }

    /// "<0xHH>" (upper- or lower-case hex) -> HH, else -1.
    static int parse_byte_piece(std::string_view p) {
        if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
        auto hex = [](char ch) {
            if (ch >= '0' && ch <= '9') return ch - '0';
            if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
            if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
            return -1;
        };
        const int h = hex(p[3]), l = hex(p[4]);
        return h < 0 || l < 0 ? -1 : h * 16 + l;
    }

    int byte_token(unsigned char b) const {
        const int id = b + byte_fallback_offset;
        if (id >= vocab_size() || parse_byte_piece(pieces_[static_cast<std::size_t>(id)]) != b) {
            static const char* hexd = "0123456789ABCDEF";
            const char name[] = {'<', '0', 'x', hexd[b >> 4], hexd[b & 15], '>', 0};
            throw invalid_argument(std::string("lowbit: tokenizer::encode: text byte 0x") + (name + 3) +
                                   " is not in the vocabulary and byte-fallback token " + std::to_string(id) +
                                   " is not '" + std::string(name) + "'");
        }
        return id;
    }

    /// BPE merges over tok[first..] (highest score first, ties leftmost), in place.
    void merge(std::vector<int>& tok, std::size_t first) const {
        const std::size_t n = tok.size() - first;
        if (n < 2) return;
        std::vector<int> t(tok.begin() + static_cast<std::ptrdiff_t>(first), tok.end());
        std::vector<std::ptrdiff_t> next(n), prev(n);
        for (std::size_t i = 0; i < n; ++i) {
            next[i] = i + 1 < n ? static_cast<std::ptrdiff_t>(i + 1) : -1;
            prev[i] = static_cast<std::ptrdiff_t>(i) - 1;
        }
        std::vector<char> alive(n, 1);
        struct cand {
            float score;
            std::ptrdiff_t left, right;
            int lt, rt, merged;
        };
        auto worse = [](const cand& a, const cand& b) {
            if (a.score != b.score) return a.score < b.score;
            return a.left > b.left; // leftmost first
        };
        std::priority_queue<cand, std::vector<cand>, decltype(worse)> heap(worse);
        std::string buf;
        auto push = [&](std::ptrdiff_t l) {
            if (l < 0) return;
            const std::ptrdiff_t r = next[static_cast<std::size_t>(l)];
            if (r < 0) return;
            const int a = t[static_cast<std::size_t>(l)], b = t[static_cast<std::size_t>(r)];
            buf.assign(pieces_[static_cast<std::size_t>(a)]);
            buf += pieces_[static_cast<std::size_t>(b)];
            const int id = find(buf);
            if (id >= 0) heap.push({scores_[static_cast<std::size_t>(id)], l, r, a, b, id});
        };
        for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<std::ptrdiff_t>(i));
        while (!heap.empty()) {
            const cand c = heap.top();
            heap.pop();
            const auto l = static_cast<std::size_t>(c.left), r = static_cast<std::size_t>(c.right);
            if (!alive[l] || !alive[r] || next[l] != c.right || t[l] != c.lt || t[r] != c.rt) continue;
            t[l] = c.merged;
            alive[r] = 0;
            next[l] = next[r];
            if (next[r] >= 0) prev[static_cast<std::size_t>(next[r])] = c.left;
            push(prev[l]);
            push(c.left);
        }
        tok.resize(first);
        for (std::ptrdiff_t i = 0; i >= 0; i = next[static_cast<std::size_t>(i)]) tok.push_back(t[static_cast<std::size_t>(i)]);
    }

    std::vector<std::string> pieces_;
    std::vector<float> scores_;
    int max_token_length_ = 0;
    std::unordered_map<std::string, int> lookup_;
};

/// Upper bound accepted for `max_token_length` and each token length (guards corrupt files).
inline constexpr int tokenizer_max_token_bytes = 1 << 16;

/// Parses a tokenizer file held in memory. `vocab_size` < 0: read tokens until the end of `bytes`;
/// otherwise read exactly that many and reject trailing bytes.
/// \throws format_error (truncated, trailing bytes, negative or oversized lengths, a token longer
/// than max_token_length, non-finite score, no token).
inline tokenizer parse_tokenizer(std::span<const std::byte> bytes, int vocab_size = -1) {
    auto fail = [](const std::string& w) -> void { throw format_error("lowbit: tokenizer: " + w); };
    if (bytes.size() < 4) fail("file truncated: header needs 4 bytes");
    std::int32_t max_len;
    std::memcpy(&max_len, bytes.data(), 4);
    if (max_len < 1 || max_len > tokenizer_max_token_bytes)
        fail("max_token_length " + std::to_string(max_len) + " is out of range (1.." +
             std::to_string(tokenizer_max_token_bytes) + ")");
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::size_t pos = 4;
    while ((vocab_size < 0 && pos < bytes.size()) || (vocab_size >= 0 && pieces.size() < static_cast<std::size_t>(vocab_size))) {
        const std::string idx = std::to_string(pieces.size());
        if (bytes.size() - pos < 8) fail("file truncated in the header of token " + idx);
        float s;
        std::int32_t len;
        std::memcpy(&s, bytes.data() + pos, 4);
        std::memcpy(&len, bytes.data() + pos + 4, 4);
        pos += 8;
        if (!std::isfinite(s)) fail("score of token " + idx + " is NaN or Inf");
        if (len < 0 || len > max_len)
            fail("length " + std::to_string(len) + " of token " + idx + " is outside [0, max_token_length=" +
                 std::to_string(max_len) + "]");
        if (bytes.size() - pos < static_cast<std::size_t>(len)) fail("file truncated inside token " + idx);
        pieces.emplace_back(reinterpret_cast<const char*>(bytes.data() + pos), static_cast<std::size_t>(len));
        scores.push_back(s);
        pos += static_cast<std::size_t>(len);
    }
    if (pos != bytes.size())
        fail(std::to_string(bytes.size() - pos) + " trailing bytes after " + std::to_string(pieces.size()) + " tokens");
    if (pieces.empty()) fail("no token in the file");
    return tokenizer(std::move(pieces), std::move(scores), max_len);
}

/// Reads a tokenizer file (see parse_tokenizer). \throws format_error.
inline tokenizer read_tokenizer(const std::filesystem::path& path, int vocab_size = -1) {
    const auto bytes = read_file_bytes(path);
    try {
        return parse_tokenizer(bytes, vocab_size);
    } catch (const format_error& e) {
        throw format_error(std::string(e.what()) + " (file '" + path.string() + "')");
    }
}

} // namespace io
LOWBIT_END_NAMESPACE
