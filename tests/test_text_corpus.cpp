// Tests for lowbit/io/text_corpus.hpp: JSON Lines and plain-text documents, and the models README
// stream (documents joined by a separator id). Oracle for the stream: llama-21M-en/reference/
// dev_ids.u32, produced by Hugging Face tokenizers (its first ids and its separator positions).
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/io/tokenizer.hpp>

#include "models.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

namespace {

std::filesystem::path temp_file(const std::string& name, const std::string& bytes) {
    const auto p = std::filesystem::temp_directory_path() / ("lowbit_test_text_corpus_" + name);
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
}

} // namespace

TEST_CASE("parse_jsonl_documents: one object per line, member text, blank lines skipped") {
    using lowbit::io::parse_jsonl_documents;
    const auto d = parse_jsonl_documents("{\"source\":\"a\",\"text\":\"one\\ntwo\"}\n"
                                         "\n"
                                         "{\"text\":\"caf\\u00e9 \xF0\x9F\x98\x80\"}\r\n"
                                         "  {\"text\":\"\"}  \n");
    CHECK(d == std::vector<std::string>{"one\ntwo", "caf\xC3\xA9 \xF0\x9F\x98\x80", ""});
    CHECK(parse_jsonl_documents("").empty());
    CHECK(parse_jsonl_documents("{\"text\":\"x\"}").size() == 1); // no final newline
}

TEST_CASE("parse_jsonl_documents: a bad line is a format_error naming its line number") {
    using lowbit::format_error;
    using lowbit::io::parse_jsonl_documents;
    CHECK_THROWS_WITH_AS(parse_jsonl_documents("{\"text\":\"a\"}\n{\"text\": 3}\n", "f.jsonl"),
                         doctest::Contains("f.jsonl: line 2: no string member \"text\""), format_error);
    CHECK_THROWS_WITH_AS(parse_jsonl_documents("{\"text\":\"a\"}\n\n[\"text\"]\n", "f.jsonl"),
                         doctest::Contains("f.jsonl: line 3: not a JSON object"), format_error);
    CHECK_THROWS_WITH_AS(parse_jsonl_documents("{\"text\":\"a\"} x\n", "f.jsonl"), doctest::Contains("f.jsonl: line 1"),
                         format_error);
    CHECK_THROWS_WITH_AS(parse_jsonl_documents("{\"text\":\"a\",\"text\":\"b\"}\n", "f.jsonl"),
                         doctest::Contains("duplicate key"), format_error);
    CHECK_THROWS_WITH_AS(parse_jsonl_documents("{\"text\":\"a\xFF\"}\n", "f.jsonl"), doctest::Contains("line 1"), format_error);
    CHECK_THROWS_WITH_AS(parse_jsonl_documents("{\"text\":\"a\"}\n{\"other\":\"b\"}", "f.jsonl"),
                         doctest::Contains("line 2"), format_error);
}

TEST_CASE("read_text_documents: .jsonl by extension, anything else is one document") {
    using lowbit::io::read_text_documents;
    const auto j = temp_file("a.JSONL", "{\"text\":\"x\"}\n{\"text\":\"y\"}\n");
    CHECK(read_text_documents(j) == std::vector<std::string>{"x", "y"});
    const std::string raw = "{\"text\":\"x\"}\nplain \xFF bytes\r\n";
    const auto t = temp_file("b.txt", raw);
    CHECK(read_text_documents(t) == std::vector<std::string>{raw});
    const auto bad = temp_file("c.jsonl", "{\"text\":\"x\"}\nnot json\n");
    CHECK_THROWS_WITH_AS(read_text_documents(bad), doctest::Contains("c.jsonl: line 2"), lowbit::format_error);
    CHECK_THROWS_AS(read_text_documents("/nonexistent/x.jsonl"), lowbit::format_error);
    std::filesystem::remove(j);
    std::filesystem::remove(t);
    std::filesystem::remove(bad);
}

TEST_CASE("read_text_documents: the real dev.jsonl and calib.jsonl") {
    const auto dev = lowbit::io::read_text_documents(lowbit_test::hf_model("text-en", "dev.jsonl"));
    const auto calib = lowbit::io::read_text_documents(lowbit_test::hf_model("text-en", "calib.jsonl"));
    CHECK(dev.size() == 959);   // models README
    CHECK(calib.size() == 955); // models README
    // character (code point) counts of the README: dev 2.13 M, calib 1.50 M
    auto chars = [](const std::vector<std::string>& docs) {
        std::size_t n = 0;
        for (const auto& d : docs)
            for (unsigned char c : d) n += (c & 0xC0) != 0x80;
        return n;
    };
    CHECK(chars(dev) / 10000 == 213);
    CHECK(chars(calib) / 10000 == 150);
}

TEST_CASE("document_stream: ids of each document then the separator (models README protocol)") {
    const auto tok = lowbit::io::bpe_tokenizer::load(lowbit_test::llama21m("tokenizer.json"));
    const auto dev = lowbit::io::read_text_documents(lowbit_test::hf_model("text-en", "dev.jsonl"));
    const std::vector<std::string> first(dev.begin(), dev.begin() + 3);
    const auto stream = lowbit::io::document_stream(tok, first, 0);
    std::ifstream f(lowbit_test::llama21m("reference/dev_ids.u32"), std::ios::binary);
    std::vector<std::uint32_t> ref(stream.size());
    f.read(reinterpret_cast<char*>(ref.data()), static_cast<std::streamsize>(ref.size() * 4));
    REQUIRE(f);
    CHECK(std::vector<int>(ref.begin(), ref.end()) == stream);
    CHECK(stream.back() == 0);
    std::size_t separators = 0;
    for (int id : stream) separators += id == 0;
    CHECK(separators == 3);
    // any encoder with encode(string_view) works, e.g. the llama2.c tokenizer
    const auto t512 = lowbit::io::read_tokenizer(lowbit_test::stories260k("tok512.bin"));
    const std::vector<std::string> docs{"Once upon a time", "Lily"};
    const auto s = lowbit::io::document_stream(t512, docs, 2);
    auto expect = t512.encode("Once upon a time");
    expect.push_back(2);
    const auto lily = t512.encode("Lily");
    expect.insert(expect.end(), lily.begin(), lily.end());
    expect.push_back(2);
    CHECK(s == expect);
    CHECK(lowbit::io::document_stream(tok, std::vector<std::string>{}, 0).empty());
}
