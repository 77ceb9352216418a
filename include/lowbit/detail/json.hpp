#pragma once
/// \file detail/json.hpp
/// A small strict JSON (RFC 8259) parser and string escaper for the safetensors header.
///
/// Why not a library: lowbit depends only on Eigen and xsimd; the safetensors header needs
/// objects, arrays, strings and non-negative integers only, and a strict in-house parser can reject
/// everything the format forbids (duplicate keys, trailing commas, comments, invalid UTF-8, lone
/// surrogates, leading zeros, nesting deeper than 64) with a precise message, and is fuzzed with
/// the rest of the reader (tests/fuzz/fuzz_safetensors.cpp).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// A parsed JSON value. Numbers keep their text; `as_uint` interprets non-negative integers.
struct json_value {
    enum class kind { null, boolean, number, string, array, object };
    kind type = kind::null;
    bool boolean = false;
    std::string text; ///< string contents (decoded UTF-8) or the number's literal text
    std::vector<json_value> items;  ///< array elements, or object values (in file order)
    std::vector<std::string> keys;  ///< object keys (unique), keys[i] names items[i]

    /// The number as an unsigned integer if it is one (digits only, no sign/fraction/exponent) and
    /// ≤ 2^64 − 1; otherwise false.
    [[nodiscard]] bool as_uint(std::uint64_t& out) const {
        if (type != kind::number || text.empty() || text[0] == '-') return false;
        std::uint64_t v = 0;
        for (char c : text) {
            if (c < '0' || c > '9') return false;
            const auto d = static_cast<std::uint64_t>(c - '0');
            if (v > (UINT64_MAX - d) / 10) return false;
            v = v * 10 + d;
        }
        out = v;
        return true;
    }
};

/// Parses one JSON document from `s`; whitespace may surround it, nothing else.
/// \throws format_error "lowbit: <where>: JSON ... at byte N".
class json_parser {
public:
    json_parser(std::string_view s, const char* where) : s_(s), where_(where) {}

    json_value parse_document() {
        skip_ws();
        json_value v = parse_value(0);
        skip_ws();
        if (i_ != s_.size()) fail("unexpected data after the JSON value");
        return v;
    }

private:
    static constexpr int max_depth = 64;

    [[noreturn]] void fail(const std::string& what) const {
        throw format_error(std::string("lowbit: ") + where_ + ": JSON header: " + what + " at byte " +
                           std::to_string(i_));
    }
    void skip_ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    bool eat(char c) {
        if (i_ < s_.size() && s_[i_] == c) {
            ++i_;
            return true;
        }
        return false;
    }
    void expect_literal(std::string_view lit) {
        if (s_.substr(i_, lit.size()) != lit) fail("invalid literal");
        i_ += lit.size();
    }

    json_value parse_value(int depth) {
        if (depth > max_depth) fail("nesting deeper than 64");
        if (i_ >= s_.size()) fail("unexpected end of input");
        json_value v;
        const char c = s_[i_];
        if (c == '{') {
            v.type = json_value::kind::object;
            ++i_;
            skip_ws();
            if (eat('}')) return v;
            std::unordered_set<std::string> seen;
            while (true) {
                skip_ws();
                if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string key");
                std::string key = parse_string();
                if (!seen.insert(key).second) fail("duplicate key \"" + key + "\"");
                skip_ws();
                if (!eat(':')) fail("expected ':'");
                skip_ws();
                v.items.push_back(parse_value(depth + 1));
                v.keys.push_back(std::move(key));
                skip_ws();
                if (eat('}')) return v;
                if (!eat(',')) fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.type = json_value::kind::array;
            ++i_;
            skip_ws();
            if (eat(']')) return v;
            while (true) {
                skip_ws();
                v.items.push_back(parse_value(depth + 1));
                skip_ws();
                if (eat(']')) return v;
                if (!eat(',')) fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.type = json_value::kind::string;
            v.text = parse_string();
            return v;
        }
        if (c == 't') { expect_literal("true"); v.type = json_value::kind::boolean; v.boolean = true; return v; }
        if (c == 'f') { expect_literal("false"); v.type = json_value::kind::boolean; return v; }
        if (c == 'n') { expect_literal("null"); return v; }
        if (c == '-' || (c >= '0' && c <= '9')) {
            v.type = json_value::kind::number;
            v.text = parse_number();
            return v;
        }
        fail(std::string("unexpected character"));
    }

    std::string parse_number() {
        const std::size_t b = i_;
        eat('-');
        auto digits = [&] {
            const std::size_t d = i_;
            while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
            return i_ - d;
        };
        if (i_ < s_.size() && s_[i_] == '0') {
            ++i_;
            if (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') fail("leading zero in a number");
        } else if (digits() == 0) {
            fail("expected digits");
        }
        if (eat('.') && digits() == 0) fail("expected digits after '.'");
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (!eat('+')) eat('-');
            if (digits() == 0) fail("expected exponent digits");
        }
        return std::string(s_.substr(b, i_ - b));
    }

    unsigned hex4() {
        if (s_.size() - i_ < 4) fail("truncated \\u escape");
        unsigned v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = s_[i_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
            else fail("invalid hex digit in \\u escape");
        }
        return v;
    }

    static void put_utf8(std::string& out, std::uint32_t cp) {
        if (cp < 0x80) out += static_cast<char>(cp);
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

    /// Validates one UTF-8 sequence starting at i_ (RFC 3629: no overlongs, no surrogates, ≤ U+10FFFF).
    void copy_utf8(std::string& out) {
        const auto b0 = static_cast<unsigned char>(s_[i_]);
        int n;
        std::uint32_t cp, min;
        if (b0 < 0x80) { out += s_[i_++]; return; }
        if ((b0 & 0xE0) == 0xC0) { n = 1; cp = b0 & 0x1Fu; min = 0x80; }
        else if ((b0 & 0xF0) == 0xE0) { n = 2; cp = b0 & 0x0Fu; min = 0x800; }
        else if ((b0 & 0xF8) == 0xF0) { n = 3; cp = b0 & 0x07u; min = 0x10000; }
        else fail("invalid UTF-8 lead byte");
        if (s_.size() - i_ <= static_cast<std::size_t>(n)) fail("truncated UTF-8 sequence");
        for (int k = 1; k <= n; ++k) {
            const auto b = static_cast<unsigned char>(s_[i_ + static_cast<std::size_t>(k)]);
            if ((b & 0xC0) != 0x80) fail("invalid UTF-8 continuation byte");
            cp = (cp << 6) | (b & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8 code point");
        out.append(s_.substr(i_, static_cast<std::size_t>(n) + 1));
        i_ += static_cast<std::size_t>(n) + 1;
    }

    std::string parse_string() {
        ++i_; // opening quote
        std::string out;
        while (true) {
            if (i_ >= s_.size()) fail("unterminated string");
            const char c = s_[i_];
            if (c == '"') {
                ++i_;
                return out;
            }
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') {
                copy_utf8(out);
                continue;
            }
            ++i_;
            if (i_ >= s_.size()) fail("unterminated escape");
            const char e = s_[i_++];
            switch (e) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                std::uint32_t cp = hex4();
                if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in \\u escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (!(eat('\\') && eat('u'))) fail("high surrogate without a low surrogate");
                    const std::uint32_t lo = hex4();
                    if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate without a low surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                put_utf8(out, cp);
                break;
            }
            default: fail("invalid escape");
            }
        }
    }

    std::string_view s_;
    const char* where_;
    std::size_t i_ = 0;
};

/// Appends `s` as a JSON string literal (quotes, backslash and control characters escaped; other
/// bytes copied, so `s` must be valid UTF-8 for the result to be valid JSON).
inline void json_escape(std::string& out, std::string_view s) {
    static const char* hex = "0123456789abcdef";
    out += '"';
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"') out += "\\\"";
        else if (c == '\\') out += "\\\\";
        else if (u < 0x20) {
            out += "\\u00";
            out += hex[u >> 4];
            out += hex[u & 15];
        } else out += c;
    }
    out += '"';
}

/// True if `s` is valid UTF-8 (RFC 3629).
inline bool valid_utf8(std::string_view s) {
    std::string quoted;
    json_escape(quoted, s);
    try {
        json_parser(quoted, "utf8").parse_document();
        return true;
    } catch (const format_error&) {
        return false;
    }
}

} // namespace detail
LOWBIT_END_NAMESPACE
