// libFuzzer target: the tokenizer.json reader (io/bpe_tokenizer.hpp) and the pre-tokenizer matchers
// on arbitrary bytes.
// Contract checked (no crash, leak or UB under ASan/UBSan besides):
//  - the input as text: for each pattern (GPT-2, Llama-3, Qwen2), pretokenize() returns non-empty
//    pieces that concatenate back to the input exactly; detail::nfc is idempotent;
//  - the input as tokenizer.json: malformed input throws lowbit::format_error and nothing else; an
//    accepted tokenizer encodes a fixed string and the input's first 4 KiB to ids inside
//    [0, vocab_size()) that decode without error, and when the vocabulary holds the 256 byte tokens,
//    no added token strips whitespace and every added token decodes to its own text,
//    decode(encode(s)) == s.
// Seeds (scripts/fuzz): the real llama-21M-en/tokenizer.json and a tiny one.
// Build and run: scripts/fuzz.
#include <lowbit/io/bpe_tokenizer.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

void check_round_trip(const lowbit::io::bpe_tokenizer& t, std::string_view s, bool exact) {
    const std::vector<int> ids = t.encode(s);
    for (int id : ids)
        if (id < 0 || id >= t.vocab_size()) std::abort();
    const std::string back = t.decode(ids);
    if (exact && back != s) std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace lowbit::io;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    for (auto p : {pretokenizer_pattern::gpt2, pretokenizer_pattern::llama3, pretokenizer_pattern::qwen2}) {
        std::string joined;
        for (auto piece : pretokenize(p, text)) {
            if (piece.empty()) std::abort();
            joined += piece;
        }
        if (joined != text) std::abort();
    }
    const std::string once = detail::nfc(text); // NFC is idempotent (valid UTF-8 or not)
    if (detail::nfc(once) != once) std::abort();
    bpe_tokenizer t;
    try {
        t = bpe_tokenizer::parse(text);
    } catch (const lowbit::format_error&) {
        return 0;
    }
    bool exact = true;
    for (int b = 0; b < 256 && exact; ++b) {
        const std::uint32_t cp = byte_level_code_point(static_cast<unsigned char>(b));
        std::string s;
        if (cp < 0x80) s += static_cast<char>(cp);
        else {
            s += static_cast<char>(0xC0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3F));
        }
        exact = t.find(s) >= 0;
    }
    for (const auto& a : t.added_tokens())
        if (a.lstrip || a.rstrip || t.decode_piece(a.id) != a.content) exact = false;
    check_round_trip(t, "Hello world! It's 2024 \xE2\x80\x94 na\xC3\xAFve \xE6\x95\xB0 \xF0\x9F\x98\x80 <|endoftext|>\n\n  x\t'LL", exact);
    check_round_trip(t, text.substr(0, 4096), exact);
    return 0;
}
