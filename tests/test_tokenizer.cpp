// Tests for lowbit/io/tokenizer.hpp. Oracles: the token count of the models README (28,770 tokens
// for the first 60,000 dev characters, from an independent implementation); a literal transcription
// of llama2.c's O(n^2) merge loop (`naive_encode` below) on many text slices; byte round trips.
#include <lowbit/io/tokenizer.hpp>

#include "models.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <random>
#include <sstream>

namespace {

const lowbit::io::tokenizer& tok512() {
    static const auto t = lowbit::io::read_tokenizer(lowbit_test::stories260k("tok512.bin"));
    return t;
}

std::string dev_text() {
    std::ifstream f(lowbit_test::stories260k("tinystories_dev.txt"), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// llama2.c run.c encode(), transcribed: linear lookups, rescan every pair for every merge.
std::vector<int> naive_encode(const lowbit::io::tokenizer& t, const std::string& text, bool bos, bool eos) {
    std::vector<int> out;
    if (bos) out.push_back(1);
    if (!text.empty()) out.push_back(t.find(" "));
    std::string buf;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if ((c & 0xC0) != 0x80) buf.clear();
        buf += static_cast<char>(c);
        if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
        int id = -1;
        for (int k = 0; k < t.vocab_size(); ++k)
            if (t.piece(k) == buf) { id = k; break; }
        if (id != -1) out.push_back(id);
        else for (unsigned char b : buf) out.push_back(b + 3);
        buf.clear();
    }
    while (true) {
        float best = -1e10f;
        int best_id = -1;
        std::size_t best_idx = 0;
        for (std::size_t i = (bos ? 1 : 0); i + 1 < out.size(); ++i) {
            const std::string m = t.piece(out[i]) + t.piece(out[i + 1]);
            int id = -1;
            for (int k = 0; k < t.vocab_size(); ++k)
                if (t.piece(k) == m) { id = k; break; }
            if (id != -1 && t.score(id) > best) { best = t.score(id); best_id = id; best_idx = i; }
        }
        if (best_id == -1) break;
        out[best_idx] = best_id;
        out.erase(out.begin() + static_cast<std::ptrdiff_t>(best_idx) + 1);
    }
    if (eos) out.push_back(2);
    return out;
}

std::vector<std::byte> file_bytes() {
    return lowbit::io::read_file_bytes(lowbit_test::stories260k("tok512.bin"));
}

template <class F>
void put(std::vector<std::byte>& b, std::size_t at, F v) {
    std::memcpy(b.data() + at, &v, sizeof v);
}

} // namespace

TEST_CASE("tok512.bin: header, special and byte tokens") {
    const auto& t = tok512();
    CHECK(t.vocab_size() == 512);
    CHECK(t.max_token_length() == 7);
    CHECK(t.piece(1) == "\n<s>\n");
    CHECK(t.piece(2) == "\n</s>\n");
    CHECK(t.piece(3) == "<0x00>");
    CHECK(t.piece(258) == "<0xFF>");
    CHECK(t.piece(259) == " t");
    CHECK(t.score(260) == -1.0f);
    CHECK(t.find("he") == 260);
    CHECK(t.find("not-a-token") == -1);
    // parsing with the exact vocabulary size gives the same tokenizer; a wrong size is an error
    CHECK(lowbit::io::parse_tokenizer(file_bytes(), 512).vocab_size() == 512);
    CHECK_THROWS_AS((void)lowbit::io::parse_tokenizer(file_bytes(), 511), lowbit::format_error);
    CHECK_THROWS_AS((void)lowbit::io::parse_tokenizer(file_bytes(), 513), lowbit::format_error);
}

TEST_CASE("encode: first 60,000 dev characters give 28,770 tokens (README convention); decode round trip") {
    using lowbit::io::dummy_prefix;
    const std::string text = dev_text().substr(0, 60000);
    const auto ids = tok512().encode(text, false, false, dummy_prefix::separate);
    CHECK(ids.size() == 28770);
    // llama2.c merges the dummy prefix " " with "S" of "Spot": one token fewer, the rest identical
    const auto l2c = tok512().encode(text);
    REQUIRE(l2c.size() == 28769);
    CHECK(ids[0] == tok512().find(" "));
    CHECK(l2c[0] == tok512().find(" S"));
    CHECK(std::equal(l2c.begin() + 1, l2c.end(), ids.begin() + 2));
    const auto with_bos = tok512().encode(text, true, true);
    CHECK(with_bos.size() == 28771);
    CHECK(tok512().decode(with_bos) == text);
    CHECK(tok512().decode(tok512().encode(text, true, false, dummy_prefix::separate)) == text);
}

TEST_CASE("encode: whole dev text round trips and has 195,479 tokens") {
    const std::string text = dev_text();
    CHECK(tok512().encode(text, false, false, lowbit::io::dummy_prefix::separate).size() == 195479);
    CHECK(tok512().decode(tok512().encode(text, true)) == text);
}

TEST_CASE("encode equals llama2.c's quadratic merge loop on slices of real text") {
    const std::string text = dev_text();
    std::mt19937_64 rng(11);
    for (int trial = 0; trial < 25; ++trial) {
        const std::size_t len = 1 + rng() % 64, at = rng() % (text.size() - len);
        const std::string s = text.substr(at, len);
        const bool bos = trial % 2, eos = trial % 3 == 0;
        CHECK(tok512().encode(s, bos, eos) == naive_encode(tok512(), s, bos, eos));
    }
    CHECK(tok512().encode("").empty());
    CHECK(tok512().encode("", true, true) == std::vector<int>{1, 2});
    CHECK(tok512().encode("Once upon a time") == naive_encode(tok512(), "Once upon a time", false, false));
}

TEST_CASE("bytes outside the vocabulary use byte fallback and round trip") {
    // UTF-8 characters absent from a 512-token vocabulary, invalid UTF-8, control bytes, NUL.
    const std::string s = std::string("caf\xC3\xA9 \xE2\x82\xAC 5 \xF0\x9F\x98\x80 \xFF\xFE x\x01y") + std::string(1, '\0') + "z";
    const auto ids = tok512().encode(s, true);
    const std::string head = s.substr(0, s.find('\0'));
    CHECK(tok512().encode(head, true) == naive_encode(tok512(), head, true, false));
    CHECK(tok512().decode(ids) == s);
    // U+4E2D (not in the vocabulary): three byte-fallback tokens 0xE4+3, 0xB8+3, 0xAD+3 in order
    REQUIRE(tok512().find("\xE4\xB8\xAD") == -1);
    const auto zh = tok512().encode("a\xE4\xB8\xAD", false, false, lowbit::io::dummy_prefix::separate);
    CHECK(zh == std::vector<int>{tok512().find(" "), tok512().find("a"), 0xE4 + 3, 0xB8 + 3, 0xAD + 3});
    // random byte strings (no NUL: the transcription stops at NUL like C) match llama2.c and round trip
    std::mt19937_64 rng(5);
    for (int trial = 0; trial < 20; ++trial) {
        std::string r(1 + rng() % 40, ' ');
        for (auto& ch : r) ch = static_cast<char>(1 + rng() % 255);
        CHECK(tok512().encode(r) == naive_encode(tok512(), r, false, false));
        CHECK(tok512().decode(tok512().encode(r, true)) == r);
    }
}

TEST_CASE("decode follows llama2.c: space stripped after BOS, <0xHH> pieces are bytes") {
    const auto& t = tok512();
    CHECK(t.decode_piece(1, 259) == "t");
    CHECK(t.decode_piece(5, 259) == " t");
    CHECK(t.decode_piece(0, 3 + 'A') == "A");
    CHECK(t.decode_piece(0, 3 + 0x0A) == "\n");
    CHECK_THROWS_AS((void)t.decode_piece(0, 512), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)t.decode(std::vector<int>{5, -1}), lowbit::invalid_argument);
}

TEST_CASE("missing byte-fallback token or dummy-prefix token: clear error") {
    std::vector<std::string> pieces{"<unk>", "<s>", "</s>", " ", "a", "<0x05>"};
    lowbit::io::tokenizer t(pieces, std::vector<float>(pieces.size(), 0.0f), 8);
    CHECK(t.encode("aaa").size() == 4);
    CHECK_THROWS_AS((void)t.encode("b"), lowbit::invalid_argument); // byte 'b'+3 is not <0x62>
    lowbit::io::tokenizer no_space({"<unk>", "<s>", "</s>", "a"}, {0, 0, 0, 0}, 8);
    CHECK_THROWS_AS((void)no_space.encode("a"), lowbit::invalid_argument);
    CHECK(no_space.encode("").empty());
}

TEST_CASE("corrupt or truncated tokenizer files throw format_error") {
    const auto good = file_bytes();
    using lowbit::format_error;
    using lowbit::io::parse_tokenizer;
    // every truncation point
    for (std::size_t n = 0; n < good.size(); n += (n < 64 ? 1 : 97)) {
        std::vector<std::byte> b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
        if (n == 0 || n < 12) CHECK_THROWS_AS((void)parse_tokenizer(b), format_error);
        CHECK_THROWS_AS((void)parse_tokenizer(b, 512), format_error);
    }
    auto bad = good;
    put(bad, 0, std::int32_t{0});
    CHECK_THROWS_AS((void)parse_tokenizer(bad), format_error); // max_token_length 0
    bad = good;
    put(bad, 0, std::int32_t{-5});
    CHECK_THROWS_AS((void)parse_tokenizer(bad), format_error);
    bad = good;
    put(bad, 8, std::int32_t{-1}); // length of token 0 negative
    CHECK_THROWS_AS((void)parse_tokenizer(bad), format_error);
    bad = good;
    put(bad, 8, std::int32_t{8}); // longer than max_token_length 7
    CHECK_THROWS_AS((void)parse_tokenizer(bad), format_error);
    bad = good;
    put(bad, 8, std::int32_t{1 << 30});
    CHECK_THROWS_AS((void)parse_tokenizer(bad), format_error);
    bad = good;
    put(bad, 4, std::numeric_limits<float>::quiet_NaN()); // score of token 0
    CHECK_THROWS_AS((void)parse_tokenizer(bad), format_error);
    bad = good;
    bad.push_back(std::byte{0});
    CHECK_THROWS_AS((void)parse_tokenizer(bad), format_error);         // a trailing partial token
    CHECK_THROWS_AS((void)parse_tokenizer(bad, 512), format_error);    // trailing byte
    CHECK_THROWS_AS((void)lowbit::io::read_tokenizer("/nonexistent/tok.bin"), format_error);
    // tokenizer constructor checks
    CHECK_THROWS_AS(lowbit::io::tokenizer({"a"}, {0.0f, 1.0f}, 4), format_error);
    CHECK_THROWS_AS(lowbit::io::tokenizer({}, {}, 4), format_error);
    CHECK_THROWS_AS(lowbit::io::tokenizer({"abcdef"}, {0.0f}, 4), format_error);
}
