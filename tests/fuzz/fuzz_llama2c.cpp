// libFuzzer target: the llama2.c checkpoint reader and the tokenizer reader on arbitrary bytes.
// Contract checked: malformed input throws lowbit::format_error and nothing else (no crash, leak
// or UB under ASan/UBSan); a parsed checkpoint re-serializes to the same bytes; a parsed tokenizer
// encodes and decodes text without crashing (invalid_argument is the only other allowed error).
// Build and run: scripts/fuzz.
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    try {
        const auto ck = lowbit::io::parse_llama2c(bytes);
        const auto again = lowbit::io::serialize_llama2c(ck);
        // the RoPE tables are regenerated, so compare everything before them
        const std::size_t rope = static_cast<std::size_t>(ck.config.seq_len) * ck.config.head_size() * 4 +
                                 (ck.config.shared_classifier ? 0 : ck.wcls.size() * 4);
        if (again.size() != size || std::memcmp(again.data(), data, size - rope) != 0) std::abort();
    } catch (const lowbit::format_error&) {
    }
    try {
        const auto tok = lowbit::io::parse_tokenizer(bytes);
        const std::string_view text(reinterpret_cast<const char*>(data), size < 256 ? size : 256);
        try {
            const auto ids = tok.encode(text, true, true);
            (void)tok.decode(ids);
            (void)tok.encode(text, false, false, lowbit::io::dummy_prefix::separate);
        } catch (const lowbit::invalid_argument&) {
        }
    } catch (const lowbit::format_error&) {
    }
    return 0;
}
