#pragma once
/// \file io/bpe_tokenizer.hpp
/// Hugging Face `tokenizer.json` byte-level BPE (GPT-2, Llama-3, Qwen2 pre-tokenizers): parse,
/// encode, decode, with the output of the Hugging Face `tokenizers` library (`Tokenizer.encode(text,
/// add_special_tokens=False).ids` and `Tokenizer.decode(ids, skip_special_tokens=False)`).
///
/// Accepted `tokenizer.json` (anything else throws `lowbit::format_error` naming the rule):
///  - `model.type == "BPE"` with `vocab` (object token → id), `merges` as `"a b"` strings (exactly
///    one space) or `["a", "b"]` pairs, rank = index (a repeated pair keeps its last rank, as in
///    `tokenizers`), `ignore_merges`, `byte_fallback` false, `dropout` null, no
///    `continuing_subword_prefix` / `end_of_word_suffix`, `unk_token` null or a vocabulary token;
///    WordPiece, Unigram, WordLevel are refused;
///  - `normalizer` null or `{"type": "NFC"}` (Qwen2's files), with the Unicode 9.0 NFC data that
///    `tokenizers` uses (`detail::nfc`); every other normalizer is refused;
///  - `pre_tokenizer` `ByteLevel` (`use_regex` true: the GPT-2 regex; `add_prefix_space`) or
///    `Sequence [Split(Regex P, Isolated, invert false), ByteLevel]` where P is, by its exact text,
///    the Llama-3 or the Qwen2 pattern (`pretokenizer_pattern`); each regex is a hand-written
///    matcher with the regex's leftmost-first, backtracking semantics (no regex library, no ICU;
///    \p{L}, \p{N}, \s come from detail/unicode_tables.hpp);
///  - `decoder` `ByteLevel`; `truncation` and `padding` null; `post_processor` is read by
///    nobody (encode never adds special tokens, like `add_special_tokens=False`);
///  - `added_tokens`: ids either equal to the vocabulary's id for the same content or new; the
///    union of all ids must be exactly 0..N−1 (no duplicate id, no hole, no id out of range);
///    `single_word` true is refused; `lstrip`, `rstrip`, `normalized` are honoured as `tokenizers`
///    does (a `normalized` token matches the normalized text, so its content is normalized too).
///
/// Encoding of `text` (bytes; invalid UTF-8 is accepted, each invalid byte being one character of
/// class "other"; HF only takes valid strings):
///  1. split on added tokens with `normalized` false (leftmost-longest exact match, `lstrip` /
///     `rstrip` absorbing adjacent White_Space); a match becomes its id; the text between matches
///     is normalized (NFC if configured) and split the same way on tokens with `normalized` true;
///  2. each remaining non-empty segment is pre-tokenized: [Split by P], then ByteLevel: prefix " "
///     when `add_prefix_space` and the piece does not start with one, then [the GPT-2 regex];
///  3. each piece's bytes map to the GPT-2 byte↔unicode alphabet; BPE merges the adjacent pair of
///     lowest rank (ties: leftmost) until none applies (with `ignore_merges`, a piece that is a
///     whole vocabulary token is that token). A byte whose character is not in the vocabulary
///     becomes `unk_token` (fused when `fuse_unk`), or is dropped when there is none (as HF does).
/// A per-tokenizer word cache (piece bytes → ids, at most `word_cache_capacity` pieces, cleared
/// when full) makes repeated words O(1); results never depend on it. Copies share the cache; it is
/// guarded by a mutex, so `encode` may be called concurrently.
///
/// Decoding follows the ByteLevel decoder: a token whose characters are all in the byte alphabet
/// becomes those bytes, any other token (e.g. an added token containing "\n") its UTF-8 text.
/// `decode` returns raw bytes (HF then replaces invalid UTF-8 with U+FFFD; ids that split a
/// character give such bytes here). One known difference: HF decodes an added token with
/// `normalized` true from its normalized content, lowbit from its content as written.

#include <lowbit/config.hpp>
#include <lowbit/detail/json.hpp>
#include <lowbit/detail/unicode_tables.hpp>
#include <lowbit/error.hpp>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// The pre-tokenizer regexes `bpe_tokenizer` implements (recognised by their exact text).
enum class pretokenizer_pattern {
    /// GPT-2 (ByteLevel `use_regex`): `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    gpt2,
    /// Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    llama3,
    /// Qwen2: the Llama-3 pattern with `\p{N}` (one digit) instead of `\p{N}{1,3}`.
    qwen2,
};

/// The exact regex text of `p` as it appears in tokenizer.json (after JSON unescaping).
[[nodiscard]] inline std::string_view pretokenizer_regex(pretokenizer_pattern p) noexcept {
    switch (p) {
    case pretokenizer_pattern::gpt2:
        return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    case pretokenizer_pattern::llama3:
        return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    case pretokenizer_pattern::qwen2:
        return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    }
    return {};
}

namespace detail {

/// One decoded character of a text: its code point, byte offset and regex class.
struct text_char {
    std::uint32_t cp;  ///< code point, or 0xFFFFFFFF for a byte that is not valid UTF-8
    std::uint32_t pos; ///< byte offset of its first byte
    lowbit::detail::unicode_class cls;
};

/// Decodes `s` into characters (RFC 3629; each byte of an invalid sequence is one "other"
/// character), plus a sentinel with pos = s.size(). O(n).
inline void decode_text_chars(std::string_view s, std::vector<text_char>& out) {
    using lowbit::detail::unicode_class;
    out.clear();
    const auto* b = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i = 0;
    while (i < n) {
        const unsigned c0 = b[i];
        std::uint32_t cp = 0xFFFFFFFFu;
        std::size_t len = 1;
        if (c0 < 0x80) {
            cp = c0;
        } else {
            std::size_t k = 0;
            std::uint32_t v = 0, min = 0;
            if ((c0 & 0xE0) == 0xC0) { k = 1; v = c0 & 0x1F; min = 0x80; }
            else if ((c0 & 0xF0) == 0xE0) { k = 2; v = c0 & 0x0F; min = 0x800; }
            else if ((c0 & 0xF8) == 0xF0) { k = 3; v = c0 & 0x07; min = 0x10000; }
            if (k) {
                bool ok = true;
                for (std::size_t j = 1; ok && j <= k; ++j) {
                    if (i + j >= n || (b[i + j] & 0xC0) != 0x80) ok = false;
                    else v = (v << 6) | (b[i + j] & 0x3Fu);
                }
                if (ok && v >= min && v <= 0x10FFFF && !(v >= 0xD800 && v <= 0xDFFF)) {
                    cp = v;
                    len = k + 1;
                }
            }
        }
        out.push_back({cp, static_cast<std::uint32_t>(i),
                       cp == 0xFFFFFFFFu ? unicode_class::other : lowbit::detail::classify_code_point(cp)});
        i += len;
    }
    out.push_back({0, static_cast<std::uint32_t>(n), unicode_class::other});
}

/// Length in characters of the match of pattern `p` at character `i` of `c` (n characters, plus
/// the sentinel `c[n]`); every character is matched by some alternative, so the result is ≥ 1.
inline std::size_t pretokenizer_match(pretokenizer_pattern p, const std::vector<text_char>& c, std::size_t i,
                                      std::size_t n) {
    using lowbit::detail::unicode_class;
    auto run = [&](std::size_t j, unicode_class k) {
        while (j < n && c[j].cls == k) ++j;
        return j;
    };
    auto is_crlf = [&](std::size_t j) { return j < n && (c[j].cp == '\r' || c[j].cp == '\n'); };
    const bool gpt2 = p == pretokenizer_pattern::gpt2;
    // 1. contractions: 's 't 're 've 'm 'll 'd (Llama-3/Qwen2: case-insensitive, Unicode simple case
    //    folding, under which U+017F LATIN SMALL LETTER LONG S also matches 's').
    if (c[i].cp == '\'' && i + 1 < n) {
        auto fold = [&](std::size_t j) -> std::uint32_t {
            const std::uint32_t x = c[j].cp;
            if (gpt2) return x;
            if (x >= 'A' && x <= 'Z') return x + 32;
            if (x == 0x17F) return 's';
            return x;
        };
        const std::uint32_t a = fold(i + 1);
        if (a == 's' || a == 't') return 2;
        if (i + 2 < n) {
            const std::uint32_t b2 = fold(i + 2);
            if ((a == 'r' && b2 == 'e') || (a == 'v' && b2 == 'e')) return 3;
        }
        if (a == 'm') return 2;
        if (i + 2 < n && a == 'l' && fold(i + 2) == 'l') return 3;
        if (a == 'd') return 2;
    }
    if (gpt2) {
        // 2-4.  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
        const std::size_t j = i + (c[i].cp == ' ' ? 1 : 0);
        if (j < n && c[j].cls != unicode_class::space) return run(j, c[j].cls) - i;
    } else {
        // 2. [^\r\n\p{L}\p{N}]?\p{L}+
        if (c[i].cls == unicode_class::letter) return run(i, unicode_class::letter) - i;
        if (c[i].cls != unicode_class::number && !is_crlf(i) && i + 1 < n && c[i + 1].cls == unicode_class::letter)
            return run(i + 1, unicode_class::letter) - i;
        // 3. \p{N}{1,3} (Qwen2: \p{N})
        if (c[i].cls == unicode_class::number) {
            const std::size_t max = p == pretokenizer_pattern::llama3 ? 3 : 1;
            std::size_t j = i + 1;
            while (j < n && j - i < max && c[j].cls == unicode_class::number) ++j;
            return j - i;
        }
        // 4.  ?[^\s\p{L}\p{N}]+[\r\n]*
        const std::size_t j = i + (c[i].cp == ' ' ? 1 : 0);
        if (j < n && c[j].cls == unicode_class::other) {
            std::size_t e = run(j, unicode_class::other);
            while (is_crlf(e)) ++e;
            return e - i;
        }
    }
    // whitespace run [i, r)
    const std::size_t r = run(i, unicode_class::space);
    if (r == i) return 1; // unreachable: every character is a letter, number, space or other
    if (!gpt2) {
        // 5. \s*[\r\n]+ : up to and including the last CR/LF of the run
        for (std::size_t k = r; k > i; --k)
            if (c[k - 1].cp == '\r' || c[k - 1].cp == '\n') return k - i;
    }
    // \s+(?!\S) then \s+
    if (r == n) return r - i;
    if (r - i >= 2) return r - i - 1;
    return 1;
}

/// Unicode Normalization Form C of UTF-8 `s` (UAX #15: full canonical decomposition, canonical
/// ordering of combining marks, canonical composition of primary composites; Hangul algorithmic),
/// with the tables of detail/unicode_tables.hpp. Bytes that are not valid UTF-8 are copied and
/// block composition. Text whose code points are all below U+0300 is returned unchanged at once.
/// O(n log T) (a run of m combining marks costs O(m²) to order; real text has m ≤ 4 or so).
inline std::string nfc(std::string_view s) {
    bool fast = true;
    for (char ch : s) fast = fast && static_cast<unsigned char>(ch) < 0xCC; // every code point < U+0300
    if (fast) return std::string(s);
    using lowbit::detail::canonical_combining_class;
    constexpr std::uint32_t s_base = 0xAC00, l_base = 0x1100, v_base = 0x1161, t_base = 0x11A7;
    constexpr std::uint32_t l_count = 19, v_count = 21, t_count = 28, n_count = v_count * t_count,
                            s_count = l_count * n_count;
    constexpr std::uint32_t raw_byte = 0x80000000u; // marks an invalid byte (value in the low 8 bits)
    std::vector<text_char> chars;
    decode_text_chars(s, chars);
    // 1. decompose
    std::vector<std::uint32_t> d;
    d.reserve(chars.size() + 8);
    for (std::size_t i = 0; i + 1 < chars.size(); ++i) {
        const std::uint32_t cp = chars[i].cp;
        if (cp == 0xFFFFFFFFu) {
            d.push_back(raw_byte | static_cast<unsigned char>(s[chars[i].pos]));
        } else if (cp >= s_base && cp < s_base + s_count) {
            const std::uint32_t k = cp - s_base;
            d.push_back(l_base + k / n_count);
            d.push_back(v_base + (k % n_count) / t_count);
            if (k % t_count) d.push_back(t_base + k % t_count);
        } else {
            std::size_t len = 0;
            const std::uint32_t* p = lowbit::detail::canonical_decomposition(cp, len);
            if (p) d.insert(d.end(), p, p + len);
            else d.push_back(cp);
        }
    }
    auto ccc = [&](std::uint32_t cp) -> std::uint8_t { return cp & raw_byte ? 0 : canonical_combining_class(cp); };
    // 2. canonical ordering: stable sort of each run of non-starters by combining class
    for (std::size_t i = 0; i < d.size();) {
        if (ccc(d[i]) == 0) {
            ++i;
            continue;
        }
        std::size_t j = i;
        while (j < d.size() && ccc(d[j]) != 0) ++j;
        for (std::size_t a = i + 1; a < j; ++a) // insertion sort (stable)
            for (std::size_t b = a; b > i && ccc(d[b - 1]) > ccc(d[b]); --b) std::swap(d[b - 1], d[b]);
        i = j;
    }
    // 3. compose
    std::vector<std::uint32_t> r;
    r.reserve(d.size());
    std::ptrdiff_t starter = -1;
    for (std::uint32_t c : d) {
        const std::uint8_t cc = ccc(c);
        if (starter >= 0 && !(c & raw_byte)) {
            const bool adjacent = static_cast<std::ptrdiff_t>(r.size()) - 1 == starter;
            if (adjacent || ccc(r.back()) < cc) {
                const std::uint32_t f = r[static_cast<std::size_t>(starter)];
                std::uint32_t comp = 0;
                if (f >= l_base && f < l_base + l_count && c >= v_base && c < v_base + v_count) {
                    if (adjacent) comp = s_base + ((f - l_base) * v_count + (c - v_base)) * t_count;
                } else if (f >= s_base && f < s_base + s_count && (f - s_base) % t_count == 0 && c > t_base &&
                           c < t_base + t_count) {
                    if (adjacent) comp = f + (c - t_base);
                } else if (!(f & raw_byte)) {
                    comp = lowbit::detail::canonical_composition(f, c);
                }
                if (comp) {
                    r[static_cast<std::size_t>(starter)] = comp;
                    continue;
                }
            }
        }
        if (cc == 0) starter = static_cast<std::ptrdiff_t>(r.size());
        r.push_back(c);
    }
    // 4. encode
    std::string out;
    out.reserve(s.size());
    for (std::uint32_t cp : r) {
        if (cp & raw_byte) out += static_cast<char>(cp & 0xFF);
        else if (cp < 0x80) out += static_cast<char>(cp);
        else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }
    return out;
}

} // namespace detail

/// Splits `text` into the pieces (byte ranges of `text`, in order, covering it) that the regex of
/// `p` matches, with `tokenizers`' Split(Isolated) / ByteLevel(use_regex) semantics. O(n log U) for
/// n characters (U = number of Unicode class ranges).
[[nodiscard]] inline std::vector<std::string_view> pretokenize(pretokenizer_pattern p, std::string_view text) {
    std::vector<detail::text_char> c;
    detail::decode_text_chars(text, c);
    const std::size_t n = c.size() - 1;
    std::vector<std::string_view> out;
    for (std::size_t i = 0; i < n;) {
        const std::size_t len = detail::pretokenizer_match(p, c, i, n);
        out.push_back(text.substr(c[i].pos, c[i + len].pos - c[i].pos));
        i += len;
    }
    return out;
}

/// The GPT-2 byte↔unicode alphabet of ByteLevel: bytes 0x21–0x7E, 0xA1–0xAC, 0xAE–0xFF map to the
/// code point of the same value; the other 68 bytes map, in increasing order, to U+0100, U+0101, …
[[nodiscard]] inline std::uint32_t byte_level_code_point(unsigned char b) noexcept {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    std::uint32_t k = 0; // rank of b among the remapped bytes
    for (unsigned x = 0; x < b; ++x)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) ++k;
    return 256 + k;
}

/// A Hugging Face byte-level BPE tokenizer (see the file comment for the accepted files and the
/// exact encoding rules).
class bpe_tokenizer {
public:
    /// Most pieces the word cache holds before it is cleared.
    static constexpr std::size_t word_cache_capacity = 1u << 16;

    /// One entry of `added_tokens`.
    struct added_token {
        int id = -1;             ///< its id
        std::string content;     ///< the exact text it matches (before normalization)
        bool special = false;    ///< `special`: left out by `decode(ids, true)`
        bool lstrip = false;     ///< `lstrip`: a match absorbs the White_Space before it
        bool rstrip = false;     ///< `rstrip`: a match absorbs the White_Space after it
        bool normalized = false; ///< `normalized`: matched in the normalized text (second pass)
    };

    /// An empty tokenizer (vocab_size() 0; encode returns no ids). Use `parse` or `load`.
    bpe_tokenizer() = default;

    /// Parses the bytes of a tokenizer.json. O(V + M) for V tokens and M merges.
    /// \throws format_error naming the rule broken (see the file comment).
    [[nodiscard]] static bpe_tokenizer parse(std::string_view json) {
        bpe_tokenizer t;
        t.init(json);
        return t;
    }

    /// Reads and parses the file at `path`. \throws format_error (also for I/O failures).
    [[nodiscard]] static bpe_tokenizer load(const std::filesystem::path& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw format_error("lowbit: bpe_tokenizer: cannot open '" + path.string() + "'");
        std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (f.bad()) throw format_error("lowbit: bpe_tokenizer: cannot read '" + path.string() + "'");
        try {
            return parse(s);
        } catch (const format_error& e) {
            throw format_error(std::string(e.what()) + " (file '" + path.string() + "')");
        }
    }

    /// Number of ids (model vocabulary plus added tokens; ids are exactly 0..vocab_size()−1).
    [[nodiscard]] int vocab_size() const noexcept { return static_cast<int>(tokens_.size()); }
    /// The token string of `id` as stored in tokenizer.json (byte-level alphabet, e.g. "Ġthe").
    /// \throws invalid_argument if `id` is outside [0, vocab_size()).
    [[nodiscard]] const std::string& token(int id) const {
        check_id(id, "token");
        return tokens_[static_cast<std::size_t>(id)];
    }
    /// Id of the token whose stored string is exactly `s` (vocabulary or added token), or −1. O(|s|).
    [[nodiscard]] int find(std::string_view s) const {
        auto it = lookup_.find(std::string(s));
        return it == lookup_.end() ? -1 : it->second;
    }
    /// Beginning-of-sequence id: the added token `<|begin_of_text|>`, `<s>` or `<|endoftext|>`
    /// (first found, in this order), or −1.
    [[nodiscard]] int bos_id() const noexcept { return bos_; }
    /// End-of-sequence id: the added token `<|end_of_text|>`, `</s>` or `<|endoftext|>` (first
    /// found), or −1. For the models README's tokenizer both are 0.
    [[nodiscard]] int eos_id() const noexcept { return eos_; }
    /// True if `id` is an added token marked `special`. \throws invalid_argument (bad id).
    [[nodiscard]] bool is_special(int id) const {
        check_id(id, "is_special");
        return special_[static_cast<std::size_t>(id)] != 0;
    }
    /// The added tokens, in file order.
    [[nodiscard]] const std::vector<added_token>& added_tokens() const noexcept { return added_; }
    /// The Split regex of the pre-tokenizer (gpt2 for ByteLevel with use_regex).
    [[nodiscard]] pretokenizer_pattern pattern() const noexcept { return pattern_; }
    /// Number of merges in the file.
    [[nodiscard]] std::size_t merge_count() const noexcept { return merge_count_; }

    /// Token ids of `text` (see the file comment), no special tokens added. O(n log n) for n bytes
    /// on cache misses, O(n) otherwise.
    [[nodiscard]] std::vector<int> encode(std::string_view text) const {
        std::vector<int> out;
        out.reserve(text.size() / 3 + 4);
        std::vector<detail::text_char> chars;
        auto encode_segment = [&](std::string_view seg) {
            // pre-tokenize the segment: [Split by P] then ByteLevel([prefix], [GPT-2 regex])
            auto byte_level = [&](std::string_view piece) {
                std::string tmp;
                if (add_prefix_space_ && !piece.empty() && piece.front() != ' ') {
                    tmp.reserve(piece.size() + 1);
                    tmp += ' ';
                    tmp += piece;
                    piece = tmp;
                }
                if (piece.empty()) return;
                if (!byte_level_regex_) {
                    encode_word(piece, out);
                    return;
                }
                detail::decode_text_chars(piece, chars);
                const std::size_t n = chars.size() - 1;
                for (std::size_t i = 0; i < n;) {
                    const std::size_t len = detail::pretokenizer_match(pretokenizer_pattern::gpt2, chars, i, n);
                    encode_word(piece.substr(chars[i].pos, chars[i + len].pos - chars[i].pos), out);
                    i += len;
                }
            };
            if (!split_) {
                byte_level(seg);
            } else {
                std::vector<detail::text_char> c;
                detail::decode_text_chars(seg, c);
                const std::size_t n = c.size() - 1;
                for (std::size_t i = 0; i < n;) {
                    const std::size_t len = detail::pretokenizer_match(pattern_, c, i, n);
                    byte_level(seg.substr(c[i].pos, c[i + len].pos - c[i].pos));
                    i += len;
                }
            }
        };
        // added tokens with normalized false match the raw text; the rest is normalized, then
        // added tokens with normalized true match it (tokenizers' extract_and_normalize)
        std::vector<std::pair<int, std::string_view>> raw, norm;
        split_one(text, added_pass1_, raw);
        std::string normalized;
        for (const auto& [id, seg] : raw) {
            if (id >= 0) {
                out.push_back(id);
                continue;
            }
            std::string_view s = seg;
            if (nfc_) {
                normalized = detail::nfc(seg);
                s = normalized;
            }
            norm.clear();
            split_one(s, added_pass2_, norm);
            for (const auto& [id2, seg2] : norm) {
                if (id2 >= 0) out.push_back(id2);
                else encode_segment(seg2);
            }
        }
        return out;
    }

    /// The bytes token `id` decodes to (ByteLevel decoder; see the file comment). O(1).
    /// \throws invalid_argument if `id` is outside [0, vocab_size()).
    [[nodiscard]] const std::string& decode_piece(int id) const {
        check_id(id, "decode_piece");
        return pieces_[static_cast<std::size_t>(id)];
    }

    /// Concatenation of `decode_piece` over `ids` (special added tokens left out when
    /// `skip_special`). `decode(encode(t)) == t` for every byte string t whose bytes are all in the
    /// vocabulary (true of every byte-level vocabulary with the 256 byte tokens). O(total bytes).
    /// \throws invalid_argument (an id outside [0, vocab_size())).
    [[nodiscard]] std::string decode(std::span<const int> ids, bool skip_special = false) const {
        std::string out;
        for (int id : ids) {
            check_id(id, "decode");
            if (skip_special && special_[static_cast<std::size_t>(id)]) continue;
            out += pieces_[static_cast<std::size_t>(id)];
        }
        return out;
    }

private:
    struct added_pass { // indices into added_ by first byte, longest first
        bool any = false;
        std::array<std::vector<std::size_t>, 256> by_first;
    };

    struct word_cache {
        std::mutex mutex;
        std::unordered_map<std::string, std::vector<int>> map;
    };

    [[noreturn]] static void fail(const std::string& what) { throw format_error("lowbit: bpe_tokenizer: " + what); }

    void check_id(int id, const char* where) const {
        if (id < 0 || id >= vocab_size())
            throw invalid_argument(std::string("lowbit: bpe_tokenizer::") + where + ": token id " + std::to_string(id) +
                                   " is outside [0, " + std::to_string(vocab_size()) + ")");
    }

    using json = lowbit::detail::json_value;

    static const json* member(const json& obj, std::string_view key) {
        for (std::size_t i = 0; i < obj.keys.size(); ++i)
            if (obj.keys[i] == key) return &obj.items[i];
        return nullptr;
    }
    static bool is_null(const json* v) { return !v || v->type == json::kind::null; }
    static const std::string& type_of(const json& obj, const std::string& where) {
        if (obj.type != json::kind::object) fail(where + " must be an object");
        const json* t = member(obj, "type");
        if (!t || t->type != json::kind::string) fail(where + " has no string member \"type\"");
        return t->text;
    }
    static bool get_bool(const json& obj, std::string_view key, bool dflt, const std::string& where) {
        const json* v = member(obj, key);
        if (is_null(v)) return dflt;
        if (v->type != json::kind::boolean) fail(where + "." + std::string(key) + " must be true or false");
        return v->boolean;
    }
    static int get_id(const json& v, const std::string& where) {
        std::uint64_t u = 0;
        if (!v.as_uint(u)) fail(where + " must be a non-negative integer id (got '" + v.text + "')");
        if (u > static_cast<std::uint64_t>(INT_MAX)) fail(where + " id " + v.text + " is out of range");
        return static_cast<int>(u);
    }

    void parse_pre_tokenizer(const json& pt) {
        auto byte_level = [&](const json& b, const std::string& where) {
            add_prefix_space_ = get_bool(b, "add_prefix_space", true, where);
            byte_level_regex_ = get_bool(b, "use_regex", true, where);
        };
        const std::string& type = type_of(pt, "pre_tokenizer");
        if (type == "ByteLevel") {
            byte_level(pt, "pre_tokenizer");
            if (!byte_level_regex_) fail("pre_tokenizer ByteLevel with use_regex false and no Split is not supported");
            pattern_ = pretokenizer_pattern::gpt2;
            return;
        }
        if (type != "Sequence")
            fail("pre_tokenizer type \"" + type + "\" is not supported (ByteLevel or Sequence[Split, ByteLevel])");
        const json* seq = member(pt, "pretokenizers");
        if (!seq || seq->type != json::kind::array || seq->items.size() != 2 ||
            type_of(seq->items[0], "pre_tokenizer.pretokenizers[0]") != "Split" ||
            type_of(seq->items[1], "pre_tokenizer.pretokenizers[1]") != "ByteLevel")
            fail("pre_tokenizer Sequence must be exactly [Split, ByteLevel]");
        const json& sp = seq->items[0];
        const json* pat = member(sp, "pattern");
        const json* re = pat && pat->type == json::kind::object ? member(*pat, "Regex") : nullptr;
        if (!re || re->type != json::kind::string || pat->keys.size() != 1)
            fail("pre_tokenizer Split must have a pattern {\"Regex\": string}");
        const json* beh = member(sp, "behavior");
        if (!beh || beh->type != json::kind::string || beh->text != "Isolated")
            fail("pre_tokenizer Split behavior must be \"Isolated\"");
        if (get_bool(sp, "invert", false, "pre_tokenizer Split")) fail("pre_tokenizer Split invert true is not supported");
        bool known = false;
        for (auto p : {pretokenizer_pattern::llama3, pretokenizer_pattern::qwen2, pretokenizer_pattern::gpt2})
            if (re->text == pretokenizer_regex(p)) {
                pattern_ = p;
                known = true;
            }
        if (!known) fail("pre_tokenizer Split regex is not a known pattern (GPT-2, Llama-3, Qwen2): " + re->text);
        split_ = true;
        byte_level(seq->items[1], "pre_tokenizer.pretokenizers[1]");
    }

    void init(std::string_view text) {
        json root = lowbit::detail::json_parser(text, "bpe_tokenizer").parse_document();
        if (root.type != json::kind::object) fail("tokenizer.json must be a JSON object");
        const json* model = member(root, "model");
        if (!model) fail("no \"model\" member");
        const std::string& mtype = type_of(*model, "model");
        if (mtype != "BPE") fail("model.type \"" + mtype + "\" is not supported (only BPE)");
        if (const json* n = member(root, "normalizer"); !is_null(n)) {
            const std::string& nt = type_of(*n, "normalizer");
            if (nt != "NFC") fail("normalizer \"" + nt + "\" is not supported (only null and NFC)");
            if (n->keys.size() != 1) fail("normalizer NFC has members besides \"type\"");
            nfc_ = true;
        }
        if (!is_null(member(root, "truncation"))) fail("truncation is not supported (must be null)");
        if (!is_null(member(root, "padding"))) fail("padding is not supported (must be null)");
        const json* pt = member(root, "pre_tokenizer");
        if (is_null(pt)) fail("pre_tokenizer null is not supported (byte-level BPE needs ByteLevel)");
        parse_pre_tokenizer(*pt);
        const json* dec = member(root, "decoder");
        if (is_null(dec) || type_of(*dec, "decoder") != "ByteLevel")
            fail("decoder must be ByteLevel" + (is_null(dec) ? std::string(" (got null)") : ", got \"" + type_of(*dec, "decoder") + "\""));

        // model options
        if (get_bool(*model, "byte_fallback", false, "model")) fail("model.byte_fallback true is not supported");
        ignore_merges_ = get_bool(*model, "ignore_merges", false, "model");
        fuse_unk_ = get_bool(*model, "fuse_unk", false, "model");
        if (const json* d = member(*model, "dropout"); !is_null(d)) fail("model.dropout must be null");
        if (!is_null(member(*model, "continuing_subword_prefix"))) fail("model.continuing_subword_prefix is not supported");
        if (!is_null(member(*model, "end_of_word_suffix"))) fail("model.end_of_word_suffix is not supported");

        // vocabulary
        const json* vocab = member(*model, "vocab");
        if (!vocab || vocab->type != json::kind::object) fail("model.vocab must be an object");
        std::vector<std::pair<int, const std::string*>> entries;
        entries.reserve(vocab->keys.size());
        for (std::size_t i = 0; i < vocab->keys.size(); ++i)
            entries.emplace_back(get_id(vocab->items[i], "model.vocab[\"" + vocab->keys[i] + "\"]"), &vocab->keys[i]);
        std::vector<std::pair<int, const added_token*>> extra;
        if (const json* at = member(root, "added_tokens"); !is_null(at)) {
            if (at->type != json::kind::array) fail("added_tokens must be an array");
            for (std::size_t i = 0; i < at->items.size(); ++i) {
                const json& a = at->items[i];
                const std::string where = "added_tokens[" + std::to_string(i) + "]";
                if (a.type != json::kind::object) fail(where + " must be an object");
                added_token tok;
                const json* id = member(a, "id");
                const json* content = member(a, "content");
                if (!id) fail(where + " has no id");
                tok.id = get_id(*id, where + ".id");
                if (!content || content->type != json::kind::string || content->text.empty())
                    fail(where + ".content must be a non-empty string");
                tok.content = content->text;
                if (get_bool(a, "single_word", false, where)) fail(where + ".single_word true is not supported");
                tok.lstrip = get_bool(a, "lstrip", false, where);
                tok.rstrip = get_bool(a, "rstrip", false, where);
                tok.normalized = get_bool(a, "normalized", false, where);
                tok.special = get_bool(a, "special", false, where);
                added_.push_back(std::move(tok));
            }
        }
        std::size_t max_id = 0;
        for (const auto& [id, s] : entries) max_id = std::max<std::size_t>(max_id, static_cast<std::size_t>(id) + 1);
        for (const auto& a : added_) max_id = std::max<std::size_t>(max_id, static_cast<std::size_t>(a.id) + 1);
        const std::size_t total = entries.size() + added_.size(); // upper bound of distinct ids
        if (max_id > total) fail("token id " + std::to_string(max_id - 1) + " is out of range (ids must be 0.." +
                                 std::to_string(total - 1) + " without holes)");
        tokens_.assign(max_id, std::string());
        std::vector<char> used(max_id, 0);
        special_.assign(max_id, 0);
        vocab_.reserve(entries.size() * 2);
        for (const auto& [id, s] : entries) {
            if (used[static_cast<std::size_t>(id)])
                fail("duplicate id " + std::to_string(id) + " in model.vocab (\"" + tokens_[static_cast<std::size_t>(id)] +
                     "\" and \"" + *s + "\")");
            used[static_cast<std::size_t>(id)] = 1;
            tokens_[static_cast<std::size_t>(id)] = *s;
            vocab_.emplace(*s, id);
        }
        lookup_ = vocab_;
        for (const auto& a : added_) {
            const auto i = static_cast<std::size_t>(a.id);
            auto v = vocab_.find(a.content);
            if (v != vocab_.end() && v->second != a.id)
                fail("added token \"" + a.content + "\" has id " + std::to_string(a.id) + " but model.vocab gives it id " +
                     std::to_string(v->second));
            if (used[i] && tokens_[i] != a.content)
                fail("duplicate id " + std::to_string(a.id) + " (\"" + tokens_[i] + "\" and added token \"" + a.content + "\")");
            if (used[i] == 2) fail("duplicate added token id " + std::to_string(a.id));
            if (v == vocab_.end() && lookup_.count(a.content)) fail("duplicate added token \"" + a.content + "\"");
            used[i] = 2;
            tokens_[i] = a.content;
            lookup_.emplace(a.content, a.id);
            special_[i] = a.special ? 1 : 0;
        }
        for (std::size_t i = 0; i < max_id; ++i)
            if (!used[i]) fail("no token has id " + std::to_string(i) + " (ids must be 0.." + std::to_string(max_id - 1) + " without holes)");
        if (tokens_.empty()) fail("empty vocabulary");
        for (std::size_t i = 0; i < tokens_.size(); ++i)
            if (!lowbit::detail::valid_utf8(tokens_[i])) fail("token " + std::to_string(i) + " is not valid UTF-8");

        if (const json* unk = member(*model, "unk_token"); !is_null(unk)) {
            if (unk->type != json::kind::string) fail("model.unk_token must be a string or null");
            auto it = vocab_.find(unk->text);
            if (it == vocab_.end()) fail("model.unk_token \"" + unk->text + "\" is not in model.vocab");
            unk_ = it->second;
        }

        // byte alphabet: byte -> UTF-8 of its character, the id of that one-character token
        for (int b = 0; b < 256; ++b) {
            std::string s;
            const std::uint32_t cp = byte_level_code_point(static_cast<unsigned char>(b));
            if (cp < 0x80) s += static_cast<char>(cp);
            else {
                s += static_cast<char>(0xC0 | (cp >> 6));
                s += static_cast<char>(0x80 | (cp & 0x3F));
            }
            auto it = vocab_.find(s);
            byte_id_[static_cast<std::size_t>(b)] = it == vocab_.end() ? -1 : it->second;
            byte_char_[static_cast<std::size_t>(b)] = std::move(s);
        }

        // merges
        const json* merges = member(*model, "merges");
        if (is_null(merges)) fail("model.merges is missing");
        if (merges->type != json::kind::array) fail("model.merges must be an array");
        merge_count_ = merges->items.size();
        merges_.reserve(merge_count_ * 2);
        for (std::size_t r = 0; r < merges->items.size(); ++r) {
            const json& m = merges->items[r];
            const std::string where = "model.merges[" + std::to_string(r) + "]";
            std::string a, b;
            if (m.type == json::kind::string) {
                const auto sp = m.text.find(' ');
                if (sp == std::string::npos || m.text.find(' ', sp + 1) != std::string::npos)
                    fail(where + " \"" + m.text + "\" must be two tokens separated by one space");
                a = m.text.substr(0, sp);
                b = m.text.substr(sp + 1);
            } else if (m.type == json::kind::array && m.items.size() == 2 && m.items[0].type == json::kind::string &&
                       m.items[1].type == json::kind::string) {
                a = m.items[0].text;
                b = m.items[1].text;
            } else {
                fail(where + " must be a string \"a b\" or an array [\"a\", \"b\"]");
            }
            auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
            if (ia == vocab_.end()) fail(where + ": token \"" + a + "\" is not in model.vocab");
            if (ib == vocab_.end()) fail(where + ": token \"" + b + "\" is not in model.vocab");
            if (iab == vocab_.end()) fail(where + ": merged token \"" + a + b + "\" is not in model.vocab");
            merges_[pair_key(ia->second, ib->second)] = {static_cast<int>(r), iab->second}; // last rank wins, as in HF
        }

        // decoded bytes of every id (ByteLevel decoder)
        std::unordered_map<std::uint32_t, unsigned char> inverse;
        for (int b = 0; b < 256; ++b) inverse.emplace(byte_level_code_point(static_cast<unsigned char>(b)), static_cast<unsigned char>(b));
        pieces_.resize(tokens_.size());
        std::vector<detail::text_char> chars;
        for (std::size_t i = 0; i < tokens_.size(); ++i) {
            detail::decode_text_chars(tokens_[i], chars);
            std::string bytes;
            bool all = true;
            for (std::size_t k = 0; k + 1 < chars.size() && all; ++k) {
                auto it = inverse.find(chars[k].cp);
                if (it == inverse.end()) all = false;
                else bytes += static_cast<char>(it->second);
            }
            pieces_[i] = all ? std::move(bytes) : tokens_[i];
        }

        // added-token matching order: normalized false first, then normalized true
        // (normalized tokens match the normalized text, so their content is normalized too)
        for (std::size_t k = 0; k < added_.size(); ++k) {
            auto& pass = added_[k].normalized ? added_pass2_ : added_pass1_;
            added_match_.push_back(added_[k].normalized && nfc_ ? detail::nfc(added_[k].content) : added_[k].content);
            pass.any = true;
            pass.by_first[static_cast<unsigned char>(added_match_[k][0])].push_back(k);
        }
        auto by_length = [&](std::size_t x, std::size_t y) { return added_match_[x].size() > added_match_[y].size(); };
        for (auto* pass : {&added_pass1_, &added_pass2_})
            for (auto& v : pass->by_first) std::stable_sort(v.begin(), v.end(), by_length);

        auto first_of = [&](std::initializer_list<const char*> names) {
            for (const char* nm : names)
                for (const auto& a : added_)
                    if (a.content == nm) return a.id;
            return -1;
        };
        bos_ = first_of({"<|begin_of_text|>", "<s>", "<|endoftext|>"});
        eos_ = first_of({"<|end_of_text|>", "</s>", "<|endoftext|>"});
        cache_ = std::make_shared<word_cache>();
    }

    static std::uint64_t pair_key(int a, int b) {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
    }

    static bool is_white_space(const detail::text_char& c) { return c.cls == lowbit::detail::unicode_class::space; }

    /// Index of the character starting at byte `pos` (a character boundary or the end). O(log n).
    static std::size_t char_index(const std::vector<detail::text_char>& chars, std::size_t pos) {
        return static_cast<std::size_t>(
            std::lower_bound(chars.begin(), chars.end(), pos,
                             [](const detail::text_char& c, std::size_t p) { return c.pos < p; }) -
            chars.begin());
    }

    /// Leftmost-longest matches of the tokens `pass` (sorted by decreasing length) in `s`, with
    /// lstrip/rstrip, as tokenizers' AddedVocabulary::find_matches + split_with_indices.
    /// Appends (id, match) for a token, (−1, piece) for the non-empty text between them.
    void split_one(std::string_view s, const added_pass& pass,
                   std::vector<std::pair<int, std::string_view>>& out) const {
        if (!pass.any) {
            if (!s.empty()) out.emplace_back(-1, s);
            return;
        }
        std::vector<detail::text_char> chars; // decoded lazily for lstrip/rstrip
        auto ensure_chars = [&] {
            if (chars.empty()) detail::decode_text_chars(s, chars);
        };
        std::size_t emitted = 0; // end of the last emitted piece
        std::size_t start_offset = 0;
        std::size_t pos = 0;
        while (pos < s.size()) {
            const added_token* hit = nullptr;
            std::size_t hit_len = 0;
            for (std::size_t k : pass.by_first[static_cast<unsigned char>(s[pos])]) {
                const std::string& m = added_match_[k];
                if (s.compare(pos, m.size(), m) == 0) {
                    hit = &added_[k];
                    hit_len = m.size();
                    break;
                }
            }
            if (!hit) {
                ++pos;
                continue;
            }
            std::size_t start = pos, stop = pos + hit_len;
            pos = stop;
            if (start < start_offset) continue; // inside a previous token's rstrip
            if (hit->lstrip) {
                ensure_chars();
                std::size_t k = char_index(chars, start);
                while (k > 0 && is_white_space(chars[k - 1])) --k;
                start = std::max<std::size_t>(chars[k].pos, start_offset);
            }
            if (hit->rstrip) {
                ensure_chars();
                std::size_t k = char_index(chars, stop);
                while (k + 1 < chars.size() && is_white_space(chars[k])) ++k;
                stop = chars[k].pos;
                pos = std::max(pos, stop);
            }
            if (start > emitted) out.emplace_back(-1, s.substr(emitted, start - emitted));
            out.emplace_back(hit->id, s.substr(start, stop - start));
            emitted = start_offset = stop;
        }
        if (emitted < s.size()) out.emplace_back(-1, s.substr(emitted));
    }

    /// BPE of one pre-tokenized piece (raw bytes), appended to `out`; cached.
    void encode_word(std::string_view piece, std::vector<int>& out) const {
        {
            std::lock_guard<std::mutex> lock(cache_->mutex);
            auto it = cache_->map.find(std::string(piece));
            if (it != cache_->map.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        std::vector<int> ids = bpe(piece);
        out.insert(out.end(), ids.begin(), ids.end());
        std::lock_guard<std::mutex> lock(cache_->mutex);
        if (cache_->map.size() >= word_cache_capacity) cache_->map.clear();
        cache_->map.emplace(std::string(piece), std::move(ids));
    }

    std::vector<int> bpe(std::string_view piece) const {
        if (ignore_merges_) {
            std::string s;
            for (char ch : piece) s += byte_char_[static_cast<unsigned char>(ch)];
            if (auto it = vocab_.find(s); it != vocab_.end()) return {it->second};
        }
        // initial symbols: one per byte (unknown bytes -> unk, fused if fuse_unk, or dropped)
        std::vector<int> sym;
        sym.reserve(piece.size());
        bool prev_unknown = false;
        for (char ch : piece) {
            const int id = byte_id_[static_cast<unsigned char>(ch)];
            if (id >= 0) sym.push_back(id);
            else if (unk_ >= 0 && !(fuse_unk_ && prev_unknown)) sym.push_back(unk_);
            prev_unknown = id < 0;
        }
        const std::size_t n = sym.size();
        if (n < 2) return sym;
        std::vector<std::ptrdiff_t> prev(n), next(n);
        std::vector<char> alive(n, 1);
        for (std::size_t i = 0; i < n; ++i) {
            prev[i] = static_cast<std::ptrdiff_t>(i) - 1;
            next[i] = i + 1 < n ? static_cast<std::ptrdiff_t>(i + 1) : -1;
        }
        struct cand {
            int rank;
            std::size_t pos;
            int new_id;
        };
        auto worse = [](const cand& x, const cand& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
        std::priority_queue<cand, std::vector<cand>, decltype(worse)> heap(worse);
        auto push = [&](std::size_t i) {
            if (next[i] < 0) return;
            auto it = merges_.find(pair_key(sym[i], sym[static_cast<std::size_t>(next[i])]));
            if (it != merges_.end()) heap.push({it->second.first, i, it->second.second});
        };
        for (std::size_t i = 0; i + 1 < n; ++i) push(i);
        while (!heap.empty()) {
            const cand c = heap.top();
            heap.pop();
            if (!alive[c.pos] || next[c.pos] < 0) continue;
            const auto r = static_cast<std::size_t>(next[c.pos]);
            auto it = merges_.find(pair_key(sym[c.pos], sym[r]));
            if (it == merges_.end() || it->second.second != c.new_id) continue; // stale
            sym[c.pos] = c.new_id;
            alive[r] = 0;
            next[c.pos] = next[r];
            if (next[r] >= 0) prev[static_cast<std::size_t>(next[r])] = static_cast<std::ptrdiff_t>(c.pos);
            if (prev[c.pos] >= 0) push(static_cast<std::size_t>(prev[c.pos]));
            push(c.pos);
        }
        std::vector<int> res;
        for (std::ptrdiff_t i = 0; i >= 0; i = next[static_cast<std::size_t>(i)]) res.push_back(sym[static_cast<std::size_t>(i)]);
        return res;
    }

    std::vector<std::string> tokens_;                 // id -> stored string
    std::vector<std::string> pieces_;                 // id -> decoded bytes
    std::vector<char> special_;                       // id -> special added token
    std::unordered_map<std::string, int> vocab_;      // model vocabulary
    std::unordered_map<std::string, int> lookup_;     // vocabulary + added tokens
    std::unordered_map<std::uint64_t, std::pair<int, int>> merges_; // (a, b) -> (rank, merged id)
    std::vector<added_token> added_;
    added_pass added_pass1_, added_pass2_; // normalized false, then true
    std::vector<std::string> added_match_;  // text each added token matches (NFC of content if normalized)
    std::array<int, 256> byte_id_ = [] {
        std::array<int, 256> a{};
        a.fill(-1);
        return a;
    }();
    std::array<std::string, 256> byte_char_{};
    std::size_t merge_count_ = 0;
    pretokenizer_pattern pattern_ = pretokenizer_pattern::gpt2;
    bool split_ = false, add_prefix_space_ = false, byte_level_regex_ = true;
    bool ignore_merges_ = false, fuse_unk_ = false, nfc_ = false;
    int unk_ = -1, bos_ = -1, eos_ = -1;
    std::shared_ptr<word_cache> cache_ = std::make_shared<word_cache>();
};

} // namespace io
LOWBIT_END_NAMESPACE
