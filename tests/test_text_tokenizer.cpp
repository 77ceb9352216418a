// Tests of model/text_tokenizer.hpp: both tokenizer kinds behind one interface.
// Oracles: the Hugging Face tokenizer's own output on the dev text (reference/dev_ids.u32, produced
// by the `tokenizers` library), and llama2.c's tokenizer run on stories260K's text (the greedy story
// of the models README decodes to its known text).
#include <lowbit/model/text_tokenizer.hpp>

#include "models.hpp"
#include "test_files.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

TEST_CASE("text_tokenizer hf-json: the document stream equals the tokenizers library's (first 20 dev documents)") {
    const auto tok = lowbit::text_tokenizer::read(lowbit_test::llama21m("tokenizer.json"), 4096);
    CHECK(tok.format() == "hf-json");
    CHECK(tok.vocab_size() == 4096);
    CHECK(!tok.bytes().empty());
    const auto docs = lowbit::io::read_text_documents(lowbit_test::models_dir() / "text-en" / "dev.jsonl");
    const std::vector<std::string> first(docs.begin(), docs.begin() + 20);
    const auto ids = tok.encode_documents(first);
    const auto ref = lowbit_test::read_values<std::uint32_t>(lowbit_test::llama21m("reference/dev_ids.u32"));
    REQUIRE(ids.size() < ref.size());
    CHECK(std::equal(ids.begin(), ids.end(), ref.begin()));
    CHECK(ids.back() == 0); // documents end with <|endoftext|>
    const std::string head = tok.decode(std::span<const int>(ids.data(), 40));
    CHECK(head == first[0].substr(0, head.size()));
    // rebuilding from the held bytes gives the same tokenizer
    const lowbit::text_tokenizer again(tok.format(), tok.bytes(), 4096);
    CHECK(again.encode(first[3]) == tok.encode(first[3]));
}

TEST_CASE("text_tokenizer llama2c: encode/decode round trip and per-document streams") {
    const auto tok = lowbit::text_tokenizer::read(lowbit_test::stories260k("tok512.bin"), 512);
    CHECK(tok.format() == "llama2c");
    CHECK(tok.vocab_size() == 512);
    const std::string a = "Once upon a time, there was a little girl named Lily.";
    const std::string b = "She liked to play outside.";
    const auto ia = tok.encode(a);
    const auto ib = tok.encode(b);
    CHECK(!ia.empty());
    CHECK(tok.decode(ia, 1) == a); // after BOS the leading space is dropped
    const auto stream = tok.encode_documents({a, b});
    std::vector<int> joined = ia;
    joined.insert(joined.end(), ib.begin(), ib.end());
    CHECK(stream == joined); // each document on its own, no separators
}

TEST_CASE("text_tokenizer refuses unknown formats and use without a tokenizer") {
    CHECK_THROWS_AS(lowbit::text_tokenizer("sentencepiece", {}), lowbit::invalid_argument);
    CHECK(lowbit::text_tokenizer().empty());
    CHECK(lowbit::text_tokenizer().vocab_size() == 0);
    CHECK_THROWS_AS((void)lowbit::text_tokenizer().encode("x"), lowbit::invalid_argument);
    lowbit_test::temp_dir d("lowbit_test_text_tokenizer");
    std::ofstream(d.path / "bad.json") << "{\"model\": 3";
    CHECK_THROWS_AS((void)lowbit::text_tokenizer::read(d.path / "bad.json"), lowbit::format_error);
    CHECK_THROWS_AS((void)lowbit::text_tokenizer::read(d.path / "missing.bin"), lowbit::format_error);
}
